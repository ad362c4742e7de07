//! The machine and versions a report names: cores, CPU model, RAM, rustc, RabbitMQ, Redis,
//! the git revision, the date and the command line.

use std::path::Path;
use std::process::{Command, Stdio};

use crate::procfs::status_field;

/// The machine and versions of the report.
pub struct Env {
    pub nproc: usize,
    pub cpu_model: String,
    pub ram_gb: f64,
    pub rustc: String,
    pub profile: String,
    pub rabbitmq: Option<String>,
    pub redis: Option<String>,
    pub git: Option<String>,
    pub date: String,
    pub command: String,
}

/// Reads everything [`Env`] holds; `profile` is the cargo profile of the binaries.
pub fn environment(root: &Path, profile: &str) -> Env {
    let ram_kb = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| status_field(&m, "MemTotal:"))
        .unwrap_or(0);
    let rabbitmq = command_line("timeout", &["30", "rabbitmqctl", "version"])
        .or_else(|| command_line("timeout", &["30", "/usr/sbin/rabbitmqctl", "version"]));
    Env {
        nproc: std::thread::available_parallelism().map_or(1, |n| n.get()),
        cpu_model: cpu_model(),
        ram_gb: ram_kb as f64 / 1024.0 / 1024.0,
        rustc: command_line("rustc", &["--version"]).unwrap_or_else(|| "unknown".into()),
        profile: profile.to_string(),
        rabbitmq,
        redis: command_line("redis-server", &["--version"]),
        git: git_revision(root),
        date: command_line("date", &["-u", "+%Y-%m-%dT%H:%M:%SZ"])
            .unwrap_or_else(|| "unknown".into()),
        command: std::env::args().collect::<Vec<_>>().join(" "),
    }
}

fn cpu_model() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, m)| m.trim().to_string())
        .unwrap_or_else(|| "unknown".into())
}

/// The short HEAD revision, marked when the tree has uncommitted changes.
fn git_revision(root: &Path) -> Option<String> {
    let root = root.display().to_string();
    let rev = command_line("git", &["-C", &root, "rev-parse", "--short", "HEAD"])?;
    let dirty = Command::new("git")
        .args(["-C", &root, "status", "--porcelain"])
        .output()
        .map(|o| !o.stdout.is_empty())
        .unwrap_or(false);
    Some(if dirty {
        format!("{rev} (with uncommitted changes)")
    } else {
        rev
    })
}

/// The first line of a command's stdout, if it ran and succeeded.
pub fn command_line(program: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .map(str::to_string)
}
