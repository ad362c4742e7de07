//! The dead-letter routes: `GET /v1/dlq`, `POST /v1/dlq/replay`, `POST /v1/dlq/purge`. They
//! run the CLI's [`crate::dlq`] on the server's connection and answer its typed results;
//! the dashboard's forms call [`run`] too.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use tributary::names::Stage;
use uuid::Uuid;

use super::Api;
use super::error::ApiError;
use super::routes::{agree, invalid_query};
use crate::config::{DlqCommand, DlqFilter};
use crate::dlq::{Collect, Summary};

/// `GET /v1/dlq` lists at most this many without `limit`; dry runs show at most this many.
pub const DEFAULT_DLQ_LIMIT: u64 = 1000;

/// Dead-letter filters and options, from the query or a JSON body.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DlqParams {
    pub stage: Option<String>,
    pub job_id: Option<Uuid>,
    pub task_id: Option<Uuid>,
    pub error: Option<String>,
    pub search: Option<String>,
    pub limit: Option<u64>,
    pub offset: Option<u64>,
    pub dry_run: Option<bool>,
}

/// The filter of `params` (empty strings, as a form sends them, are no filter).
pub fn filter_of(params: &DlqParams) -> Result<DlqFilter, ApiError> {
    let given = |s: &Option<String>| s.clone().filter(|s| !s.trim().is_empty());
    let stage = match given(&params.stage) {
        None => None,
        Some(name) => Some(Stage::parse(&name).ok_or_else(|| {
            ApiError::bad_request(
                "invalid stage",
                format!("stage {name:?} is not fetch, process or results"),
            )
        })?),
    };
    Ok(DlqFilter {
        stage,
        job_id: params.job_id,
        task_id: params.task_id,
        error: given(&params.error),
        search: given(&params.search),
    })
}

/// Runs a `dlq` command on the server's connection; the dead letters it lists go to `page`.
pub async fn run(
    api: &Api,
    command: &DlqCommand,
    mut page: Collect,
) -> Result<(Summary, Collect), ApiError> {
    let store = match command {
        DlqCommand::List { .. } | DlqCommand::Replay { dry_run: true, .. } => None,
        _ => Some(api.backends.store().await?),
    };
    let broker = api.backends.broker().await?;
    let summary = crate::dlq::run_on(
        &broker.conn,
        store,
        api.backends.connection(),
        command,
        &api.shutdown,
        &mut page,
    )
    .await
    .map_err(|e| ApiError::from_runtime(&e))?;
    Ok((summary, page))
}

fn wants_ndjson(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|accept| accept.contains("ndjson"))
}

/// `GET /v1/dlq`: as `producer dlq list` (`offset` skips that many); a JSON array, or
/// NDJSON with `Accept: application/x-ndjson`.
pub async fn dlq_list(
    State(api): State<Arc<Api>>,
    query: Result<Query<DlqParams>, QueryRejection>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let Query(params) = query.map_err(invalid_query)?;
    if params.dry_run.is_some() {
        return Err(ApiError::bad_request(
            "invalid query",
            "dry_run applies to POST /v1/dlq/replay and /v1/dlq/purge",
        ));
    }
    let limit = params.limit.unwrap_or(DEFAULT_DLQ_LIMIT);
    let offset = params.offset.unwrap_or(0);
    let command = DlqCommand::List {
        filter: filter_of(&params)?,
        limit: Some(offset.saturating_add(limit)),
    };
    let (_, page) = run(&api, &command, Collect::page(offset, limit as usize)).await?;
    if wants_ndjson(&headers) {
        let mut lines = Vec::new();
        for entry in &page.entries {
            serde_json::to_writer(&mut lines, entry)
                .map_err(|e| ApiError::internal(e.to_string()))?;
            lines.push(b'\n');
        }
        return Ok(([(header::CONTENT_TYPE, "application/x-ndjson")], lines).into_response());
    }
    Ok(Json(page.entries).into_response())
}

/// Replay or purge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Replay,
    Purge,
}

impl Change {
    /// The command for a filter; a dry run changes nothing.
    pub fn command(self, filter: DlqFilter, dry_run: bool) -> DlqCommand {
        match (self, dry_run) {
            (Change::Replay, dry_run) => DlqCommand::Replay { filter, dry_run },
            (Change::Purge, true) => DlqCommand::List {
                filter,
                limit: None,
            },
            (Change::Purge, false) => DlqCommand::Purge { filter },
        }
    }
}

/// The answer of a replay or purge: `{"replayed": N}` / `{"purged": N}`; a dry run
/// `{"replayed": 0, "would_replay": N, "dead_letters": [...]}` (the first
/// [`DEFAULT_DLQ_LIMIT`]), or `purged` / `would_purge`.
pub fn answer(change: Change, summary: Summary, page: Collect) -> serde_json::Value {
    let n = summary.count();
    let mut out = match (change, summary) {
        (Change::Replay, _) => summary.json().unwrap_or_default(),
        (Change::Purge, Summary::Listed(_)) => serde_json::json!({"purged": 0, "would_purge": n}),
        (Change::Purge, _) => serde_json::json!({ "purged": n }),
    };
    if matches!(summary, Summary::Listed(_) | Summary::WouldReplay(_)) {
        out["dead_letters"] = serde_json::to_value(page.entries).unwrap_or_default();
    }
    out
}

/// The parameters of a POST: the query and an optional JSON body, which must agree.
fn post_params(
    query: Result<Query<DlqParams>, QueryRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<DlqParams, ApiError> {
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
        task_id: agree("task_id", query.task_id, from_body.task_id)?,
        error: agree("error", query.error, from_body.error)?,
        search: agree("search", query.search, from_body.search)?,
        limit: agree("limit", query.limit, from_body.limit)?,
        offset: agree("offset", query.offset, from_body.offset)?,
        dry_run: agree("dry_run", query.dry_run, from_body.dry_run)?,
    };
    if params.limit.is_some() || params.offset.is_some() {
        return Err(ApiError::bad_request(
            "invalid parameters",
            "limit and offset apply to GET /v1/dlq",
        ));
    }
    Ok(params)
}

async fn change(
    api: &Api,
    change_: Change,
    query: Result<Query<DlqParams>, QueryRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let params = post_params(query, body)?;
    let dry_run = params.dry_run.unwrap_or(false);
    let command = change_.command(filter_of(&params)?, dry_run);
    let (summary, page) = run(api, &command, Collect::page(0, DEFAULT_DLQ_LIMIT as usize)).await?;
    Ok(Json(answer(change_, summary, page)).into_response())
}

/// `POST /v1/dlq/replay`: as `producer dlq replay`; filters in the query or a JSON body.
pub async fn dlq_replay(
    State(api): State<Arc<Api>>,
    query: Result<Query<DlqParams>, QueryRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    change(&api, Change::Replay, query, body).await
}

/// `POST /v1/dlq/purge`: as `producer dlq purge`; `dry_run` counts what would go.
pub async fn dlq_purge(
    State(api): State<Arc<Api>>,
    query: Result<Query<DlqParams>, QueryRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    change(&api, Change::Purge, query, body).await
}
