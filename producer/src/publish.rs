//! Publishing one input exactly once: each NDJSON message's tasks are registered in the job
//! (idempotent; the total counts distinct tasks) before the message is published, confirms
//! are awaited in a window, and the input's checkpoint (the first line not yet confirmed)
//! rides on the next registration. The last call seals the input. Up to
//! [`REGISTER_AHEAD`] registrations are in flight at once (Redis runs them in order); a
//! message is published only once its own registration has returned. A run that starts from a
//! checkpoint skips the confirmed lines and republishes at most the unconfirmed window,
//! whose tasks keep their ids (see [`crate::identity`]) and are not counted again.

use std::collections::VecDeque;

use futures::StreamExt as _;
use futures::future::BoxFuture;
use futures::stream::FuturesOrdered;

use anyhow::Context as _;
use indicatif::ProgressBar;
use lapin::Channel;
use lapin::types::FieldTable;
use tributary::broker::amqp::{self, HeadersExt, PublisherConfirm, header};
use tributary::message::{CONTENT_TYPE_TASKS, Task, encode_tasks, now_ms};
use tributary::names::Stage;
use tributary::runtime::trace::TraceParent;
use tributary::store::{Checkpoint, InputRef, Registration, Store, StoreError};
use uuid::Uuid;

use crate::config::PublishArgs;
use crate::identity;
use crate::input::{Scan, Source};

/// Where tasks are published: the namespace exchange on a confirm channel, and the store
/// that registers them in their job.
#[derive(Debug, Clone, Copy)]
pub struct Target<'a> {
    pub channel: &'a Channel,
    pub exchange: &'a str,
    pub store: &'a Store,
}

/// An input recorded in its job, and where publishing it starts.
#[derive(Debug, Clone)]
pub struct Resume {
    pub at: InputRef,
    pub checkpoint: Checkpoint,
}

/// The input's first lines disagree with those recorded for the same input of the job.
#[derive(Debug, thiserror::Error)]
#[error(
    "the first lines of {source_name} differ from those of the input of job {job} that starts with the same line; resume with the same input, or use another --job-id"
)]
pub struct InputMismatch {
    pub job: Uuid,
    pub source_name: String,
}

/// Records the scanned input in `job` (or finds it there, for a resumed run); refuses an
/// input whose fingerprint disagrees with the recorded one.
pub async fn begin(
    store: &Store,
    job: Uuid,
    source: &Source,
    found: &Scan,
) -> anyhow::Result<Resume> {
    let identity = found
        .identity
        .as_ref()
        .context("the input has no URL or task")?;
    let at = InputRef {
        job,
        input: identity.id,
    };
    let checkpoint = store
        .begin_input(at, &identity.fingerprint)
        .await
        .context("cannot record the input in its job")?;
    tributary::store::jobs::register(store, job).await?;
    if checkpoint.fingerprint != identity.fingerprint {
        return Err(InputMismatch {
            job,
            source_name: source.describe(),
        }
        .into());
    }
    Ok(Resume { at, checkpoint })
}

/// What one run published.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Published {
    /// Tasks published by this run.
    pub published: u64,
    /// Tasks skipped: confirmed by an earlier run.
    pub skipped: u64,
}

/// Publishes every valid task of `source` from the checkpoint of `resume` on, then seals
/// the input. An interruption says how many tasks went out, then `resume_hint`.
pub async fn publish(
    source: &Source,
    resume: &Resume,
    args: &PublishArgs,
    target: Target<'_>,
    progress: &ProgressBar,
    resume_hint: &str,
) -> anyhow::Result<Published> {
    let mut run = Run::new(resume, args, target);
    let result = run.all(source, progress).await;
    let Published { published, skipped } = run.done;
    let job = resume.at.job;
    result.with_context(|| {
        format!(
            "enqueue of job {job} interrupted after {} tasks were confirmed ({published} published, {skipped} skipped); {resume_hint}",
            run.confirmed_tasks + skipped,
        )
    })?;
    Ok(run.done)
}

/// Registrations in flight before the oldest one's message must be published.
pub const REGISTER_AHEAD: usize = 8;

/// A message awaiting its confirm: the confirm, its tasks, and the line after its last.
type Pending = (PublisherConfirm, u64, u64);

/// A message whose tasks are being registered: its body, tasks, the line after its last.
type Registering = BoxFuture<'static, (Result<u64, StoreError>, Vec<u8>, u64, u64)>;

/// The state of one publishing run.
struct Run<'a> {
    target: Target<'a>,
    at: InputRef,
    from: u64,
    batch_size: usize,
    window: usize,
    pending: VecDeque<Pending>,
    registering: FuturesOrdered<Registering>,
    /// Every line before this one is confirmed.
    confirmed: u64,
    confirmed_tasks: u64,
    batch: Vec<Task>,
    registration: Registration,
    trace: TraceParent,
    done: Published,
}

impl<'a> Run<'a> {
    fn new(resume: &Resume, args: &PublishArgs, target: Target<'a>) -> Self {
        let batch_size = args.batch_size.max(1);
        Run {
            target,
            at: resume.at,
            from: resume.checkpoint.confirmed,
            batch_size,
            window: args.confirm_window.max(1),
            pending: VecDeque::new(),
            registering: FuturesOrdered::new(),
            confirmed: resume.checkpoint.confirmed,
            confirmed_tasks: 0,
            batch: Vec::with_capacity(batch_size),
            registration: Registration::default(),
            trace: TraceParent::root(),
            done: Published::default(),
        }
    }

    async fn all(&mut self, source: &Source, progress: &ProgressBar) -> anyhow::Result<()> {
        let job = self.at.job;
        tracing::debug!(%job, trace_id = %self.trace.trace_id_hex(), "publishing tasks");
        let mut lines = 0u64;
        // Reading a local file blocks briefly between publishes; the file was just written
        // or is the user's, so that is fine, and memory stays flat: one batch at a time.
        for (i, line) in source.lines()?.enumerate() {
            let line =
                line.with_context(|| format!("reading line {} of {}", i + 1, source.describe()))?;
            let position = i as u64;
            lines = position + 1;
            if position < self.from {
                if let Ok(Some(_)) = source.parse(&line, job, Uuid::nil()) {
                    self.done.skipped += 1;
                }
                continue;
            }
            let id = identity::task_id(job, self.at.input, position);
            let Ok(Some(task)) = source.parse(&line, job, id) else {
                continue;
            };
            match task.task_id == id {
                true => self.registration.positions.push(position),
                false => self.registration.explicit.push(task.task_id),
            }
            self.batch.push(task);
            if self.batch.len() >= self.batch_size {
                self.flush(lines).await?;
                progress.set_position(self.done.published + self.done.skipped);
            }
        }
        self.flush(lines).await?;
        while !self.registering.is_empty() {
            self.publish_next().await?;
        }
        while !self.pending.is_empty() {
            self.confirm_one().await?;
        }
        self.target
            .store
            .register(
                self.at,
                &Registration::default(),
                lines.max(self.from),
                true,
            )
            .await
            .context("cannot seal the input")?;
        Ok(())
    }

    /// Starts registering the batch, which ends before line `end`; publishes the oldest
    /// registered message when [`REGISTER_AHEAD`] are in flight.
    async fn flush(&mut self, end: u64) -> anyhow::Result<()> {
        if self.batch.is_empty() {
            return Ok(());
        }
        let body = encode_tasks(self.batch.iter());
        let tasks = self.batch.len() as u64;
        let registration = std::mem::take(&mut self.registration);
        let (store, at, confirmed) = (self.target.store.clone(), self.at, self.confirmed);
        self.registering.push_back(Box::pin(async move {
            let new = store.register(at, &registration, confirmed, false).await;
            (new, body, tasks, end)
        }));
        self.batch.clear();
        while self.registering.len() >= REGISTER_AHEAD {
            self.publish_next().await?;
        }
        Ok(())
    }

    /// Waits for the oldest registration, then publishes its message.
    async fn publish_next(&mut self) -> anyhow::Result<()> {
        let Some((registered, body, tasks, end)) = self.registering.next().await else {
            return Ok(());
        };
        registered.context("cannot register tasks in the job")?;
        let mut headers = FieldTable::default();
        headers.set_u64(header::ENQUEUED_MS, now_ms());
        headers.set_str(header::TRACEPARENT, &self.trace.child().to_string());
        let props = amqp::persistent(CONTENT_TYPE_TASKS).with_headers(headers);
        let Target {
            channel, exchange, ..
        } = self.target;
        let confirm = amqp::publish(channel, exchange, Stage::Fetch.as_str(), &body, props).await?;
        self.pending.push_back((confirm, tasks, end));
        self.done.published += tasks;
        while self.pending.len() > self.window {
            self.confirm_one().await?;
        }
        Ok(())
    }

    async fn confirm_one(&mut self) -> anyhow::Result<()> {
        if let Some((confirm, tasks, end)) = self.pending.pop_front() {
            amqp::confirmed(confirm, Stage::Fetch.as_str()).await?;
            self.confirmed = end;
            self.confirmed_tasks += tasks;
        }
        Ok(())
    }
}
