//! What the broker dead-letters by itself is counted like any other dead letter.
//!
//! A stage queue dead-letters on its own when a message reaches a quorum queue's delivery
//! limit (its consumer crashed, or Redis was down, every time) or expires or is rejected.
//! Those messages go to `<ns>.<stage>.dlx` ([`Names::dlx_queue`]), not straight to the
//! dead-letter queue: each stage's workers consume it [`alongside`] their stage queue, split
//! every message into its tasks, and [`bury`] each — published to `<ns>.<stage>.dead` with
//! the `x-tributary-*` headers (error class `delivery_limit`, `expired` or `rejected`) and
//! marked dead in its job — then ack. So `dead` counts them, `dlq list --error
//! delivery_limit` finds them, `dlq replay` brings them back, and the job finishes.
//!
//! [`Names::dlx_queue`]: crate::names::Names::dlx_queue

use std::future::Future;

use anyhow::Context as _;
use futures::StreamExt;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicCancelOptions};

use super::session::Session;
use crate::broker::deadletter::{BrokerDeath, DeadLetter, bury, enqueued_ms_of, traceparent_of};
use crate::message::salvage;
use crate::names::Stage;
use crate::policy::{ErrorClass, Failure};

/// Broker dead letters taken at once (each is settled before the next).
const PREFETCH: u16 = 8;

/// Runs `main` (the stage's consume loop) and the accounting of `stage`'s broker dead
/// letters side by side; returns `main`'s result (an accounting error ends the session).
pub async fn alongside<F>(session: &Session, stage: Stage, main: F) -> anyhow::Result<()>
where
    F: Future<Output = anyhow::Result<()>>,
{
    let account = account(session, stage);
    tokio::pin!(main);
    tokio::pin!(account);
    tokio::select! {
        result = &mut main => result,
        result = &mut account => {
            result?;
            main.await
        }
    }
}

/// Consumes `stage`'s `.dlx` queue until shutdown.
async fn account(session: &Session, stage: Stage) -> anyhow::Result<()> {
    let publisher = session.confirm_channel().await?;
    let queue = session.store.names().dlx_queue(stage);
    let (channel, mut consumer, tag) = session.consumer(&queue, PREFETCH, "accounting").await?;
    loop {
        let delivery = tokio::select! {
            _ = session.shutdown.cancelled() => {
                let _ = channel.basic_cancel(tag.as_str().into(), BasicCancelOptions::default()).await;
                return Ok(());
            }
            next = consumer.next() => next.with_context(|| format!("the broker cancelled the consumer on {queue}"))??,
        };
        let letters = dead_letters(stage, &delivery);
        let tasks = letters.iter().filter(|l| l.task.task_id.is_some()).count();
        tracing::warn!(
            %stage,
            tasks,
            "the broker dead-lettered a message: {}",
            letters.first().map_or("", |l| l.failure.reason.as_str())
        );
        bury(&publisher, &session.store, stage, &letters).await?;
        delivery.acker.ack(BasicAckOptions::default()).await?;
    }
}

/// One dead letter per task of a message the broker dead-lettered from `stage`.
fn dead_letters(stage: Stage, delivery: &Delivery) -> Vec<DeadLetter> {
    let properties = &delivery.properties;
    let death = BrokerDeath::of(properties);
    let failure = death.as_ref().map_or_else(
        || Failure::new(ErrorClass::Rejected, "the broker dead-lettered it"),
        BrokerDeath::failure,
    );
    let attempts = death
        .and_then(|d| d.deliveries)
        .map_or(1, |n| n.clamp(1, u64::from(u32::MAX)) as u32);
    let (enqueued_ms, traceparent) = (enqueued_ms_of(properties), traceparent_of(properties));
    salvage::split(
        stage,
        &delivery.data,
        properties.content_type().as_ref().map(|s| s.as_str()),
        properties.message_id().as_ref().map(|s| s.as_str()),
    )
    .into_iter()
    .map(|mut entry| {
        entry.task.enqueued_ms = entry.task.enqueued_ms.or(enqueued_ms);
        entry.task.traceparent = entry.task.traceparent.or_else(|| traceparent.clone());
        DeadLetter::of_entry(entry, failure.clone(), attempts)
    })
    .collect()
}
