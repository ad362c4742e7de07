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

    /// Every queue this topology declares, in declaration order: fixed stage and dead-letter
    /// queues, then the delay queues. A pure description of what [`Topology::declare`] does
    /// (it declares exactly these), so deploy files such as RabbitMQ definitions can be
    /// checked against it.
    pub fn queues(&self) -> Vec<QueueSpec> {
        let exchange = self.names.exchange();
        let quorum = self.queue_type == QueueType::Quorum;
        let mut queues = Vec::new();
        for stage in Stage::ALL {
            let mut args = Map::new();
            args.insert("x-dead-letter-exchange".into(), exchange.into());
            args.insert(
                "x-dead-letter-routing-key".into(),
                Names::dead_routing_key(stage).into(),
            );
            if quorum {
                args.insert("x-queue-type".into(), "quorum".into());
                args.insert("x-delivery-limit".into(), QUORUM_DELIVERY_LIMIT.into());
            }
            queues.push(QueueSpec {
                name: self.names.queue(stage),
                routing_key: stage.as_str().to_string(),
                arguments: args,
            });
            let mut dead_args = Map::new();
            if quorum {
                dead_args.insert("x-queue-type".into(), "quorum".into());
            }
            queues.push(QueueSpec {
                name: self.names.dead_queue(stage),
                routing_key: Names::dead_routing_key(stage),
                arguments: dead_args,
            });
        }
        for (stage, step) in &self.retry_steps {
            let mut args = Map::new();
            args.insert("x-dead-letter-exchange".into(), exchange.into());
            args.insert("x-dead-letter-routing-key".into(), stage.as_str().into());
            queues.push(QueueSpec {
                name: self.names.retry_queue(*stage, *step),
                routing_key: Names::retry_routing_key(*stage, *step),
                arguments: args,
            });
        }
        queues
    }

    /// Every queue name this topology declares (for clean-up in tests and tools).
    pub fn queue_names(&self) -> Vec<String> {
        self.queues().into_iter().map(|q| q.name).collect()
    }
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
        assert_eq!(inner.len(), 4);
        assert_eq!(inner.get("x-dead-letter-exchange"), Some(&long("ns")));
        assert_eq!(
            inner.get("x-dead-letter-routing-key"),
            Some(&long("fetch.dead"))
        );
        assert_eq!(inner.get("x-queue-type"), Some(&long("quorum")));
        assert_eq!(
            inner.get("x-delivery-limit"),
            Some(&AMQPValue::LongLongInt(QUORUM_DELIVERY_LIMIT))
        );
    }
}
