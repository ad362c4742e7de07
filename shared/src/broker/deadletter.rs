//! The headers of dead letters and retries, written and read in one place.

use std::time::Duration;

use lapin::BasicProperties;
use lapin::types::FieldTable;
use serde::Serialize;
use uuid::Uuid;

use crate::broker::amqp::{HeadersExt, header, headers_of};
use crate::names::Stage;
use crate::policy::Failure;
use crate::runtime::redact::redact_url;

/// Who a dead or retried message belongs to (for headers and `dlq list`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TaskRef {
    pub job_id: Option<Uuid>,
    pub task_id: Option<Uuid>,
    pub url: Option<String>,
    pub enqueued_ms: Option<u64>,
    pub traceparent: Option<String>,
}

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

/// Now as RFC 3339 (UTC).
pub fn rfc3339_now() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::ErrorClass;

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
}
