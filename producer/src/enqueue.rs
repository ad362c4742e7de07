//! `producer enqueue`: validate the whole input, count it into the job's total, then stream
//! it to the broker in NDJSON batches with a window of publisher confirms in flight.
//!
//! [`scan`](crate::input::scan), [`check`] and [`publish`] are the steps; the CLI
//! ([`enqueue`]) and the HTTP API (`POST /v1/jobs`) both run them on a [`Source`].

use std::collections::VecDeque;
use std::time::Instant;

use anyhow::Context as _;
use indicatif::ProgressBar;
use lapin::Channel;
use lapin::types::FieldTable;
use serde::Serialize;
use tributary::broker::amqp::{self, HeadersExt, PublisherConfirm, header};
use tributary::message::{CONTENT_TYPE_TASKS, Task, encode_tasks, now_ms};
use tributary::names::Stage;
use tributary::runtime::cli::UsageError;
use tributary::store::Store;
use uuid::Uuid;

use crate::config::{EnqueueArgs, PublishArgs};
use crate::input::{MAX_REPORTED, Scan, Source, scan};

/// What `enqueue` prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Enqueued {
    pub job_id: Uuid,
    pub enqueued: u64,
}

/// Confirms awaited in order, at most `window` at a time.
struct ConfirmWindow {
    pending: VecDeque<PublisherConfirm>,
    window: usize,
}

impl ConfirmWindow {
    async fn push(&mut self, confirm: PublisherConfirm) -> anyhow::Result<()> {
        self.pending.push_back(confirm);
        while self.pending.len() > self.window.max(1) {
            self.pop().await?;
        }
        Ok(())
    }

    async fn pop(&mut self) -> anyhow::Result<()> {
        if let Some(confirm) = self.pending.pop_front() {
            amqp::confirmed(confirm, Stage::Fetch.as_str()).await?;
        }
        Ok(())
    }

    async fn finish(&mut self) -> anyhow::Result<()> {
        while !self.pending.is_empty() {
            self.pop().await?;
        }
        Ok(())
    }
}

/// Where tasks are published: the namespace exchange on a confirm channel, and the store
/// that counts the job's total.
#[derive(Debug, Clone, Copy)]
pub struct Target<'a> {
    pub channel: &'a Channel,
    pub exchange: &'a str,
    pub store: &'a Store,
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

/// Validates and publishes; returns what was enqueued.
pub async fn enqueue(
    args: &EnqueueArgs,
    channel: &Channel,
    exchange: &str,
    store: &Store,
) -> anyhow::Result<Enqueued> {
    let source = Source::open(args.file.as_deref(), &args.urls)?.ok_or_else(|| {
        UsageError("nothing to enqueue: give URLs, --file PATH, or - for stdin".into())
    })?;
    let job = args.job_id.unwrap_or_else(Uuid::new_v4);
    let found = scan(&source, job)?;
    for (line, reason) in &found.invalid {
        let level = if args.skip_invalid {
            "warning"
        } else {
            "error"
        };
        eprintln!("{level}: {} line {line}: {reason}", source.describe());
    }
    if found.invalid_count > found.invalid.len() as u64 {
        eprintln!(
            "... and {} more invalid lines",
            found.invalid_count - MAX_REPORTED as u64
        );
    }
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
    let target = Target {
        channel,
        exchange,
        store,
    };
    let progress = crate::progress::enqueue_bar(found.valid);
    let enqueued = publish(&source, job, found.valid, &args.publish, target, &progress).await?;
    progress.finish_and_clear();
    Ok(Enqueued {
        job_id: job,
        enqueued,
    })
}

/// Adds `valid` (what [`scan`] counted) to the job's total, then publishes every valid task
/// of `source` in NDJSON batches, a window of confirms in flight; returns how many it
/// published. Invalid lines are skipped: check the scan first.
pub async fn publish(
    source: &Source,
    job: Uuid,
    valid: u64,
    args: &PublishArgs,
    target: Target<'_>,
    progress: &ProgressBar,
) -> anyhow::Result<u64> {
    target
        .store
        .add_to_total(job, valid)
        .await
        .context("cannot record the job's total")?;
    tributary::store::jobs::register(target.store, job).await?;
    let started = Instant::now();
    let mut published = 0u64;
    publish_all(source, job, args, target, progress, &mut published)
        .await
        .with_context(|| {
            format!("published {published} of {valid} tasks of job {job}, whose total counts all {valid}")
        })?;
    tracing::debug!(
        tasks = published,
        secs = started.elapsed().as_secs_f64(),
        "enqueued"
    );
    Ok(published)
}

async fn publish_all(
    source: &Source,
    job: Uuid,
    args: &PublishArgs,
    target: Target<'_>,
    progress: &ProgressBar,
    published: &mut u64,
) -> anyhow::Result<()> {
    let mut window = ConfirmWindow {
        pending: VecDeque::new(),
        window: args.confirm_window,
    };
    let batch_size = args.batch_size.max(1);
    let mut batch: Vec<Task> = Vec::with_capacity(batch_size);
    let Target {
        channel, exchange, ..
    } = target;
    let trace = tributary::runtime::trace::TraceParent::root();
    tracing::debug!(%job, trace_id = %trace.trace_id_hex(), "publishing tasks");
    // Reading a local file blocks briefly between publishes; the file was just written or
    // is the user's, so that is fine, and it keeps memory flat: one batch of tasks at a time.
    for (i, line) in source.lines()?.enumerate() {
        let line =
            line.with_context(|| format!("reading line {} of {}", i + 1, source.describe()))?;
        let Ok(Some(task)) = source.parse(&line, job) else {
            continue;
        };
        batch.push(task);
        if batch.len() >= batch_size {
            publish_batch(channel, exchange, &trace, &mut batch, &mut window).await?;
            *published += batch_size as u64;
            progress.set_position(*published);
        }
    }
    let rest = batch.len() as u64;
    publish_batch(channel, exchange, &trace, &mut batch, &mut window).await?;
    window.finish().await?;
    *published += rest;
    Ok(())
}

async fn publish_batch(
    channel: &Channel,
    exchange: &str,
    trace: &tributary::runtime::trace::TraceParent,
    batch: &mut Vec<Task>,
    window: &mut ConfirmWindow,
) -> anyhow::Result<()> {
    if batch.is_empty() {
        return Ok(());
    }
    let body = encode_tasks(batch.iter());
    let mut headers = FieldTable::default();
    headers.set_u64(header::ENQUEUED_MS, now_ms());
    headers.set_str(header::TRACEPARENT, &trace.child().to_string());
    let props = amqp::persistent(CONTENT_TYPE_TASKS).with_headers(headers);
    let confirm = amqp::publish(channel, exchange, Stage::Fetch.as_str(), &body, props).await?;
    window.push(confirm).await?;
    batch.clear();
    Ok(())
}
