//! `producer enqueue`: validate the whole input, count it into the job's total, then stream
//! it to the broker in NDJSON batches with a window of publisher confirms in flight.

use std::collections::VecDeque;
use std::time::Instant;

use anyhow::Context as _;
use lapin::Channel;
use lapin::types::FieldTable;
use serde::Serialize;
use tributary::amqp::{self, HeadersExt, PublisherConfirm, header};
use tributary::cli::UsageError;
use tributary::message::{CONTENT_TYPE_TASKS, Task, encode_tasks, now_ms};
use tributary::names::Stage;
use tributary::store::Store;
use uuid::Uuid;

use crate::config::EnqueueArgs;
use crate::input::{MAX_REPORTED, Source, parse_line, scan};

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
    if found.invalid_count > 0 && !args.skip_invalid {
        anyhow::bail!(
            "{} invalid line(s) in {}; nothing was enqueued (use --skip-invalid to enqueue the rest)",
            found.invalid_count,
            source.describe()
        );
    }
    if found.valid == 0 {
        anyhow::bail!(
            "no URLs or tasks in {}; nothing was enqueued",
            source.describe()
        );
    }

    store
        .add_to_total(job, found.valid)
        .await
        .context("cannot record the job's total")?;

    let started = Instant::now();
    let progress = crate::progress::enqueue_bar(found.valid);
    let mut window = ConfirmWindow {
        pending: VecDeque::new(),
        window: args.confirm_window,
    };
    let mut batch: Vec<Task> = Vec::with_capacity(args.batch_size.max(1));
    let mut published = 0u64;
    let batch_size = args.batch_size.max(1);
    // Reading a local file blocks briefly between publishes; for a CLI that is fine and
    // keeps memory flat: one batch of tasks exists at a time.
    for (i, line) in source.lines()?.enumerate() {
        let line =
            line.with_context(|| format!("reading line {} of {}", i + 1, source.describe()))?;
        let Ok(Some(task)) = parse_line(&line, job) else {
            continue;
        };
        batch.push(task);
        if batch.len() >= batch_size {
            publish_batch(channel, exchange, &mut batch, &mut window).await?;
            published += batch_size as u64;
            progress.set_position(published);
        }
    }
    let rest = batch.len() as u64;
    publish_batch(channel, exchange, &mut batch, &mut window).await?;
    window.finish().await?;
    published += rest;
    progress.finish_and_clear();
    tracing::debug!(
        tasks = published,
        secs = started.elapsed().as_secs_f64(),
        "enqueued"
    );
    Ok(Enqueued {
        job_id: job,
        enqueued: published,
    })
}

async fn publish_batch(
    channel: &Channel,
    exchange: &str,
    batch: &mut Vec<Task>,
    window: &mut ConfirmWindow,
) -> anyhow::Result<()> {
    if batch.is_empty() {
        return Ok(());
    }
    let body = encode_tasks(batch.iter());
    let mut headers = FieldTable::default();
    headers.set_u64(header::ENQUEUED_MS, now_ms());
    let props = amqp::persistent(CONTENT_TYPE_TASKS).with_headers(headers);
    let confirm = amqp::publish(channel, exchange, Stage::Fetch.as_str(), &body, props).await?;
    window.push(confirm).await?;
    batch.clear();
    Ok(())
}
