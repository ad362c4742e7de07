//! The worker processes of a run: where the binaries are (built if missing), starting them
//! with their logs in `target/bench-logs/`, waiting until every stage queue has its
//! consumers, stopping them with SIGTERM, and reading their logs for problems.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use tributary::names::{Names, Stage};
use tributary::runtime::config::ConnectionArgs;
use tributary_tests::procs::{self, Output};

use crate::args::Args;

/// The binaries the bench starts, by package (each package's binary has its name).
pub const BINARIES: [&str; 4] = [
    "producer",
    "fetcher-worker",
    "processor-worker",
    "aggregator",
];

/// How long the workers may take to come up, and to stop.
const START_LIMIT: Duration = Duration::from_secs(30);
const STOP_LIMIT: Duration = Duration::from_secs(40);

/// The workspace root, the directory of the binaries (the bench's own) and its profile.
pub struct Paths {
    pub root: PathBuf,
    pub bins: PathBuf,
    pub logs: PathBuf,
    /// The cargo profile the binaries are built with (`release`, `dist`, `dev`).
    pub profile: String,
}

impl Paths {
    pub fn locate() -> anyhow::Result<Paths> {
        let manifest = std::env::var_os("CARGO_MANIFEST_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")));
        let root = manifest
            .parent()
            .context("the bench crate has no parent directory (workspace root)")?
            .to_path_buf();
        let bins = procs::bin_dir()?;
        let profile = match bins.file_name().and_then(|n| n.to_str()) {
            Some("debug") => "dev".to_string(),
            Some(name) => name.to_string(),
            None => bail!("cannot tell the profile of {}", bins.display()),
        };
        let logs = bins
            .parent()
            .map_or_else(|| bins.clone(), Path::to_path_buf)
            .join("bench-logs");
        Ok(Paths {
            root,
            bins,
            logs,
            profile,
        })
    }

    pub fn binary(&self, name: &str) -> PathBuf {
        self.bins.join(name)
    }

    /// Builds the four binaries with the bench's own profile when asked or when one is
    /// missing.
    pub fn ensure_binaries(&self, force: bool) -> anyhow::Result<()> {
        let missing: Vec<&str> = BINARIES
            .into_iter()
            .filter(|b| !self.binary(b).is_file())
            .collect();
        if !force && missing.is_empty() {
            return Ok(());
        }
        if !missing.is_empty() {
            eprintln!("bench: missing binaries {missing:?}: building them");
        }
        let mut args = vec!["build", "--profile", &self.profile, "--bins"];
        for package in BINARIES {
            args.extend(["-p", package]);
        }
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let status = Command::new(cargo)
            .args(&args)
            .current_dir(&self.root)
            .status()
            .context("running cargo build")?;
        if !status.success() {
            bail!("cargo {} failed ({status})", args.join(" "));
        }
        match BINARIES.into_iter().find(|b| !self.binary(b).is_file()) {
            Some(b) => bail!("{} is missing after the build", self.binary(b).display()),
            None => Ok(()),
        }
    }
}

/// The flags every binary gets.
pub fn common_flags(args: &Args, namespace: &str) -> Vec<String> {
    vec![
        "--namespace".into(),
        namespace.into(),
        "--queue-type".into(),
        args.queue_type.clone(),
    ]
}

/// One started worker process.
pub struct Worker {
    pub name: String,
    pub stage: Stage,
    pub process: procs::Worker,
    pub log: PathBuf,
}

/// Starts every worker of the run; each one's output goes to its own log.
pub fn spawn_workers(args: &Args, paths: &Paths, namespace: &str) -> anyhow::Result<Vec<Worker>> {
    let stages = [
        (
            "fetcher-worker",
            Stage::Fetch,
            args.fetchers,
            &args.fetcher_args,
        ),
        (
            "processor-worker",
            Stage::Process,
            args.processors,
            &args.processor_args,
        ),
        (
            "aggregator",
            Stage::Results,
            args.aggregators,
            &args.aggregator_args,
        ),
    ];
    let mut workers = Vec::new();
    for (binary, stage, count, extra) in stages {
        let mut flags = common_flags(args, namespace);
        if stage == Stage::Fetch {
            flags.push("--allow-private".into());
        }
        flags.extend(extra.iter().cloned());
        for i in 1..=count {
            let name = format!("{binary}-{i}");
            let log = paths.logs.join(format!("{namespace}-{name}.log"));
            let output = Output::Log(log.clone());
            let process = procs::Worker::start_with(&paths.bins, binary, flags.clone(), output)?;
            workers.push(Worker {
                name,
                stage,
                process,
                log,
            });
        }
    }
    Ok(workers)
}

/// The last error line of a log (or its last lines), for error messages.
pub fn log_tail(path: &Path) -> String {
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
pub async fn wait_for_workers(namespace: &str, workers: &mut [Worker]) -> anyhow::Result<()> {
    let args = ConnectionArgs::local(namespace);
    let names = Names::new(namespace);
    let conn = tributary::broker::amqp::connect_any(&args.amqp_url, "bench").await?;
    let deadline = Instant::now() + START_LIMIT;
    let outcome = async {
        loop {
            check_alive(workers)?;
            if all_consuming(&conn, &names, workers).await? {
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

/// An error naming the first worker that has already exited.
fn check_alive(workers: &mut [Worker]) -> anyhow::Result<()> {
    for w in workers {
        if let Some(status) = w.process.try_wait()? {
            bail!(
                "{} exited at start ({status}): {}",
                w.name,
                log_tail(&w.log)
            );
        }
    }
    Ok(())
}

/// Whether every stage queue has at least as many consumers as workers of its stage.
async fn all_consuming(
    conn: &lapin::Connection,
    names: &Names,
    workers: &[Worker],
) -> anyhow::Result<bool> {
    for stage in Stage::ALL {
        let want = workers.iter().filter(|w| w.stage == stage).count() as u32;
        let channel = conn.create_channel().await?;
        let passive = QueueDeclareOptions {
            passive: true,
            ..Default::default()
        };
        let queue = channel
            .queue_declare(
                names.queue(stage).as_str().into(),
                passive,
                FieldTable::default(),
            )
            .await;
        // An error is a 404 (not declared yet): the broker has closed the channel.
        let Ok(queue) = queue else { return Ok(false) };
        let _ = channel.close(200, "ok".into()).await;
        if queue.consumer_count() < want {
            return Ok(false);
        }
    }
    Ok(true)
}

/// SIGTERM to every worker, then waits for each to exit; returns the problems.
pub fn stop_workers(workers: Vec<Worker>) -> Vec<String> {
    let mut problems = Vec::new();
    for w in &workers {
        if let Err(e) = w.process.signal_term() {
            problems.push(format!("could not send SIGTERM to {}: {e}", w.name));
        }
    }
    let deadline = Instant::now() + STOP_LIMIT;
    for mut w in workers {
        match w.process.wait_exit(deadline) {
            Ok(status) if status.success() => {}
            Ok(status) => problems.push(format!(
                "{} exited with {status} after SIGTERM: {}",
                w.name,
                log_tail(&w.log)
            )),
            Err(e) => problems.push(format!("{}: {e:#}", w.name)),
        }
    }
    problems
}

/// WARN and ERROR lines of a worker log: the counts and up to 3 distinct samples.
#[derive(Debug, Default, Clone)]
pub struct LogProblems {
    pub warns: u64,
    pub errors: u64,
    pub samples: Vec<String>,
}

/// Counts WARN and ERROR lines of a log and keeps up to 3 distinct messages.
pub fn log_problems(path: &Path) -> LogProblems {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut found = LogProblems::default();
    for line in text.lines() {
        let is_error = line.contains(" ERROR ") || line.starts_with("error");
        let is_warn = line.contains(" WARN ");
        if is_error {
            found.errors += 1;
        } else if is_warn {
            found.warns += 1;
        }
        if (is_error || is_warn) && found.samples.len() < 3 {
            // Without the timestamp, so equal messages count once.
            let msg = line.split_once(' ').map_or(line, |(_, rest)| rest).trim();
            let msg: String = msg.chars().take(200).collect();
            if !found.samples.contains(&msg) {
                found.samples.push(msg);
            }
        }
    }
    found
}
