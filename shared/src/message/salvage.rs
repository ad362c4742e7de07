//! Who a message that will not pass belongs to, and how to split it into one dead letter
//! per task.
//!
//! A message may fail to decode as a whole (a frame of another version during a rolling
//! upgrade, a truncated body, a foreign task with an `ftp://` URL) and still name its jobs
//! and tasks. Those tasks must be counted dead in their jobs, or the jobs never finish:
//! [`task_ref_of_json`] reads what it can of one JSON object, and [`split`] turns any
//! stage's message into [`Entry`]s — one per task, each with a body that holds only that
//! task, in the stage's format — reading leniently where strict decoding failed. What
//! names no task stays one entry with an empty [`TaskRef`].

use serde_json::Value;
use uuid::Uuid;

use super::{
    CONTENT_TYPE_PAYLOADS, CONTENT_TYPE_RESULTS, CONTENT_TYPE_TASK, PAYLOAD_MAGIC, ResultBatch,
    TaskEntry, decode_payloads, decode_tasks, derive_task_id, encode_payloads, push_frame,
    take_frame,
};
use crate::names::Stage;

/// Who a dead or retried message belongs to (for headers and `dlq list`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TaskRef {
    pub job_id: Option<Uuid>,
    pub task_id: Option<Uuid>,
    pub url: Option<String>,
    pub enqueued_ms: Option<u64>,
    pub traceparent: Option<String>,
}

/// What one JSON object (a task, a payload header, a task result) says about who it
/// belongs to. A task without a `task_id` but with a job gets the id its publisher's task
/// would have had (derived from the job, the URL and `salt`, as [`super::Task::from_json`]
/// does).
pub fn task_ref_of_json(raw: &[u8], salt: &str) -> TaskRef {
    let Ok(Value::Object(object)) = serde_json::from_slice::<Value>(raw) else {
        return TaskRef::default();
    };
    task_ref_of_object(&object, Some(salt))
}

fn task_ref_of_object(object: &serde_json::Map<String, Value>, salt: Option<&str>) -> TaskRef {
    let uuid = |key: &str| {
        object
            .get(key)
            .and_then(Value::as_str)
            .and_then(|s| Uuid::parse_str(s).ok())
            .filter(|id| !id.is_nil())
    };
    let text = |key: &str| object.get(key).and_then(Value::as_str).map(str::to_string);
    let job_id = uuid("job_id");
    let url = text("url");
    let task_id = uuid("task_id").or_else(|| {
        let (job, salt) = job_id.zip(salt)?;
        Some(derive_task_id(job, url.as_deref().unwrap_or(""), salt))
    });
    TaskRef {
        job_id,
        task_id: task_id.filter(|_| job_id.is_some()),
        url,
        enqueued_ms: object.get("enqueued_ms").and_then(Value::as_u64),
        traceparent: text("traceparent"),
    }
}

/// One task's share of a message: who it belongs to, and a body in the stage's format
/// that holds only it.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub task: TaskRef,
    pub body: Vec<u8>,
    pub content_type: String,
}

/// Splits a message of `stage` into one entry per task it holds (see the module docs).
pub fn split(
    stage: Stage,
    body: &[u8],
    content_type: Option<&str>,
    message_id: Option<&str>,
) -> Vec<Entry> {
    let entries = match stage {
        Stage::Fetch => split_tasks(body, content_type, message_id),
        Stage::Process => split_payloads(body),
        Stage::Results => split_results(body),
    };
    if entries.is_empty() {
        return vec![whole(body, content_type, stage)];
    }
    entries
}

/// The whole message as one entry that names no task.
fn whole(body: &[u8], content_type: Option<&str>, stage: Stage) -> Entry {
    let default = super::stage_content_type(stage);
    Entry {
        task: TaskRef::default(),
        body: body.to_vec(),
        content_type: content_type.unwrap_or(default).to_string(),
    }
}

fn split_tasks(body: &[u8], content_type: Option<&str>, message_id: Option<&str>) -> Vec<Entry> {
    decode_tasks(body, content_type, message_id)
        .into_iter()
        .map(|entry| match entry {
            TaskEntry::Task(task, _) => Entry {
                task: TaskRef {
                    job_id: Some(task.job_id),
                    task_id: Some(task.task_id),
                    url: Some(task.url.clone()),
                    enqueued_ms: None,
                    traceparent: None,
                },
                body: task.to_json(),
                content_type: CONTENT_TYPE_TASK.to_string(),
            },
            TaskEntry::Invalid { raw, task, .. } => Entry {
                task,
                body: raw,
                content_type: CONTENT_TYPE_TASK.to_string(),
            },
        })
        .collect()
}

/// A payload message: decoded strictly if it can be, else frame by frame whatever the
/// version byte says, reading each header as loose JSON. A truncated tail becomes one
/// entry that names no task.
fn split_payloads(body: &[u8]) -> Vec<Entry> {
    let entry = |task, body| Entry {
        task,
        body,
        content_type: CONTENT_TYPE_PAYLOADS.to_string(),
    };
    if let Ok(payloads) = decode_payloads(body) {
        return payloads
            .iter()
            .map(|p| {
                let header = serde_json::to_vec(&p.header).expect("a header serializes");
                entry(task_ref_of_json(&header, ""), encode_payloads([p]))
            })
            .collect();
    }
    let Some(rest) = body.strip_prefix(PAYLOAD_MAGIC.as_slice()) else {
        return Vec::new();
    };
    let Some((&version, mut rest)) = rest.split_first() else {
        return Vec::new();
    };
    let mut out = Vec::new();
    while !rest.is_empty() {
        let Some((header, after)) = take_frame(rest) else {
            break;
        };
        let Some((payload, after)) = take_frame(after) else {
            break;
        };
        let mut single = PAYLOAD_MAGIC.to_vec();
        single.push(version);
        push_frame(&mut single, header);
        push_frame(&mut single, payload);
        out.push(entry(task_ref_of_json(header, ""), single));
        rest = after;
    }
    if !rest.is_empty() && !out.is_empty() {
        out.push(entry(TaskRef::default(), rest.to_vec()));
    }
    out
}

/// A results message: strictly, else as loose JSON `{"v", "items": [...]}`; each item
/// becomes a results message of its own (same `v`).
fn split_results(body: &[u8]) -> Vec<Entry> {
    let entry = |task, body| Entry {
        task,
        body,
        content_type: CONTENT_TYPE_RESULTS.to_string(),
    };
    if let Ok(batch) = ResultBatch::from_json(body) {
        return batch
            .items
            .into_iter()
            .map(|item| {
                let task = TaskRef {
                    job_id: Some(item.job_id),
                    task_id: Some(item.task_id),
                    url: None,
                    enqueued_ms: item.enqueued_ms,
                    traceparent: item.traceparent.clone(),
                };
                entry(task, ResultBatch::new(vec![item]).to_json())
            })
            .collect();
    }
    let Ok(Value::Object(message)) = serde_json::from_slice::<Value>(body) else {
        return Vec::new();
    };
    let version = message.get("v").cloned().unwrap_or(Value::Null);
    let Some(Value::Array(items)) = message.get("items") else {
        return Vec::new();
    };
    items
        .iter()
        .map(|item| {
            let task = match item {
                Value::Object(object) => task_ref_of_object(object, None),
                _ => TaskRef::default(),
            };
            let single = serde_json::json!({"v": version, "items": [item]});
            entry(task, serde_json::to_vec(&single).expect("JSON serializes"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{CONTENT_TYPE_TASKS, Payload, PayloadHeader, Record, TaskResult};

    const JOB: &str = "6f1c1b7e-4a55-4d0e-9a3c-0a8a3f3f2b10";

    fn job() -> Uuid {
        Uuid::parse_str(JOB).unwrap()
    }

    #[test]
    fn an_invalid_task_that_names_its_job_keeps_its_job_and_derived_id() {
        let raw = format!(r#"{{"v":1,"job_id":"{JOB}","url":"ftp://x/1"}}"#);
        let task = task_ref_of_json(raw.as_bytes(), "m#0");
        assert_eq!(task.job_id, Some(job()));
        assert_eq!(
            task.task_id,
            Some(derive_task_id(job(), "ftp://x/1", "m#0"))
        );
        assert_eq!(task.url.as_deref(), Some("ftp://x/1"));
        // No job: no task id either (nothing to count it in).
        let orphan = task_ref_of_json(br#"{"task_id":"6f1c1b7e-4a55-4d0e-9a3c-0a8a3f3f2b11"}"#, "");
        assert_eq!((orphan.job_id, orphan.task_id), (None, None));
        assert_eq!(task_ref_of_json(b"not json", ""), TaskRef::default());
    }

    fn payload(n: u8) -> Payload {
        Payload {
            header: PayloadHeader {
                v: 1,
                job_id: job(),
                task_id: Uuid::from_bytes([n; 16]),
                url: format!("http://a/{n}"),
                status: 200,
                content_type: None,
                meta: None,
                attempts: 1,
                enqueued_ms: Some(7),
                traceparent: None,
            },
            body: bytes::Bytes::from(vec![n; 3]),
        }
    }

    #[test]
    fn payload_messages_split_per_task_even_of_another_version() {
        let (a, b) = (payload(1), payload(2));
        let good = encode_payloads([&a, &b]);
        let entries = split(Stage::Process, &good, None, None);
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[1].task.task_id, Some(b.header.task_id));
        assert_eq!(decode_payloads(&entries[1].body).unwrap(), vec![b.clone()]);
        // Version 9 does not decode, but its frames still name their tasks.
        let mut future = good.clone();
        future[4] = 9;
        let entries = split(Stage::Process, &future, None, None);
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0].task.job_id, Some(job()));
        assert_eq!(entries[0].task.enqueued_ms, Some(7));
        assert_eq!(entries[0].body[4], 9, "the body keeps its version");
        // A truncated tail is kept as a dead letter of its own.
        let entries = split(Stage::Process, &future[..future.len() - 2], None, None);
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[1].task, TaskRef::default());
        // Garbage is one entry that names nothing.
        let garbage = split(Stage::Process, b"garbage", None, None);
        assert_eq!(garbage.len(), 1);
        assert_eq!(garbage[0].task, TaskRef::default());
        assert_eq!(garbage[0].body, b"garbage");
    }

    #[test]
    fn results_messages_split_per_task_even_of_another_version() {
        let item = |n: u8| TaskResult {
            job_id: job(),
            task_id: Uuid::from_bytes([n; 16]),
            enqueued_ms: None,
            traceparent: None,
            records: vec![Record {
                group: "A".into(),
                count: 1,
                sum: 1.0,
                min: 1.0,
                max: 1.0,
            }],
        };
        let good = ResultBatch::new(vec![item(1), item(2)]).to_json();
        let entries = split(Stage::Results, &good, None, None);
        assert_eq!(entries.len(), 2);
        assert_eq!(
            ResultBatch::from_json(&entries[0].body).unwrap().items,
            vec![item(1)]
        );
        let future = String::from_utf8(good)
            .unwrap()
            .replacen("\"v\":1", "\"v\":2", 1);
        let entries = split(Stage::Results, future.as_bytes(), None, None);
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[1].task.task_id, Some(Uuid::from_bytes([2; 16])));
        assert!(String::from_utf8_lossy(&entries[1].body).contains("\"v\":2"));
    }

    #[test]
    fn task_batches_split_per_line() {
        let line = format!(r#"{{"v":1,"job_id":"{JOB}","url":"http://a/1"}}"#);
        let bad = format!(r#"{{"v":1,"job_id":"{JOB}","url":"ftp://a/2"}}"#);
        let body = format!("{line}\n{bad}\n");
        let entries = split(
            Stage::Fetch,
            body.as_bytes(),
            Some(CONTENT_TYPE_TASKS),
            Some("m"),
        );
        assert_eq!(entries.len(), 2);
        assert!(entries.iter().all(|e| e.task.job_id == Some(job())));
        assert_eq!(entries[1].body, bad.as_bytes());
        assert_eq!(entries[0].content_type, CONTENT_TYPE_TASK);
    }
}
