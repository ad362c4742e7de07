//! Live updates: one sampler per server reads the queues and the newest jobs once a second,
//! keeps the throughput history in Redis, and hands each [`Snapshot`] to every Server-Sent
//! Events stream (`GET /events`) through a `watch` channel: viewers cost no Redis call.
//!
//! Throughput is the change of `fetched` and `aggregated` summed over the newest
//! [`SAMPLED_JOBS`] jobs, per second. Each sample is kept in `ns:throughput` (a sorted set
//! scored by time, trimmed to [`HISTORY`]), so a new page, or a restarted server, draws the
//! last 15 minutes (`GET /throughput.json`).

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::{Extension, Path, State};
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use maud::{Markup, html};
use serde::Serialize;
use tokio::sync::{Semaphore, watch};
use tributary::runtime::shutdown::CancellationToken;
use tributary::store::progress;
use tributary::store::throughput::{self, Rate};
use tributary::store::{JobStatus, jobs};
use uuid::Uuid;

use super::layout::error_page;
use super::queues::QueueRow;
use crate::api::Api;
use crate::api::auth::Caller;
use crate::api::error::ApiError;

/// How often the sampler reads.
pub const PERIOD: Duration = Duration::from_secs(1);
/// Jobs whose counters the sampler reads (the newest).
pub const SAMPLED_JOBS: usize = 100;
/// How much throughput history Redis keeps.
pub const HISTORY: Duration = Duration::from_secs(3600);
/// How much of it a page draws.
pub const SHOWN: Duration = Duration::from_secs(15 * 60);
/// Most SSE streams open at once (more get 503).
pub const MAX_STREAMS: usize = 64;

/// A job's numbers in a snapshot.
#[derive(Debug, Clone, Serialize)]
pub struct JobLive {
    #[serde(flatten)]
    pub status: JobStatus,
    pub state: &'static str,
}

/// What every live page gets each second.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Snapshot {
    /// When the sample started (ms since the epoch): a page rendered later already shows
    /// newer numbers, and `live.js` skips the snapshot's jobs for it.
    pub at_ms: u64,
    pub queues: Vec<QueueRow>,
    pub jobs: Vec<JobLive>,
    pub rate: Option<Rate>,
}

/// The live side of the dashboard: the latest snapshot and the stream cap.
#[derive(Debug)]
pub struct Live {
    latest: watch::Receiver<Arc<Snapshot>>,
    sender: std::sync::Mutex<Option<watch::Sender<Arc<Snapshot>>>>,
    streams: Arc<Semaphore>,
}

impl Default for Live {
    fn default() -> Self {
        let (sender, latest) = watch::channel(Arc::new(Snapshot::default()));
        Live {
            latest,
            sender: std::sync::Mutex::new(Some(sender)),
            streams: Arc::new(Semaphore::new(MAX_STREAMS)),
        }
    }
}

/// Starts the sampler (once per server); it stops with `shutdown`.
pub fn start(api: Arc<Api>, shutdown: CancellationToken) {
    let sender = api
        .dashboard
        .live
        .sender
        .lock()
        .ok()
        .and_then(|mut s| s.take());
    let Some(sender) = sender else { return };
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(PERIOD);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last: Option<(Instant, u64, u64)> = None;
        let mut finished = HashMap::new();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            let snapshot = sample(&api, &mut last).await;
            remember_progress(&api, &snapshot, &mut finished).await;
            sender.send_replace(Arc::new(snapshot));
        }
    });
}

async fn sample(api: &Api, last: &mut Option<(Instant, u64, u64)>) -> Snapshot {
    let mut snapshot = Snapshot {
        at_ms: tributary::message::now_ms(),
        ..Snapshot::default()
    };
    snapshot.queues = api.dashboard.queue_rows(api).await.unwrap_or_default();
    let Ok(store) = api.backends.store().await else {
        return snapshot;
    };
    let Ok(page) = jobs::page(store, 0, SAMPLED_JOBS).await else {
        return snapshot;
    };
    let (fetched, aggregated) = page.jobs.iter().fold((0, 0), |(f, a), j| {
        (f + j.status.fetched, a + j.status.aggregated)
    });
    let now = Instant::now();
    if let Some((at, f0, a0)) = *last {
        let secs = now.duration_since(at).as_secs_f64().max(0.001);
        let rate = Rate {
            t: tributary::message::now_ms() as f64 / 1000.0,
            fetched: fetched.saturating_sub(f0) as f64 / secs,
            aggregated: aggregated.saturating_sub(a0) as f64 / secs,
        };
        if let Err(e) = throughput::remember(store, rate, HISTORY).await {
            tracing::debug!("cannot keep the throughput sample: {e}");
        }
        snapshot.rate = Some(rate);
    }
    *last = Some((now, fetched, aggregated));
    snapshot.jobs = page
        .jobs
        .into_iter()
        .map(|j| JobLive {
            state: api.dashboard.state_of(&j.status).as_str(),
            status: j.status,
        })
        .collect();
    snapshot
}

/// Adds a progress sample (`store::progress`) for each sampled job whose finished count
/// changed since the last tick; `finished` remembers the counts of the jobs sampled.
async fn remember_progress(api: &Api, snapshot: &Snapshot, finished: &mut HashMap<Uuid, u64>) {
    let Ok(store) = api.backends.store().await else {
        return;
    };
    let t = snapshot.at_ms as f64 / 1000.0;
    let mut now = HashMap::with_capacity(snapshot.jobs.len());
    for job in &snapshot.jobs {
        let s = &job.status;
        let count = s.aggregated + s.dead;
        now.insert(s.job_id, count);
        let changed = finished
            .get(&s.job_id)
            .map_or(!s.done, |&before| before != count);
        if !changed {
            continue;
        }
        let point = progress::Point {
            t,
            aggregated: s.aggregated,
            dead: s.dead,
        };
        if let Err(e) = progress::remember(store, s.job_id, point).await {
            tracing::debug!(job = %s.job_id, "cannot keep the progress sample: {e}");
        }
    }
    *finished = now;
}

/// `GET /jobs/{id}/progress.json`: the job's progress samples, oldest first.
pub async fn job_progress(
    State(api): State<Arc<Api>>,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let job = Uuid::parse_str(&id)
        .map_err(|_| ApiError::not_found("unknown job", format!("{id} is not a job id")))?;
    let points = progress::history(api.backends.store().await?, job).await?;
    Ok(points_json(points))
}

/// `GET /throughput.json`: the last 15 minutes of samples.
pub async fn throughput(State(api): State<Arc<Api>>) -> Result<Json<serde_json::Value>, ApiError> {
    let points = throughput::history(api.backends.store().await?, SHOWN).await?;
    Ok(points_json(points))
}

/// `{"points": [...]}`, the shape both charts read.
fn points_json(points: impl Serialize) -> Json<serde_json::Value> {
    Json(serde_json::json!({ "points": points }))
}

/// `GET /events`: a snapshot each second as `event: snapshot`, until the server stops;
/// at most [`MAX_STREAMS`] at once.
pub async fn events(State(api): State<Arc<Api>>, Extension(caller): Extension<Caller>) -> Response {
    let Ok(permit) = api.dashboard.live.streams.clone().try_acquire_owned() else {
        let busy = StatusCode::SERVICE_UNAVAILABLE;
        return error_page(
            busy,
            Some(&caller),
            "Too many live views are open; try later.",
        );
    };
    let rx = api.dashboard.live.latest.clone();
    let stop = api.shutdown.clone();
    let stream = futures::stream::unfold((rx, permit, stop), |(mut rx, permit, stop)| async move {
        tokio::select! {
            _ = stop.cancelled() => return None,
            changed = rx.changed() => changed.ok()?,
        }
        let snapshot = rx.borrow_and_update().clone();
        let event = Event::default()
            .event("snapshot")
            .json_data(&*snapshot)
            .ok()?;
        Some((Ok::<_, Infallible>(event), (rx, permit, stop)))
    });
    Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response()
}

/// The job page's rate chart (drawn by `live.js` from `/jobs/{id}/progress.json`).
pub fn job_chart(job: Uuid) -> Markup {
    html! {
        div #job-chart data-job=(job) {
            noscript { p.empty { "The rate chart needs JavaScript; the counters above are exact." } }
        }
    }
}

/// The throughput chart's place on the overview (drawn by `live.js` with uPlot).
pub fn chart() -> Markup {
    html! {
        div #chart data-span=(SHOWN.as_secs()) {
            noscript { p.empty { "The chart needs JavaScript; the numbers above are live with it too." } }
        }
    }
}
