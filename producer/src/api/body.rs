//! `POST /v1/jobs` bodies: streamed to a temporary file (at most `--max-body-bytes`), then
//! read as a [`Source`] like `producer enqueue --file`, so the whole input is validated
//! before anything is published and memory does not grow with the body.
//!
//! A JSON body (`{"urls": [...]}` or `{"tasks": [...]}`, optional `job_id` and
//! `skip_invalid`) is converted with a streaming parser into a second spool file, one array
//! element per line; an NDJSON or text body is used as it is.

use std::fs::File;
use std::io::{BufReader, BufWriter, Write};
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderMap, header};
use futures::StreamExt as _;
use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use tempfile::NamedTempFile;
use tokio::io::AsyncWriteExt as _;
use uuid::Uuid;

use super::error::ApiError;
use crate::input::{Format, Source};

/// How a job body is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyKind {
    /// `application/json`: an object with `urls` or `tasks`.
    Json,
    /// NDJSON or text: one URL or task object per line, as `producer enqueue` reads.
    Lines,
}

/// The kind of a body from its `Content-Type` (none means lines).
pub fn kind_of(headers: &HeaderMap) -> Result<BodyKind, ApiError> {
    let Some(value) = headers.get(header::CONTENT_TYPE) else {
        return Ok(BodyKind::Lines);
    };
    let mime = value
        .to_str()
        .unwrap_or_default()
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    match mime.as_str() {
        "application/json" => Ok(BodyKind::Json),
        "application/x-ndjson"
        | "application/ndjson"
        | "application/jsonl"
        | "application/x-jsonlines"
        | "text/plain"
        | "" => Ok(BodyKind::Lines),
        other => Err(ApiError::new(
            axum::http::StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported content type",
            format!("{other:?}: send application/json, application/x-ndjson or text/plain"),
        )),
    }
}

/// Beyond the limit, how much more of a body is read (and dropped) before answering 413, so
/// that the client, still sending, reads the answer instead of a reset connection.
const DRAIN_BYTES: u64 = 16 << 20;
const DRAIN_TIME: Duration = Duration::from_secs(5);

/// Streams `body` into a temporary file; 413 beyond `limit` bytes.
pub async fn spool(body: Body, headers: &HeaderMap, limit: u64) -> Result<NamedTempFile, ApiError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let mut stream = body.into_data_stream();
    if declared.is_some_and(|n| n > limit) {
        // A client waiting for `100 Continue` has sent nothing; one declaring more than
        // can be drained will see its connection closed either way.
        let waiting = headers
            .get(header::EXPECT)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
        if !waiting && declared.is_some_and(|n| n <= limit.saturating_add(DRAIN_BYTES)) {
            drain(&mut stream).await;
        }
        return Err(ApiError::too_large(limit));
    }
    let spool = NamedTempFile::new().map_err(|e| spool_error(&e))?;
    let file = spool.as_file().try_clone().map_err(|e| spool_error(&e))?;
    let mut out = tokio::io::BufWriter::with_capacity(1 << 20, tokio::fs::File::from_std(file));
    let mut size = 0u64;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| {
            ApiError::bad_request("unreadable body", format!("reading the request body: {e}"))
        })?;
        size += chunk.len() as u64;
        if size > limit {
            drain(&mut stream).await;
            return Err(ApiError::too_large(limit));
        }
        out.write_all(&chunk).await.map_err(|e| spool_error(&e))?;
    }
    out.flush().await.map_err(|e| spool_error(&e))?;
    Ok(spool)
}

async fn drain(stream: &mut axum::body::BodyDataStream) {
    let reading = async {
        let mut dropped = 0u64;
        while let Some(Ok(chunk)) = stream.next().await {
            dropped += chunk.len() as u64;
            if dropped > DRAIN_BYTES {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(DRAIN_TIME, reading).await;
}

fn spool_error(e: &std::io::Error) -> ApiError {
    ApiError::internal(format!("cannot spool the request body: {e}"))
}

/// A job body read into a source.
#[derive(Debug)]
pub struct JobBody {
    pub source: Source,
    pub job_id: Option<Uuid>,
    pub skip_invalid: Option<bool>,
}

/// Reads a spooled body of `kind` (blocking: call it off the async threads).
pub fn read(raw: NamedTempFile, kind: BodyKind) -> Result<JobBody, ApiError> {
    match kind {
        BodyKind::Lines => Ok(JobBody {
            source: Source::Body {
                spool: raw,
                format: Format::Lines,
            },
            job_id: None,
            skip_invalid: None,
        }),
        BodyKind::Json => {
            let input = File::open(raw.path()).map_err(|e| spool_error(&e))?;
            let spool = NamedTempFile::new().map_err(|e| spool_error(&e))?;
            let output = spool.as_file().try_clone().map_err(|e| spool_error(&e))?;
            let mut out = BufWriter::with_capacity(1 << 16, output);
            let mut de =
                serde_json::Deserializer::from_reader(BufReader::with_capacity(1 << 16, input));
            let invalid =
                |e: serde_json::Error| ApiError::bad_request("invalid JSON body", e.to_string());
            let fields = de::Deserializer::deserialize_map(&mut de, JobVisitor { out: &mut out })
                .map_err(invalid)?;
            de.end().map_err(invalid)?;
            out.flush().map_err(|e| spool_error(&e))?;
            let format = fields.format.ok_or_else(|| {
                ApiError::bad_request(
                    "invalid JSON body",
                    "the object has neither \"urls\" nor \"tasks\"",
                )
            })?;
            Ok(JobBody {
                source: Source::Body { spool, format },
                job_id: fields.job_id,
                skip_invalid: fields.skip_invalid,
            })
        }
    }
}

/// The fields of a JSON job body other than its entries.
#[derive(Debug, Default)]
struct Fields {
    format: Option<Format>,
    job_id: Option<Uuid>,
    skip_invalid: Option<bool>,
}

const FIELDS: &[&str] = &["urls", "tasks", "job_id", "skip_invalid"];

struct JobVisitor<'a> {
    out: &'a mut BufWriter<File>,
}

impl<'de> Visitor<'de> for JobVisitor<'_> {
    type Value = Fields;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("an object with \"urls\" or \"tasks\"")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Fields, A::Error> {
        let mut fields = Fields::default();
        while let Some(key) = map.next_key::<String>()? {
            let format = match key.as_str() {
                "urls" => Format::JsonUrls,
                "tasks" => Format::JsonTasks,
                "job_id" => {
                    fields.job_id = map.next_value()?;
                    continue;
                }
                "skip_invalid" => {
                    fields.skip_invalid = map.next_value()?;
                    continue;
                }
                other => return Err(de::Error::unknown_field(other, FIELDS)),
            };
            if fields.format.is_some() {
                return Err(de::Error::custom("give \"urls\" or \"tasks\", once"));
            }
            map.next_value_seed(Entries {
                out: &mut *self.out,
            })?;
            fields.format = Some(format);
        }
        Ok(fields)
    }
}

/// Writes each element of a JSON array as one compact JSON line.
struct Entries<'a> {
    out: &'a mut BufWriter<File>,
}

impl<'de> DeserializeSeed<'de> for Entries<'_> {
    type Value = ();

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for Entries<'_> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("an array")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while let Some(entry) = seq.next_element::<serde_json::Value>()? {
            serde_json::to_writer(&mut *self.out, &entry).map_err(de::Error::custom)?;
            self.out.write_all(b"\n").map_err(de::Error::custom)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spooled(body: &str) -> NamedTempFile {
        let file = NamedTempFile::new().unwrap();
        std::fs::write(file.path(), body).unwrap();
        file
    }

    fn lines(body: &JobBody) -> Vec<String> {
        body.source.lines().unwrap().map(Result::unwrap).collect()
    }

    #[test]
    fn json_bodies_become_one_entry_per_line() {
        let job = Uuid::new_v4();
        let body = format!(
            r#"{{"urls": ["http://a/1", "line\nbreak", 3], "job_id": "{job}", "skip_invalid": true}}"#
        );
        let read = read(spooled(&body), BodyKind::Json).unwrap();
        assert_eq!(read.source.format(), Format::JsonUrls);
        assert_eq!(read.job_id, Some(job));
        assert_eq!(read.skip_invalid, Some(true));
        assert_eq!(lines(&read), [r#""http://a/1""#, r#""line\nbreak""#, "3"]);

        let tasks = read_json(r#" {"tasks": [{"url": "http://a/1", "meta": {"k": [1]}}]} "#);
        assert_eq!(tasks.source.format(), Format::JsonTasks);
        assert_eq!(lines(&tasks), [r#"{"meta":{"k":[1]},"url":"http://a/1"}"#]);
    }

    fn read_json(body: &str) -> JobBody {
        read(spooled(body), BodyKind::Json).unwrap()
    }

    #[test]
    fn bad_json_bodies_are_400_with_a_reason() {
        for (body, says) in [
            (r#"["http://a/1"]"#, "an object"),
            (r#"{"urls": "http://a/1"}"#, "an array"),
            (r#"{"url": []}"#, "unknown field"),
            (r#"{"urls": [], "tasks": []}"#, "once"),
            (r#"{"job_id": "nope", "urls": []}"#, "UUID"),
            (r#"{"job_id": null}"#, "neither"),
            (r#"{"urls": []} trailing"#, "trailing"),
            (r#"{"urls": ["#, "EOF"),
        ] {
            let e = read(spooled(body), BodyKind::Json).unwrap_err();
            assert_eq!(e.status, 400, "{body}");
            assert!(e.detail.contains(says), "{body}: {}", e.detail);
        }
    }

    #[test]
    fn content_types() {
        let mut headers = HeaderMap::new();
        assert_eq!(kind_of(&headers).unwrap(), BodyKind::Lines);
        for (value, kind) in [
            ("application/json; charset=utf-8", BodyKind::Json),
            ("Application/JSON", BodyKind::Json),
            ("application/x-ndjson", BodyKind::Lines),
            ("text/plain", BodyKind::Lines),
        ] {
            headers.insert(header::CONTENT_TYPE, value.parse().unwrap());
            assert_eq!(kind_of(&headers).unwrap(), kind, "{value}");
        }
        headers.insert(header::CONTENT_TYPE, "application/xml".parse().unwrap());
        assert_eq!(kind_of(&headers).unwrap_err().status, 415);
    }
}
