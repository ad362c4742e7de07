//! What a run measured ([`Report`]) and its text form on stdout: the setup, the rates, the
//! peers and the ceiling, then one row per process.

use std::fmt::Write as _;
use std::path::PathBuf;

use tributary::store::{JobStatus, LatencyHistogram};
use uuid::Uuid;

use crate::args::Args;
use crate::machine::Env;
use crate::procfs::kb_to_mb;
use crate::timeline::Timeline;
use crate::workers::LogProblems;

/// One process of the report.
#[derive(Debug, Clone, Default)]
pub struct ProcRow {
    pub name: String,
    pub pid: Option<u32>,
    pub peak_rss_mb: Option<f64>,
    pub cpu_s: Option<f64>,
    /// CPU over the window, in % of one core.
    pub cpu_pct: Option<f64>,
    pub log: Option<PathBuf>,
    pub log_problems: LogProblems,
}

impl ProcRow {
    /// A row with `cpu_s` of CPU over a `window_s` window.
    pub fn new(
        name: impl Into<String>,
        pid: Option<u32>,
        cpu_s: Option<f64>,
        window_s: f64,
    ) -> Self {
        ProcRow {
            name: name.into(),
            pid,
            cpu_s,
            cpu_pct: cpu_s.map(|c| 100.0 * c / window_s.max(1e-9)),
            ..ProcRow::default()
        }
    }
}

/// A peer script's run against the same origin.
#[derive(Debug, Clone, Default)]
pub struct PeerResult {
    pub name: String,
    pub urls_per_s: Option<f64>,
    pub seconds: Option<f64>,
    pub counted: Option<u64>,
    /// Whether the peer found its aggregate right (for a peer that checks it).
    pub verified: Option<bool>,
    pub cpu_s: Option<f64>,
    /// The script's peak RSS plus the peak summed PSS of the processes it started.
    pub peak_rss_mb: Option<f64>,
    pub skipped: Option<String>,
}

/// The ceiling: fetch + parse alone, in the bench process.
#[derive(Debug, Clone, Default)]
pub struct CeilingResult {
    pub urls_per_s: f64,
    pub seconds: f64,
    pub records: u64,
    pub failed: u64,
    pub concurrency: usize,
    /// CPU of the bench process (client, parsing and the origin) over the ceiling run.
    pub cpu_s: Option<f64>,
}

#[derive(Debug, Default)]
pub struct Report {
    pub mode: &'static str,
    pub job: Option<Uuid>,
    pub enqueued: u64,
    pub enqueue_s: f64,
    pub end_to_end_s: Option<f64>,
    pub status: Option<JobStatus>,
    /// When the pipeline run reached its milestones.
    pub timeline: Option<Timeline>,
    pub latency: LatencyHistogram,
    pub verified: Option<bool>,
    pub processes: Vec<ProcRow>,
    pub rss_series: Vec<(f64, u64)>,
    pub peers: Vec<PeerResult>,
    pub ceiling: Option<CeilingResult>,
    pub problems: Vec<String>,
    pub ticks: f64,
    /// Busy CPU of the whole machine over the window, in seconds.
    pub machine_cpu_s: Option<f64>,
    /// Busy CPU of the machine just before the run, in % of one core.
    pub background_pct: Option<f64>,
}

impl Report {
    pub fn enqueue_rate(&self) -> f64 {
        self.enqueued as f64 / self.enqueue_s.max(1e-9)
    }

    pub fn end_to_end_rate(&self) -> Option<f64> {
        self.end_to_end_s
            .map(|s| self.enqueued as f64 / s.max(1e-9))
    }

    /// Adds the row of CPU no tracked process accounts for (other programs on the machine)
    /// from the machine's busy ticks before and after a `window_s` window.
    pub fn add_other_row(&mut self, before: Option<u64>, after: Option<u64>, window_s: f64) {
        self.machine_cpu_s = before
            .zip(after)
            .map(|(a, b)| b.saturating_sub(a) as f64 / self.ticks);
        if let Some(machine) = self.machine_cpu_s {
            let tracked: f64 = self.processes.iter().filter_map(|r| r.cpu_s).sum();
            let other = (machine - tracked).max(0.0);
            let row = ProcRow::new("other processes (untracked)", None, Some(other), window_s);
            self.processes.push(row);
        }
    }
}

/// The smallest bucket bound with at least `q` of the tasks at or below it.
pub fn percentile(h: &LatencyHistogram, q: f64) -> Option<f64> {
    let total: u64 = h.iter().map(|(_, n)| n).sum();
    if total == 0 {
        return None;
    }
    let rank = ((q * total as f64).ceil() as u64).clamp(1, total);
    let mut seen = 0;
    for (bound, n) in h {
        seen += n;
        if seen >= rank {
            return Some(*bound);
        }
    }
    h.last().map(|(b, _)| *b)
}

pub fn opt(v: Option<f64>, decimals: usize) -> String {
    v.map_or_else(|| "-".into(), |v| format!("{v:.decimals$}"))
}

/// Prints the whole report on stdout.
pub fn print_report(args: &Args, env: &Env, r: &Report) {
    let mut out = String::new();
    header(&mut out, args, env, r);
    rates(&mut out, r);
    peers(&mut out, r);
    ceiling(&mut out, r);
    processes(&mut out, r);
    rss_series(&mut out, r);
    print!("{out}");
}

/// The machine, versions, date, command and setup lines.
fn header(out: &mut String, args: &Args, env: &Env, r: &Report) {
    let _ = writeln!(out, "\n== tributary bench ==");
    let _ = writeln!(
        out,
        "machine   {} cores, {}, {:.1} GB RAM",
        env.nproc, env.cpu_model, env.ram_gb
    );
    let _ = writeln!(
        out,
        "versions  {} (profile {}); RabbitMQ {}; {}; tributary {}",
        env.rustc,
        env.profile,
        env.rabbitmq.as_deref().unwrap_or("?"),
        env.redis.as_deref().unwrap_or("redis ?"),
        env.git.as_deref().unwrap_or("?")
    );
    let _ = writeln!(out, "date      {}", env.date);
    if let Some(b) = r.background_pct {
        let _ = writeln!(
            out,
            "before    {b:.0}% of a core busy (whole machine) in the second before the run"
        );
    }
    let _ = writeln!(out, "command   {}", env.command);
    let _ = writeln!(
        out,
        "setup     mode {}, {} URLs, {}/{}/{} fetchers/processors/aggregators, origin latency {} ms, {} queues\n",
        r.mode,
        args.urls,
        args.fetchers,
        args.processors,
        args.aggregators,
        args.latency_ms,
        args.queue_type
    );
}

/// Enqueue and end-to-end rates, latency, the job's status and the aggregate check.
fn rates(out: &mut String, r: &Report) {
    let _ = writeln!(
        out,
        "enqueue     {:>10.0} tasks/s  ({} tasks in {:.3} s)",
        r.enqueue_rate(),
        r.enqueued,
        r.enqueue_s
    );
    if let Some(rate) = r.end_to_end_rate() {
        let _ = writeln!(
            out,
            "end to end  {:>10.0} URLs/s   ({} URLs in {:.3} s)",
            rate,
            r.enqueued,
            r.end_to_end_s.unwrap_or(0.0)
        );
        let _ = writeln!(
            out,
            "latency     p50 <= {} ms, p99 <= {} ms (enqueue -> aggregated, histogram bucket bounds)",
            opt(percentile(&r.latency, 0.50), 1),
            opt(percentile(&r.latency, 0.99), 1)
        );
    }
    if let Some(t) = &r.timeline {
        let at = t
            .entries()
            .map(|(name, at)| format!("{} {} s", name.replace('_', " "), opt(at, 2)));
        let _ = writeln!(out, "timeline    {}", at.join(", "));
    }
    if let Some(s) = &r.status {
        let _ = writeln!(
            out,
            "status      total {} fetched {} processed {} aggregated {} retrying {} dead {}",
            s.total, s.fetched, s.processed, s.aggregated, s.retrying, s.dead
        );
    }
    if let Some(v) = r.verified {
        let verdict = if v {
            "exact (matches expected_aggregate)"
        } else {
            "MISMATCH"
        };
        let _ = writeln!(out, "aggregate   {verdict}");
    }
}

/// One line per peer: its rate and ours as a multiple of it.
fn peers(out: &mut String, r: &Report) {
    for p in &r.peers {
        match (p.urls_per_s, &p.skipped) {
            (Some(rate), _) => {
                let ratio = r.end_to_end_rate().map(|ours| ours / rate);
                let _ = writeln!(
                    out,
                    "peer        {:>10.0} URLs/s   {} (tributary / peer = {}x; peer CPU {} s, peak RSS {} MB; {})",
                    rate,
                    p.name,
                    opt(ratio, 2),
                    opt(p.cpu_s, 2),
                    opt(p.peak_rss_mb, 1),
                    peer_outcome(p)
                );
            }
            (None, Some(why)) => {
                let _ = writeln!(out, "peer        {}: skipped: {why}", p.name);
            }
            (None, None) => {
                let _ = writeln!(out, "peer        {}: no result", p.name);
            }
        }
    }
}

/// What a peer counted and whether its aggregate checked out.
fn peer_outcome(p: &PeerResult) -> String {
    let counted = p.counted.map_or_else(|| "-".into(), |c| c.to_string());
    let verdict = match p.verified {
        Some(true) => "aggregate verified",
        Some(false) => "aggregate MISMATCH",
        None => "aggregate not checked",
    };
    format!("counted {counted}, {verdict}")
}

/// The ceiling line: fetch + parse alone, and the pipeline as a fraction of it.
fn ceiling(out: &mut String, r: &Report) {
    let Some(c) = &r.ceiling else { return };
    let fraction = r
        .end_to_end_rate()
        .map(|ours| 100.0 * ours / c.urls_per_s.max(1e-9));
    let _ = writeln!(
        out,
        "ceiling     {:>10.0} URLs/s   fetch + parse only, {} in flight ({} records in {:.3} s, {} failed; bench CPU {} s); pipeline = {}% of it",
        c.urls_per_s,
        c.concurrency,
        c.records,
        c.seconds,
        c.failed,
        opt(c.cpu_s, 2),
        opt(fraction, 0)
    );
}

/// The per-process table and the workers' log samples.
fn processes(out: &mut String, r: &Report) {
    let _ = writeln!(
        out,
        "\n{:<30} {:>8} {:>13} {:>8} {:>10} {:>6} {:>6}",
        "process", "pid", "peak RSS MB", "CPU s", "CPU % core", "warn", "error"
    );
    for p in &r.processes {
        let _ = writeln!(
            out,
            "{:<30} {:>8} {:>13} {:>8} {:>10} {:>6} {:>6}",
            p.name,
            p.pid.map_or_else(|| "-".into(), |p| p.to_string()),
            opt(p.peak_rss_mb, 1),
            opt(p.cpu_s, 2),
            opt(p.cpu_pct, 0),
            p.log_problems.warns,
            p.log_problems.errors
        );
    }
    let window = if r.mode == "pipeline" {
        "the end-to-end window"
    } else {
        "the producer's run"
    };
    let _ = writeln!(
        out,
        "(CPU over {window}; the producer's is its whole life; % of one core)"
    );
    for p in &r.processes {
        for s in &p.log_problems.samples {
            let _ = writeln!(out, "  {} log: {s}", p.name);
        }
    }
}

/// `--enqueue-only`: the producer's RSS over time.
fn rss_series(out: &mut String, r: &Report) {
    if r.mode != "enqueue-only" || r.rss_series.is_empty() {
        return;
    }
    let marks: Vec<String> = rss_quantiles(&r.rss_series)
        .iter()
        .map(|(t, kb)| format!("{t:.1}: {:.1}", kb_to_mb(*kb)))
        .collect();
    let _ = writeln!(
        out,
        "\nproducer RSS over time (s: MB):\n  {}",
        marks.join(", ")
    );
}

/// Ten evenly spaced points of an RSS series, plus the last.
pub fn rss_quantiles(series: &[(f64, u64)]) -> Vec<(f64, u64)> {
    if series.is_empty() {
        return Vec::new();
    }
    let mut out: Vec<(f64, u64)> = (0..10).map(|k| series[k * series.len() / 10]).collect();
    if let Some(last) = series.last() {
        out.push(*last);
    }
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_a_histogram() {
        let h = vec![(1.0, 50), (2.0, 40), (4.0, 9), (8.0, 1)];
        assert_eq!(percentile(&h, 0.5), Some(1.0));
        assert_eq!(percentile(&h, 0.9), Some(2.0));
        assert_eq!(percentile(&h, 0.99), Some(4.0));
        assert_eq!(percentile(&h, 1.0), Some(8.0));
        assert_eq!(percentile(&Vec::new(), 0.5), None);
    }

    #[test]
    fn other_row_is_the_machine_minus_the_tracked_processes() {
        let mut r = Report {
            ticks: 100.0,
            ..Report::default()
        };
        r.processes.push(ProcRow::new("a", Some(1), Some(1.5), 2.0));
        r.add_other_row(Some(1000), Some(1200), 2.0);
        let other = r.processes.last().unwrap();
        assert_eq!(r.machine_cpu_s, Some(2.0));
        assert_eq!(other.cpu_s, Some(0.5));
        assert_eq!(other.cpu_pct, Some(25.0));
    }
}
