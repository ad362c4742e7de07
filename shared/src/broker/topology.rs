//! Declares the namespace's exchange and queues. Idempotent: every binary calls it at start,
//! so any start order works. The only place that declares broker objects.

use std::time::Duration;

use lapin::Channel;
use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString};
use serde_json::{Map, Value};

use crate::broker::amqp::AmqpError;
use crate::names::{Names, Stage};
use crate::runtime::config::QueueType;

/// How many times a quorum queue redelivers a message that was never acked (its consumer
/// crashed each time) before dead-lettering it as `delivery_limit`.
pub const QUORUM_DELIVERY_LIMIT: i64 = 10;

/// What to declare besides the fixed stage and dead-letter queues.
#[derive(Debug, Clone)]
pub struct Topology {
    pub names: Names,
    pub queue_type: QueueType,
    /// Delay queues of the retry ladder, per stage.
    pub retry_steps: Vec<(Stage, Duration)>,
}

fn long(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s.as_bytes().to_vec()))
}

impl Topology {
    pub fn new(names: Names, queue_type: QueueType) -> Self {
        Self {
            names,
            queue_type,
            retry_steps: Vec::new(),
        }
    }

    pub fn with_retries(mut self, stage: Stage, steps: &[Duration]) -> Self {
        self.retry_steps
            .extend(steps.iter().map(|step| (stage, *step)));
        self
    }

    /// Declares everything; safe to call any number of times.
    pub async fn declare(&self, channel: &Channel) -> Result<(), AmqpError> {
        self.declare_all(channel).await.map_err(|e| match e {
            AmqpError::Protocol(source) if is_precondition_failed(&source) => {
                AmqpError::Topology(crate::runtime::cli::chain(&source))
            }
            other => other,
        })
    }

    async fn declare_all(&self, channel: &Channel) -> Result<(), AmqpError> {
        let exchange = self.names.exchange();
        channel
            .exchange_declare(
                exchange.into(),
                lapin::ExchangeKind::Direct,
                ExchangeDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await?;
        for queue in self.queues() {
            self.queue(
                channel,
                &queue.name,
                &queue.routing_key,
                field_table(&queue.arguments),
            )
            .await?;
        }
        Ok(())
    }

    async fn queue(
        &self,
        channel: &Channel,
        queue: &str,
        routing_key: &str,
        args: FieldTable,
    ) -> Result<(), AmqpError> {
        channel
            .queue_declare(
                queue.into(),
                QueueDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                args,
            )
            .await?;
        channel
            .queue_bind(
                queue.into(),
                self.names.exchange().into(),
                routing_key.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
        Ok(())
    }

    /// Every queue this topology declares, in declaration order: per stage its queue,
    /// the queue the broker dead-letters it to (`.dlx`, consumed by the stage's workers to
    /// count those tasks dead) and its dead-letter queue; then the delay queues. A pure
    /// description of what [`Topology::declare`] does (it declares exactly these), so
    /// deploy files such as RabbitMQ definitions can be checked against it.
    ///
    /// With quorum queues the stage and delay queues dead-letter at least once (RabbitMQ
    /// 3.10+: `x-dead-letter-strategy` needs `x-overflow: reject-publish`), so a message
    /// the broker dead-letters while the target lacks a majority is kept until it can be
    /// moved, not dropped.
    pub fn queues(&self) -> Vec<QueueSpec> {
        let mut queues = Vec::new();
        for stage in Stage::ALL {
            let mut args = self.dead_lettering_to(&Names::dlx_routing_key(stage));
            if self.queue_type == QueueType::Quorum {
                args.insert("x-delivery-limit".into(), QUORUM_DELIVERY_LIMIT.into());
            }
            queues.push(self.spec(self.names.queue(stage), stage.as_str().into(), args));
            let (dlx, dead) = (self.typed(Map::new()), self.typed(Map::new()));
            queues.push(self.spec(
                self.names.dlx_queue(stage),
                Names::dlx_routing_key(stage),
                dlx,
            ));
            queues.push(self.spec(
                self.names.dead_queue(stage),
                Names::dead_routing_key(stage),
                dead,
            ));
        }
        for (stage, step) in &self.retry_steps {
            let args = self.dead_lettering_to(stage.as_str());
            queues.push(self.spec(
                self.names.retry_queue(*stage, *step),
                Names::retry_routing_key(*stage, *step),
                args,
            ));
        }
        queues
    }

    fn spec(&self, name: String, routing_key: String, arguments: Map<String, Value>) -> QueueSpec {
        QueueSpec {
            name,
            routing_key,
            arguments,
        }
    }

    /// `args` with the queue type (for quorum queues).
    fn typed(&self, mut args: Map<String, Value>) -> Map<String, Value> {
        if self.queue_type == QueueType::Quorum {
            args.insert("x-queue-type".into(), "quorum".into());
        }
        args
    }

    /// The arguments of a queue that the broker dead-letters to `routing_key` on the
    /// namespace exchange (at least once, for quorum queues).
    fn dead_lettering_to(&self, routing_key: &str) -> Map<String, Value> {
        let mut args = Map::new();
        args.insert(
            "x-dead-letter-exchange".into(),
            self.names.exchange().into(),
        );
        args.insert("x-dead-letter-routing-key".into(), routing_key.into());
        if self.queue_type == QueueType::Quorum {
            args.insert("x-dead-letter-strategy".into(), "at-least-once".into());
            args.insert("x-overflow".into(), "reject-publish".into());
        }
        self.typed(args)
    }

    /// Every queue name this topology declares (for clean-up in tests and tools).
    pub fn queue_names(&self) -> Vec<String> {
        self.queues().into_iter().map(|q| q.name).collect()
    }
}

/// RabbitMQ's answer to a declaration that differs from the existing queue's.
fn is_precondition_failed(e: &lapin::Error) -> bool {
    matches!(e.kind(), lapin::ErrorKind::ProtocolError(amqp)
        if matches!(amqp.kind(), lapin::protocol::AMQPErrorKind::Soft(lapin::protocol::AMQPSoftError::PRECONDITIONFAILED)))
}

/// One queue as [`Topology::declare`] declares it: durable, not auto-delete, bound to the
/// namespace exchange with `routing_key`, with `arguments` (strings, and the integer
/// `x-delivery-limit`). RabbitMQ refuses a redeclaration whose arguments differ
/// (`PRECONDITION_FAILED`), so anything else that declares these queues must match exactly.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueSpec {
    pub name: String,
    pub routing_key: String,
    pub arguments: Map<String, Value>,
}

/// The AMQP table of queue arguments: strings become long strings, integers long-long ints.
fn field_table(args: &Map<String, Value>) -> FieldTable {
    let mut table = FieldTable::default();
    for (key, value) in args {
        let value = match (value.as_str(), value.as_i64()) {
            (Some(s), _) => long(s),
            (None, Some(i)) => AMQPValue::LongLongInt(i),
            _ => unreachable!("queue argument {key} is neither a string nor an integer: {value}"),
        };
        table.insert(key.as_str().into(), value);
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The wire types must not change: a queue redeclared with an argument of another AMQP
    /// type is refused by the broker just like one with another value.
    #[test]
    fn quorum_stage_queue_arguments_keep_their_amqp_types() {
        let topology = Topology::new(Names::new("ns"), QueueType::Quorum);
        let fetch = &topology.queues()[0];
        assert_eq!(
            (fetch.name.as_str(), fetch.routing_key.as_str()),
            ("ns.fetch", "fetch")
        );
        let table = field_table(&fetch.arguments);
        let inner = table.inner();
        assert_eq!(inner.len(), 6);
        assert_eq!(inner.get("x-dead-letter-exchange"), Some(&long("ns")));
        assert_eq!(
            inner.get("x-dead-letter-routing-key"),
            Some(&long("fetch.dlx"))
        );
        assert_eq!(
            inner.get("x-dead-letter-strategy"),
            Some(&long("at-least-once"))
        );
        assert_eq!(inner.get("x-overflow"), Some(&long("reject-publish")));
        assert_eq!(inner.get("x-queue-type"), Some(&long("quorum")));
        assert_eq!(
            inner.get("x-delivery-limit"),
            Some(&AMQPValue::LongLongInt(QUORUM_DELIVERY_LIMIT))
        );
    }
}
