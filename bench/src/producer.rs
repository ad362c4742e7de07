//! The producer as a timed child process: the URL file it reads, its command line, the
//! watch on its memory and CPU, and the check of what it printed.

use std::io::{BufWriter, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use serde_json::Value;
use uuid::Uuid;

use crate::procfs::children_ticks;
use crate::run::Ctx;
use crate::sampler::{CloseWatch, watch_closely};
use crate::workers::{common_flags, log_tail};

/// Writes the URL file: `BASE/quotes/{i}.json`, one per line.
pub fn url_file(base: &str, urls: u64) -> anyhow::Result<tempfile::NamedTempFile> {
    let file = tempfile::Builder::new()
        .prefix("bench-urls-")
        .suffix(".txt")
        .tempfile()
        .context("creating the URL file")?;
    let mut w = BufWriter::new(file.as_file());
    for i in 0..urls {
        writeln!(w, "{base}/quotes/{i}.json")?;
    }
    w.flush()?;
    drop(w);
    Ok(file)
}

/// The producer's output and how long it ran.
pub type Finished = (std::io::Result<std::process::Output>, Duration);

/// A producer child process being timed.
pub struct Spawned {
    pub job: Uuid,
    pub pid: u32,
    pub started: Instant,
    /// The bench's children CPU ticks before the producer ran.
    pub children_before: u64,
    pub watch: CloseWatch,
    /// Resolves when the producer has exited.
    pub wait: tokio::task::JoinHandle<Finished>,
}

/// The producer's log file in this run.
pub fn producer_log(ctx: &Ctx<'_>) -> PathBuf {
    ctx.paths
        .logs
        .join(format!("{}-producer.log", ctx.namespace))
}

/// Starts `producer enqueue` of `file` as a new job and starts timing and watching it.
pub fn spawn_producer(ctx: &Ctx<'_>, file: &Path) -> anyhow::Result<Spawned> {
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
    let log = producer_log(ctx);
    let err = std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
    let mut cmd = Command::new(ctx.paths.binary("producer"));
    cmd.args(common_flags(ctx.args, ctx.namespace))
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

/// The producer's output once it exited 0; an error with its log's last line otherwise.
pub fn succeeded(
    ctx: &Ctx<'_>,
    finished: Finished,
) -> anyhow::Result<(std::process::Output, Duration)> {
    let (out, elapsed) = finished;
    let out = out.context("waiting for the producer")?;
    if !out.status.success() {
        bail!(
            "the producer exited with {}: {}",
            out.status,
            log_tail(&producer_log(ctx))
        );
    }
    Ok((out, elapsed))
}

/// The producer's stdout `{"job_id", "enqueued"}`, checked against what was asked.
pub fn parse_enqueued(stdout: &[u8], job: Uuid, urls: u64) -> anyhow::Result<u64> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_producer_output_must_name_the_job_and_count() {
        let job = Uuid::new_v4();
        let line = format!("log line\n{{\"job_id\":\"{job}\",\"enqueued\":3}}\n");
        assert_eq!(parse_enqueued(line.as_bytes(), job, 3).unwrap(), 3);
        assert!(parse_enqueued(line.as_bytes(), job, 4).is_err());
        assert!(parse_enqueued(line.as_bytes(), Uuid::new_v4(), 3).is_err());
        assert!(parse_enqueued(b"not json", job, 3).is_err());
    }
}
