//! The supervised session loop every worker runs.
//!
//! A session is one broker connection (plus the shared Redis store) on which a stage
//! consumes until it is told to stop or something breaks. When the broker or Redis goes
//! away the session ends with an error, its unacked deliveries return to the queue, and the
//! supervisor reconnects with capped exponential backoff, redeclares the topology and
//! starts a new session. Nothing panics and nothing exits on an outage.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use lapin::Connection;
use tokio_util::sync::CancellationToken;

use crate::broker::amqp;
use crate::broker::topology::Topology;
use crate::names::Names;
use crate::policy::backoff::Backoff;
use crate::runtime::config::ConnectionArgs;
use crate::store::Store;

/// Longest a session may take to start (connect, declare the topology).
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// What a session is given.
pub struct Session {
    pub conn: Arc<Connection>,
    pub store: Store,
    pub shutdown: CancellationToken,
}

/// Runs `session` over and over until `shutdown` is cancelled and a session returns `Ok`.
/// `name` labels the broker connection and the log lines.
pub async fn supervise<F, Fut>(
    name: &str,
    args: &ConnectionArgs,
    topology: Topology,
    shutdown: CancellationToken,
    mut session: F,
) -> anyhow::Result<()>
where
    F: FnMut(Session) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(10));
    let mut store: Option<Store> = None;
    loop {
        if shutdown.is_cancelled() {
            return Ok(());
        }
        let attempt = async {
            let s = match &store {
                Some(s) => s.clone(),
                None => {
                    let s = Store::connect(
                        &args.redis_url,
                        Names::new(&args.namespace),
                        args.result_ttl,
                    )
                    .await?;
                    store = Some(s.clone());
                    s
                }
            };
            let conn = amqp::connect(&args.amqp_url, name).await?;
            let channel = conn.create_channel().await.map_err(amqp::AmqpError::from)?;
            topology.declare(&channel).await?;
            let _ = channel.close(200, "topology declared".into()).await;
            anyhow::Ok((Arc::new(conn), s))
        };
        // Every step of starting a session is a network call; none may hang the loop.
        let attempt = async {
            tokio::time::timeout(START_TIMEOUT, attempt)
                .await
                .unwrap_or_else(|_| {
                    Err(anyhow::anyhow!(
                        "starting a session took longer than {START_TIMEOUT:?}"
                    ))
                })
        };
        let (conn, s) = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            result = attempt => match result {
                Ok(pair) => pair,
                Err(e) => {
                    let wait = backoff.next_delay();
                    tracing::warn!(attempt = backoff.attempts(), "{name}: cannot start: {}; retrying in {wait:?}", crate::runtime::cli::chain(e.as_ref()));
                    sleep_unless_cancelled(wait, &shutdown).await;
                    continue;
                }
            }
        };
        if backoff.attempts() > 0 {
            tracing::info!("{name}: connected again");
        }
        backoff.reset();
        tracing::info!(namespace = %args.namespace, "{name}: consuming");
        crate::runtime::metrics::register_store(&s);
        crate::runtime::metrics::broker_session(true);
        let lost = connection_lost(conn.clone(), Names::new(&args.namespace));
        let result = tokio::select! {
            result = session(Session {
                conn: conn.clone(),
                store: s,
                shutdown: shutdown.clone(),
            }) => result,
            reason = lost => Err(anyhow::anyhow!("broker connection lost: {reason}")),
        };
        crate::runtime::metrics::broker_session(false);
        match result {
            Ok(()) => {
                close_quietly(&conn, 200, "shutdown").await;
                if shutdown.is_cancelled() {
                    tracing::info!("{name}: stopped");
                    return Ok(());
                }
            }
            Err(e) => {
                close_quietly(&conn, 320, "session failed").await;
                let wait = backoff.next_delay();
                tracing::warn!(
                    "{name}: session lost: {}; reconnecting in {wait:?}",
                    crate::runtime::cli::chain(e.as_ref())
                );
                sleep_unless_cancelled(wait, &shutdown).await;
            }
        }
    }
}

/// Resolves when the connection reports an error or stops being connected. A session's
/// awaits (a publisher confirm, the next delivery) do not all notice a dead connection by
/// themselves; this watchdog ends the session so the supervisor can reconnect.
/// While it watches, it also samples the stage queues' depths into the metrics every 5 s.
async fn connection_lost(conn: Arc<Connection>, names: Names) -> String {
    use futures::StreamExt;
    let mut events = Box::pin(conn.events_listener());
    let mut sample = tokio::time::interval(Duration::from_secs(5));
    let mut silent = 0;
    {
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        loop {
            tokio::select! {
                event = events.next() => match event {
                    Some(lapin::Event::Error(e)) => return crate::runtime::cli::chain(&e),
                    Some(_) => {}
                    None => return "the connection's event stream ended".to_string(),
                },
                _ = sample.tick() => {
                    // The sample is also a round trip: a connection whose reader died
                    // quietly keeps saying "connected", so three silent samples in a row
                    // count as lost.
                    if sample_queue_depths(&conn, &names).await {
                        silent = 0;
                    } else {
                        silent += 1;
                        if silent >= 3 {
                            return "the broker did not answer for 15 s".to_string();
                        }
                    }
                }
                _ = tick.tick() => {
                    if !conn.status().connected() {
                        return "the connection is no longer open".to_string();
                    }
                }
            }
        }
    }
}

/// Sets the `queue_depth` gauge of each stage queue (passive declares); false when the
/// broker did not answer within 5 s. Other errors count as answers: the next sample tries
/// again.
async fn sample_queue_depths(conn: &Connection, names: &Names) -> bool {
    let sampled = tokio::time::timeout(Duration::from_secs(5), async {
        let channel = conn.create_channel().await.ok()?;
        for stage in crate::names::Stage::ALL {
            let queue = names.queue(stage);
            match amqp::queue_depth(&channel, &queue).await {
                Ok(depth) => crate::runtime::metrics::metrics().set_queue_depth(&queue, depth),
                Err(_) => break,
            }
        }
        let _ = channel.close(200, "sampled".into()).await;
        Some(())
    });
    sampled.await.is_ok()
}

/// Closes a connection, giving up after 5 s (a dead connection may never answer).
async fn close_quietly(conn: &Connection, code: u16, reason: &str) {
    let _ = tokio::time::timeout(Duration::from_secs(5), conn.close(code, reason.into())).await;
}

async fn sleep_unless_cancelled(wait: Duration, shutdown: &CancellationToken) {
    tokio::select! {
        _ = shutdown.cancelled() => {}
        _ = tokio::time::sleep(wait) => {}
    }
}

/// Resolves when the session should stop taking new work; `None` deadline until then.
pub struct Drain {
    deadline: Option<tokio::time::Instant>,
    timeout: Duration,
}

impl Drain {
    pub fn new(timeout: Duration) -> Self {
        Self {
            deadline: None,
            timeout,
        }
    }

    /// Starts the drain clock (idempotent).
    pub fn begin(&mut self) {
        if self.deadline.is_none() {
            self.deadline = Some(tokio::time::Instant::now() + self.timeout);
        }
    }

    pub fn draining(&self) -> bool {
        self.deadline.is_some()
    }

    /// Resolves at the deadline (never, before the drain began).
    pub async fn expired(&self) {
        match self.deadline {
            Some(at) => tokio::time::sleep_until(at).await,
            None => std::future::pending().await,
        }
    }
}

/// Opens a consuming channel with `prefetch` and starts a consumer on `queue`; returns the
/// channel, the consumer and its tag (for `basic_cancel`).
pub async fn start_consumer(
    conn: &Connection,
    queue: &str,
    prefetch: u16,
    label: &str,
) -> Result<(lapin::Channel, lapin::Consumer, String), amqp::AmqpError> {
    use lapin::options::{BasicConsumeOptions, BasicQosOptions};
    let channel = conn.create_channel().await?;
    channel
        .basic_qos(prefetch.max(1), BasicQosOptions::default())
        .await?;
    let tag = format!("{label}-{}", uuid::Uuid::new_v4());
    let consumer = channel
        .basic_consume(
            queue.into(),
            tag.as_str().into(),
            BasicConsumeOptions::default(),
            lapin::types::FieldTable::default(),
        )
        .await?;
    Ok((channel, consumer, tag))
}

/// Consumes `queue`, running `handle` on up to `concurrency` deliveries at once. Each
/// handler acks its own delivery once its effect is durable; an `Err` from a handler ends
/// the session (its unacked deliveries are redelivered). On shutdown: cancel the consumer,
/// wait for in-flight handlers until `drain_timeout`, return `Ok`.
pub async fn consume_each<H, Fut>(
    session: &Session,
    queue: &str,
    prefetch: u16,
    concurrency: usize,
    drain_timeout: Duration,
    label: &str,
    handle: H,
) -> anyhow::Result<()>
where
    H: Fn(lapin::message::Delivery) -> Fut,
    Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
{
    use futures::StreamExt;
    use lapin::options::BasicCancelOptions;

    let (channel, mut consumer, tag) =
        start_consumer(&session.conn, queue, prefetch, label).await?;
    let mut running = tokio::task::JoinSet::new();
    let mut drain = Drain::new(drain_timeout);
    loop {
        if drain.draining() && running.is_empty() {
            return Ok(());
        }
        tokio::select! {
            _ = session.shutdown.cancelled(), if !drain.draining() => {
                drain.begin();
                let _ = channel.basic_cancel(tag.as_str().into(), BasicCancelOptions::default()).await;
            }
            _ = drain.expired() => {
                tracing::warn!(in_flight = running.len(), "shutdown timeout: leaving unfinished deliveries for redelivery");
                return Ok(());
            }
            next = consumer.next(), if !drain.draining() && running.len() < concurrency.max(1) => {
                let delivery = match next {
                    Some(delivery) => delivery?,
                    None => anyhow::bail!("the broker closed the consumer on {queue}"),
                };
                running.spawn(handle(delivery));
            }
            Some(joined) = running.join_next() => {
                joined.map_err(|e| anyhow::anyhow!("a handler panicked: {e}"))??;
            }
        }
    }
}
