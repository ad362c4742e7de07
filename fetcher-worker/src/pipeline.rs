//! One fetcher session: consume task messages, download with bounded concurrency, batch
//! the payloads into `process` messages, dispose of failures (retry or dead-letter), and
//! ack each delivery once every task in it has a durable outcome.
//!
//! Outcomes become durable in a [`Disposal`]: a confirmed publish followed by the Redis
//! state change. Only when a disposal resolves are its deliveries' task counts decremented;
//! a delivery is acked when its count reaches zero.

use std::collections::HashMap;
use std::sync::Arc;

use crate::politeness::limiter::{Aimd, HostLimiter, Turn};
use anyhow::Context as _;
use futures::StreamExt;
use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use lapin::options::{BasicAckOptions, BasicCancelOptions};
use lapin::{Acker, BasicProperties, Channel};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tracing::Instrument as _;
use tributary::broker::amqp::{self, HeadersExt, header, headers_of};
use tributary::broker::deadletter::{
    TaskRef, attempt_of, dead_properties, enqueued_ms_of, stage_properties, traceparent_of,
};
use tributary::message::{
    CONTENT_TYPE_PAYLOADS, CONTENT_TYPE_TASK, Payload, PayloadHeader, Task, TaskEntry,
    decode_tasks, encode_payloads, now_ms,
};
use tributary::names::{Names, Stage};
use tributary::policy::{Disposition, ErrorClass, Failure, RetryPolicy};
use tributary::runtime::metrics::metrics;
use tributary::runtime::session::{Drain, Session};
use tributary::runtime::trace::TraceParent;
use tributary::store::{Mark, Store};

use crate::conditional::Conditional;
use crate::config::Config;
use crate::http::{Fetched, Http};
use crate::politeness::admit::{Admit, HostLimits};
use crate::politeness::cap::{Fleet, HostCap, HostSlot, LEASE_MARGIN};
use crate::politeness::rates::{RateTable, host_of};

/// What a session needs besides its connection.
pub struct Context {
    pub config: Config,
    pub http: Http,
    pub names: Names,
    pub policy: RetryPolicy,
    /// Per-host rate limits; empty unless asked for.
    pub rates: RateTable,
}

/// A durable outcome in the making; resolves to the delivery tags it settles, one per task.
type Disposal = BoxFuture<'static, anyhow::Result<Vec<u64>>>;

/// What one download produced.
enum Outcome {
    Fetched {
        tag: u64,
        payload: Payload,
    },
    Failed {
        tag: u64,
        failed: FailedTask,
    },
    /// The task's host has no slot soon: put it aside for `wait` (not an attempt), with its
    /// turn in the host's queue.
    Deferred {
        tag: u64,
        held: Held,
        wait: std::time::Duration,
        turn: Option<Turn>,
    },
    /// Redis failed the rate-limit or conditional-request look-up: an infrastructure error,
    /// the session ends.
    Broken(anyhow::Error),
}

/// A task (or the bytes that failed to be one) on its way back to the broker.
struct Held {
    body: Vec<u8>,
    task: TaskRef,
    attempt: u32,
}

impl Held {
    fn of(task: &Task, enqueued_ms: u64, traceparent: Option<String>, attempt: u32) -> Self {
        Held {
            body: task.to_json(),
            task: TaskRef {
                job_id: Some(task.job_id),
                task_id: Some(task.task_id),
                url: Some(task.url.clone()),
                enqueued_ms: Some(enqueued_ms),
                traceparent,
            },
            attempt,
        }
    }
}

/// A task that did not make it.
struct FailedTask {
    held: Held,
    failure: Failure,
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
    let publisher = session.confirm_channel().await?;
    let (consume, mut consumer, consumer_tag) = session
        .consumer(&ctx.names.queue(Stage::Fetch), config.prefetch(), "fetcher")
        .await?;

    let slots = Arc::new(Semaphore::new(config.concurrency.max(1)));
    let mut fetches: JoinSet<Outcome> = JoinSet::new();
    let mut disposals: FuturesUnordered<Disposal> = FuturesUnordered::new();
    let mut deliveries: HashMap<u64, Delivery> = HashMap::new();
    let mut batch = Batch::default();
    // A pause needs a delay queue to put the host's tasks aside in.
    let max_pause = config
        .host_pause
        .then(|| ctx.policy.delays.last().copied())
        .flatten();
    if config.host_pause && max_pause.is_none() {
        tracing::warn!("no --retry-delays: a Retry-After cannot pause its host (--host-pause)");
    }
    let limits = (!ctx.rates.is_empty() || max_pause.is_some()).then(|| HostLimits {
        table: ctx.rates.clone(),
        limiter: match config.host_aimd {
            true => HostLimiter::new(&session.store).with_aimd(Aimd::default()),
            false => HostLimiter::new(&session.store),
        },
        max_wait: config.host_wait_max,
        max_pause,
        paused: Default::default(),
        rtt_floor: Default::default(),
    });
    let _pause_watch = limits.as_ref().and_then(HostLimits::watch_pauses);
    let fetcher = Arc::new(Fetcher {
        http: ctx.http.clone(),
        rates: ctx.rates.clone(),
        limits,
        cap: config.host_concurrency.map(|n| {
            let fleet = Fleet {
                limiter: HostLimiter::new(&session.store),
                lease: ctx.http.timeout() + LEASE_MARGIN,
            };
            HostCap::with_fleet(n as usize, Some(fleet))
        }),
        conditional: config.conditional.then(|| Conditional::new(&session.store)),
    });
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
                    turn: headers_of(&delivery.properties).get_u64(header::HOST_TURN).map(Turn),
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
                            let fetcher = fetcher.clone();
                            let slots = slots.clone();
                            let received = received.clone();
                            fetches.spawn(async move {
                                // The host's slot first: tasks waiting for a busy host do
                                // not hold the download slots other hosts could use.
                                let mut host = fetcher.host_slot(&task.url).await;
                                let _slot = slots.acquire_owned().await;
                                // The fleet's lease last, so it lasts the download only.
                                if let Some(host) = &mut host
                                    && let Err(e) = host.lease().await
                                {
                                    return Outcome::Broken(e.into());
                                }
                                fetcher.fetch(task, received).await
                            });
                        }
                        TaskEntry::Invalid { raw, failure } => {
                            let held = Held { body: raw, task: TaskRef::default(), attempt };
                            let failed = FailedTask { held, failure };
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
                    Outcome::Deferred { tag, held, wait, turn } => disposals.push(sink.defer(tag, held, wait, turn)),
                    Outcome::Broken(e) => return Err(e.context("a Redis check of the fetch failed")),
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
    /// The turn a task put aside by its host's rate limit carries back.
    turn: Option<Turn>,
}

/// What every download of a session shares: the client, and the optional politeness.
struct Fetcher {
    http: Http,
    rates: RateTable,
    /// `--host-rate`, `--default-host-rate`, `--host-pause`.
    limits: Option<HostLimits>,
    /// `--host-concurrency`.
    cap: Option<Arc<HostCap>>,
    /// `--conditional`.
    conditional: Option<Conditional>,
}

impl Fetcher {
    /// With `--host-concurrency`, waits for this process's slot of the URL's host (none
    /// without a host).
    async fn host_slot(&self, url: &str) -> Option<HostSlot> {
        let cap = self.cap.as_ref()?;
        Some(cap.acquire(&host_of(url)?).await)
    }

    /// Waits for the host's rate (or defers the task), downloads, and pauses the host if
    /// the origin asks to.
    async fn fetch(&self, task: Task, received: Received) -> Outcome {
        let Some(limits) = &self.limits else {
            return self.fetch_one(task, received).await;
        };
        match limits.admit(&task.url, received.turn).await {
            Ok(Admit::Fetch) => {}
            Ok(Admit::Defer { wait, turn }) => {
                metrics().host_deferred(&self.rates.bucket_of_url(&task.url));
                let traceparent = received.traceparent.as_deref().map(str::to_string);
                return Outcome::Deferred {
                    tag: received.tag,
                    held: Held::of(&task, received.enqueued_ms, traceparent, received.attempt),
                    wait,
                    turn,
                };
            }
            Err(e) => return Outcome::Broken(e.into()),
        }
        let url = task.url.clone();
        let outcome = self.fetch_one(task, received).await;
        if let Outcome::Failed { failed, .. } = &outcome
            && let Err(e) = limits.after_failure(&url, &failed.failure).await
        {
            return Outcome::Broken(e.into());
        }
        outcome
    }

    /// One download (conditional with `--conditional`), counted per host bucket.
    async fn download(&self, task: &Task) -> anyhow::Result<Result<Fetched, Failure>> {
        let remembered = match &self.conditional {
            Some(conditional) => conditional.recall(&task.url).await?,
            None => None,
        };
        let result = self
            .http
            .fetch(task, remembered.as_ref().map(|r| &r.validators))
            .await;
        let status = match &result {
            Ok(fetched) => Some(fetched.status),
            Err(failure) => failure.http_status,
        };
        if let Some(status) = status {
            metrics().host_response(&self.rates.bucket_of_url(&task.url), status);
        }
        let Some(conditional) = &self.conditional else {
            return Ok(result);
        };
        Ok(match (result, remembered) {
            // A 304 reuses the remembered body: the same payload as the 200 it stands for.
            (Ok(fetched), Some(last)) if fetched.not_modified => Ok(Fetched {
                status: last.status,
                content_type: last.content_type,
                body: last.body,
                validators: last.validators,
                not_modified: true,
            }),
            (Ok(fetched), _) => {
                conditional.remember(&task.url, &fetched).await?;
                Ok(fetched)
            }
            (Err(failure), _) => Err(failure),
        })
    }

    async fn fetch_one(&self, task: Task, received: Received) -> Outcome {
        let Received {
            tag,
            attempt,
            enqueued_ms,
            traceparent,
            ..
        } = received;
        let trace = TraceParent::continue_from(traceparent.as_deref());
        let span = tracing::debug_span!("task", task_id = %task.task_id, job_id = %task.job_id, trace_id = %trace.trace_id_hex());
        let traceparent = Some(trace.to_string());
        let downloaded = match self.download(&task).instrument(span).await {
            Ok(downloaded) => downloaded,
            Err(e) => return Outcome::Broken(e),
        };
        match downloaded {
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
                        held: Held::of(&task, enqueued_ms, traceparent, attempt),
                        failure,
                    },
                }
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
        let FailedTask { held, failure } = failed;
        let (routing_key, properties, mark) = match self.ctx.policy.decide(&failure, held.attempt) {
            Disposition::Retry { step, ttl } => {
                retry_route(step, ttl, held.attempt + 1, &held.task)
            }
            Disposition::Dead => {
                if failure.class != ErrorClass::HttpStatus || failure.http_status != Some(404) {
                    tracing::info!(task_id = ?held.task.task_id, job_id = ?held.task.job_id, traceparent = ?held.task.traceparent, class = %failure.class, attempts = held.attempt, "dead-lettered: {}", failure.reason);
                }
                (
                    Names::dead_routing_key(Stage::Fetch),
                    dead_properties(
                        CONTENT_TYPE_TASK,
                        Stage::Fetch,
                        &failure,
                        held.attempt,
                        &held.task,
                    ),
                    Mark::Dead,
                )
            }
        };
        let class = failure.class;
        self.send(
            tag,
            held,
            routing_key,
            properties,
            mark,
            move || match mark {
                Mark::Retrying => metrics().retried(Stage::Fetch, class),
                _ => metrics().dead(Stage::Fetch, class),
            },
        )
    }

    /// Puts a task aside for `wait` because its host is at its rate limit: the same delay
    /// queues as retries, but the attempt number stays as it is.
    /// It carries its `turn` in the host's queue, if the limiter gave it one.
    fn defer(
        &self,
        tag: u64,
        held: Held,
        wait: std::time::Duration,
        turn: Option<Turn>,
    ) -> Disposal {
        let Some(Disposition::Retry { step, ttl }) = self.ctx.policy.wait_for(wait) else {
            return Box::pin(async { anyhow::bail!("no --retry-delays step to defer a task to") });
        };
        tracing::debug!(task_id = ?held.task.task_id, ?wait, "host at its rate limit: task deferred");
        let (routing_key, mut properties, mark) = retry_route(step, ttl, held.attempt, &held.task);
        if let Some(Turn(turn)) = turn {
            let mut headers = headers_of(&properties);
            headers.set_u64(header::HOST_TURN, turn);
            properties = properties.with_headers(headers);
        }
        self.send(tag, held, routing_key, properties, mark, || {})
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
        let exchange = self.ctx.names.exchange().to_string();
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
    step: std::time::Duration,
    ttl: std::time::Duration,
    attempts: u32,
    task: &TaskRef,
) -> (String, BasicProperties, Mark) {
    (
        Names::retry_routing_key(Stage::Fetch, step),
        stage_properties(CONTENT_TYPE_TASK, attempts, Some(ttl), task),
        Mark::Retrying,
    )
}
