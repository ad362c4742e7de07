//! One fetcher session: consume task messages, fetch each task ([`crate::fetch`]), batch
//! the payloads into `process` messages and dispose of failures ([`crate::sink`]), and ack
//! each delivery once every task in it has a durable outcome.
//!
//! Outcomes become durable in a [`Disposal`]: a confirmed publish followed by the Redis
//! state change. Only when a disposal resolves are its deliveries' task counts decremented;
//! a delivery is settled when its count reaches zero, and settled deliveries are acked
//! together ([`crate::acks`]).

use std::collections::VecDeque;
use std::sync::Arc;

use anyhow::Context as _;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use lapin::Acker;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicCancelOptions};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tributary::broker::amqp::{HeadersExt, header, headers_of};
use tributary::broker::deadletter::{attempt_of, enqueued_ms_of, traceparent_of};
use tributary::message::{TaskEntry, decode_tasks, now_ms};
use tributary::names::{Names, Stage};
use tributary::policy::RetryPolicy;
use tributary::runtime::accounting;
use tributary::runtime::metrics::metrics;
use tributary::runtime::session::{Drain, Session, subscribe};

use crate::acks::{AckPlan, Acks};
use crate::conditional::Conditional;
use crate::config::Config;
use crate::fetch::{FailedTask, Fetcher, Held, Outcome, Received, Work};
use crate::http::Http;
use crate::politeness::admit::HostLimits;
use crate::politeness::cap::{Fleet, HostCap, LEASE_MARGIN};
use crate::politeness::limiter::{Aimd, HostLimiter, Turn};
use crate::politeness::rates::RateTable;
use crate::sink::{Batch, Disposal, Sink};

/// What a session needs besides its connection.
pub struct Context {
    pub config: Config,
    pub http: Http,
    pub names: Names,
    pub policy: Arc<RetryPolicy>,
    /// Per-host rate limits; empty unless asked for.
    pub rates: RateTable,
}

/// The state of one session's loop.
struct Pipeline {
    ctx: Arc<Context>,
    fetcher: Arc<Fetcher>,
    sink: Sink,
    fetches: JoinSet<Outcome>,
    /// Received tasks not yet spawned: at most [`Pipeline::spawn_cap`] fetches run (or wait
    /// for their host) at once, whatever the number of tasks per message.
    pending: VecDeque<Work>,
    disposals: FuturesUnordered<Disposal>,
    acks: Acks<Acker>,
    batch: Batch,
}

/// Runs one session, and the accounting of what the broker dead-letters from `fetch`.
pub async fn session(ctx: Arc<Context>, session: Session) -> anyhow::Result<()> {
    let main = consume(ctx.clone(), &session);
    accounting::alongside(&session, Stage::Fetch, main).await
}

async fn consume(ctx: Arc<Context>, session: &Session) -> anyhow::Result<()> {
    let config = &ctx.config;
    // The paused hosts are read before anything is delivered.
    let limits = host_limits(&ctx, session);
    let _pause_watch = match &limits {
        Some(limits) => limits.watch_pauses().await?,
        None => None,
    };
    let mut sizer = config.prefetch_sizer();
    let queue = ctx.names.queue(Stage::Fetch);
    let (channel, consumer, tag) = session.consumer(&queue, sizer.current(), "fetcher").await?;
    let mut subscription = Subscription {
        channel,
        queue,
        consumer,
        tag,
        draining: None,
    };
    let mut pipeline = Pipeline {
        fetcher: Arc::new(fetcher(&ctx, session, limits)),
        sink: Sink {
            names: ctx.names.clone(),
            policy: ctx.policy.clone(),
            publisher: session.confirm_channel().await?,
            store: session.store.clone(),
        },
        ctx: ctx.clone(),
        fetches: JoinSet::new(),
        pending: VecDeque::new(),
        disposals: FuturesUnordered::new(),
        acks: Acks::new(max_held(sizer.current())),
        batch: Batch::default(),
    };
    let mut drain = Drain::new(config.worker.shutdown_timeout);
    loop {
        if drain.draining() && pipeline.acks.is_empty() {
            return Ok(());
        }
        if drain.draining() && pipeline.fetches.is_empty() && pipeline.pending.is_empty() {
            pipeline.flush();
        }
        let linger = pipeline.batch.deadline;
        metrics().set_in_flight(Stage::Fetch, pipeline.fetches.len());
        let (mut delivered, mut stopping) = (None, false);
        tokio::select! {
            _ = session.shutdown.cancelled(), if !drain.draining() => {
                drain.begin();
                stopping = true;
            }
            _ = drain.expired() => {
                tracing::warn!(unacked = pipeline.acks.len(), "shutdown timeout: leaving unfinished deliveries for redelivery");
                return Ok(());
            }
            next = subscription.next(), if !drain.draining() => delivered = next?,
            Some(joined) = pipeline.fetches.join_next() => {
                pipeline.fetched(joined.context("a download task panicked")?)?;
                pipeline.spawn_pending();
            }
            _ = sleep_until(linger), if linger.is_some() => pipeline.flush(),
            Some(settled) = pipeline.disposals.next() => pipeline.settle(settled?).await?,
        }
        if stopping {
            subscription.cancel().await;
        }
        if let Some(delivery) = delivered {
            let tasks = pipeline.take(delivery).await?;
            // While the replaced consumer drains, nothing is sized: the sizer's prefetch
            // must stay the one the consumer has.
            let resize = subscription
                .draining
                .is_none()
                .then(|| sizer.observe(tasks));
            if let Some(prefetch) = resize.flatten() {
                subscription.resubscribe(prefetch).await?;
                pipeline.acks.set_max_held(max_held(prefetch));
            }
        }
    }
}

/// Settled deliveries held back behind a slow one use up prefetch: a quarter of it at
/// most.
fn max_held(prefetch: u16) -> usize {
    (usize::from(prefetch) / 4).max(1)
}

/// The session's consumer of the `fetch` queue, and the one it replaced while that one's
/// last deliveries arrive. Both are on one channel, so one [`Acks`] tracker (and its
/// `multiple` acks) covers the deliveries of both.
struct Subscription {
    channel: lapin::Channel,
    queue: String,
    consumer: lapin::Consumer,
    tag: String,
    draining: Option<lapin::Consumer>,
}

impl Subscription {
    /// Subscribes again with `prefetch` ([`crate::prefetch`]): the new consumer first, so
    /// the fetcher never goes without one; the old one is cancelled and drained.
    async fn resubscribe(&mut self, prefetch: u16) -> anyhow::Result<()> {
        let (consumer, tag) = subscribe(&self.channel, &self.queue, prefetch, "fetcher").await?;
        let old_tag = std::mem::replace(&mut self.tag, tag);
        self.draining = Some(std::mem::replace(&mut self.consumer, consumer));
        self.channel
            .basic_cancel(old_tag.as_str().into(), BasicCancelOptions::default())
            .await?;
        metrics().set_prefetch(Stage::Fetch, prefetch);
        tracing::info!(
            prefetch,
            "fetch prefetch changed to follow the tasks per message"
        );
        Ok(())
    }

    /// The next delivery of either consumer; `None` when the one being replaced has sent
    /// its last.
    ///
    /// The replaced consumer goes first: the broker numbers a channel's deliveries in the
    /// order it sends them and lapin hands them to their consumers in that order, so while
    /// a delivery of the new consumer is there, every older one of the replaced consumer is
    /// there too. Taking them oldest first keeps [`Acks`] sound: a `multiple` ack covers
    /// every lower tag of the channel, so it must never pass a delivery not taken yet.
    async fn next(&mut self) -> anyhow::Result<Option<Delivery>> {
        let Self {
            consumer, draining, ..
        } = self;
        let old = async {
            match draining.as_mut() {
                Some(old) => old.next().await,
                None => std::future::pending().await,
            }
        };
        let next = tokio::select! {
            biased;
            next = old => next.transpose()?,
            next = consumer.next() => Some(next.context("the broker cancelled the consumer")??),
        };
        if next.is_none() {
            self.draining = None;
        }
        Ok(next)
    }

    /// Stops the deliveries (shutdown); what was delivered is still acked.
    async fn cancel(&self) {
        let tag = self.tag.as_str().into();
        let _ = self
            .channel
            .basic_cancel(tag, BasicCancelOptions::default())
            .await;
    }
}

/// The per-host rate limits and pauses of a session, if any are asked for.
fn host_limits(ctx: &Context, session: &Session) -> Option<HostLimits> {
    let config = &ctx.config;
    // A pause needs a delay queue to put the host's tasks aside in.
    let max_pause = config
        .host_pause
        .then(|| ctx.policy.delays.last().copied())
        .flatten();
    if config.host_pause && max_pause.is_none() {
        tracing::warn!("no --retry-delays: a Retry-After cannot pause its host (--host-pause)");
    }
    (!ctx.rates.is_empty() || max_pause.is_some()).then(|| HostLimits {
        table: ctx.rates.clone(),
        limiter: match config.host_aimd {
            true => HostLimiter::new(&session.store).with_aimd(Aimd::default()),
            false => HostLimiter::new(&session.store),
        },
        max_wait: config.host_wait_max,
        max_pause,
        paused: Default::default(),
        rtt_floor: Default::default(),
    })
}

/// What every download of the session shares.
fn fetcher(ctx: &Context, session: &Session, limits: Option<HostLimits>) -> Fetcher {
    let config = &ctx.config;
    Fetcher {
        http: ctx.http.clone(),
        slots: Arc::new(Semaphore::new(config.concurrency.max(1))),
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
        max_wait: config.host_wait_max,
        first_step: ctx.policy.delays.first().copied().unwrap_or_default(),
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

impl Pipeline {
    /// A task message: every valid task starts its fetch; every invalid one is disposed of
    /// (dead-lettered in its job, if it names one).
    /// Returns how many tasks it held.
    async fn take(&mut self, delivery: Delivery) -> anyhow::Result<usize> {
        let received = received(&delivery);
        let properties = &delivery.properties;
        let entries = decode_tasks(
            &delivery.data,
            properties.content_type().as_ref().map(|s| s.as_str()),
            properties.message_id().as_ref().map(|s| s.as_str()),
        );
        let tasks = entries.len();
        self.acks.open(received.tag, delivery.acker, tasks);
        if entries.is_empty() {
            self.ack_due().await?;
            return Ok(0);
        }
        metrics().consumed(Stage::Fetch, tasks as u64);
        for entry in entries {
            match entry {
                TaskEntry::Task(task, url) => {
                    self.pending
                        .push_back(Work::new(task, url, received.clone()));
                }
                TaskEntry::Invalid { raw, failure, task } => {
                    let held = Held {
                        body: raw,
                        task,
                        attempt: received.attempt,
                        deferrals: 0,
                    };
                    let failed = FailedTask { held, failure };
                    self.disposals.push(self.sink.dispose(received.tag, failed));
                }
            }
        }
        self.spawn_pending();
        Ok(tasks)
    }

    /// How many fetches run (or wait for their host) at once: 16 per download slot, so
    /// tasks waiting for a rate-limited host leave room for the others, while a message of
    /// thousands of tasks costs a few hundred bytes per waiting task, not a spawned fetch.
    fn spawn_cap(&self) -> usize {
        self.ctx.config.concurrency.max(1).saturating_mul(16)
    }

    /// Spawns pending tasks, in the order they arrived, up to [`Pipeline::spawn_cap`].
    fn spawn_pending(&mut self) {
        let cap = self.spawn_cap();
        while self.fetches.len() < cap {
            let Some(work) = self.pending.pop_front() else {
                return;
            };
            let fetcher = self.fetcher.clone();
            self.fetches.spawn(async move { fetcher.run(work).await });
        }
    }

    /// A fetch's outcome: batched, disposed of, or deferred; a Redis failure ends the
    /// session.
    fn fetched(&mut self, outcome: Outcome) -> anyhow::Result<()> {
        match outcome {
            Outcome::Fetched { tag, payload } => {
                let config = &self.ctx.config;
                self.batch.push(tag, payload, config.batch_linger);
                if self.batch.payloads.len() >= config.batch_size
                    || self.batch.bytes >= config.batch_bytes
                {
                    self.flush();
                }
            }
            Outcome::Failed { tag, failed } => self.disposals.push(self.sink.dispose(tag, failed)),
            Outcome::Deferred {
                tag,
                held,
                wait,
                turn,
            } => self.disposals.push(self.sink.defer(tag, held, wait, turn)),
            Outcome::Broken(e) => return Err(e.context("a Redis check of the fetch failed")),
        }
        Ok(())
    }

    /// Sends the batch of payloads (if any).
    fn flush(&mut self) {
        if !self.batch.payloads.is_empty() {
            let batch = std::mem::take(&mut self.batch);
            self.disposals.push(self.sink.flush(batch));
        }
    }

    /// Settles tasks; acks the deliveries that are due.
    async fn settle(&mut self, tags: Vec<u64>) -> anyhow::Result<()> {
        for tag in tags {
            self.acks.settle(tag);
        }
        self.ack_due().await
    }

    /// Sends the acks that are due ([`Acks::due`]).
    async fn ack_due(&mut self) -> anyhow::Result<()> {
        let AckPlan {
            multiple,
            singles,
            arrivals,
        } = self.acks.due();
        if let Some(acker) = multiple {
            acker.ack(BasicAckOptions { multiple: true }).await?;
        }
        for acker in singles {
            acker.ack(BasicAckOptions::default()).await?;
        }
        for arrived in arrivals {
            metrics().delivery_held(arrived.elapsed());
        }
        Ok(())
    }
}

/// Where a delivery's tasks came from.
fn received(delivery: &Delivery) -> Received {
    let properties = &delivery.properties;
    let headers = headers_of(properties);
    Received {
        tag: delivery.delivery_tag,
        attempt: attempt_of(properties),
        enqueued_ms: enqueued_ms_of(properties).unwrap_or_else(now_ms),
        traceparent: traceparent_of(properties).map(Arc::from),
        turn: headers.get_u64(header::HOST_TURN).map(Turn),
        deferrals: headers
            .get_u64(header::DEFERRALS)
            .map_or(0, |n| n.min(u64::from(u32::MAX)) as u32),
    }
}
