//! Where a fetcher's outcomes go, each made durable before its delivery is acked: payloads
//! to `process` in batches (confirmed, then marked fetched), failures to a delay queue or
//! the dead-letter queue as [`RetryPolicy::decide`] says, tasks put aside for their host to
//! a delay queue (marked deferred, not an attempt).
//!
//! Each method returns a [`Disposal`]: a future that resolves to the delivery tags it
//! settles, one per task.

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use lapin::{BasicProperties, Channel};
use tokio::time::Instant;
use tributary::broker::amqp::{self, HeadersExt, header, headers_of};
use tributary::broker::deadletter::{DeadLetter, bury, stage_properties};
use tributary::message::{CONTENT_TYPE_PAYLOADS, CONTENT_TYPE_TASK, Payload, encode_payloads};
use tributary::names::{Names, Stage};
use tributary::policy::{Disposition, ErrorClass, RetryPolicy};
use tributary::runtime::metrics::metrics;
use tributary::store::{Mark, Store};

use crate::fetch::{FailedTask, Held};
use crate::politeness::limiter::Turn;

/// A durable outcome in the making; resolves to the delivery tags it settles, one per task.
pub type Disposal = BoxFuture<'static, anyhow::Result<Vec<u64>>>;

/// Payloads waiting to be sent as one `process` message.
#[derive(Default)]
pub struct Batch {
    pub payloads: Vec<Payload>,
    pub tags: Vec<u64>,
    pub bytes: usize,
    pub deadline: Option<Instant>,
}

impl Batch {
    /// Adds a payload; starts the linger clock with the first one.
    pub fn push(&mut self, tag: u64, payload: Payload, linger: Duration) {
        self.bytes += payload.body.len();
        self.payloads.push(payload);
        self.tags.push(tag);
        self.deadline.get_or_insert_with(|| Instant::now() + linger);
    }
}

/// The broker (confirmed) and then Redis.
pub struct Sink {
    pub names: Names,
    pub policy: Arc<RetryPolicy>,
    pub publisher: Channel,
    pub store: Store,
}

impl Sink {
    /// Publishes a batch of payloads as one `process` message, then marks them fetched.
    pub fn flush(&self, batch: Batch) -> Disposal {
        let publisher = self.publisher.clone();
        let store = self.store.clone();
        let exchange = self.names.exchange().to_string();
        Box::pin(async move {
            if batch.payloads.is_empty() {
                return Ok(Vec::new());
            }
            let body = encode_payloads(&batch.payloads);
            amqp::publish_confirmed(
                &publisher,
                &exchange,
                Stage::Process.as_str(),
                &body,
                amqp::persistent(CONTENT_TYPE_PAYLOADS),
            )
            .await?;
            let tasks = batch
                .payloads
                .iter()
                .map(|p| (p.header.job_id, p.header.task_id));
            store.mark_many(Mark::Fetched, tasks).await?;
            metrics().succeeded(Stage::Fetch, batch.tags.len() as u64);
            Ok(batch.tags)
        })
    }

    /// Retries or dead-letters one failed task, as [`RetryPolicy::decide`] says.
    pub fn dispose(&self, tag: u64, failed: FailedTask) -> Disposal {
        let FailedTask { held, failure } = failed;
        match self.policy.decide(&failure, held.attempt) {
            Disposition::Retry { step, ttl } => {
                let class = failure.class;
                let (routing_key, properties) = retry_route(step, ttl, held.attempt + 1, &held);
                self.send(
                    tag,
                    held,
                    routing_key,
                    properties,
                    Mark::Retrying,
                    move || metrics().retried(Stage::Fetch, class),
                )
            }
            Disposition::Dead => {
                if failure.class != ErrorClass::HttpStatus || failure.http_status != Some(404) {
                    tracing::info!(task_id = ?held.task.task_id, job_id = ?held.task.job_id, traceparent = ?held.task.traceparent, class = %failure.class, attempts = held.attempt, "dead-lettered: {}", failure.reason);
                }
                let letter = DeadLetter {
                    body: held.body,
                    content_type: CONTENT_TYPE_TASK.to_string(),
                    failure,
                    attempts: held.attempt,
                    task: held.task,
                };
                let (publisher, store) = (self.publisher.clone(), self.store.clone());
                Box::pin(async move {
                    bury(&publisher, &store, Stage::Fetch, &[letter]).await?;
                    Ok(vec![tag])
                })
            }
        }
    }

    /// Puts a task aside for `wait` because its host is at its rate limit, paused or at
    /// its concurrency cap: the same delay queues as retries, but the attempt number stays
    /// as it is. It carries its `turn` in the host's queue, if the limiter gave it one.
    pub fn defer(&self, tag: u64, held: Held, wait: Duration, turn: Option<Turn>) -> Disposal {
        let Some(Disposition::Retry { step, ttl }) = self.policy.wait_for(wait) else {
            return Box::pin(async { anyhow::bail!("no --retry-delays step to defer a task to") });
        };
        tracing::debug!(task_id = ?held.task.task_id, ?wait, "host busy: task deferred");
        let (routing_key, properties) = retry_route(step, ttl, held.attempt, &held);
        let mut headers = headers_of(&properties);
        headers.set_u64(header::DEFERRALS, u64::from(held.deferrals) + 1);
        if let Some(Turn(turn)) = turn {
            headers.set_u64(header::HOST_TURN, turn);
        }
        let properties = properties.with_headers(headers);
        self.send(tag, held, routing_key, properties, Mark::Deferred, || {})
    }

    /// Publishes a held task (confirmed), marks it in Redis, then runs `done`.
    fn send(
        &self,
        tag: u64,
        held: Held,
        routing_key: String,
        properties: BasicProperties,
        mark: Mark,
        done: impl FnOnce() + Send + 'static,
    ) -> Disposal {
        let publisher = self.publisher.clone();
        let store = self.store.clone();
        let exchange = self.names.exchange().to_string();
        Box::pin(async move {
            amqp::publish_confirmed(&publisher, &exchange, &routing_key, &held.body, properties)
                .await?;
            if let (Some(job), Some(task)) = (held.task.job_id, held.task.task_id) {
                store.mark(job, mark, &[task]).await?;
            }
            done();
            Ok(vec![tag])
        })
    }
}

/// Where a task waiting in the `step` delay queue for `ttl` goes, arriving as `attempts`.
fn retry_route(
    step: Duration,
    ttl: Duration,
    attempts: u32,
    held: &Held,
) -> (String, BasicProperties) {
    (
        Names::retry_routing_key(Stage::Fetch, step),
        stage_properties(CONTENT_TYPE_TASK, attempts, Some(ttl), &held.task),
    )
}
