//! The headers of dead letters and retries, written and read in one place.

use std::time::Duration;

use lapin::types::AMQPValue;
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel};
use serde::Serialize;
use uuid::Uuid;

use crate::broker::amqp;
use crate::broker::amqp::{HeadersExt, header, headers_of};
pub use crate::message::TaskRef;
use crate::message::salvage::Entry;
use crate::names::{Names, Stage};
use crate::policy::{ErrorClass, Failure};
use crate::runtime::metrics::metrics;
use crate::runtime::redact::redact_url;
use crate::store::{Mark, Store};

fn set_task_ref(headers: &mut FieldTable, task: &TaskRef) {
    if let Some(job) = task.job_id {
        headers.set_str(header::JOB_ID, &job.to_string());
    }
    if let Some(id) = task.task_id {
        headers.set_str(header::TASK_ID, &id.to_string());
    }
    if let Some(url) = &task.url {
        headers.set_str(header::URL, &redact_url(url));
    }
    if let Some(ms) = task.enqueued_ms {
        headers.set_u64(header::ENQUEUED_MS, ms);
    }
    if let Some(tp) = &task.traceparent {
        headers.set_str(header::TRACEPARENT, tp);
    }
}

/// Properties of a dead letter: persistent, the original content type, and the design's
/// `x-tributary-*` headers.
pub fn dead_properties(
    content_type: &str,
    stage: Stage,
    failure: &Failure,
    attempts: u32,
    task: &TaskRef,
) -> BasicProperties {
    let mut headers = FieldTable::default();
    headers.set_str(header::STAGE, stage.as_str());
    headers.set_str(header::ERROR, failure.class.as_str());
    headers.set_str(header::REASON, &failure.reason);
    headers.set_u64(header::ATTEMPTS, u64::from(attempts));
    if let Some(status) = failure.http_status {
        headers.set_u64(header::HTTP_STATUS, u64::from(status));
    }
    headers.set_str(header::FAILED_AT, &rfc3339_now());
    set_task_ref(&mut headers, task);
    crate::broker::amqp::persistent(content_type).with_headers(headers)
}

/// A task (or a message that names none) on its way to its stage's dead-letter queue.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    /// The task alone, in the stage's format (or the whole message that names none).
    pub body: Vec<u8>,
    pub content_type: String,
    pub failure: Failure,
    pub attempts: u32,
    pub task: TaskRef,
}

impl DeadLetter {
    /// A task split out of a message ([`crate::message::salvage::split`]).
    pub fn of_entry(entry: Entry, failure: Failure, attempts: u32) -> Self {
        Self {
            body: entry.body,
            content_type: entry.content_type,
            failure,
            attempts,
            task: entry.task,
        }
    }
}

/// Publishes dead letters to `stage`'s dead-letter queue (every publish confirmed), then
/// marks their tasks dead in their jobs (one script call per job) and counts them in the
/// metrics: what every stage does with what will not pass. The messages they came from
/// may be acked once this returns `Ok`.
pub async fn bury(
    channel: &Channel,
    store: &Store,
    stage: Stage,
    letters: &[DeadLetter],
) -> anyhow::Result<()> {
    let exchange = store.names().exchange();
    let routing_key = Names::dead_routing_key(stage);
    let mut confirms = Vec::with_capacity(letters.len());
    for letter in letters {
        let properties = dead_properties(
            &letter.content_type,
            stage,
            &letter.failure,
            letter.attempts,
            &letter.task,
        );
        confirms
            .push(amqp::publish(channel, exchange, &routing_key, &letter.body, properties).await?);
    }
    for confirm in confirms {
        amqp::confirmed(confirm, &routing_key).await?;
    }
    let tasks = letters
        .iter()
        .filter_map(|l| l.task.job_id.zip(l.task.task_id));
    store.mark_many(Mark::Dead, tasks).await?;
    for letter in letters {
        metrics().dead(stage, letter.failure.class);
    }
    Ok(())
}

/// Properties of a message going (back) to a stage queue: the attempt number it will be
/// on arrival, an optional per-message TTL (for delay queues), and who it belongs to.
pub fn stage_properties(
    content_type: &str,
    attempts: u32,
    ttl: Option<Duration>,
    task: &TaskRef,
) -> BasicProperties {
    let mut headers = FieldTable::default();
    headers.set_u64(header::ATTEMPTS, u64::from(attempts));
    set_task_ref(&mut headers, task);
    let props = crate::broker::amqp::persistent(content_type).with_headers(headers);
    match ttl {
        Some(ttl) => props.with_expiration(ttl.as_millis().max(1).to_string().into()),
        None => props,
    }
}

/// The attempt a delivery is on (1 for a first delivery).
pub fn attempt_of(properties: &BasicProperties) -> u32 {
    headers_of(properties)
        .get_u64(header::ATTEMPTS)
        .map(|n| n.clamp(1, u64::from(u32::MAX)) as u32)
        .unwrap_or(1)
}

/// When the task of a delivery was first enqueued, if the publisher said.
pub fn enqueued_ms_of(properties: &BasicProperties) -> Option<u64> {
    headers_of(properties).get_u64(header::ENQUEUED_MS)
}

/// The trace context a publisher put on a delivery, if any.
pub fn traceparent_of(properties: &BasicProperties) -> Option<String> {
    headers_of(properties).get_str(header::TRACEPARENT)
}

/// What `dlq list` prints for one dead letter.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeadInfo {
    pub task_id: Option<Uuid>,
    pub job_id: Option<Uuid>,
    pub url: Option<String>,
    pub stage: Option<String>,
    pub error: Option<String>,
    pub reason: Option<String>,
    pub attempts: Option<u64>,
    pub status: Option<u64>,
    pub failed_at: Option<String>,
}

impl DeadInfo {
    pub fn from_properties(properties: &BasicProperties) -> Self {
        let h = headers_of(properties);
        let uuid = |key| h.get_str(key).and_then(|s| Uuid::parse_str(&s).ok());
        Self {
            task_id: uuid(header::TASK_ID),
            job_id: uuid(header::JOB_ID),
            url: h.get_str(header::URL),
            stage: h.get_str(header::STAGE),
            error: h.get_str(header::ERROR),
            reason: h.get_str(header::REASON),
            attempts: h.get_u64(header::ATTEMPTS),
            status: h.get_u64(header::HTTP_STATUS),
            failed_at: h.get_str(header::FAILED_AT),
        }
    }
}

/// Why the broker itself dead-lettered a message: the latest entry of its `x-death` header
/// (most recent first; `x-first-death-*` names the first, which for a task that passed a
/// delay queue is that queue's `expired`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerDeath {
    /// `delivery_limit`, `expired`, `rejected`, `maxlen`.
    pub reason: String,
    /// The queue it was dead-lettered from.
    pub queue: String,
    /// Deliveries before it (`x-delivery-count` of a quorum queue), if known.
    pub deliveries: Option<u64>,
}

impl BrokerDeath {
    /// `None` for a message the broker never dead-lettered.
    pub fn of(properties: &BasicProperties) -> Option<Self> {
        let headers = headers_of(properties);
        let latest = match headers.inner().get("x-death") {
            Some(AMQPValue::FieldArray(deaths)) => match deaths.as_slice().first() {
                Some(AMQPValue::FieldTable(latest)) => Some(latest.clone()),
                _ => None,
            },
            _ => None,
        };
        let (reason, queue) = match &latest {
            Some(table) => (
                table.get_str("reason")?,
                table.get_str("queue").unwrap_or_default(),
            ),
            None => (
                headers.get_str("x-first-death-reason")?,
                headers.get_str("x-first-death-queue").unwrap_or_default(),
            ),
        };
        Some(Self {
            reason,
            queue,
            deliveries: headers.get_u64("x-delivery-count"),
        })
    }

    /// The error class a dead letter of this reason is counted as.
    pub fn class(&self) -> ErrorClass {
        match self.reason.as_str() {
            "delivery_limit" => ErrorClass::DeliveryLimit,
            "expired" => ErrorClass::Expired,
            _ => ErrorClass::Rejected,
        }
    }

    /// The failure of a dead letter of this reason.
    pub fn failure(&self) -> Failure {
        Failure::new(
            self.class(),
            format!(
                "the broker dead-lettered it from {} ({})",
                self.queue, self.reason
            ),
        )
    }
}

/// Now as RFC 3339 (UTC).
pub fn rfc3339_now() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use lapin::types::{FieldArray, LongString};

    #[test]
    fn dead_headers_round_trip() {
        let task = TaskRef {
            job_id: Some(Uuid::new_v4()),
            task_id: Some(Uuid::new_v4()),
            url: Some("http://u:secret@a.example/x".into()),
            enqueued_ms: Some(1),
            traceparent: None,
        };
        let props = dead_properties(
            "application/json",
            Stage::Fetch,
            &Failure::http(404, None),
            3,
            &task,
        );
        let info = DeadInfo::from_properties(&props);
        assert_eq!(info.job_id, task.job_id);
        assert_eq!(info.task_id, task.task_id);
        assert_eq!(info.url.as_deref(), Some("http://u:***@a.example/x"));
        assert_eq!(info.stage.as_deref(), Some("fetch"));
        assert_eq!(info.error.as_deref(), Some(ErrorClass::HttpStatus.as_str()));
        assert_eq!(info.attempts, Some(3));
        assert_eq!(info.status, Some(404));
        assert!(info.failed_at.unwrap().ends_with('Z'));
        assert_eq!(attempt_of(&props), 3);
    }

    #[test]
    fn stage_properties_carry_attempts_and_ttl() {
        let p = stage_properties(
            "application/json",
            2,
            Some(Duration::from_millis(250)),
            &TaskRef::default(),
        );
        assert_eq!(attempt_of(&p), 2);
        assert_eq!(p.expiration().as_ref().map(|s| s.as_str()), Some("250"));
        assert_eq!(attempt_of(&BasicProperties::default()), 1);
    }

    fn death(reason: &str, queue: &str) -> AMQPValue {
        let mut table = FieldTable::default();
        table.set_str("reason", reason);
        table.set_str("queue", queue);
        AMQPValue::FieldTable(table)
    }

    #[test]
    fn the_latest_broker_death_counts() {
        // Passed a delay queue (expired), then hit the delivery limit of ns.fetch.
        let mut headers = FieldTable::default();
        headers.insert(
            "x-death".into(),
            AMQPValue::FieldArray(FieldArray::from(vec![
                death("delivery_limit", "ns.fetch"),
                death("expired", "ns.fetch.retry.1s"),
            ])),
        );
        headers.insert(
            "x-first-death-reason".into(),
            AMQPValue::LongString(LongString::from("expired")),
        );
        headers.insert("x-delivery-count".into(), AMQPValue::LongInt(10));
        let props = BasicProperties::default().with_headers(headers);
        let death = BrokerDeath::of(&props).unwrap();
        assert_eq!(death.class(), ErrorClass::DeliveryLimit);
        assert_eq!(death.queue, "ns.fetch");
        assert_eq!(death.deliveries, Some(10));
        assert!(death.failure().reason.contains("ns.fetch (delivery_limit)"));
        assert_eq!(BrokerDeath::of(&BasicProperties::default()), None);
        // Only the first-death headers (older brokers): used as they are.
        let mut first = FieldTable::default();
        first.set_str("x-first-death-reason", "rejected");
        let props = BasicProperties::default().with_headers(first);
        assert_eq!(
            BrokerDeath::of(&props).unwrap().class(),
            ErrorClass::Rejected
        );
    }
}
