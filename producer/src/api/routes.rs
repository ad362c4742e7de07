//! The handlers of `producer serve`: each parses its request, calls the same code the CLI
//! runs (enqueue, status, results, dlq) and answers JSON.

use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use indicatif::ProgressBar;
use serde::{Deserialize, Serialize};
use tributary::names::Stage;
use uuid::Uuid;

use super::Api;
use super::body::{self, JobBody};
use super::error::ApiError;
use super::idempotency;
use crate::config::{DlqCommand, DlqFilter};
use crate::enqueue::{self, Rejected, Target};
use crate::input::{Format, MAX_REPORTED, Scan, scan};
use crate::publish::{self, InputMismatch};

/// Query parameters of `POST /v1/jobs`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobQuery {
    job_id: Option<Uuid>,
    skip_invalid: Option<bool>,
}

/// What `POST /v1/jobs` answers.
#[derive(Debug, Serialize)]
struct JobAccepted {
    job_id: Uuid,
    enqueued: u64,
    skipped: u64,
}

fn invalid_query(e: QueryRejection) -> ApiError {
    ApiError::bad_request("invalid query", e.body_text())
}

/// Two settings that must agree when both are given (query and body).
fn agree<T: PartialEq + std::fmt::Display>(
    name: &str,
    query: Option<T>,
    body: Option<T>,
) -> Result<Option<T>, ApiError> {
    match (query, body) {
        (Some(q), Some(b)) if q != b => Err(ApiError::bad_request(
            "conflicting parameters",
            format!("{name} is {q} in the query and {b} in the body"),
        )),
        (q, b) => Ok(q.or(b)),
    }
}

/// `POST /v1/jobs`.
pub async fn create_job(
    State(api): State<Arc<Api>>,
    query: Result<Query<JobQuery>, QueryRejection>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let Query(query) = query.map_err(invalid_query)?;
    let kind = body::kind_of(&headers)?;
    let key = idempotency::key(&headers)?;
    let store = api.backends.store().await?;
    let broker = api.backends.broker().await?;
    let raw = body::spool(body, &headers, api.max_body_bytes).await?;
    let prepared = tokio::task::spawn_blocking(move || prepare(raw, kind, query, key))
        .await
        .map_err(|e| ApiError::internal(format!("validating the body: {e}")))??;
    let Prepared {
        source,
        job,
        skip_invalid,
        found,
    } = prepared;
    enqueue::check(&found, skip_invalid).map_err(|rejected| match rejected {
        Rejected::Invalid(count) => ApiError::bad_request(
            "invalid input",
            invalid_detail(source.format(), &found, count),
        ),
        Rejected::Empty => ApiError::bad_request(
            "empty job",
            "the body holds no URL or task; nothing was enqueued",
        ),
    })?;
    idempotency::claim(store, job, &found, skip_invalid).await?;
    let resume = match publish::begin(store, job, &source, &found).await {
        Err(e) if e.is::<InputMismatch>() => return Err(idempotency::conflict(job)),
        other => other.map_err(|e| ApiError::from_runtime(&e))?,
    };
    let target = Target {
        channel: &broker.channel,
        exchange: api.backends.names().exchange(),
        store,
    };
    let hint = format!("repeat the same request with job_id {job} to finish it");
    publish::publish(
        &source,
        &resume,
        &api.publish,
        target,
        &ProgressBar::hidden(),
        &hint,
    )
    .await
    .map_err(|e| ApiError::from_runtime(&e))?;
    // The body's tasks, all in the job now: the same answer for a repeated request.
    let accepted = JobAccepted {
        job_id: job,
        enqueued: found.valid,
        skipped: found.invalid_count,
    };
    let mut response = (StatusCode::ACCEPTED, Json(accepted)).into_response();
    if let Ok(location) = HeaderValue::from_str(&format!("/v1/jobs/{job}")) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    Ok(response)
}

/// A validated body, ready to publish.
struct Prepared {
    source: crate::input::Source,
    job: Uuid,
    skip_invalid: bool,
    found: Scan,
}

/// Reads the spooled body and validates every entry (blocking).
fn prepare(
    raw: tempfile::NamedTempFile,
    kind: body::BodyKind,
    query: JobQuery,
    key: Option<String>,
) -> Result<Prepared, ApiError> {
    let JobBody {
        source,
        job_id,
        skip_invalid,
    } = body::read(raw, kind)?;
    let job = agree("job_id", query.job_id, job_id)?
        .or_else(|| key.as_deref().map(idempotency::job_for_key))
        .unwrap_or_else(Uuid::new_v4);
    let skip_invalid = agree("skip_invalid", query.skip_invalid, skip_invalid)?.unwrap_or(false);
    let found = scan(&source, job).map_err(|e| {
        ApiError::internal(format!(
            "reading the spooled body: {}",
            tributary::runtime::cli::chain(e.as_ref())
        ))
    })?;
    Ok(Prepared {
        source,
        job,
        skip_invalid,
        found,
    })
}

/// `line 3: ...; line 7: ...` (`urls[2]` / `tasks[2]` for JSON bodies).
fn invalid_detail(format: Format, found: &Scan, count: u64) -> String {
    let label = |line: usize| match format {
        Format::Lines => format!("line {line}"),
        Format::JsonUrls => format!("urls[{}]", line - 1),
        Format::JsonTasks => format!("tasks[{}]", line - 1),
    };
    let mut parts: Vec<String> = found
        .invalid
        .iter()
        .map(|(line, reason)| format!("{}: {reason}", label(*line)))
        .collect();
    if count > MAX_REPORTED as u64 {
        parts.push(format!("and {} more", count - MAX_REPORTED as u64));
    }
    format!(
        "{}; nothing was enqueued (skip_invalid=true enqueues the rest)",
        parts.join("; ")
    )
}

fn job_id(path: Result<Path<Uuid>, PathRejection>) -> Result<Uuid, ApiError> {
    path.map(|Path(id)| id)
        .map_err(|e| ApiError::bad_request("invalid job id", e.body_text()))
}

fn unknown_job(api: &Api, job: Uuid) -> ApiError {
    ApiError::not_found(
        "unknown job",
        format!(
            "job {job} is not known in namespace {}",
            api.backends.names().namespace()
        ),
    )
}

/// What `GET /v1/jobs/{id}...` shows.
#[derive(Debug, Clone, Copy)]
enum JobView {
    Status,
    Results,
}

async fn job_view(
    api: &Api,
    path: Result<Path<Uuid>, PathRejection>,
    view: JobView,
) -> Result<Response, ApiError> {
    let job = job_id(path)?;
    let store = api.backends.store().await?;
    let found = match view {
        JobView::Status => store
            .status(job)
            .await
            .map(|s| s.map(|s| Json(s).into_response())),
        JobView::Results => store
            .results(job)
            .await
            .map(|r| r.map(|r| Json(r).into_response())),
    };
    found
        .map_err(|e| ApiError::from_runtime(&e.into()))?
        .ok_or_else(|| unknown_job(api, job))
}

/// `GET /v1/jobs/{id}`: as `producer status`.
pub async fn job_status(
    State(api): State<Arc<Api>>,
    path: Result<Path<Uuid>, PathRejection>,
) -> Result<Response, ApiError> {
    job_view(&api, path, JobView::Status).await
}

/// `GET /v1/jobs/{id}/results`: as `aggregator results`.
pub async fn job_results(
    State(api): State<Arc<Api>>,
    path: Result<Path<Uuid>, PathRejection>,
) -> Result<Response, ApiError> {
    job_view(&api, path, JobView::Results).await
}

/// Dead-letter filters and options, from the query or a JSON body.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DlqParams {
    stage: Option<String>,
    job_id: Option<Uuid>,
    error: Option<String>,
    limit: Option<u64>,
    dry_run: Option<bool>,
}

/// `GET /v1/dlq` lists at most this many without `limit`.
pub const DEFAULT_DLQ_LIMIT: u64 = 1000;

fn filter_of(params: &DlqParams) -> Result<DlqFilter, ApiError> {
    let stage = match params.stage.as_deref() {
        None => None,
        Some(name) => Some(Stage::parse(name).ok_or_else(|| {
            ApiError::bad_request(
                "invalid stage",
                format!("stage {name:?} is not fetch, process or results"),
            )
        })?),
    };
    Ok(DlqFilter {
        stage,
        job_id: params.job_id,
        error: params.error.clone(),
    })
}

/// Runs a `dlq` command on the server's connection; returns its output lines.
async fn run_dlq(api: &Api, command: &DlqCommand) -> Result<Vec<u8>, ApiError> {
    let store = match command {
        DlqCommand::Replay { dry_run: false, .. } => Some(api.backends.store().await?),
        _ => None,
    };
    let broker = api.backends.broker().await?;
    let mut out = Vec::new();
    crate::dlq::run_on(
        &broker.conn,
        store,
        api.backends.connection(),
        command,
        &api.shutdown,
        &mut out,
    )
    .await
    .map_err(|e| ApiError::from_runtime(&e))?;
    Ok(out)
}

/// NDJSON lines as one JSON array (each line is one JSON value).
fn json_array(lines: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(lines.len() + 2);
    out.push(b'[');
    for (i, line) in lines
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .enumerate()
    {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(line);
    }
    out.push(b']');
    out
}

fn wants_ndjson(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|accept| accept.contains("ndjson"))
}

/// `GET /v1/dlq`: as `producer dlq list`; a JSON array, or NDJSON with
/// `Accept: application/x-ndjson`.
pub async fn dlq_list(
    State(api): State<Arc<Api>>,
    query: Result<Query<DlqParams>, QueryRejection>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let Query(params) = query.map_err(invalid_query)?;
    if params.dry_run.is_some() {
        return Err(ApiError::bad_request(
            "invalid query",
            "dry_run applies to POST /v1/dlq/replay",
        ));
    }
    let command = DlqCommand::List {
        filter: filter_of(&params)?,
        limit: Some(params.limit.unwrap_or(DEFAULT_DLQ_LIMIT)),
    };
    let lines = run_dlq(&api, &command).await?;
    let (content_type, body) = if wants_ndjson(&headers) {
        ("application/x-ndjson", lines)
    } else {
        ("application/json", json_array(&lines))
    };
    Ok(([(header::CONTENT_TYPE, content_type)], body).into_response())
}

/// `POST /v1/dlq/replay`: as `producer dlq replay`; filters in the query or a JSON body.
/// Answers `{"replayed": N}`; with `dry_run`, `{"replayed": 0, "would_replay": N,
/// "dead_letters": [...]}`.
pub async fn dlq_replay(
    State(api): State<Arc<Api>>,
    query: Result<Query<DlqParams>, QueryRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let Query(query) = query.map_err(invalid_query)?;
    let body = body.map_err(|e| ApiError::new(e.status(), "unreadable body", e.body_text()))?;
    let from_body: DlqParams = if body.iter().all(u8::is_ascii_whitespace) {
        DlqParams::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::bad_request("invalid JSON body", e.to_string()))?
    };
    let params = DlqParams {
        stage: agree("stage", query.stage, from_body.stage)?,
        job_id: agree("job_id", query.job_id, from_body.job_id)?,
        error: agree("error", query.error, from_body.error)?,
        limit: agree("limit", query.limit, from_body.limit)?,
        dry_run: agree("dry_run", query.dry_run, from_body.dry_run)?,
    };
    if params.limit.is_some() {
        return Err(ApiError::bad_request(
            "invalid parameters",
            "limit applies to GET /v1/dlq",
        ));
    }
    let dry_run = params.dry_run.unwrap_or(false);
    let command = DlqCommand::Replay {
        filter: filter_of(&params)?,
        dry_run,
    };
    let lines = run_dlq(&api, &command).await?;
    let mut values: Vec<serde_json::Value> = lines
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(serde_json::from_slice)
        .collect::<Result<_, _>>()
        .map_err(|e| ApiError::internal(format!("dlq printed a line that is not JSON: {e}")))?;
    let mut summary = values
        .pop()
        .ok_or_else(|| ApiError::internal("dlq replay printed no summary"))?;
    if dry_run {
        summary["dead_letters"] = serde_json::Value::Array(values);
    }
    Ok(Json(summary).into_response())
}

/// `GET /healthz` (no token): 200 when the broker and Redis answer, else 503.
pub async fn healthz(State(api): State<Arc<Api>>) -> Response {
    let (broker, redis) = api.backends.health().await;
    let up = |ok: bool| if ok { "up" } else { "down" };
    let status = if broker && redis {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = serde_json::json!({
        "status": if broker && redis { "ok" } else { "unavailable" },
        "broker": up(broker),
        "redis": up(redis),
    });
    (status, Json(body)).into_response()
}

/// `GET /v1/openapi.json`.
pub async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], super::OPENAPI).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dlq_lines_become_an_array() {
        assert_eq!(json_array(b""), b"[]");
        assert_eq!(
            json_array(b"{\"a\":1}\n{\"b\":2}\n"),
            b"[{\"a\":1},{\"b\":2}]"
        );
    }

    #[test]
    fn invalid_lines_are_named() {
        let found = Scan {
            valid: 1,
            invalid: vec![(3, "scheme \"ftp\" is not http or https".into())],
            invalid_count: 1,
            ..Scan::default()
        };
        let lines = invalid_detail(Format::Lines, &found, 1);
        assert!(lines.starts_with("line 3: scheme \"ftp\""), "{lines}");
        assert!(invalid_detail(Format::JsonUrls, &found, 1).starts_with("urls[2]: "));
        assert!(invalid_detail(Format::JsonTasks, &found, 25).contains("; and 5 more"));
    }

    #[test]
    fn query_and_body_must_agree() {
        assert_eq!(agree("x", Some(1), None).unwrap(), Some(1));
        assert_eq!(agree("x", None, Some(2)).unwrap(), Some(2));
        assert_eq!(agree("x", Some(2), Some(2)).unwrap(), Some(2));
        assert_eq!(agree("x", Some(1), Some(2)).unwrap_err().status, 400);
        assert_eq!(agree::<u8>("x", None, None).unwrap(), None);
    }
}
