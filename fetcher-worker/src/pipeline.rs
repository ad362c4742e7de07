//! One fetcher session: consume task messages, download with bounded concurrency, batch
//! the payloads into `process` messages, dispose of failures (retry or dead-letter), and
//! ack each delivery once every task in it has a durable outcome.
//!
//! Outcomes become durable in a [`Disposal`]: a confirmed publish followed by the Redis
//! state change. Only when a disposal resolves are its deliveries' task counts decremented;
//! a delivery is acked when its count reaches zero.

use std::collections::HashMap;
use std::sync::Arc;

use anyhow::Context as _;
use futures::StreamExt;
use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use lapin::options::{BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use lapin::{Acker, Channel};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tracing::Instrument as _;
use tributary::amqp::{self, confirm_channel};
use tributary::deadletter::{
    TaskRef, attempt_of, dead_properties, enqueued_ms_of, stage_properties, traceparent_of,
};
use tributary::error::{Disposition, ErrorClass, Failure, RetryPolicy};
use tributary::message::{
    CONTENT_TYPE_PAYLOADS, CONTENT_TYPE_TASK, Payload, PayloadHeader, Task, TaskEntry,
    decode_tasks, encode_payloads, now_ms,
};
use tributary::metrics::metrics;
use tributary::names::{Names, Stage};
use tributary::store::{Mark, Store};
use tributary::trace::TraceParent;
use tributary::worker::{Drain, Session};
use uuid::Uuid;

use crate::config::Config;
use crate::http::Http;

/// What a session needs besides its connection.
pub struct Context {
    pub config: Config,
    pub http: Http,
    pub names: Names,
    pub policy: RetryPolicy,
}

/// A durable outcome in the making; resolves to the delivery tags it settles, one per task.
type Disposal = BoxFuture<'static, anyhow::Result<Vec<u64>>>;

/// What one download produced.
enum Outcome {
    Fetched { tag: u64, payload: Payload },
    Failed { tag: u64, failed: FailedTask },
}

/// A task (or the bytes that failed to be one) that did not make it.
struct FailedTask {
    body: Vec<u8>,
    task: TaskRef,
    failure: Failure,
    attempt: u32,
}

struct Delivery {
    acker: Acker,
    remaining: usize,
}

/// Payloads waiting to be sent as one `process` message.
#[derive(Default)]
struct Batch {
    payloads: Vec<Payload>,
    tags: Vec<u64>,
    bytes: usize,
    deadline: Option<Instant>,
}

pub async fn session(ctx: Arc<Context>, session: Session) -> anyhow::Result<()> {
    let config = &ctx.config;
    let consume = session.conn.create_channel().await?;
    consume
        .basic_qos(config.prefetch(), BasicQosOptions::default())
        .await?;
    let publisher = confirm_channel(&session.conn).await?;
    let consumer_tag = format!("fetcher-{}", Uuid::new_v4());
    let mut consumer = consume
        .basic_consume(
            ctx.names.queue(Stage::Fetch).into(),
            consumer_tag.as_str().into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;

    let slots = Arc::new(Semaphore::new(config.concurrency.max(1)));
    let mut fetches: JoinSet<Outcome> = JoinSet::new();
    let mut disposals: FuturesUnordered<Disposal> = FuturesUnordered::new();
    let mut deliveries: HashMap<u64, Delivery> = HashMap::new();
    let mut batch = Batch::default();
    let mut drain = Drain::new(config.worker.shutdown_timeout);
    let sink = Sink {
        ctx: ctx.clone(),
        publisher,
        store: session.store.clone(),
    };

    loop {
        if drain.draining() && deliveries.is_empty() {
            return Ok(());
        }
        if drain.draining() && fetches.is_empty() && !batch.payloads.is_empty() {
            disposals.push(sink.flush(std::mem::take(&mut batch)));
        }
        let linger = batch.deadline;
        metrics().set_in_flight(Stage::Fetch, fetches.len());
        tokio::select! {
            _ = session.shutdown.cancelled(), if !drain.draining() => {
                drain.begin();
                let _ = consume.basic_cancel(consumer_tag.as_str().into(), BasicCancelOptions::default()).await;
            }
            _ = drain.expired() => {
                tracing::warn!(unacked = deliveries.len(), "shutdown timeout: leaving unfinished deliveries for redelivery");
                return Ok(());
            }
            next = consumer.next(), if !drain.draining() => {
                let delivery = next.context("the broker closed the consumer")??;
                let received = Received {
                    tag: delivery.delivery_tag,
                    attempt: attempt_of(&delivery.properties),
                    enqueued_ms: enqueued_ms_of(&delivery.properties).unwrap_or_else(now_ms),
                    traceparent: traceparent_of(&delivery.properties).map(Arc::from),
                };
                let attempt = received.attempt;
                let entries = decode_tasks(
                    &delivery.data,
                    delivery.properties.content_type().as_ref().map(|s| s.as_str()),
                    delivery.properties.message_id().as_ref().map(|s| s.as_str()),
                );
                let tag = delivery.delivery_tag;
                if entries.is_empty() {
                    delivery.acker.ack(BasicAckOptions::default()).await?;
                    continue;
                }
                metrics().consumed(Stage::Fetch, entries.len() as u64);
                deliveries.insert(tag, Delivery { acker: delivery.acker, remaining: entries.len() });
                for entry in entries {
                    match entry {
                        TaskEntry::Task(task) => {
                            let http = ctx.http.clone();
                            let slots = slots.clone();
                            let received = received.clone();
                            fetches.spawn(async move {
                                let _slot = slots.acquire_owned().await;
                                fetch_one(&http, task, received).await
                            });
                        }
                        TaskEntry::Invalid { raw, failure } => {
                            let failed = FailedTask { body: raw, task: TaskRef::default(), failure, attempt };
                            disposals.push(sink.dispose(tag, failed));
                        }
                    }
                }
            }
            Some(joined) = fetches.join_next() => {
                match joined.context("a download task panicked")? {
                    Outcome::Fetched { tag, payload } => {
                        batch.bytes += payload.body.len();
                        batch.payloads.push(payload);
                        batch.tags.push(tag);
                        batch.deadline.get_or_insert_with(|| Instant::now() + config.batch_linger);
                        if batch.payloads.len() >= config.batch_size || batch.bytes >= config.batch_bytes {
                            disposals.push(sink.flush(std::mem::take(&mut batch)));
                        }
                    }
                    Outcome::Failed { tag, failed } => disposals.push(sink.dispose(tag, failed)),
                }
            }
            _ = sleep_until(linger), if linger.is_some() => {
                disposals.push(sink.flush(std::mem::take(&mut batch)));
            }
            Some(settled) = disposals.next() => {
                for tag in settled? {
                    let Some(delivery) = deliveries.get_mut(&tag) else { continue };
                    delivery.remaining -= 1;
                    if delivery.remaining == 0 {
                        let delivery = deliveries.remove(&tag).expect("present");
                        delivery.acker.ack(BasicAckOptions::default()).await?;
                    }
                }
            }
        }
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Where a task came from: its delivery, attempt, enqueue time and trace context.
#[derive(Clone)]
struct Received {
    tag: u64,
    attempt: u32,
    enqueued_ms: u64,
    traceparent: Option<Arc<str>>,
}

async fn fetch_one(http: &Http, task: Task, received: Received) -> Outcome {
    let Received {
        tag,
        attempt,
        enqueued_ms,
        traceparent,
    } = received;
    let trace = TraceParent::continue_from(traceparent.as_deref());
    let span = tracing::debug_span!("task", task_id = %task.task_id, job_id = %task.job_id, trace_id = %trace.trace_id_hex());
    let traceparent = Some(trace.to_string());
    match http.fetch(&task).instrument(span).await {
        Ok(fetched) => Outcome::Fetched {
            tag,
            payload: Payload {
                header: PayloadHeader {
                    v: tributary::message::VERSION,
                    job_id: task.job_id,
                    task_id: task.task_id,
                    url: task.url,
                    status: fetched.status,
                    content_type: fetched.content_type,
                    meta: task.meta,
                    attempts: attempt,
                    enqueued_ms: Some(enqueued_ms),
                    traceparent,
                },
                body: fetched.body,
            },
        },
        Err(failure) => {
            tracing::debug!(task_id = %task.task_id, job_id = %task.job_id, class = %failure.class, "fetch failed: {}", failure.reason);
            Outcome::Failed {
                tag,
                failed: FailedTask {
                    body: task.to_json(),
                    task: TaskRef {
                        job_id: Some(task.job_id),
                        task_id: Some(task.task_id),
                        url: Some(task.url),
                        enqueued_ms: Some(enqueued_ms),
                        traceparent,
                    },
                    failure,
                    attempt,
                },
            }
        }
    }
}

/// Where outcomes go: the broker (confirmed) and then Redis.
struct Sink {
    ctx: Arc<Context>,
    publisher: Channel,
    store: Store,
}

impl Sink {
    /// Publishes a batch of payloads as one `process` message, then marks them fetched.
    fn flush(&self, batch: Batch) -> Disposal {
        let publisher = self.publisher.clone();
        let store = self.store.clone();
        let exchange = self.ctx.names.exchange().to_string();
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
    fn dispose(&self, tag: u64, failed: FailedTask) -> Disposal {
        let publisher = self.publisher.clone();
        let store = self.store.clone();
        let exchange = self.ctx.names.exchange().to_string();
        let disposition = self.ctx.policy.decide(&failed.failure, failed.attempt);
        Box::pin(async move {
            let (routing_key, properties, mark) = match disposition {
                Disposition::Retry { step, ttl } => (
                    Names::retry_routing_key(Stage::Fetch, step),
                    stage_properties(
                        CONTENT_TYPE_TASK,
                        failed.attempt + 1,
                        Some(ttl),
                        &failed.task,
                    ),
                    Mark::Retrying,
                ),
                Disposition::Dead => {
                    if failed.failure.class != ErrorClass::HttpStatus
                        || failed.failure.http_status != Some(404)
                    {
                        tracing::info!(task_id = ?failed.task.task_id, job_id = ?failed.task.job_id, traceparent = ?failed.task.traceparent, class = %failed.failure.class, attempts = failed.attempt, "dead-lettered: {}", failed.failure.reason);
                    }
                    (
                        Names::dead_routing_key(Stage::Fetch),
                        dead_properties(
                            CONTENT_TYPE_TASK,
                            Stage::Fetch,
                            &failed.failure,
                            failed.attempt,
                            &failed.task,
                        ),
                        Mark::Dead,
                    )
                }
            };
            amqp::publish_confirmed(
                &publisher,
                &exchange,
                &routing_key,
                &failed.body,
                properties,
            )
            .await?;
            if let (Some(job), Some(task)) = (failed.task.job_id, failed.task.task_id) {
                store.mark(job, mark, &[task]).await?;
            }
            match mark {
                Mark::Retrying => metrics().retried(Stage::Fetch, failed.failure.class),
                _ => metrics().dead(Stage::Fetch, failed.failure.class),
            }
            Ok(vec![tag])
        })
    }
}
