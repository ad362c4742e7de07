//! Declares the namespace's exchange and queues. Idempotent: every binary calls it at start,
//! so any start order works. The only place that declares broker objects.

use std::time::Duration;

use lapin::Channel;
use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString};

use crate::amqp::AmqpError;
use crate::config::QueueType;
use crate::names::{Names, Stage};

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
        for stage in Stage::ALL {
            let mut args = FieldTable::default();
            args.insert("x-dead-letter-exchange".into(), long(exchange));
            args.insert(
                "x-dead-letter-routing-key".into(),
                long(&Names::dead_routing_key(stage)),
            );
            if self.queue_type == QueueType::Quorum {
                args.insert("x-queue-type".into(), long("quorum"));
                args.insert(
                    "x-delivery-limit".into(),
                    AMQPValue::LongLongInt(QUORUM_DELIVERY_LIMIT),
                );
            }
            self.queue(channel, &self.names.queue(stage), stage.as_str(), args)
                .await?;
            let mut dead_args = FieldTable::default();
            if self.queue_type == QueueType::Quorum {
                dead_args.insert("x-queue-type".into(), long("quorum"));
            }
            self.queue(
                channel,
                &self.names.dead_queue(stage),
                &Names::dead_routing_key(stage),
                dead_args,
            )
            .await?;
        }
        for (stage, step) in &self.retry_steps {
            let mut args = FieldTable::default();
            args.insert("x-dead-letter-exchange".into(), long(exchange));
            args.insert("x-dead-letter-routing-key".into(), long(stage.as_str()));
            self.queue(
                channel,
                &self.names.retry_queue(*stage, *step),
                &Names::retry_routing_key(*stage, *step),
                args,
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

    /// Every queue name this topology declares (for clean-up in tests and tools).
    pub fn queue_names(&self) -> Vec<String> {
        let mut names: Vec<String> = Stage::ALL
            .into_iter()
            .flat_map(|s| [self.names.queue(s), self.names.dead_queue(s)])
            .collect();
        names.extend(
            self.retry_steps
                .iter()
                .map(|(stage, step)| self.names.retry_queue(*stage, *step)),
        );
        names
    }
}
