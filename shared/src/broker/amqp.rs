//! Broker connections, channels, persistent message properties and confirmed publishing.

use std::time::Duration;

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties};

use crate::runtime::config::UrlList;
use crate::runtime::redact::redact_url;

pub use lapin::PublisherConfirm;

#[derive(Debug, thiserror::Error)]
pub enum AmqpError {
    #[error("broker at {url}: {source}")]
    Connect { url: String, source: lapin::Error },
    #[error("broker connection timed out after {0:?} ({1})")]
    ConnectTimeout(Duration, String),
    #[error("broker: {0}")]
    Protocol(#[from] lapin::Error),
    #[error("broker refused (nacked) a publish to {0}")]
    Nacked(String),
    #[error("the broker did not {0} a publish to {1} within {2:?}")]
    NoReply(&'static str, String, Duration),
    #[error("broker returned an unroutable publish to {0}")]
    Returned(String),
    #[error(
        "the broker's queues differ from this version's topology ({0}); a queue keeps the type and arguments it was first declared with: drain and delete the namespace's queues (or use another --namespace) to upgrade or to change --queue-type"
    )]
    Topology(String),
}

/// Opens a connection named `name` (visible in the management UI), within 10 s.
pub async fn connect(url: &str, name: &str) -> Result<Connection, AmqpError> {
    let props = ConnectionProperties::default().with_connection_name(name.into());
    let limit = Duration::from_secs(10);
    match tokio::time::timeout(limit, Connection::connect(url, props)).await {
        Ok(Ok(conn)) => Ok(conn),
        Ok(Err(source)) => Err(AmqpError::Connect {
            url: redact_url(url),
            source,
        }),
        Err(_) => Err(AmqpError::ConnectTimeout(limit, redact_url(url))),
    }
}

/// The nodes of one broker (the URLs of a cluster's nodes, or one node's), tried in turn
/// from a random one so that a fleet spreads over the cluster.
#[derive(Debug, Clone)]
pub struct Nodes {
    urls: Vec<String>,
    next: usize,
}

impl Nodes {
    pub fn new(list: &UrlList) -> Self {
        let urls = list.urls().to_vec();
        let next = rand::random_range(0..urls.len());
        Self { urls, next }
    }

    /// Connects to the first node that answers, starting at the next one in turn; the
    /// connect after this one starts at the node after the one that answered (a session
    /// that lost its node moves on). Returns the connection and the node's address
    /// (`host:port`, for logs). Fails with the last node's error when none answers.
    pub async fn connect(&mut self, name: &str) -> Result<(Connection, String), AmqpError> {
        let mut last = None;
        for _ in 0..self.urls.len() {
            let index = self.next;
            self.next = (index + 1) % self.urls.len();
            match connect(&self.urls[index], name).await {
                Ok(conn) => return Ok((conn, node_of(&self.urls[index]))),
                Err(e) => {
                    if self.urls.len() > 1 {
                        tracing::warn!(node = %node_of(&self.urls[index]), "{name}: broker node unavailable: {}", crate::runtime::cli::chain(&e));
                    }
                    last = Some(e);
                }
            }
        }
        Err(last.expect("a node list is never empty"))
    }
}

/// Connects to one of the nodes of `list` (a random one first, then the others in turn):
/// for one-shot commands. Workers and servers keep a [`Nodes`] to move on after a loss.
pub async fn connect_any(list: &UrlList, name: &str) -> Result<Connection, AmqpError> {
    Ok(Nodes::new(list).connect(name).await?.0)
}

/// `host:port` of a broker URL (5672, or 5671 for amqps, when it names none).
fn node_of(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(u) => {
            let default = if u.scheme() == "amqps" { 5671 } else { 5672 };
            format!(
                "{}:{}",
                u.host_str().unwrap_or("?"),
                u.port().unwrap_or(default)
            )
        }
        Err(_) => "<unparsable url>".into(),
    }
}

/// A channel with publisher confirms enabled.
pub async fn confirm_channel(conn: &Connection) -> Result<Channel, AmqpError> {
    let channel = conn.create_channel().await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    Ok(channel)
}

/// Persistent (delivery mode 2) properties with a content type.
pub fn persistent(content_type: &str) -> BasicProperties {
    BasicProperties::default()
        .with_delivery_mode(2)
        .with_content_type(content_type.into())
}

/// Longest wait for the broker to take a publish, and then to confirm it. lapin can leave
/// both futures pending for ever when the broker closes the connection under them
/// (amqp-rs/lapin#409: `basic_publish` hangs when the server closes the connection); past
/// this the publish is an infrastructure error, as a lost connection is.
pub const PUBLISH_TIMEOUT: Duration = Duration::from_secs(30);

/// Publishes and returns the confirm future, so callers can keep a window of them.
pub async fn publish(
    channel: &Channel,
    exchange: &str,
    routing_key: &str,
    body: &[u8],
    properties: BasicProperties,
) -> Result<PublisherConfirm, AmqpError> {
    let publishing = channel.basic_publish(
        ShortString::from(exchange),
        ShortString::from(routing_key),
        BasicPublishOptions {
            mandatory: true,
            immediate: false,
        },
        body,
        properties,
    );
    within_publish_timeout("take", routing_key, publishing).await
}

/// `step` (the broker taking a publish, or confirming it) within [`PUBLISH_TIMEOUT`].
async fn within_publish_timeout<T>(
    what: &'static str,
    routing_key: &str,
    step: impl Future<Output = Result<T, lapin::Error>>,
) -> Result<T, AmqpError> {
    match tokio::time::timeout(PUBLISH_TIMEOUT, step).await {
        Ok(done) => Ok(done?),
        Err(_) => Err(AmqpError::NoReply(
            what,
            routing_key.to_string(),
            PUBLISH_TIMEOUT,
        )),
    }
}

/// Awaits a confirm: `Ok` only when the broker took responsibility for the message.
pub async fn confirmed(confirm: PublisherConfirm, routing_key: &str) -> Result<(), AmqpError> {
    match within_publish_timeout("confirm", routing_key, confirm).await? {
        Confirmation::Ack(None) => Ok(()),
        Confirmation::Ack(Some(_)) => Err(AmqpError::Returned(routing_key.to_string())),
        Confirmation::Nack(_) => Err(AmqpError::Nacked(routing_key.to_string())),
        Confirmation::NotRequested => Ok(()),
    }
}

/// Publishes and waits for the broker's confirm.
pub async fn publish_confirmed(
    channel: &Channel,
    exchange: &str,
    routing_key: &str,
    body: &[u8],
    properties: BasicProperties,
) -> Result<(), AmqpError> {
    let confirm = publish(channel, exchange, routing_key, body, properties).await?;
    confirmed(confirm, routing_key).await
}

/// Messages ready in an existing queue (a passive declare; fails if it does not exist).
pub async fn queue_depth(channel: &Channel, queue: &str) -> Result<u32, AmqpError> {
    let declared = channel
        .queue_declare(
            queue.into(),
            lapin::options::QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    Ok(declared.message_count())
}

/// Typed access to AMQP headers.
pub trait HeadersExt {
    fn set_str(&mut self, key: &str, value: &str);
    fn set_u64(&mut self, key: &str, value: u64);
    fn get_str(&self, key: &str) -> Option<String>;
    fn get_u64(&self, key: &str) -> Option<u64>;
}

impl HeadersExt for FieldTable {
    fn set_str(&mut self, key: &str, value: &str) {
        self.insert(
            key.into(),
            AMQPValue::LongString(LongString::from(value.as_bytes().to_vec())),
        );
    }

    fn set_u64(&mut self, key: &str, value: u64) {
        self.insert(
            key.into(),
            AMQPValue::LongLongInt(i64::try_from(value).unwrap_or(i64::MAX)),
        );
    }

    fn get_str(&self, key: &str) -> Option<String> {
        match self.inner().get(key)? {
            AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
            AMQPValue::ShortString(s) => Some(s.as_str().to_string()),
            _ => None,
        }
    }

    fn get_u64(&self, key: &str) -> Option<u64> {
        match self.inner().get(key)? {
            AMQPValue::ShortShortInt(n) => u64::try_from(*n).ok(),
            AMQPValue::ShortShortUInt(n) => Some(u64::from(*n)),
            AMQPValue::ShortInt(n) => u64::try_from(*n).ok(),
            AMQPValue::ShortUInt(n) => Some(u64::from(*n)),
            AMQPValue::LongInt(n) => u64::try_from(*n).ok(),
            AMQPValue::LongUInt(n) => Some(u64::from(*n)),
            AMQPValue::LongLongInt(n) => u64::try_from(*n).ok(),
            AMQPValue::LongString(s) => String::from_utf8_lossy(s.as_bytes()).parse().ok(),
            AMQPValue::ShortString(s) => s.as_str().parse().ok(),
            _ => None,
        }
    }
}

/// The headers of a delivery (empty if it had none).
pub fn headers_of(properties: &BasicProperties) -> FieldTable {
    properties.headers().clone().unwrap_or_default()
}

/// Header names tributary sets on its own messages.
pub mod header {
    pub const STAGE: &str = "x-tributary-stage";
    pub const ERROR: &str = "x-tributary-error";
    pub const REASON: &str = "x-tributary-reason";
    pub const ATTEMPTS: &str = "x-tributary-attempts";
    pub const HTTP_STATUS: &str = "x-tributary-http-status";
    pub const FAILED_AT: &str = "x-tributary-failed-at";
    pub const JOB_ID: &str = "x-tributary-job-id";
    pub const TASK_ID: &str = "x-tributary-task-id";
    pub const URL: &str = "x-tributary-url";
    pub const ENQUEUED_MS: &str = "x-tributary-enqueued-ms";
    /// W3C trace context.
    pub const TRACEPARENT: &str = "traceparent";
    /// On a task put aside by its host's rate limit: its turn in the host's queue (Redis
    /// time, microseconds since the epoch; see `hostlimit::Turn`).
    pub const HOST_TURN: &str = "x-tributary-host-turn";
    /// On a task put aside for its host (rate, pause, concurrency cap): how many times it
    /// was put aside so far.
    pub const DEFERRALS: &str = "x-tributary-deferrals";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nodes_are_named_by_host_and_port() {
        assert_eq!(node_of("amqp://u:p@10.0.0.1:5701/%2f"), "10.0.0.1:5701");
        assert_eq!(node_of("amqp://rabbit/"), "rabbit:5672");
        assert_eq!(node_of("amqps://rabbit/"), "rabbit:5671");
    }

    #[tokio::test]
    async fn nodes_are_tried_in_turn_and_each_failure_moves_on() {
        // Two closed ports: every node refuses, each once per connect.
        let list = UrlList::amqp("amqp://127.0.0.1:1/%2f,amqp://127.0.0.1:2/%2f").unwrap();
        let mut nodes = Nodes::new(&list);
        let first = nodes.next;
        assert!(nodes.connect("test").await.is_err());
        assert_eq!(nodes.next, first, "both tried, back at the start");
    }

    #[test]
    fn headers_round_trip() {
        let mut t = FieldTable::default();
        t.set_str("a", "x");
        t.set_u64("n", 7);
        assert_eq!(t.get_str("a").as_deref(), Some("x"));
        assert_eq!(t.get_u64("n"), Some(7));
        assert_eq!(t.get_u64("a"), None);
        assert_eq!(t.get_str("missing"), None);
    }
}
