//! The server's one broker connection and one Redis store, shared by every request.
//!
//! Both are opened lazily and kept. A broker connection or channel that is no longer
//! connected is replaced on the next request; while the broker cannot be reached every
//! request that needs it gets 503 (after a failed attempt, for a second without trying
//! again, so an outage does not turn every request into a connect). The store reconnects by
//! itself (see [`Store`]).

use std::sync::Arc;
use std::time::{Duration, Instant};

use lapin::{Channel, Connection};
use tokio::sync::{Mutex, OnceCell};
use tributary::broker::amqp;
use tributary::broker::topology::Topology;
use tributary::names::Names;
use tributary::runtime::config::ConnectionArgs;
use tributary::store::Store;

use super::error::ApiError;

/// How long a failed broker connect is reported without a new attempt.
const RETRY_AFTER: Duration = Duration::from_secs(1);

/// A live broker connection and its confirm channel.
#[derive(Clone)]
pub struct Broker {
    pub conn: Arc<Connection>,
    pub channel: Channel,
}

impl Broker {
    fn is_live(&self) -> bool {
        self.conn.status().connected() && self.channel.status().connected()
    }
}

struct Slot {
    live: Option<Broker>,
    failed: Option<(Instant, String)>,
    /// The broker's nodes, tried in turn (a lost node's successor first).
    nodes: amqp::Nodes,
}

/// The broker and Redis of one namespace.
pub struct Backends {
    connection: ConnectionArgs,
    names: Names,
    broker: Mutex<Slot>,
    store: OnceCell<Store>,
}

impl Backends {
    pub fn new(connection: &ConnectionArgs) -> Self {
        Self {
            connection: connection.clone(),
            names: Names::new(&connection.namespace),
            broker: Mutex::new(Slot {
                live: None,
                failed: None,
                nodes: amqp::Nodes::new(&connection.amqp_url),
            }),
            store: OnceCell::new(),
        }
    }

    pub fn names(&self) -> &Names {
        &self.names
    }

    pub fn connection(&self) -> &ConnectionArgs {
        &self.connection
    }

    /// The live broker connection, reconnecting (and declaring the topology) if needed.
    pub async fn broker(&self) -> Result<Broker, ApiError> {
        let mut slot = self.broker.lock().await;
        if let Some(broker) = &slot.live {
            if broker.is_live() {
                return Ok(broker.clone());
            }
            tracing::warn!("the broker connection is gone; reconnecting");
            slot.live = None;
        }
        if let Some((at, reason)) = &slot.failed
            && at.elapsed() < RETRY_AFTER
        {
            return Err(ApiError::unavailable("broker unavailable", reason.clone()));
        }
        match self.connect_broker(&mut slot.nodes).await {
            Ok((broker, node)) => {
                slot.failed = None;
                slot.live = Some(broker.clone());
                tracing::info!(%node, "connected to the broker");
                Ok(broker)
            }
            Err(e) => {
                let reason = tributary::runtime::cli::chain(e.as_ref());
                slot.failed = Some((Instant::now(), reason.clone()));
                Err(ApiError::unavailable("broker unavailable", reason))
            }
        }
    }

    async fn connect_broker(&self, nodes: &mut amqp::Nodes) -> anyhow::Result<(Broker, String)> {
        let name = format!("producer-serve {}", self.names.namespace());
        let (conn, node) = nodes.connect(&name).await?;
        let setup = conn.create_channel().await?;
        Topology::new(self.names.clone(), self.connection.queue_type)
            .declare(&setup)
            .await?;
        let _ = setup.close(200, "topology declared".into()).await;
        let channel = amqp::confirm_channel(&conn).await?;
        Ok((
            Broker {
                conn: Arc::new(conn),
                channel,
            },
            node,
        ))
    }

    /// The Redis store, connecting on first use.
    pub async fn store(&self) -> Result<&Store, ApiError> {
        let c = &self.connection;
        self.store
            .get_or_try_init(|| Store::connect(c))
            .await
            .map_err(|e| {
                ApiError::unavailable("redis unavailable", tributary::runtime::cli::chain(&e))
            })
    }

    /// Whether the broker and Redis answer now (for `/healthz`).
    pub async fn health(&self) -> (bool, bool) {
        let broker = self.broker().await.is_ok();
        let redis = match self.store().await {
            Ok(store) => store.ping().await.is_ok(),
            Err(_) => false,
        };
        (broker, redis)
    }

    /// Closes the broker connection.
    pub async fn close(&self) {
        if let Some(broker) = self.broker.lock().await.live.take() {
            let _ = broker
                .conn
                .close(200, "producer serve stopped".into())
                .await;
        }
    }
}
