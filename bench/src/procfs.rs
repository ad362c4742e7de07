//! Readings from `/proc`: a process's memory (VmRSS, VmHWM) and CPU time (utime + stime),
//! the CPU of waited-for children, the whole machine's busy time, and pids of services.

use std::time::Duration;

use crate::machine::command_line;

/// A `kB` field of `/proc/<pid>/status` (or `/proc/meminfo`).
pub fn status_field(text: &str, field: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// Memory of a live process, in kB: (VmRSS, VmHWM).
pub fn memory_kb(pid: u32) -> Option<(u64, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss = status_field(&text, "VmRSS:")?;
    Some((rss, status_field(&text, "VmHWM:").unwrap_or(rss)))
}

/// Proportional memory of a live process, in kB: Pss from `/proc/<pid>/smaps_rollup`
/// (each shared page split between the processes that map it), VmRSS where that is missing.
pub fn pss_kb(pid: u32) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
        .ok()
        .and_then(|text| status_field(&text, "Pss:"))
        .or_else(|| memory_kb(pid).map(|(rss, _)| rss))
}

/// `pid` and all its live descendants (children from `/proc/<pid>/task/<tid>/children`),
/// parents first.
pub fn process_tree(pid: u32) -> Vec<u32> {
    let mut tree = vec![pid];
    let mut next = 0;
    while let Some(&p) = tree.get(next) {
        tree.extend(children(p));
        next += 1;
    }
    tree
}

/// The children of every thread of `pid`.
fn children(pid: u32) -> Vec<u32> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("children")).ok())
        .flat_map(|text| {
            text.split_whitespace()
                .filter_map(|c| c.parse().ok())
                .collect::<Vec<u32>>()
        })
        .collect()
}

/// Fields of `/proc/<pid>/stat` after the command name: index 0 is field 3 (state).
fn stat_fields(pid: &str) -> Option<Vec<u64>> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &text[text.rfind(')')? + 1..];
    Some(
        rest.split_whitespace()
            .map(|f| f.parse().unwrap_or(0))
            .collect(),
    )
}

/// utime + stime of a process, in clock ticks.
pub fn cpu_ticks(pid: u32) -> Option<u64> {
    let f = stat_fields(&pid.to_string())?;
    Some(f.get(11)? + f.get(12)?)
}

/// cutime + cstime of this process: the CPU of every child it has waited for.
pub fn children_ticks() -> u64 {
    stat_fields("self")
        .and_then(|f| Some(f.get(13)? + f.get(14)?))
        .unwrap_or(0)
}

/// Busy CPU time of the whole machine (user, nice, system, irq, softirq, steal of every
/// core), in clock ticks, from `/proc/stat`.
pub fn machine_ticks() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/stat").ok()?;
    let line = text.lines().find(|l| l.starts_with("cpu "))?;
    let f: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|v| v.parse().unwrap_or(0))
        .collect();
    // user nice system idle iowait irq softirq steal
    Some(
        f.get(..8)?
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != 3 && *i != 4)
            .map(|(_, v)| v)
            .sum(),
    )
}

/// Clock ticks per second (`getconf CLK_TCK`, 100 if unknown).
pub fn clock_ticks() -> f64 {
    command_line("getconf", &["CLK_TCK"])
        .and_then(|t| t.parse::<f64>().ok())
        .filter(|t| *t > 0.0)
        .unwrap_or(100.0)
}

/// CPU the machine spends (in % of one core) over `period`, before anything starts.
pub fn background_cpu(period: Duration) -> Option<f64> {
    let ticks = clock_ticks();
    let a = machine_ticks()?;
    std::thread::sleep(period);
    let b = machine_ticks()?;
    Some(100.0 * b.saturating_sub(a) as f64 / ticks / period.as_secs_f64())
}

/// Every pid `pgrep ARGS` lists, in order.
fn pgrep(args: &[&str]) -> Vec<u32> {
    let out = std::process::Command::new("pgrep")
        .args(args)
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .output();
    out.map(|o| {
        String::from_utf8_lossy(&o.stdout)
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    })
    .unwrap_or_default()
}

/// Broker and Redis server processes: one row per process (a machine running the local
/// clusters beside the single nodes has several of each, and which ones work depends on
/// the URLs), `None` for a service not found.
pub fn service_pids() -> Vec<(String, Option<u32>)> {
    let redis = match pgrep(&["-x", "redis-server"]) {
        pids if pids.is_empty() => pgrep(&["-f", "redis-server"]),
        pids => pids,
    };
    let mut rows = rows_of("rabbitmq", "beam.smp", &pgrep(&["-f", "beam.smp"]));
    rows.extend(rows_of("redis-server", "", &redis));
    rows
}

/// `name (what)` for one pid, `name (what pid N)` for each of several, or one row
/// without a pid.
fn rows_of(name: &str, what: &str, pids: &[u32]) -> Vec<(String, Option<u32>)> {
    let label = |pid: Option<u32>| {
        let what = [
            what.to_string(),
            pid.map(|p| format!("pid {p}")).unwrap_or_default(),
        ]
        .into_iter()
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join(" ");
        match what.as_str() {
            "" => name.to_string(),
            _ => format!("{name} ({what})"),
        }
    };
    match pids {
        [] => vec![(label(None), None)],
        [pid] => vec![(label(None), Some(*pid))],
        _ => pids.iter().map(|p| (label(Some(*p)), Some(*p))).collect(),
    }
}

pub fn kb_to_mb(kb: u64) -> f64 {
    kb as f64 / 1024.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_fields_parse() {
        let status = "Name:\tx\nVmHWM:\t  2048 kB\nVmRSS:\t  1024 kB\n";
        assert_eq!(status_field(status, "VmRSS:"), Some(1024));
        assert_eq!(status_field(status, "VmHWM:"), Some(2048));
        assert_eq!(status_field(status, "VmSwap:"), None);
        assert!(cpu_ticks(std::process::id()).is_some());
        assert!(memory_kb(std::process::id()).is_some());
    }

    #[test]
    fn a_process_tree_holds_its_children() {
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .expect("sleep runs");
        let tree = process_tree(std::process::id());
        let _ = child.kill();
        let _ = child.wait();
        assert_eq!(tree.first(), Some(&std::process::id()));
        assert!(tree.contains(&child.id()), "{tree:?}");
        assert!(pss_kb(std::process::id()).is_some_and(|kb| kb > 0));
        assert_eq!(process_tree(child.id()), vec![child.id()]);
    }

    #[test]
    fn services_get_a_row_per_process() {
        assert_eq!(
            rows_of("rabbitmq", "beam.smp", &[7]),
            vec![("rabbitmq (beam.smp)".to_string(), Some(7))]
        );
        let two = rows_of("redis-server", "", &[3, 4]);
        assert_eq!(two[1], ("redis-server (pid 4)".to_string(), Some(4)));
        assert_eq!(
            rows_of("redis-server", "", &[]),
            vec![("redis-server".to_string(), None)]
        );
    }
}
