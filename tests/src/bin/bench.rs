//! `bench`: the end-to-end benchmark harness.
//!
//! One command, from a clean checkout:
//!
//! ```text
//! cargo run --release -p tributary-tests --bin bench -- [--urls 20000] [--fetchers 1]
//!     [--processors 1] [--aggregators 1] [--latency-ms 0] [--json PATH] [--peers]
//! ```
//!
//! It starts the in-process quote origin, builds the release binaries if they are missing
//! (or with `--build`), starts the worker processes in a fresh namespace, times
//! `producer enqueue --file` as a child process (enqueue rate) and the job until Redis says
//! it is done (end-to-end rate), samples every process's peak RSS and CPU time from `/proc`
//! (workers, producer, the broker's `beam.smp`, `redis-server`, and this process, which
//! serves the origin), reads the latency histogram, verifies the exact aggregate, stops the
//! workers with SIGTERM (each must exit 0) and deletes the namespace. `--peers` then runs
//! the asyncio/aiohttp peer (`bench/aiohttp_baseline.py`) against the same origin.
//!
//! `--enqueue-only` runs only the producer and samples its RSS over time (the streaming
//! check: RSS stays flat however many URLs are enqueued), then deletes the queues.
//!
//! Exit 0 when everything matched; 1 when the aggregate differs, a task is dead, a worker
//! did not exit 0, or anything failed (one line on stderr).

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufWriter, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::Parser;
use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use serde_json::{Value, json};
use tributary::names::{Names, Stage};
use tributary::runtime::config::ConnectionArgs;
use tributary::store::{JobStatus, LatencyHistogram, Store};
use tributary_tests::app::{cleanup, fresh_namespace};
use tributary_tests::origin::{Origin, OriginOptions};
use tributary_tests::quotes::{check_close, expected_aggregate};
use uuid::Uuid;

/// The release binaries the bench starts.
const BINARIES: [&str; 4] = [
    "producer",
    "fetcher-worker",
    "processor-worker",
    "aggregator",
];

/// How often the sampler reads `/proc`.
const SAMPLE_EVERY: Duration = Duration::from_millis(50);

/// How often the job status is polled.
const POLL_EVERY: Duration = Duration::from_millis(10);

/// How long the workers may take to come up, and to stop.
const START_LIMIT: Duration = Duration::from_secs(30);
const STOP_LIMIT: Duration = Duration::from_secs(40);

#[derive(Debug, Clone, Parser)]
#[command(
    name = "bench",
    about = "End-to-end benchmark of tributary: origin, workers, producer, Redis, report"
)]
struct Args {
    /// URLs in the job (`/quotes/0.json` .. `/quotes/{N-1}.json`).
    #[arg(long, default_value_t = 20_000)]
    urls: u64,

    /// fetcher-worker processes.
    #[arg(long, default_value_t = 1)]
    fetchers: usize,

    /// processor-worker processes.
    #[arg(long, default_value_t = 1)]
    processors: usize,

    /// aggregator processes.
    #[arg(long, default_value_t = 1)]
    aggregators: usize,

    /// Latency the origin adds to every request, in milliseconds.
    #[arg(long, default_value_t = 0)]
    latency_ms: u64,

    /// Also write the report as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,

    /// Also run the asyncio/aiohttp peer against the same origin and report the ratio.
    #[arg(long)]
    peers: bool,

    /// Python interpreter for --peers.
    #[arg(long, default_value = "python3")]
    python: String,

    /// Build the release binaries first even if they exist.
    #[arg(long)]
    build: bool,

    /// Only run the producer (no workers): enqueue rate and its RSS over time.
    #[arg(long)]
    enqueue_only: bool,

    /// `--queue-type` for every binary (classic or quorum).
    #[arg(long, default_value = "classic")]
    queue_type: String,

    /// Extra flag for every fetcher-worker (repeatable: `--fetcher-arg=--concurrency=256`).
    #[arg(long = "fetcher-arg", allow_hyphen_values = true)]
    fetcher_args: Vec<String>,

    /// Extra flag for every processor-worker (repeatable).
    #[arg(long = "processor-arg", allow_hyphen_values = true)]
    processor_args: Vec<String>,

    /// Extra flag for every aggregator (repeatable).
    #[arg(long = "aggregator-arg", allow_hyphen_values = true)]
    aggregator_args: Vec<String>,

    /// Extra flag for `producer enqueue` (repeatable: `--producer-arg=--batch-size=50`).
    #[arg(long = "producer-arg", allow_hyphen_values = true)]
    producer_args: Vec<String>,

    /// Give up when the job is not done after this many seconds.
    #[arg(long, default_value_t = 600)]
    timeout_secs: u64,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("bench: error: starting the tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("bench: error: {}", one_line(&format!("{e:#}")));
            ExitCode::FAILURE
        }
    }
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Runs the benchmark; `Ok(false)` when a check failed (already reported).
async fn run(args: Args) -> anyhow::Result<bool> {
    if args.urls == 0 {
        bail!("--urls must be at least 1");
    }
    if args.fetchers == 0 || args.processors == 0 || args.aggregators == 0 {
        bail!("every stage needs at least one worker");
    }
    let paths = Paths::locate()?;
    paths.ensure_binaries(args.build)?;
    let logs = paths.target.join("bench-logs");
    std::fs::create_dir_all(&logs).with_context(|| format!("creating {}", logs.display()))?;

    let env = environment(&paths.root);
    let origin = Origin::start(OriginOptions {
        latency: (args.latency_ms > 0).then(|| Duration::from_millis(args.latency_ms)),
    })
    .await?;

    let background = background_cpu(Duration::from_secs(1));
    if let Some(busy) = background.filter(|b| *b > 25.0) {
        eprintln!(
            "bench: warning: the machine is busy before the start ({busy:.0}% of a core); figures will be noisy"
        );
    }

    let namespace = fresh_namespace("bench");
    eprintln!(
        "bench: namespace {namespace}, origin {}, logs in {}",
        origin.base_url(),
        logs.display()
    );
    let ctx = Ctx {
        args: &args,
        paths: &paths,
        logs: &logs,
        namespace: &namespace,
        origin: &origin,
    };
    let outcome = if args.enqueue_only {
        enqueue_only(&ctx).await
    } else {
        pipeline(&ctx).await
    };
    let cleaned = cleanup(&namespace).await;
    if let (Err(e), Err(_)) = (&cleaned, &outcome) {
        eprintln!(
            "bench: warning: deleting namespace {namespace}: {}",
            one_line(&format!("{e:#}"))
        );
    }
    let mut report = outcome?;
    report.background_pct = background;
    if let Err(e) = cleaned {
        report.problems.push(format!(
            "deleting namespace {namespace}: {}",
            one_line(&format!("{e:#}"))
        ));
    }

    if args.peers && !args.enqueue_only {
        origin.reset();
        report.peer = Some(run_peer(&ctx).await);
    }
    origin.shutdown().await;

    print_report(&args, &env, &report);
    if let Some(path) = &args.json {
        let value = report_json(&args, &env, &report);
        let text = serde_json::to_string_pretty(&value)?;
        std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))?;
        eprintln!("bench: wrote {}", path.display());
    }
    for problem in &report.problems {
        eprintln!("bench: FAILED: {problem}");
    }
    Ok(report.problems.is_empty())
}

/// What every phase needs.
struct Ctx<'a> {
    args: &'a Args,
    paths: &'a Paths,
    logs: &'a Path,
    namespace: &'a str,
    origin: &'a Origin,
}

// ---------------------------------------------------------------------------------------
// Binaries and the environment

/// The workspace root, the target directory and the release binaries.
struct Paths {
    root: PathBuf,
    target: PathBuf,
    release: PathBuf,
}

impl Paths {
    fn locate() -> anyhow::Result<Paths> {
        let manifest = std::env::var_os("CARGO_MANIFEST_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")));
        let root = manifest
            .parent()
            .context("the tests crate has no parent directory (workspace root)")?
            .to_path_buf();
        let target = match std::env::var_os("CARGO_TARGET_DIR") {
            Some(dir) if Path::new(&dir).is_absolute() => PathBuf::from(dir),
            Some(dir) => root.join(dir),
            None => root.join("target"),
        };
        let release = target.join("release");
        Ok(Paths {
            root,
            target,
            release,
        })
    }

    fn binary(&self, name: &str) -> PathBuf {
        self.release.join(name)
    }

    /// Runs `cargo build --release --workspace --bins` when asked or when a binary is
    /// missing.
    fn ensure_binaries(&self, force: bool) -> anyhow::Result<()> {
        let missing: Vec<&str> = BINARIES
            .into_iter()
            .filter(|b| !self.binary(b).is_file())
            .collect();
        if !force && missing.is_empty() {
            return Ok(());
        }
        if !missing.is_empty() {
            eprintln!("bench: missing release binaries {missing:?}: building them");
        }
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "--release", "--workspace", "--bins"])
            .current_dir(&self.root)
            .status()
            .context("running cargo build --release --workspace --bins")?;
        if !status.success() {
            bail!("cargo build --release --workspace --bins failed ({status})");
        }
        for b in BINARIES {
            if !self.binary(b).is_file() {
                bail!("{} is missing after the build", self.binary(b).display());
            }
        }
        Ok(())
    }
}

/// The machine and versions of the report.
struct Env {
    nproc: usize,
    cpu_model: String,
    ram_gb: f64,
    rustc: String,
    rabbitmq: Option<String>,
    redis: Option<String>,
    git: Option<String>,
    date: String,
    command: String,
}

fn environment(root: &Path) -> Env {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu_model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, m)| m.trim().to_string())
        .unwrap_or_else(|| "unknown".into());
    let ram_kb = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| status_field(&m, "MemTotal:"))
        .unwrap_or(0);
    let rabbitmq = command_line("timeout", &["30", "rabbitmqctl", "version"])
        .or_else(|| command_line("timeout", &["30", "/usr/sbin/rabbitmqctl", "version"]));
    let redis = command_line("redis-server", &["--version"]);
    let git = command_line(
        "git",
        &[
            "-C",
            &root.display().to_string(),
            "rev-parse",
            "--short",
            "HEAD",
        ],
    )
    .map(|rev| {
        let dirty = Command::new("git")
            .args(["-C", &root.display().to_string(), "status", "--porcelain"])
            .output()
            .map(|o| !o.stdout.is_empty())
            .unwrap_or(false);
        if dirty {
            format!("{rev} (with uncommitted changes)")
        } else {
            rev
        }
    });
    Env {
        nproc: std::thread::available_parallelism().map_or(1, |n| n.get()),
        cpu_model,
        ram_gb: ram_kb as f64 / 1024.0 / 1024.0,
        rustc: command_line("rustc", &["--version"]).unwrap_or_else(|| "unknown".into()),
        rabbitmq,
        redis,
        git,
        date: command_line("date", &["-u", "+%Y-%m-%dT%H:%M:%SZ"])
            .unwrap_or_else(|| "unknown".into()),
        command: std::env::args().collect::<Vec<_>>().join(" "),
    }
}

/// The first line of a command's stdout, if it ran and succeeded.
fn command_line(program: &str, args: &[&str]) -> Option<String> {
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

// ---------------------------------------------------------------------------------------
// /proc

/// A `kB` field of `/proc/<pid>/status` (or `/proc/meminfo`).
fn status_field(text: &str, field: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// Memory of a live process, in kB: (VmRSS, VmHWM).
fn memory_kb(pid: u32) -> Option<(u64, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss = status_field(&text, "VmRSS:")?;
    Some((rss, status_field(&text, "VmHWM:").unwrap_or(rss)))
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
fn cpu_ticks(pid: u32) -> Option<u64> {
    let f = stat_fields(&pid.to_string())?;
    Some(f.get(11)? + f.get(12)?)
}

/// cutime + cstime of this process: the CPU of every child it has waited for.
fn children_ticks() -> u64 {
    stat_fields("self")
        .and_then(|f| Some(f.get(13)? + f.get(14)?))
        .unwrap_or(0)
}

/// Busy CPU time of the whole machine (user, nice, system, irq, softirq, steal of every
/// core), in clock ticks, from `/proc/stat`.
fn machine_ticks() -> Option<u64> {
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

/// CPU the machine spends (in % of one core) over `period`, before anything starts.
fn background_cpu(period: Duration) -> Option<f64> {
    let ticks = environment_ticks();
    let a = machine_ticks()?;
    std::thread::sleep(period);
    let b = machine_ticks()?;
    Some(100.0 * b.saturating_sub(a) as f64 / ticks / period.as_secs_f64())
}

/// The row of CPU no tracked process accounts for: other programs on the machine.
/// Records the whole machine's busy CPU over the window and the "other processes" row.
fn add_other_row(
    report: &mut Report,
    machine_before: Option<u64>,
    machine_after: Option<u64>,
    ticks: f64,
    window: f64,
) {
    report.machine_cpu_s = machine_before
        .zip(machine_after)
        .map(|(a, b)| b.saturating_sub(a) as f64 / ticks);
    if let Some(machine) = report.machine_cpu_s {
        let row = other_row(&report.processes, machine, window);
        report.processes.push(row);
    }
}

fn other_row(rows: &[ProcRow], machine_s: f64, window_s: f64) -> ProcRow {
    let tracked: f64 = rows.iter().filter_map(|r| r.cpu_s).sum();
    let other = (machine_s - tracked).max(0.0);
    ProcRow {
        name: "other processes (untracked)".into(),
        pid: None,
        peak_rss_mb: None,
        cpu_s: Some(other),
        cpu_pct: Some(100.0 * other / window_s.max(1e-9)),
        warns: 0,
        errors: 0,
        log_samples: Vec::new(),
        log: None,
    }
}

/// The pid of the first process `pgrep ARGS` lists.
fn pgrep(args: &[&str]) -> Option<u32> {
    command_line("pgrep", args).and_then(|p| p.parse().ok())
}

/// Per-pid peak memory of long-running processes, sampled in a thread.
#[derive(Default, Clone, Copy)]
struct Peak {
    rss_kb: u64,
    hwm_kb: u64,
}

impl Peak {
    fn peak_kb(self) -> u64 {
        self.rss_kb.max(self.hwm_kb)
    }
}

type Peaks = Arc<Mutex<HashMap<u32, Peak>>>;

struct Sampler {
    peaks: Peaks,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Folds one reading of `pid`'s memory into its peak.
fn sample_into(peaks: &Peaks, pid: u32) {
    if let Some((rss, hwm)) = memory_kb(pid)
        && let Some(p) = lock(peaks).get_mut(&pid)
    {
        p.rss_kb = p.rss_kb.max(rss);
        p.hwm_kb = p.hwm_kb.max(hwm);
    }
}

impl Sampler {
    fn start() -> Sampler {
        let peaks: Peaks = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let peaks = peaks.clone();
            let stop = stop.clone();
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let pids: Vec<u32> = lock(&peaks).keys().copied().collect();
                    for pid in pids {
                        sample_into(&peaks, pid);
                    }
                    std::thread::sleep(SAMPLE_EVERY);
                }
            })
        };
        Sampler {
            peaks,
            stop,
            thread: Some(thread),
        }
    }

    fn watch(&self, pid: u32) {
        lock(&self.peaks).entry(pid).or_default();
        self.sample_now(pid);
    }

    /// Reads one pid's memory now (e.g. just before it is stopped).
    fn sample_now(&self, pid: u32) {
        sample_into(&self.peaks, pid);
    }

    fn peak(&self, pid: u32) -> Peak {
        lock(&self.peaks).get(&pid).copied().unwrap_or_default()
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A short-lived child's memory: (peak kB, RSS series), read every 2 ms, since a producer
/// may live for less than the sampler's period.
type CloseWatch = std::thread::JoinHandle<(Option<u64>, Vec<(f64, u64)>)>;

/// Watches `pid` until it has exited (its `/proc` entry has no memory any more).
fn watch_closely(pid: u32, started: Instant) -> CloseWatch {
    std::thread::spawn(move || {
        let mut peak: Option<u64> = None;
        let mut series = Vec::new();
        let mut last_point: Option<Instant> = None;
        while let Some((rss, hwm)) = memory_kb(pid) {
            peak = Some(peak.unwrap_or(0).max(rss).max(hwm));
            if last_point.is_none_or(|t| t.elapsed() >= Duration::from_millis(100)) {
                series.push((started.elapsed().as_secs_f64(), rss));
                last_point = Some(Instant::now());
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        (peak, series)
    })
}

fn join_watch(watch: CloseWatch) -> (Option<u64>, Vec<(f64, u64)>) {
    watch.join().unwrap_or((None, Vec::new()))
}

// ---------------------------------------------------------------------------------------
// Worker processes

struct Worker {
    name: String,
    stage: Stage,
    child: Child,
    log: PathBuf,
    exit: Option<String>,
}

/// The running workers; any still running when this is dropped are killed.
struct Workers(Vec<Worker>);

impl Drop for Workers {
    fn drop(&mut self) {
        for w in &mut self.0 {
            if w.exit.is_none() && matches!(w.child.try_wait(), Ok(None)) {
                let _ = w.child.kill();
                let _ = w.child.wait();
            }
        }
    }
}

fn log_file(path: &Path) -> anyhow::Result<(File, File)> {
    let file = File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let clone = file.try_clone()?;
    Ok((file, clone))
}

/// The flags every binary gets.
fn common_flags(ctx: &Ctx<'_>) -> Vec<String> {
    vec![
        "--namespace".into(),
        ctx.namespace.into(),
        "--queue-type".into(),
        ctx.args.queue_type.clone(),
    ]
}

fn spawn_workers(ctx: &Ctx<'_>) -> anyhow::Result<Workers> {
    let mut workers = Workers(Vec::new());
    let stages = [
        (
            "fetcher-worker",
            Stage::Fetch,
            ctx.args.fetchers,
            &ctx.args.fetcher_args,
        ),
        (
            "processor-worker",
            Stage::Process,
            ctx.args.processors,
            &ctx.args.processor_args,
        ),
        (
            "aggregator",
            Stage::Results,
            ctx.args.aggregators,
            &ctx.args.aggregator_args,
        ),
    ];
    for (binary, stage, count, extra) in stages {
        for i in 1..=count {
            let name = format!("{binary}-{i}");
            let log = ctx.logs.join(format!("{}-{name}.log", ctx.namespace));
            let (out, err) = log_file(&log)?;
            let mut cmd = Command::new(ctx.paths.binary(binary));
            cmd.args(common_flags(ctx));
            if stage == Stage::Fetch {
                cmd.arg("--allow-private");
            }
            cmd.args(extra.iter())
                .env("NO_COLOR", "1")
                .stdin(Stdio::null())
                .stdout(out)
                .stderr(err);
            let child = cmd
                .spawn()
                .with_context(|| format!("starting {}", ctx.paths.binary(binary).display()))?;
            workers.0.push(Worker {
                name,
                stage,
                child,
                log,
                exit: None,
            });
        }
    }
    Ok(workers)
}

/// The last error line of a log (or its last lines), for error messages.
fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    if let Some(error) = lines
        .iter()
        .rev()
        .find(|l| l.to_ascii_lowercase().contains("error"))
    {
        return error.trim().to_string();
    }
    lines[lines.len().saturating_sub(3)..].join(" | ")
}

/// Waits until every stage queue has as many consumers as workers were started for it.
async fn wait_for_workers(ctx: &Ctx<'_>, workers: &mut Workers) -> anyhow::Result<()> {
    let args = ConnectionArgs::local(ctx.namespace);
    let names = Names::new(ctx.namespace);
    let conn = tributary::broker::amqp::connect_any(&args.amqp_url, "bench").await?;
    let deadline = Instant::now() + START_LIMIT;
    let outcome = async {
        loop {
            for w in &mut workers.0 {
                if let Some(status) = w.child.try_wait()? {
                    bail!(
                        "{} exited at start ({status}): {}",
                        w.name,
                        log_tail(&w.log)
                    );
                }
            }
            let mut ready = true;
            for stage in Stage::ALL {
                let want = workers.0.iter().filter(|w| w.stage == stage).count() as u32;
                let channel = conn.create_channel().await?;
                let queue = channel
                    .queue_declare(
                        names.queue(stage).as_str().into(),
                        QueueDeclareOptions {
                            passive: true,
                            ..Default::default()
                        },
                        FieldTable::default(),
                    )
                    .await;
                match queue {
                    Ok(q) if q.consumer_count() >= want => {
                        let _ = channel.close(200, "ok".into()).await;
                    }
                    Ok(_) => {
                        let _ = channel.close(200, "ok".into()).await;
                        ready = false;
                    }
                    // 404: not declared yet; the broker closed the channel.
                    Err(_) => ready = false,
                }
            }
            if ready {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("the workers did not all consume within {START_LIMIT:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    .await;
    let _ = conn.close(200, "ok".into()).await;
    outcome
}

/// SIGTERM to every worker, then waits for each to exit; returns the problems.
fn stop_workers(workers: &mut Workers) -> Vec<String> {
    let mut problems = Vec::new();
    for w in &workers.0 {
        let sent = Command::new("kill")
            .arg("-TERM")
            .arg(w.child.id().to_string())
            .status();
        if !matches!(sent, Ok(s) if s.success()) {
            problems.push(format!("could not send SIGTERM to {}", w.name));
        }
    }
    let deadline = Instant::now() + STOP_LIMIT;
    for w in &mut workers.0 {
        loop {
            match w.child.try_wait() {
                Ok(Some(status)) => {
                    w.exit = Some(status.to_string());
                    if !status.success() {
                        problems.push(format!(
                            "{} exited with {status} after SIGTERM: {}",
                            w.name,
                            log_tail(&w.log)
                        ));
                    }
                    break;
                }
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                Ok(None) => {
                    let _ = w.child.kill();
                    let _ = w.child.wait();
                    w.exit = Some("killed".into());
                    problems.push(format!(
                        "{} did not exit within {STOP_LIMIT:?} of SIGTERM (killed)",
                        w.name
                    ));
                    break;
                }
                Err(e) => {
                    w.exit = Some(format!("unknown: {e}"));
                    problems.push(format!("waiting for {}: {e}", w.name));
                    break;
                }
            }
        }
    }
    problems
}

/// Counts WARN and ERROR lines of a worker log; returns them with up to 3 distinct samples.
fn log_problems(path: &Path) -> (u64, u64, Vec<String>) {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let (mut warns, mut errors) = (0, 0);
    let mut samples: Vec<String> = Vec::new();
    for line in text.lines() {
        let is_error = line.contains(" ERROR ") || line.starts_with("error");
        let is_warn = line.contains(" WARN ");
        if is_error {
            errors += 1;
        } else if is_warn {
            warns += 1;
        }
        if (is_error || is_warn) && samples.len() < 3 {
            // Without the timestamp, so equal messages count once.
            let msg = line.split_once(' ').map_or(line, |(_, rest)| rest).trim();
            let msg: String = msg.chars().take(200).collect();
            if !samples.contains(&msg) {
                samples.push(msg);
            }
        }
    }
    (warns, errors, samples)
}

// ---------------------------------------------------------------------------------------
// The measured phases

/// One process of the report.
#[derive(Debug, Clone)]
struct ProcRow {
    name: String,
    pid: Option<u32>,
    peak_rss_mb: Option<f64>,
    cpu_s: Option<f64>,
    /// CPU over the window, in % of one core.
    cpu_pct: Option<f64>,
    warns: u64,
    errors: u64,
    log_samples: Vec<String>,
    log: Option<PathBuf>,
}

#[derive(Debug, Clone)]
struct PeerResult {
    name: String,
    urls_per_s: Option<f64>,
    seconds: Option<f64>,
    counted: Option<u64>,
    cpu_s: Option<f64>,
    peak_rss_mb: Option<f64>,
    skipped: Option<String>,
}

#[derive(Debug, Default)]
struct Report {
    mode: &'static str,
    job: Option<Uuid>,
    enqueued: u64,
    enqueue_s: f64,
    end_to_end_s: Option<f64>,
    status: Option<JobStatus>,
    latency: LatencyHistogram,
    verified: Option<bool>,
    processes: Vec<ProcRow>,
    rss_series: Vec<(f64, u64)>,
    peer: Option<PeerResult>,
    problems: Vec<String>,
    ticks: f64,
    /// Busy CPU of the whole machine over the window, in seconds.
    machine_cpu_s: Option<f64>,
    /// Busy CPU of the machine just before the run, in % of one core.
    background_pct: Option<f64>,
}

impl Report {
    fn enqueue_rate(&self) -> f64 {
        self.enqueued as f64 / self.enqueue_s.max(1e-9)
    }

    fn end_to_end_rate(&self) -> Option<f64> {
        self.end_to_end_s
            .map(|s| self.enqueued as f64 / s.max(1e-9))
    }
}

/// Writes the URL file: `BASE/quotes/{i}.json`, one per line.
fn url_file(ctx: &Ctx<'_>) -> anyhow::Result<tempfile::NamedTempFile> {
    let file = tempfile::Builder::new()
        .prefix("bench-urls-")
        .suffix(".txt")
        .tempfile()
        .context("creating the URL file")?;
    let mut w = BufWriter::new(file.as_file());
    let base = ctx.origin.base_url();
    for i in 0..ctx.args.urls {
        writeln!(w, "{base}/quotes/{i}.json")?;
    }
    w.flush()?;
    drop(w);
    Ok(file)
}

/// The producer command for `job`.
/// A producer child process being timed.
struct Spawned {
    job: Uuid,
    pid: u32,
    started: Instant,
    /// The bench's children CPU ticks before the producer ran.
    children_before: u64,
    watch: CloseWatch,
    /// Resolves to the producer's output and how long it ran.
    wait: tokio::task::JoinHandle<(std::io::Result<std::process::Output>, Duration)>,
}

/// Starts `producer enqueue` of `file` as a new job and starts timing and watching it.
fn spawn_producer(ctx: &Ctx<'_>, file: &Path) -> anyhow::Result<Spawned> {
    let job = Uuid::new_v4();
    let mut cmd = producer_command(ctx, file, job)?;
    let children_before = children_ticks();
    let started = Instant::now();
    let producer = cmd.spawn().context("starting the producer")?;
    let pid = producer.id();
    let watch = watch_closely(pid, started);
    let wait = tokio::task::spawn_blocking(move || {
        let out = producer.wait_with_output();
        (out, started.elapsed())
    });
    Ok(Spawned {
        job,
        pid,
        started,
        children_before,
        watch,
        wait,
    })
}

fn producer_command(ctx: &Ctx<'_>, file: &Path, job: Uuid) -> anyhow::Result<Command> {
    let log = ctx.logs.join(format!("{}-producer.log", ctx.namespace));
    let (_, err) = log_file(&log)?;
    let mut cmd = Command::new(ctx.paths.binary("producer"));
    cmd.args(common_flags(ctx))
        .arg("enqueue")
        .arg("--file")
        .arg(file)
        .arg("--job-id")
        .arg(job.to_string())
        .args(ctx.args.producer_args.iter())
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(err);
    Ok(cmd)
}

/// The producer's stdout `{"job_id", "enqueued"}`, checked against what was asked.
fn parse_enqueued(stdout: &[u8], job: Uuid, urls: u64) -> anyhow::Result<u64> {
    let text = String::from_utf8_lossy(stdout);
    let line = text
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("");
    let v: Value = serde_json::from_str(line)
        .with_context(|| format!("the producer printed no JSON: {line:?}"))?;
    let printed_job = v.get("job_id").and_then(Value::as_str).unwrap_or("");
    if printed_job != job.to_string() {
        bail!("the producer printed job {printed_job:?}, expected {job}");
    }
    let enqueued = v
        .get("enqueued")
        .and_then(Value::as_u64)
        .context("the producer's JSON has no \"enqueued\" count")?;
    if enqueued != urls {
        bail!("the producer enqueued {enqueued} tasks, expected {urls}");
    }
    Ok(enqueued)
}

/// Broker and Redis server processes, if found.
fn service_pids() -> Vec<(String, Option<u32>)> {
    vec![
        ("rabbitmq (beam.smp)".into(), pgrep(&["-f", "beam.smp"])),
        (
            "redis-server".into(),
            pgrep(&["-x", "redis-server"]).or_else(|| pgrep(&["-f", "redis-server"])),
        ),
    ]
}

async fn pipeline(ctx: &Ctx<'_>) -> anyhow::Result<Report> {
    let args = ctx.args;
    let ticks = environment_ticks();
    let conn = ConnectionArgs::local(ctx.namespace);
    let store = Store::connect(&conn).await.context("connecting to Redis")?;
    let file = url_file(ctx)?;
    let sampler = Sampler::start();

    let mut workers = spawn_workers(ctx)?;
    for w in &workers.0 {
        sampler.watch(w.child.id());
    }
    wait_for_workers(ctx, &mut workers).await?;
    eprintln!(
        "bench: {} workers up; enqueueing {} URLs",
        workers.0.len(),
        args.urls
    );

    let services = service_pids();
    let self_pid = std::process::id();
    let mut watched: Vec<(String, u32)> = workers
        .0
        .iter()
        .map(|w| (w.name.clone(), w.child.id()))
        .collect();
    for (name, pid) in &services {
        if let Some(pid) = pid {
            sampler.watch(*pid);
            watched.push((name.clone(), *pid));
        }
    }
    sampler.watch(self_pid);
    watched.push(("bench (origin, in-process)".into(), self_pid));
    let cpu_before: Vec<Option<u64>> = watched.iter().map(|(_, p)| cpu_ticks(*p)).collect();
    let machine_before = machine_ticks();

    // The measured window: from spawning the producer until Redis says done.
    let Spawned {
        job,
        pid: producer_pid,
        started,
        children_before,
        watch: producer_watch,
        wait: mut producer_wait,
    } = spawn_producer(ctx, file.path())?;
    let mut producer_done: Option<(std::io::Result<std::process::Output>, Duration)> = None;
    let limit = Duration::from_secs(args.timeout_secs);
    let mut last_progress = Instant::now();
    let mut last_status: Option<JobStatus> = None;
    let (done_at, status) = loop {
        if producer_done.is_none() && producer_wait.is_finished() {
            let finished = (&mut producer_wait).await.context("the producer waiter")?;
            if let Ok(out) = &finished.0
                && !out.status.success()
            {
                bail!(
                    "the producer exited with {}: {}",
                    out.status,
                    log_tail(&ctx.logs.join(format!("{}-producer.log", ctx.namespace)))
                );
            }
            producer_done = Some(finished);
        }
        if let Some(status) = store.status(job).await? {
            if status.done && producer_done.is_some() {
                break (started.elapsed(), status);
            }
            last_status = Some(status);
        }
        if started.elapsed() > limit {
            bail!("job {job} not done after {limit:?}; last status {last_status:?}");
        }
        if last_progress.elapsed() > Duration::from_secs(2) {
            last_progress = Instant::now();
            if let Some(s) = &last_status {
                eprintln!(
                    "bench: {:>5.1}s  fetched {} processed {} aggregated {} / {}  retrying {} dead {}",
                    started.elapsed().as_secs_f64(),
                    s.fetched,
                    s.processed,
                    s.aggregated,
                    s.total,
                    s.retrying,
                    s.dead
                );
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(POLL_EVERY) => {}
            _ = tokio::signal::ctrl_c() => bail!("interrupted"),
        }
    };
    let cpu_after: Vec<Option<u64>> = watched.iter().map(|(_, p)| cpu_ticks(*p)).collect();
    let machine_after = machine_ticks();
    let (producer_out, enqueue_time) = producer_done.context("the producer result")?;
    let producer_out = producer_out.context("waiting for the producer")?;
    let producer_ticks = children_ticks().saturating_sub(children_before);
    let enqueued = parse_enqueued(&producer_out.stdout, job, args.urls)?;
    eprintln!(
        "bench: done in {:.2}s (enqueue {:.2}s)",
        done_at.as_secs_f64(),
        enqueue_time.as_secs_f64()
    );

    let mut report = Report {
        mode: "pipeline",
        job: Some(job),
        enqueued,
        enqueue_s: enqueue_time.as_secs_f64(),
        end_to_end_s: Some(done_at.as_secs_f64()),
        ticks,
        ..Report::default()
    };

    // Verify.
    report.latency = store.latency(job).await?;
    if status.dead > 0 {
        report.problems.push(format!(
            "{} tasks are dead (see `producer dlq list`)",
            status.dead
        ));
    }
    if status.aggregated != args.urls {
        report.problems.push(format!(
            "aggregated {} tasks, expected {}",
            status.aggregated, args.urls
        ));
    }
    let results = store
        .results(job)
        .await?
        .with_context(|| format!("Redis has no results for job {job}"))?;
    let actual = serde_json::to_value(&results)?;
    let expected = expected_aggregate(0..args.urls);
    match check_close(&actual, &expected) {
        Ok(()) => report.verified = Some(true),
        Err(diff) => {
            report.verified = Some(false);
            let first: Vec<&str> = diff.lines().take(3).collect();
            let mut first = first.join("; ");
            if first.len() > 300 {
                let cut = (0..=300)
                    .rev()
                    .find(|i| first.is_char_boundary(*i))
                    .unwrap_or(0);
                first.truncate(cut);
                first.push_str(" ...");
            }
            report.problems.push(format!(
                "the aggregate differs from the expected one: {first}"
            ));
        }
    }
    report.status = Some(status);

    // Rows, then stop the workers.
    let window = done_at.as_secs_f64();
    for w in &workers.0 {
        sampler.sample_now(w.child.id());
    }
    let (producer_peak, _) = join_watch(producer_watch);
    report.processes.push(ProcRow {
        name: "producer".into(),
        pid: Some(producer_pid),
        peak_rss_mb: producer_peak.map(kb_to_mb),
        cpu_s: Some(producer_ticks as f64 / ticks),
        cpu_pct: Some(100.0 * producer_ticks as f64 / ticks / report.enqueue_s.max(1e-9)),
        warns: 0,
        errors: 0,
        log_samples: Vec::new(),
        log: Some(ctx.logs.join(format!("{}-producer.log", ctx.namespace))),
    });
    for (i, (name, pid)) in watched.iter().enumerate() {
        let cpu = match (cpu_before[i], cpu_after[i]) {
            (Some(a), Some(b)) => Some(b.saturating_sub(a) as f64 / ticks),
            _ => None,
        };
        let worker = workers.0.iter().find(|w| w.child.id() == *pid);
        let peak = sampler.peak(*pid);
        let is_service = worker.is_none() && *pid != self_pid;
        report.processes.push(ProcRow {
            name: name.clone(),
            pid: Some(*pid),
            // The services' RSS is their whole life, not this run's: not reported.
            peak_rss_mb: (!is_service).then(|| kb_to_mb(peak.peak_kb())),
            cpu_s: cpu,
            cpu_pct: cpu.map(|c| 100.0 * c / window.max(1e-9)),
            warns: 0,
            errors: 0,
            log_samples: Vec::new(),
            log: worker.map(|w| w.log.clone()),
        });
    }
    for (name, pid) in &services {
        if pid.is_none() {
            report.processes.push(ProcRow {
                name: format!("{name} (not found)"),
                pid: None,
                peak_rss_mb: None,
                cpu_s: None,
                cpu_pct: None,
                warns: 0,
                errors: 0,
                log_samples: Vec::new(),
                log: None,
            });
        }
    }
    add_other_row(&mut report, machine_before, machine_after, ticks, window);
    drop(sampler);
    report.problems.extend(stop_workers(&mut workers));
    for row in &mut report.processes {
        if let Some(log) = &row.log {
            let (warns, errors, samples) = log_problems(log);
            row.warns = warns;
            row.errors = errors;
            row.log_samples = samples;
        }
    }
    drop(file);
    Ok(report)
}

/// `--enqueue-only`: the producer alone, its RSS over time.
async fn enqueue_only(ctx: &Ctx<'_>) -> anyhow::Result<Report> {
    let ticks = environment_ticks();
    let file = url_file(ctx)?;
    let services = service_pids();
    let cpu_before: Vec<Option<u64>> = services
        .iter()
        .map(|(_, p)| p.and_then(cpu_ticks))
        .collect();
    let machine_before = machine_ticks();
    let Spawned {
        job,
        pid,
        children_before,
        watch,
        wait,
        ..
    } = spawn_producer(ctx, file.path())?;
    let (out, elapsed) = wait.await.context("the producer waiter")?;
    let out = out.context("waiting for the producer")?;
    let cpu_after: Vec<Option<u64>> = services
        .iter()
        .map(|(_, p)| p.and_then(cpu_ticks))
        .collect();
    let machine_after = machine_ticks();
    let producer_ticks = children_ticks().saturating_sub(children_before);
    if !out.status.success() {
        bail!(
            "the producer exited with {}: {}",
            out.status,
            log_tail(&ctx.logs.join(format!("{}-producer.log", ctx.namespace)))
        );
    }
    let enqueued = parse_enqueued(&out.stdout, job, ctx.args.urls)?;
    let (peak, series) = join_watch(watch);
    let enqueue_s = elapsed.as_secs_f64();
    let mut report = Report {
        mode: "enqueue-only",
        job: Some(job),
        enqueued,
        enqueue_s,
        ticks,
        rss_series: series,
        ..Report::default()
    };
    report.processes.push(ProcRow {
        name: "producer".into(),
        pid: Some(pid),
        peak_rss_mb: peak.map(kb_to_mb),
        cpu_s: Some(producer_ticks as f64 / ticks),
        cpu_pct: Some(100.0 * producer_ticks as f64 / ticks / enqueue_s.max(1e-9)),
        warns: 0,
        errors: 0,
        log_samples: Vec::new(),
        log: None,
    });
    for (i, (name, pid)) in services.iter().enumerate() {
        let cpu = match (cpu_before[i], cpu_after[i]) {
            (Some(a), Some(b)) => Some(b.saturating_sub(a) as f64 / ticks),
            _ => None,
        };
        report.processes.push(ProcRow {
            name: name.clone(),
            pid: *pid,
            peak_rss_mb: None,
            cpu_s: cpu,
            cpu_pct: cpu.map(|c| 100.0 * c / enqueue_s.max(1e-9)),
            warns: 0,
            errors: 0,
            log_samples: Vec::new(),
            log: None,
        });
    }
    add_other_row(&mut report, machine_before, machine_after, ticks, enqueue_s);
    drop(file);
    Ok(report)
}

fn environment_ticks() -> f64 {
    command_line("getconf", &["CLK_TCK"])
        .and_then(|t| t.parse::<f64>().ok())
        .filter(|t| *t > 0.0)
        .unwrap_or(100.0)
}

fn kb_to_mb(kb: u64) -> f64 {
    kb as f64 / 1024.0
}

/// `--peers`: the asyncio/aiohttp peer against the same origin.
async fn run_peer(ctx: &Ctx<'_>) -> PeerResult {
    let name = "asyncio/aiohttp (bench/aiohttp_baseline.py)".to_string();
    let mut result = PeerResult {
        name,
        urls_per_s: None,
        seconds: None,
        counted: None,
        cpu_s: None,
        peak_rss_mb: None,
        skipped: None,
    };
    let python = &ctx.args.python;
    let has_packages = Command::new(python)
        .args(["-c", "import aiohttp, redis.asyncio"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    match has_packages {
        Ok(s) if s.success() => {}
        Ok(_) => {
            let msg = "peers: skipping the aiohttp peer: Python packages missing (pip install aiohttp redis)";
            eprintln!("bench: {msg}");
            result.skipped = Some(msg.into());
            return result;
        }
        Err(e) => {
            let msg = format!("peers: skipping the aiohttp peer: cannot run {python}: {e}");
            eprintln!("bench: {msg}");
            result.skipped = Some(msg);
            return result;
        }
    }
    let script = ctx.paths.root.join("bench").join("aiohttp_baseline.py");
    eprintln!(
        "bench: running the aiohttp peer with {} URLs",
        ctx.args.urls
    );
    let children_before = children_ticks();
    let started = Instant::now();
    let spawned = Command::new(python)
        .arg(&script)
        .arg(ctx.args.urls.to_string())
        .arg(ctx.origin.base_url())
        .arg(format!("{}:peer", ctx.namespace))
        .arg(ConnectionArgs::local(ctx.namespace).redis_url.first())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let child = match spawned {
        Ok(c) => c,
        Err(e) => {
            result.skipped = Some(format!("cannot start {}: {e}", script.display()));
            return result;
        }
    };
    let watch = watch_closely(child.id(), started);
    let waited = tokio::task::spawn_blocking(move || child.wait_with_output()).await;
    let ticks = environment_ticks();
    result.cpu_s = Some(children_ticks().saturating_sub(children_before) as f64 / ticks);
    result.peak_rss_mb = join_watch(watch).0.map(kb_to_mb);
    let out = match waited {
        Ok(Ok(out)) => out,
        Ok(Err(e)) => {
            result.skipped = Some(format!("waiting for the peer: {e}"));
            return result;
        }
        Err(e) => {
            result.skipped = Some(format!("waiting for the peer: {e}"));
            return result;
        }
    };
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let last = err.lines().last().unwrap_or("").to_string();
        result.skipped = Some(format!("the peer failed ({}): {last}", out.status));
        eprintln!("bench: peers: {}", result.skipped.as_deref().unwrap_or(""));
        return result;
    }
    let text = String::from_utf8_lossy(&out.stdout);
    match text
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str::<Value>(l).ok())
    {
        Some(v) => {
            result.seconds = v.get("seconds").and_then(Value::as_f64);
            result.counted = v.get("counted").and_then(Value::as_u64);
            result.urls_per_s = result.seconds.map(|s| ctx.args.urls as f64 / s.max(1e-9));
            if result.counted != Some(ctx.args.urls) {
                eprintln!(
                    "bench: peers: the aiohttp peer counted {:?} of {} URLs",
                    result.counted, ctx.args.urls
                );
            }
        }
        None => result.skipped = Some(format!("the peer printed no JSON: {text:?}")),
    }
    result
}

// ---------------------------------------------------------------------------------------
// The report

/// The smallest bucket bound with at least `q` of the tasks at or below it.
fn percentile(h: &LatencyHistogram, q: f64) -> Option<f64> {
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

fn opt(v: Option<f64>, decimals: usize) -> String {
    v.map_or_else(|| "-".into(), |v| format!("{v:.decimals$}"))
}

fn print_report(args: &Args, env: &Env, r: &Report) {
    let mut out = String::new();
    let line = |out: &mut String, s: String| {
        out.push_str(&s);
        out.push('\n');
    };
    line(&mut out, String::new());
    line(&mut out, "== tributary bench ==".into());
    line(
        &mut out,
        format!(
            "machine   {} cores, {}, {:.1} GB RAM",
            env.nproc, env.cpu_model, env.ram_gb
        ),
    );
    line(
        &mut out,
        format!(
            "versions  {}; RabbitMQ {}; {}; tributary {}",
            env.rustc,
            env.rabbitmq.as_deref().unwrap_or("?"),
            env.redis.as_deref().unwrap_or("redis ?"),
            env.git.as_deref().unwrap_or("?")
        ),
    );
    line(&mut out, format!("date      {}", env.date));
    if let Some(b) = r.background_pct {
        line(
            &mut out,
            format!(
                "before    {b:.0}% of a core busy (whole machine) in the second before the run"
            ),
        );
    }
    line(&mut out, format!("command   {}", env.command));
    line(
        &mut out,
        format!(
            "setup     mode {}, {} URLs, {}/{}/{} fetchers/processors/aggregators, origin latency {} ms, {} queues",
            r.mode,
            args.urls,
            args.fetchers,
            args.processors,
            args.aggregators,
            args.latency_ms,
            args.queue_type
        ),
    );
    line(&mut out, String::new());
    line(
        &mut out,
        format!(
            "enqueue     {:>10.0} tasks/s  ({} tasks in {:.3} s)",
            r.enqueue_rate(),
            r.enqueued,
            r.enqueue_s
        ),
    );
    if let Some(rate) = r.end_to_end_rate() {
        line(
            &mut out,
            format!(
                "end to end  {:>10.0} URLs/s   ({} URLs in {:.3} s)",
                rate,
                r.enqueued,
                r.end_to_end_s.unwrap_or(0.0)
            ),
        );
        line(
            &mut out,
            format!(
                "latency     p50 <= {} ms, p99 <= {} ms (enqueue -> aggregated, histogram bucket bounds)",
                opt(percentile(&r.latency, 0.50), 1),
                opt(percentile(&r.latency, 0.99), 1)
            ),
        );
    }
    if let Some(s) = &r.status {
        line(
            &mut out,
            format!(
                "status      total {} fetched {} processed {} aggregated {} retrying {} dead {}",
                s.total, s.fetched, s.processed, s.aggregated, s.retrying, s.dead
            ),
        );
    }
    if let Some(v) = r.verified {
        line(
            &mut out,
            format!(
                "aggregate   {}",
                if v {
                    "exact (matches expected_aggregate)"
                } else {
                    "MISMATCH"
                }
            ),
        );
    }
    if let Some(p) = &r.peer {
        match (p.urls_per_s, &p.skipped) {
            (Some(rate), _) => {
                let ratio = r.end_to_end_rate().map(|ours| ours / rate);
                line(
                    &mut out,
                    format!(
                        "peer        {:>10.0} URLs/s   {} (tributary / peer = {}x; peer CPU {} s, peak RSS {} MB)",
                        rate,
                        p.name,
                        opt(ratio, 2),
                        opt(p.cpu_s, 2),
                        opt(p.peak_rss_mb, 1)
                    ),
                );
            }
            (None, Some(why)) => line(&mut out, format!("peer        skipped: {why}")),
            (None, None) => line(&mut out, "peer        no result".into()),
        }
    }
    line(&mut out, String::new());
    line(
        &mut out,
        format!(
            "{:<30} {:>8} {:>13} {:>8} {:>10} {:>6} {:>6}",
            "process", "pid", "peak RSS MB", "CPU s", "CPU % core", "warn", "error"
        ),
    );
    for p in &r.processes {
        line(
            &mut out,
            format!(
                "{:<30} {:>8} {:>13} {:>8} {:>10} {:>6} {:>6}",
                p.name,
                p.pid.map_or_else(|| "-".into(), |p| p.to_string()),
                opt(p.peak_rss_mb, 1),
                opt(p.cpu_s, 2),
                opt(p.cpu_pct, 0),
                p.warns,
                p.errors
            ),
        );
    }
    let window = if r.mode == "pipeline" {
        "the end-to-end window"
    } else {
        "the producer's run"
    };
    line(
        &mut out,
        format!("(CPU over {window}; the producer's is its whole life; % of one core)"),
    );
    for p in &r.processes {
        for s in &p.log_samples {
            line(&mut out, format!("  {} log: {s}", p.name));
        }
    }
    if r.mode == "enqueue-only" && !r.rss_series.is_empty() {
        line(&mut out, String::new());
        line(&mut out, "producer RSS over time (s: MB):".into());
        let marks: Vec<String> = rss_quantiles(&r.rss_series)
            .iter()
            .map(|(t, kb)| format!("{t:.1}: {:.1}", kb_to_mb(*kb)))
            .collect();
        line(&mut out, format!("  {}", marks.join(", ")));
    }
    print!("{out}");
}

/// Ten evenly spaced points of an RSS series, plus the last.
fn rss_quantiles(series: &[(f64, u64)]) -> Vec<(f64, u64)> {
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

fn report_json(args: &Args, env: &Env, r: &Report) -> Value {
    let processes: Vec<Value> = r
        .processes
        .iter()
        .map(|p| {
            json!({
                "name": p.name,
                "pid": p.pid,
                "peak_rss_mb": p.peak_rss_mb.map(round1),
                "cpu_s": p.cpu_s.map(round2),
                "cpu_pct_of_core": p.cpu_pct.map(round1),
                "log_warn_lines": p.warns,
                "log_error_lines": p.errors,
                "log_samples": p.log_samples,
                "log": p.log.as_ref().map(|l| l.display().to_string()),
            })
        })
        .collect();
    let peer = r.peer.as_ref().map(|p| {
        json!({
            "name": p.name,
            "urls_per_s": p.urls_per_s.map(f64::round),
            "seconds": p.seconds,
            "counted": p.counted,
            "cpu_s": p.cpu_s.map(round2),
            "peak_rss_mb": p.peak_rss_mb.map(round1),
            "ratio_tributary_to_peer": match (r.end_to_end_rate(), p.urls_per_s) {
                (Some(ours), Some(theirs)) => Some(round2(ours / theirs)),
                _ => None,
            },
            "skipped": p.skipped,
        })
    });
    json!({
        "machine": {
            "nproc": env.nproc,
            "cpu_model": env.cpu_model,
            "ram_gb": round1(env.ram_gb),
        },
        "versions": {
            "rustc": env.rustc,
            "rabbitmq": env.rabbitmq,
            "redis": env.redis,
            "tributary": env.git,
        },
        "date": env.date,
        "command": env.command,
        "config": {
            "mode": r.mode,
            "urls": args.urls,
            "fetchers": args.fetchers,
            "processors": args.processors,
            "aggregators": args.aggregators,
            "latency_ms": args.latency_ms,
            "queue_type": args.queue_type,
            "fetcher_args": args.fetcher_args,
            "processor_args": args.processor_args,
            "aggregator_args": args.aggregator_args,
            "producer_args": args.producer_args,
        },
        "results": {
            "job_id": r.job,
            "n": r.enqueued,
            "enqueue_seconds": round3(r.enqueue_s),
            "enqueue_tasks_per_s": r.enqueue_rate().round(),
            "end_to_end_seconds": r.end_to_end_s.map(round3),
            "end_to_end_urls_per_s": r.end_to_end_rate().map(f64::round),
            "latency_p50_ms": percentile(&r.latency, 0.50).map(round1),
            "latency_p99_ms": percentile(&r.latency, 0.99).map(round1),
            "latency_histogram": r.latency.iter().map(|(b, n)| json!([round1(*b), n])).collect::<Vec<_>>(),
            "status": r.status,
            "aggregate_exact": r.verified,
            "problems": r.problems,
        },
        "processes": processes,
        "producer_rss_series_mb": r.rss_series.iter().map(|(t, kb)| json!([round2(*t), round1(kb_to_mb(*kb))])).collect::<Vec<_>>(),
        "peer": peer,
        "clock_ticks_per_s": r.ticks,
        "machine_cpu_s_in_window": r.machine_cpu_s.map(round2),
        "background_cpu_pct_before": r.background_pct.map(round1),
    })
}

fn round1(v: f64) -> f64 {
    (v * 10.0).round() / 10.0
}

fn round2(v: f64) -> f64 {
    (v * 100.0).round() / 100.0
}

fn round3(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
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
    fn proc_fields_parse() {
        let status = "Name:\tx\nVmHWM:\t  2048 kB\nVmRSS:\t  1024 kB\n";
        assert_eq!(status_field(status, "VmRSS:"), Some(1024));
        assert_eq!(status_field(status, "VmHWM:"), Some(2048));
        assert_eq!(status_field(status, "VmSwap:"), None);
        assert!(cpu_ticks(std::process::id()).is_some());
        assert!(memory_kb(std::process::id()).is_some());
    }
}
