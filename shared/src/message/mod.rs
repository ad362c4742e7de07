//! The messages that cross the broker, and their encodings.
//!
//! - `fetch`: a [`Task`] as one JSON object (`application/json`, what other systems publish),
//!   or many tasks as NDJSON (`application/x-ndjson`, what the producer publishes: one
//!   broker message carries many tasks).
//! - `process`: many fetched payloads in one message, framed as binary
//!   ([`encode_payloads`]): a small JSON header per task and the body bytes untouched, so a
//!   body is never re-encoded.
//! - `results`: a [`ResultBatch`], JSON: per task, its records.
//!
//! Every type carries `v: 1`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::policy::{ErrorClass, Failure};

pub mod salvage;

pub use salvage::TaskRef;

pub const VERSION: u8 = 1;
pub const CONTENT_TYPE_TASK: &str = "application/json";
pub const CONTENT_TYPE_TASKS: &str = "application/x-ndjson";
pub const CONTENT_TYPE_PAYLOADS: &str = "application/vnd.tributary.payloads.v1";
pub const CONTENT_TYPE_RESULTS: &str = "application/vnd.tributary.results.v1+json";

/// The content type a stage's queue carries (for a message that names none).
pub fn stage_content_type(stage: crate::names::Stage) -> &'static str {
    use crate::names::Stage;
    match stage {
        Stage::Fetch => CONTENT_TYPE_TASK,
        Stage::Process => CONTENT_TYPE_PAYLOADS,
        Stage::Results => CONTENT_TYPE_RESULTS,
    }
}

/// Most headers a task may carry, and the longest value.
pub const MAX_TASK_HEADERS: usize = 32;
pub const MAX_HEADER_VALUE: usize = 4096;
pub const MAX_URL_LEN: usize = 8192;

/// A URL to fetch: the external contract of the `fetch` routing key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Task {
    pub v: u8,
    pub job_id: Uuid,
    /// Omitted by a publisher: derived from the job id, URL and message id (see
    /// [`derive_task_id`]) so that a redelivered message keeps its task id.
    #[serde(default)]
    pub task_id: Uuid,
    pub url: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub headers: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub meta: Option<serde_json::Value>,
}

impl Task {
    pub fn new(job_id: Uuid, url: String) -> Self {
        Self {
            v: VERSION,
            job_id,
            task_id: Uuid::new_v4(),
            url,
            headers: None,
            meta: None,
        }
    }

    /// A task whose id is already known (no random id is drawn for it).
    pub fn identified(job_id: Uuid, task_id: Uuid, url: String) -> Self {
        Self {
            v: VERSION,
            job_id,
            task_id,
            url,
            headers: None,
            meta: None,
        }
    }

    /// Parses and validates one task object; a missing task id is derived from `salt`
    /// (the AMQP message id and line number), the job id and the URL.
    pub fn from_json(bytes: &[u8], salt: &str) -> Result<Task, Failure> {
        Self::from_json_parsed(bytes, salt).map(|(task, _)| task)
    }

    /// [`Task::from_json`], with the task's URL as parsed while validating (so a fetcher
    /// never parses it again).
    pub fn from_json_parsed(bytes: &[u8], salt: &str) -> Result<(Task, url::Url), Failure> {
        let mut task: Task = serde_json::from_slice(bytes)
            .map_err(|e| Failure::new(ErrorClass::InvalidTask, format!("not a task: {e}")))?;
        let url = task.validate()?;
        if task.task_id.is_nil() {
            task.task_id = derive_task_id(task.job_id, &task.url, salt);
        }
        Ok((task, url))
    }

    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a task always serializes")
    }

    /// The checks every task passes before a fetcher touches the network; returns the
    /// parsed URL.
    pub fn validate(&self) -> Result<url::Url, Failure> {
        let invalid = |reason: String| Failure::new(ErrorClass::InvalidTask, reason);
        if self.v != VERSION {
            return Err(invalid(format!("unsupported task version {}", self.v)));
        }
        let url = check_url(&self.url)?;
        if let Some(headers) = &self.headers {
            if headers.len() > MAX_TASK_HEADERS {
                return Err(invalid(format!(
                    "{} headers (at most {MAX_TASK_HEADERS})",
                    headers.len()
                )));
            }
            for (name, value) in headers {
                check_header(name, value).map_err(invalid)?;
            }
        }
        Ok(url)
    }
}

/// The task id of a task published without one: a UUID v5 of the job id, the URL and a salt,
/// stable across redeliveries of the same message.
pub fn derive_task_id(job_id: Uuid, url: &str, salt: &str) -> Uuid {
    let name = format!("{job_id}\n{url}\n{salt}");
    Uuid::new_v5(&Uuid::NAMESPACE_URL, name.as_bytes())
}

/// Header names a task may not set: they belong to the connection, not the request.
const FORBIDDEN_HEADERS: &[&str] = &[
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "upgrade",
    "te",
    "trailer",
    "proxy-authorization",
    "proxy-connection",
    "expect",
];

fn check_header(name: &str, value: &str) -> Result<(), String> {
    let token = !name.is_empty()
        && name.len() <= 128
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
    if !token {
        return Err(format!("header name {name:?} is not a valid token"));
    }
    if FORBIDDEN_HEADERS.contains(&name.to_ascii_lowercase().as_str()) {
        return Err(format!("header {name:?} may not be set by a task"));
    }
    if value.len() > MAX_HEADER_VALUE {
        return Err(format!(
            "header {name:?} is longer than {MAX_HEADER_VALUE} bytes"
        ));
    }
    if value.bytes().any(|b| (b < 0x20 && b != b'\t') || b == 0x7f) {
        return Err(format!("header {name:?} has control characters"));
    }
    Ok(())
}

/// An absolute http(s) URL with a host.
pub fn check_url(raw: &str) -> Result<url::Url, Failure> {
    if raw.len() > MAX_URL_LEN {
        return Err(Failure::new(
            ErrorClass::InvalidTask,
            format!("url longer than {MAX_URL_LEN} bytes"),
        ));
    }
    let url = url::Url::parse(raw)
        .map_err(|e| Failure::new(ErrorClass::InvalidTask, format!("not a url ({e})")))?;
    match url.scheme() {
        "http" | "https" => {}
        other => {
            return Err(Failure::new(
                ErrorClass::BadScheme,
                format!("scheme {other:?} is not http or https"),
            ));
        }
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(Failure::new(ErrorClass::InvalidTask, "url has no host"));
    }
    Ok(url)
}

/// One entry of a `fetch` message: a valid task (and its parsed URL), or the raw bytes
/// that failed to be one (with what they say about their job and task, so the job can
/// count it dead).
#[derive(Debug)]
pub enum TaskEntry {
    Task(Task, url::Url),
    Invalid {
        raw: Vec<u8>,
        failure: Failure,
        task: TaskRef,
    },
}

/// Splits a `fetch` message into its tasks. NDJSON carries one task per non-blank line;
/// anything else is one task object.
/// `message_id` (the AMQP property, if the publisher set one) salts derived task ids.
pub fn decode_tasks(
    body: &[u8],
    content_type: Option<&str>,
    message_id: Option<&str>,
) -> Vec<TaskEntry> {
    let message_id = message_id.unwrap_or("");
    let entry = |(line, raw): (usize, &[u8])| {
        let salt = format!("{message_id}#{line}");
        match Task::from_json_parsed(raw, &salt) {
            Ok((task, url)) => TaskEntry::Task(task, url),
            Err(failure) => TaskEntry::Invalid {
                raw: raw.to_vec(),
                failure,
                task: salvage::task_ref_of_json(raw, &salt),
            },
        }
    };
    if content_type == Some(CONTENT_TYPE_TASKS) {
        body.split(|b| *b == b'\n')
            .enumerate()
            .filter(|(_, line)| !line.iter().all(u8::is_ascii_whitespace))
            .map(entry)
            .collect()
    } else {
        vec![entry((0, body))]
    }
}

/// Encodes tasks as NDJSON, one per line.
pub fn encode_tasks<'a>(tasks: impl IntoIterator<Item = &'a Task>) -> Vec<u8> {
    let mut out = Vec::new();
    for task in tasks {
        serde_json::to_writer(&mut out, task).expect("a task always serializes");
        out.push(b'\n');
    }
    out
}

/// What the fetcher knows about one downloaded body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PayloadHeader {
    pub v: u8,
    pub job_id: Uuid,
    pub task_id: Uuid,
    pub url: String,
    pub status: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub meta: Option<serde_json::Value>,
    #[serde(default)]
    pub attempts: u32,
    /// When the task was first enqueued (ms since the Unix epoch), for latency figures.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enqueued_ms: Option<u64>,
    /// The task's W3C trace context (see [`crate::runtime::trace`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
}

/// A fetched body with its header.
#[derive(Debug, Clone, PartialEq)]
pub struct Payload {
    pub header: PayloadHeader,
    pub body: bytes::Bytes,
}

pub(crate) const PAYLOAD_MAGIC: &[u8; 4] = b"TRBP";

/// Frames payloads into one `process` message: `TRBP`, version byte, then per payload a
/// big-endian u32 header length, the header JSON, a u32 body length and the body.
pub fn encode_payloads<'a, I>(payloads: I) -> Vec<u8>
where
    I: IntoIterator<Item = &'a Payload>,
    I::IntoIter: Clone,
{
    let payloads = payloads.into_iter();
    // Sized up front (bodies plus a typical header each), so the bodies are copied once.
    let size: usize = payloads
        .clone()
        .map(|p| p.body.len() + 8 + HEADER_SIZE_HINT)
        .sum();
    let mut out = Vec::with_capacity(PAYLOAD_MAGIC.len() + 1 + size);
    out.extend_from_slice(PAYLOAD_MAGIC);
    out.push(VERSION);
    for payload in payloads {
        push_header_frame(&mut out, &payload.header);
        push_frame(&mut out, &payload.body);
    }
    out
}

/// About the size of a payload header's JSON (ids, URL, trace context).
const HEADER_SIZE_HINT: usize = 320;

/// A header's JSON as a frame, written in place: the length goes in front once it is known.
fn push_header_frame(out: &mut Vec<u8>, header: &PayloadHeader) {
    let at = out.len();
    out.extend_from_slice(&[0; 4]);
    serde_json::to_writer(&mut *out, header).expect("a header always serializes");
    let len = u32::try_from(out.len() - at - 4).expect("frames are capped far below 4 GiB");
    out[at..at + 4].copy_from_slice(&len.to_be_bytes());
}

pub(crate) fn push_frame(out: &mut Vec<u8>, bytes: &[u8]) {
    let len = u32::try_from(bytes.len()).expect("frames are capped far below 4 GiB");
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(bytes);
}

/// The inverse of [`encode_payloads`]. A malformed frame fails the whole message.
pub fn decode_payloads(buf: &[u8]) -> Result<Vec<Payload>, Failure> {
    let bad = |reason: &str| Failure::new(ErrorClass::InvalidPayload, reason.to_string());
    let rest = buf
        .strip_prefix(PAYLOAD_MAGIC.as_slice())
        .ok_or_else(|| bad("not a tributary payload message"))?;
    let (&version, mut rest) = rest
        .split_first()
        .ok_or_else(|| bad("truncated payload message"))?;
    if version != VERSION {
        return Err(bad("unsupported payload message version"));
    }
    let mut out = Vec::new();
    while !rest.is_empty() {
        let (header, after) = take_frame(rest).ok_or_else(|| bad("truncated payload header"))?;
        let (body, after) = take_frame(after).ok_or_else(|| bad("truncated payload body"))?;
        let header: PayloadHeader =
            serde_json::from_slice(header).map_err(|e| bad(&format!("bad payload header: {e}")))?;
        out.push(Payload {
            header,
            body: bytes::Bytes::copy_from_slice(body),
        });
        rest = after;
    }
    Ok(out)
}

pub(crate) fn take_frame(buf: &[u8]) -> Option<(&[u8], &[u8])> {
    let len_bytes: [u8; 4] = buf.get(..4)?.try_into().ok()?;
    let len = u32::from_be_bytes(len_bytes) as usize;
    let frame = buf.get(4..4 + len)?;
    Some((frame, &buf[4 + len..]))
}

/// The statistics of one record, as the processor emits them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    pub group: String,
    pub count: u64,
    pub sum: f64,
    pub min: f64,
    pub max: f64,
}

/// One task's records.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskResult {
    pub job_id: Uuid,
    pub task_id: Uuid,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enqueued_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
    pub records: Vec<Record>,
}

/// A `results` message: many tasks' records.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResultBatch {
    pub v: u8,
    pub items: Vec<TaskResult>,
}

impl ResultBatch {
    pub fn new(items: Vec<TaskResult>) -> Self {
        Self { v: VERSION, items }
    }

    pub fn from_json(bytes: &[u8]) -> Result<Self, Failure> {
        let batch: ResultBatch = serde_json::from_slice(bytes).map_err(|e| {
            Failure::new(
                ErrorClass::InvalidPayload,
                format!("not a result batch: {e}"),
            )
        })?;
        if batch.v != VERSION {
            return Err(Failure::new(
                ErrorClass::InvalidPayload,
                format!("unsupported result version {}", batch.v),
            ));
        }
        Ok(batch)
    }

    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("results always serialize")
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job() -> Uuid {
        Uuid::parse_str("6f1c1b7e-4a55-4d0e-9a3c-0a8a3f3f2b10").unwrap()
    }

    #[test]
    fn task_defaults_and_validation() {
        let raw = br#"{"v":1,"job_id":"6f1c1b7e-4a55-4d0e-9a3c-0a8a3f3f2b10","url":"http://a.example/x"}"#;
        let t = Task::from_json(raw, "m1#0").unwrap();
        assert_eq!(t.job_id, job());
        assert!(!t.task_id.is_nil());
        assert_eq!(Task::from_json(raw, "m1#0").unwrap().task_id, t.task_id);
        assert_ne!(Task::from_json(raw, "m2#0").unwrap().task_id, t.task_id);
        assert_eq!(t.headers, None);

        let bad = Task::from_json(br#"{"v":1,"url":"http://a/"}"#, "").unwrap_err();
        assert_eq!(bad.class, ErrorClass::InvalidTask);

        let scheme = Task::from_json(
            br#"{"v":1,"job_id":"6f1c1b7e-4a55-4d0e-9a3c-0a8a3f3f2b10","url":"ftp://a/x"}"#,
            "",
        )
        .unwrap_err();
        assert_eq!(scheme.class, ErrorClass::BadScheme);

        let v2 = Task::from_json(
            br#"{"v":2,"job_id":"6f1c1b7e-4a55-4d0e-9a3c-0a8a3f3f2b10","url":"http://a/x"}"#,
            "",
        )
        .unwrap_err();
        assert!(v2.reason.contains("version"));
    }

    #[test]
    fn task_headers_are_limited() {
        let mut t = Task::new(job(), "https://a.example/".into());
        t.headers = Some(BTreeMap::from([(
            "accept".into(),
            "application/json".into(),
        )]));
        assert!(t.validate().is_ok());
        t.headers = Some(BTreeMap::from([("Host".into(), "evil".into())]));
        assert!(t.validate().is_err());
        t.headers = Some(BTreeMap::from([("x bad".into(), "v".into())]));
        assert!(t.validate().is_err());
        t.headers = Some(BTreeMap::from([("x-ok".into(), "a\r\nb".into())]));
        assert!(t.validate().is_err());
    }

    #[test]
    fn ndjson_batches_split_out_bad_lines() {
        let good = Task::new(job(), "http://a.example/1".into());
        let mut body = encode_tasks([&good]);
        body.extend_from_slice(b"\n{garbage\n");
        body.extend_from_slice(&encode_tasks([&good]));
        let entries = decode_tasks(&body, Some(CONTENT_TYPE_TASKS), None);
        assert_eq!(entries.len(), 3);
        assert!(matches!(&entries[0], TaskEntry::Task(t, _) if *t == good));
        match &entries[1] {
            TaskEntry::Invalid { raw, failure, .. } => {
                assert_eq!(raw, b"{garbage");
                assert_eq!(failure.class, ErrorClass::InvalidTask);
            }
            other => panic!("{other:?}"),
        }
        let single = decode_tasks(b"not json", Some("application/json"), None);
        assert!(matches!(&single[0], TaskEntry::Invalid { raw, .. } if raw == b"not json"));
    }

    #[test]
    fn payload_frames_round_trip() {
        let header = PayloadHeader {
            v: 1,
            job_id: job(),
            task_id: Uuid::new_v4(),
            url: "http://a/1".into(),
            status: 200,
            content_type: Some("application/json".into()),
            meta: Some(serde_json::json!({"k": [1, 2]})),
            attempts: 1,
            enqueued_ms: Some(5),
            traceparent: None,
        };
        let a = Payload {
            header: header.clone(),
            body: bytes::Bytes::from_static(br#"{"symbol":"A","prices":[1,2]}"#),
        };
        let b = Payload {
            header,
            body: bytes::Bytes::new(),
        };
        let buf = encode_payloads([&a, &b]);
        assert_eq!(decode_payloads(&buf).unwrap(), vec![a, b]);
        assert_eq!(
            decode_payloads(&buf[..buf.len() - 1]).unwrap_err().class,
            ErrorClass::InvalidPayload
        );
        assert!(decode_payloads(b"garbage").is_err());
        assert!(decode_payloads(b"TRBP\x01").unwrap().is_empty());
    }

    #[test]
    fn results_round_trip() {
        let batch = ResultBatch::new(vec![TaskResult {
            job_id: job(),
            task_id: Uuid::new_v4(),
            enqueued_ms: None,
            traceparent: None,
            records: vec![Record {
                group: "AAPL".into(),
                count: 2,
                sum: 0.1 + 0.2,
                min: 0.1,
                max: 0.2,
            }],
        }]);
        assert_eq!(ResultBatch::from_json(&batch.to_json()).unwrap(), batch);
        assert!(ResultBatch::from_json(b"{}").is_err());
    }
}
