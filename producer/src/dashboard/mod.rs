//! The web dashboard of `producer serve`: server-rendered HTML (maud) on the API's listener,
//! behind the same tokens (see [`crate::api::auth`]).
//!
//! | route | page |
//! | --- | --- |
//! | `GET /` | overview: stage queues, recent jobs (paged) |
//! | `GET /jobs/{id}` | a job: counters, progress, results (sortable), CSV / JSON |
//! | `GET /dlq` | dead letters: filters, search, paging, counts per error class |
//! | `POST /dlq/replay`, `POST /dlq/purge` | dry run, then confirmed change (CSRF, admin) |
//! | `GET /login`, `POST /login`, `POST /logout` | the session cookie |
//! | `GET /hosts` | per-host limiter state: pause, AIMD factor, leases, next slot, backlog |
//! | `GET /events`, `GET /throughput.json` | live snapshots (SSE), throughput history ([`live`]) |
//! | `GET /jobs/{id}/progress.json` | a job's progress samples, for its rate chart ([`live`]) |
//! | `GET /assets/*` | the embedded stylesheet, `live.js`, uPlot (no data, no token needed) |
//!
//! Pages read with JavaScript off. Every page needs a caller: anonymous requests are sent
//! to the login form; no page says anything about jobs, URLs or hosts to them.

pub mod dlq;
pub mod hosts;
pub mod job;
pub mod layout;
pub mod live;
pub mod login;
pub mod management;
pub mod overview;
pub mod queues;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::Request;
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use tributary::store::JobStatus;
use uuid::Uuid;

use crate::api::Api;
use crate::api::auth::Caller;
use crate::api::error::ApiError;
use layout::error_page;

/// The embedded static files: (path, content type, body).
const ASSETS: [(&str, &str, &str); 4] = [
    (
        "/assets/style.css",
        "text/css; charset=utf-8",
        include_str!("assets/style.css"),
    ),
    (
        "/assets/live.js",
        "text/javascript; charset=utf-8",
        include_str!("assets/live.js"),
    ),
    (
        "/assets/uplot.js",
        "text/javascript; charset=utf-8",
        include_str!("assets/vendor/uplot/uPlot.iife.min.js"),
    ),
    (
        "/assets/uplot.css",
        "text/css; charset=utf-8",
        include_str!("assets/vendor/uplot/uPlot.min.css"),
    ),
];

/// A running job without progress for this long is shown as stalled.
pub const STALLED_AFTER: Duration = Duration::from_secs(60);
/// Most jobs whose progress the dashboard remembers (oldest forgotten first).
const TRACKED_JOBS: usize = 10_000;

/// What a job is doing, as the dashboard shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobState {
    Running,
    Done,
    /// Not done, and no task finished for [`STALLED_AFTER`] while this server watched.
    Stalled,
}

/// The dashboard's own state: when each job shown last made progress, the live side, and
/// the management API if there is one.
#[derive(Debug, Default)]
pub struct Dashboard {
    progress: Mutex<HashMap<Uuid, (u64, Instant)>>,
    pub live: live::Live,
    pub management: Option<management::Management>,
}

impl Dashboard {
    pub fn new(management: Option<management::Management>) -> Dashboard {
        Dashboard {
            management,
            ..Default::default()
        }
    }

    /// The queue rows of the overview: from the management API when there is one and it
    /// answers, else from passive declares on the broker (`None` when neither answers).
    pub async fn queue_rows(&self, api: &Api) -> Option<Vec<queues::QueueRow>> {
        let names = api.backends.names();
        if let Some(management) = &self.management {
            match management.rows(names).await {
                Ok(rows) => return Some(rows),
                Err(e) => tracing::debug!("queue numbers from passive declares: {e:#}"),
            }
        }
        let broker = api.backends.broker().await.ok()?;
        Some(queues::declared_rows(&broker.conn, names).await)
    }

    /// The job's state, remembering its progress for the next call.
    pub fn state_of(&self, status: &JobStatus) -> JobState {
        if status.done {
            return JobState::Done;
        }
        let finished = status.aggregated + status.dead;
        let now = Instant::now();
        let mut seen = self.progress.lock().unwrap_or_else(|e| e.into_inner());
        if seen.len() >= TRACKED_JOBS && !seen.contains_key(&status.job_id) {
            let oldest = seen
                .iter()
                .min_by_key(|(_, (_, at))| *at)
                .map(|(id, _)| *id);
            if let Some(oldest) = oldest {
                seen.remove(&oldest);
            }
        }
        let entry = seen.entry(status.job_id).or_insert((finished, now));
        if entry.0 != finished {
            *entry = (finished, now);
        }
        if now.duration_since(entry.1) >= STALLED_AFTER {
            JobState::Stalled
        } else {
            JobState::Running
        }
    }
}

/// The dashboard's routes (pages behind [`require_caller`]; login and assets open).
pub fn routes() -> Router<Arc<Api>> {
    let pages = Router::new()
        .route("/", get(overview::overview))
        .route("/jobs/{id}", get(job::job_page))
        .route("/jobs/{id}/results.csv", get(job::results_csv))
        .route("/jobs/{id}/progress.json", get(live::job_progress))
        .route("/dlq", get(dlq::dlq_page))
        .route("/hosts", get(hosts::hosts_page))
        .route("/events", get(live::events))
        .route("/throughput.json", get(live::throughput))
        .route_layer(axum::middleware::from_fn(require_caller));
    Router::new()
        .route("/login", get(login::form).post(login::login))
        .route("/logout", post(login::logout))
        .route("/dlq/replay", post(dlq::replay))
        .route("/dlq/purge", post(dlq::purge))
        .route("/assets/{file}", get(asset))
        .merge(pages)
}

/// Route layer of the pages: anonymous requests go to the login form.
pub async fn require_caller(request: Request, next: Next) -> Response {
    if request.extensions().get::<Caller>().is_none() {
        return login::anonymous(request.headers());
    }
    next.run(request).await
}

async fn asset(uri: axum::http::Uri) -> Response {
    let Some((_, content_type, body)) = ASSETS.iter().find(|(path, ..)| *path == uri.path()) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    (
        [
            (header::CONTENT_TYPE, *content_type),
            (header::CACHE_CONTROL, "public, max-age=3600"),
        ],
        *body,
    )
        .into_response()
}

/// The page for a failure: 4xx for bad input, 503 when the broker or Redis is down.
pub fn page_error(caller: &Caller, e: ApiError) -> Response {
    tracing::warn!(error = e.error, detail = %e.detail, "dashboard page failed");
    let status = if e.status == StatusCode::SERVICE_UNAVAILABLE || e.status.is_client_error() {
        e.status
    } else {
        StatusCode::INTERNAL_SERVER_ERROR
    };
    error_page(status, Some(caller), &format!("{}: {}", e.error, e.detail))
}
