//! The supervised session loop every worker runs.
//!
//! A supervisor keeps one broker connection (to one node of `--amqp-url`, starting from a
//! random one) and the shared Redis store, and runs the stage's sessions on it:
//!
//! - **Redis first.** A session starts only once Redis answers. While it does not, the
//!   worker consumes nothing and `/readyz` says so; the supervisor asks again with capped
//!   backoff, keeping its broker connection. A session that loses Redis (a Redis error from
//!   the stage, or the Redis watchdog: two unanswered pings a second apart) ends: its
//!   channels are closed, so its unacked deliveries go back to their queues once per
//!   outage, not once per reconnect cycle (each return is a redelivery that counts towards
//!   a quorum queue's delivery limit).
//! - **The broker.** When the connection is lost (an error, a node stopped, a consumer
//!   cancelled by the broker, or the watchdog's round trips unanswered for 15 s), the
//!   supervisor reconnects to the next node with capped exponential backoff, declares the
//!   topology again and starts a new session. A connection the broker *blocks* (a memory
//!   or disk alarm) is waited out, not torn down: the watchdog stops counting round trips
//!   until the broker unblocks it.
//!
//! Nothing panics and nothing exits on an outage.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use lapin::Connection;
use tokio_util::sync::CancellationToken;

use super::config::ConnectionArgs;
use super::metrics::{Readiness, metrics};
use super::session::Session;
use crate::broker::amqp::{self, Nodes};
use crate::broker::topology::Topology;
use crate::names::{Names, Stage};
use crate::policy::backoff::Backoff;
use crate::runtime::cli::chain;
use crate::store::{Store, StoreError};

/// Longest a session may take to start (connect, declare the topology).
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// A session that ran this long resets the reconnect backoff.
const HEALTHY_AFTER: Duration = Duration::from_secs(10);

/// How often the Redis watchdog pings, and how long a ping may take.
const REDIS_PING_EVERY: Duration = Duration::from_secs(1);
const REDIS_PING_TIMEOUT: Duration = Duration::from_secs(3);

/// Why the sessions on one connection stopped.
enum Ended {
    /// Shutdown: a session returned `Ok`.
    Stopped,
    /// The broker connection is gone (or unusable): reconnect.
    BrokerLost(String),
}

/// What one session ended with.
enum SessionEnd {
    Stopped,
    RedisLost(String),
    BrokerLost(String),
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
    let mut sup = Supervisor {
        name,
        args,
        topology,
        shutdown,
        nodes: Nodes::new(&args.amqp_url),
        store: None,
        backoff: Backoff::new(Duration::from_millis(100), Duration::from_secs(10)),
    };
    loop {
        if sup.shutdown.is_cancelled() {
            return Ok(());
        }
        let Some((conn, node)) = sup.start().await? else {
            continue;
        };
        let conn = Arc::new(conn);
        let ended = sup.run_sessions(&conn, &node, &mut session).await;
        close_quietly(&conn, 200, "session ended").await;
        match ended {
            Ended::Stopped => {
                tracing::info!("{name}: stopped");
                return Ok(());
            }
            Ended::BrokerLost(reason) => {
                let wait = sup.backoff.next_delay();
                tracing::warn!(%node, "{name}: broker connection lost: {reason}; reconnecting in {wait:?}");
                sleep_unless_cancelled(wait, &sup.shutdown).await;
            }
        }
    }
}

struct Supervisor<'a> {
    name: &'a str,
    args: &'a ConnectionArgs,
    topology: Topology,
    shutdown: CancellationToken,
    nodes: Nodes,
    store: Option<Store>,
    backoff: Backoff,
}

impl Supervisor<'_> {
    /// Connects to Redis (once) and to a broker node, declaring the topology; `None` after
    /// a failed attempt (logged, backoff slept) or on shutdown. A configuration Redis
    /// refuses (see [`StoreError::Config`]) is an error: no retry makes it work.
    async fn start(&mut self) -> anyhow::Result<Option<(Connection, String)>> {
        let shutdown = self.shutdown.clone();
        let attempt = tokio::time::timeout(START_TIMEOUT, self.try_start());
        let result = tokio::select! {
            _ = shutdown.cancelled() => return Ok(None),
            result = attempt => result.unwrap_or_else(|_| {
                Err(anyhow::anyhow!("starting a session took longer than {START_TIMEOUT:?}"))
            }),
        };
        match result {
            Ok((conn, node)) => {
                tracing::info!(%node, namespace = %self.args.namespace, "{}: connected to the broker", self.name);
                Ok(Some((conn, node)))
            }
            Err(e) if matches!(e.downcast_ref(), Some(StoreError::Config(_))) => Err(e),
            Err(e) => {
                let wait = self.backoff.next_delay();
                tracing::warn!(
                    attempt = self.backoff.attempts(),
                    "{}: cannot start: {}; retrying in {wait:?}",
                    self.name,
                    chain(e.as_ref())
                );
                sleep_unless_cancelled(wait, &self.shutdown).await;
                Ok(None)
            }
        }
    }

    async fn try_start(&mut self) -> anyhow::Result<(Connection, String)> {
        if self.store.is_none() {
            self.store = Some(Store::connect(self.args).await?);
        }
        let (conn, node) = self.nodes.connect(self.name).await?;
        let channel = conn.create_channel().await.map_err(amqp::AmqpError::from)?;
        self.topology.declare(&channel).await?;
        let _ = channel.close(200, "topology declared".into()).await;
        Ok((conn, node))
    }

    /// Sessions on one connection, each once Redis answers, until shutdown or the
    /// connection is lost.
    async fn run_sessions<F, Fut>(
        &mut self,
        conn: &Arc<Connection>,
        node: &str,
        session: &mut F,
    ) -> Ended
    where
        F: FnMut(Session) -> Fut,
        Fut: Future<Output = anyhow::Result<()>>,
    {
        let store = self
            .store
            .clone()
            .expect("connected to Redis before the broker");
        let lost = connection_lost(conn.clone(), Names::new(&self.args.namespace));
        tokio::pin!(lost);
        loop {
            tokio::select! {
                _ = self.shutdown.cancelled() => return Ended::Stopped,
                reason = &mut lost => return Ended::BrokerLost(reason),
                () = wait_for_redis(&store, self.name, &self.shutdown) => {}
            }
            if self.shutdown.is_cancelled() {
                return Ended::Stopped;
            }
            let current = Session::new(conn.clone(), store.clone(), self.shutdown.clone());
            let started = Instant::now();
            let end = {
                let _ready = Readiness::Consuming.report();
                metrics().session_started();
                tracing::info!(%node, "{}: consuming", self.name);
                tokio::select! {
                    result = session(current.handle()) => classify(result),
                    reason = &mut lost => SessionEnd::BrokerLost(reason),
                    reason = redis_lost(&store) => SessionEnd::RedisLost(reason),
                }
            };
            current.close_channels().await;
            if started.elapsed() >= HEALTHY_AFTER {
                self.backoff.reset();
            }
            match end {
                SessionEnd::Stopped => return Ended::Stopped,
                SessionEnd::BrokerLost(reason) => return Ended::BrokerLost(reason),
                SessionEnd::RedisLost(reason) => {
                    tracing::warn!(
                        "{}: redis unavailable: {reason}; stopped consuming until it answers",
                        self.name
                    );
                }
            }
        }
    }
}

/// A session's result: `Ok` is a shutdown; an error with a Redis error in its chain means
/// Redis, anything else the broker.
fn classify(result: anyhow::Result<()>) -> SessionEnd {
    match result {
        Ok(()) => SessionEnd::Stopped,
        Err(e) if e.chain().any(|cause| cause.is::<StoreError>()) => {
            SessionEnd::RedisLost(chain(e.as_ref()))
        }
        Err(e) => SessionEnd::BrokerLost(chain(e.as_ref())),
    }
}

/// Returns once Redis answers, asking with capped backoff; `/readyz` reports Redis down
/// meanwhile.
async fn wait_for_redis(store: &Store, name: &str, shutdown: &CancellationToken) {
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
    let mut down = None;
    loop {
        match tokio::time::timeout(REDIS_PING_TIMEOUT, store.ping()).await {
            Ok(Ok(())) => {
                if down.is_some() {
                    tracing::info!("{name}: redis answers again");
                }
                return;
            }
            Ok(Err(e)) => tracing::debug!("{name}: redis ping failed: {e}"),
            Err(_) => tracing::debug!("{name}: redis ping timed out"),
        }
        down.get_or_insert_with(|| Readiness::RedisDown.report());
        sleep_unless_cancelled(
            backoff.next_delay().max(Duration::from_millis(50)),
            shutdown,
        )
        .await;
        if shutdown.is_cancelled() {
            return;
        }
    }
}

/// Resolves when Redis stops answering during a session: two pings in a row failed.
async fn redis_lost(store: &Store) -> String {
    let mut failed = 0;
    let mut tick = tokio::time::interval(REDIS_PING_EVERY);
    loop {
        tick.tick().await;
        match tokio::time::timeout(REDIS_PING_TIMEOUT, store.ping()).await {
            Ok(Ok(())) => failed = 0,
            Ok(Err(e)) if failed >= 1 => return chain(&e),
            Err(_) if failed >= 1 => {
                return format!("no answer to a ping within {REDIS_PING_TIMEOUT:?}");
            }
            _ => failed += 1,
        }
    }
}

/// Resolves when the connection reports an error or stops being connected. A session's
/// awaits (a publisher confirm, the next delivery) do not all notice a dead connection by
/// themselves; this watchdog ends the session so the supervisor can reconnect.
/// While it watches, it also samples the stage queues' depths into the metrics every 5 s;
/// the sample is a round trip, and three unanswered in a row count as lost — unless the
/// broker has blocked the connection (a resource alarm), which is waited out.
async fn connection_lost(conn: Arc<Connection>, names: Names) -> String {
    use futures::StreamExt;
    let mut events = Box::pin(conn.events_listener());
    let mut sample = tokio::time::interval(Duration::from_secs(5));
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    let mut silent = 0;
    let mut blocked = false;
    loop {
        tokio::select! {
            event = events.next() => match event {
                Some(lapin::Event::Error(e)) => return chain(&e),
                Some(lapin::Event::ConnectionBlocked(reason)) => {
                    tracing::warn!("the broker blocked the connection ({reason}); waiting for it to unblock");
                    metrics().set_broker_blocked(true);
                    blocked = true;
                }
                Some(lapin::Event::ConnectionUnblocked) => {
                    tracing::info!("the broker unblocked the connection");
                    metrics().set_broker_blocked(false);
                    blocked = false;
                    silent = 0;
                }
                Some(_) => {}
                None => return "the connection's event stream ended".to_string(),
            },
            _ = sample.tick(), if !blocked => {
                // A connection whose reader died quietly keeps saying "connected".
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

/// Sets the `queue_depth` gauge of each stage queue (passive declares); false when the
/// broker did not answer within 5 s. Other errors count as answers: the next sample tries
/// again.
async fn sample_queue_depths(conn: &Connection, names: &Names) -> bool {
    let sampled = tokio::time::timeout(Duration::from_secs(5), async {
        let channel = conn.create_channel().await.ok()?;
        for stage in Stage::ALL {
            let queue = names.queue(stage);
            match amqp::queue_depth(&channel, &queue).await {
                Ok(depth) => metrics().set_queue_depth(&queue, depth),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redis_errors_end_a_session_for_redis_and_others_for_the_broker() {
        let redis = anyhow::Error::new(StoreError::ClusterDown).context("marking tasks");
        assert!(matches!(classify(Err(redis)), SessionEnd::RedisLost(_)));
        let broker = anyhow::anyhow!("the broker cancelled the consumer on ns.fetch");
        assert!(matches!(classify(Err(broker)), SessionEnd::BrokerLost(_)));
        assert!(matches!(classify(Ok(())), SessionEnd::Stopped));
    }
}
