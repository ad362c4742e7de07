//! The handlers of `producer serve`: each parses its request, calls the same code the CLI
//! runs (enqueue, status, results, dlq) and answers JSON.

use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use indicatif::ProgressBar;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::Api;
use super::body::{self, JobBody};
use super::error::ApiError;
use super::idempotency;
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

pub(super) fn invalid_query(e: QueryRejection) -> ApiError {
    ApiError::bad_request("invalid query", e.body_text())
}

/// Two settings that must agree when both are given (query and body).
pub(super) fn agree<T: PartialEq + std::fmt::Display>(
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
