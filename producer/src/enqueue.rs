//! `producer enqueue`: validate the whole input, record it in its job, then publish it
//! exactly once ([`crate::publish`]): re-running the same command with `--job-id` after an
//! interruption skips what was confirmed and finishes the job without counting anything
//! twice.
//!
//! [`scan`](crate::input::scan), [`check`], [`begin`](crate::publish::begin) and
//! [`publish`](crate::publish::publish) are the steps; the CLI ([`enqueue`]) and the HTTP
//! API (`POST /v1/jobs`) both run them on a [`Source`].

use serde::Serialize;
use tributary::runtime::cli::UsageError;
use uuid::Uuid;

use crate::config::EnqueueArgs;
use crate::input::{MAX_REPORTED, Scan, Source, scan};
pub use crate::publish::Target;
use crate::publish::{self, Published};

/// What `enqueue` prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Enqueued {
    pub job_id: Uuid,
    /// Tasks published by this run.
    pub enqueued: u64,
    /// Tasks an earlier run of the same input had confirmed (resumed runs only).
    #[serde(skip_serializing_if = "is_zero")]
    pub already_enqueued: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// Why a scanned input may not be published.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejected {
    /// This many lines are invalid (and they are not to be skipped).
    Invalid(u64),
    /// No line is a URL or task.
    Empty,
}

/// Whether a scanned input may be published: not with invalid lines (unless they are to be
/// skipped), and not without any task.
pub fn check(found: &Scan, skip_invalid: bool) -> Result<(), Rejected> {
    if found.invalid_count > 0 && !skip_invalid {
        return Err(Rejected::Invalid(found.invalid_count));
    }
    if found.valid == 0 {
        return Err(Rejected::Empty);
    }
    Ok(())
}

/// Validates, records and publishes; returns what was enqueued.
pub async fn enqueue(args: &EnqueueArgs, target: Target<'_>) -> anyhow::Result<Enqueued> {
    let source = Source::open(args.file.as_deref(), &args.urls)?.ok_or_else(|| {
        UsageError("nothing to enqueue: give URLs, --file PATH, or - for stdin".into())
    })?;
    let job = args.job_id.unwrap_or_else(Uuid::new_v4);
    let found = scan(&source, job)?;
    report_invalid(&source, &found, args.skip_invalid);
    match check(&found, args.skip_invalid) {
        Err(Rejected::Invalid(count)) => anyhow::bail!(
            "{count} invalid line(s) in {}; nothing was enqueued (use --skip-invalid to enqueue the rest)",
            source.describe()
        ),
        Err(Rejected::Empty) => anyhow::bail!(
            "no URLs or tasks in {}; nothing was enqueued",
            source.describe()
        ),
        Ok(()) => {}
    }
    let resume = publish::begin(target.store, job, &source, &found).await?;
    let from = resume.checkpoint.confirmed;
    if resume.checkpoint.sealed {
        eprintln!(
            "job {job} already holds all of {}: nothing to publish",
            source.describe()
        );
    } else if from > 0 {
        eprintln!(
            "resuming job {job}: skipping lines 1-{from} of {}, confirmed by an earlier run",
            source.describe()
        );
    }
    let hint = format!("run the same command with --job-id {job} to finish it");
    let progress = crate::progress::enqueue_bar(found.valid);
    let Published { published, skipped } =
        publish::publish(&source, &resume, &args.publish, target, &progress, &hint).await?;
    progress.finish_and_clear();
    if skipped > 0 {
        eprintln!("skipped {skipped} tasks already enqueued, published {published}");
    }
    Ok(Enqueued {
        job_id: job,
        enqueued: published,
        already_enqueued: skipped,
    })
}

fn report_invalid(source: &Source, found: &Scan, skip_invalid: bool) {
    let level = if skip_invalid { "warning" } else { "error" };
    for (line, reason) in &found.invalid {
        eprintln!("{level}: {} line {line}: {reason}", source.describe());
    }
    if found.invalid_count > found.invalid.len() as u64 {
        eprintln!(
            "... and {} more invalid lines",
            found.invalid_count - MAX_REPORTED as u64
        );
    }
}
