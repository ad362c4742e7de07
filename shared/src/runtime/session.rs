//! One worker session: what a stage consumes with, and the consume loops stages share.
//!
//! A session runs on one broker connection with the shared Redis store. Every channel a
//! stage uses is opened through the [`Session`] ([`Session::channel`],
//! [`Session::confirm_channel`], [`Session::consumer`]), so when the session ends the
//! supervisor closes them all: their unacked deliveries go back to their queues at once,
//! whatever handles a stage still holds, and the connection can carry the next session
//! (after a Redis outage the supervisor keeps the connection and starts a new session once
//! Redis answers).

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lapin::{Channel, Connection};
use tokio_util::sync::CancellationToken;

use crate::broker::amqp;
use crate::store::Store;

/// What a session is given.
pub struct Session {
    pub conn: Arc<Connection>,
    pub store: Store,
    pub shutdown: CancellationToken,
    channels: Arc<Mutex<Vec<Channel>>>,
}

impl Session {
    pub(crate) fn new(conn: Arc<Connection>, store: Store, shutdown: CancellationToken) -> Self {
        Self {
            conn,
            store,
            shutdown,
            channels: Arc::default(),
        }
    }

    fn track(&self, channel: &Channel) {
        self.channels
            .lock()
            .expect("the channel list is never poisoned")
            .push(channel.clone());
    }

    /// A channel of this session, closed when the session ends.
    pub async fn channel(&self) -> Result<Channel, amqp::AmqpError> {
        let channel = self.conn.create_channel().await?;
        self.track(&channel);
        Ok(channel)
    }

    /// A channel with publisher confirms, closed when the session ends.
    pub async fn confirm_channel(&self) -> Result<Channel, amqp::AmqpError> {
        let channel = amqp::confirm_channel(&self.conn).await?;
        self.track(&channel);
        Ok(channel)
    }

    /// Opens a consuming channel with `prefetch` and starts a consumer on `queue`; returns
    /// the channel, the consumer and its tag (for `basic_cancel`).
    pub async fn consumer(
        &self,
        queue: &str,
        prefetch: u16,
        label: &str,
    ) -> Result<(Channel, lapin::Consumer, String), amqp::AmqpError> {
        let channel = self.channel().await?;
        let (consumer, tag) = subscribe(&channel, queue, prefetch, label).await?;
        Ok((channel, consumer, tag))
    }

    /// Closes every channel of the session (each within 5 s), returning their unacked
    /// deliveries to the queues.
    pub(crate) async fn close_channels(&self) {
        let channels = std::mem::take(
            &mut *self
                .channels
                .lock()
                .expect("the channel list is never poisoned"),
        );
        for channel in channels {
            if channel.status().connected() {
                let closing = channel.close(200, "session ended".into());
                let _ = tokio::time::timeout(Duration::from_secs(5), closing).await;
            }
        }
    }

    /// The parts a stage's session function gets (the channel list stays shared, so the
    /// supervisor can close what the stage opened).
    pub(crate) fn handle(&self) -> Session {
        Session {
            conn: self.conn.clone(),
            store: self.store.clone(),
            shutdown: self.shutdown.clone(),
            channels: self.channels.clone(),
        }
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

/// Where and how [`consume_each`] consumes.
#[derive(Debug, Clone)]
pub struct ConsumeOptions<'a> {
    pub queue: &'a str,
    pub prefetch: u16,
    /// Handlers running at once.
    pub concurrency: usize,
    pub drain_timeout: Duration,
    /// The consumer tag's prefix.
    pub label: &'a str,
}

/// Consumes a queue, running `handle` on up to `concurrency` deliveries at once. Each
/// handler acks its own delivery once its effect is durable; an `Err` from a handler ends
/// the session (its unacked deliveries are redelivered). On shutdown: cancel the consumer,
/// wait for in-flight handlers until `drain_timeout`, return `Ok`.
pub async fn consume_each<H, Fut>(
    session: &Session,
    options: ConsumeOptions<'_>,
    handle: H,
) -> anyhow::Result<()>
where
    H: Fn(lapin::message::Delivery) -> Fut,
    Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
{
    use futures::StreamExt;
    use lapin::options::BasicCancelOptions;

    let ConsumeOptions {
        queue,
        prefetch,
        concurrency,
        drain_timeout,
        label,
    } = options;
    let (channel, mut consumer, tag) = session.consumer(queue, prefetch, label).await?;
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
                    None => anyhow::bail!("the broker cancelled the consumer on {queue}"),
                };
                running.spawn(handle(delivery));
            }
            Some(joined) = running.join_next() => {
                joined.map_err(|e| anyhow::anyhow!("a handler panicked: {e}"))??;
            }
        }
    }
}

/// Starts a consumer on `queue` on `channel` with a prefetch of `prefetch` messages (its
/// own: RabbitMQ fixes a consumer's prefetch when it subscribes, so a consumer that needs
/// another one subscribes again); returns the consumer and its tag (for `basic_cancel`).
pub async fn subscribe(
    channel: &Channel,
    queue: &str,
    prefetch: u16,
    label: &str,
) -> Result<(lapin::Consumer, String), amqp::AmqpError> {
    use lapin::options::{BasicConsumeOptions, BasicQosOptions};
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
    Ok((consumer, tag))
}
