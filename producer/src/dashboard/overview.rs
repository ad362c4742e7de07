//! `GET /`: the stage queues and the recent jobs (newest first, paged) with their progress,
//! rate and state.

use std::sync::Arc;

use axum::extract::{Extension, Query, State};
use axum::response::{IntoResponse, Response};
use maud::{Markup, html};
use serde::Deserialize;
use tributary::store::jobs::{self, JobEntry};

use super::layout::{number, page, progress_bar, utc};
use super::queues::{QueueKind, QueueRow};
use super::{JobState, page_error};
use crate::api::Api;
use crate::api::auth::Caller;

/// Jobs per page of the overview.
pub const JOBS_PER_PAGE: usize = 25;

/// `?page=N` (1-based).
#[derive(Debug, Default, Deserialize)]
pub struct Paging {
    #[serde(default)]
    pub page: Option<u64>,
}

impl Paging {
    /// The 1-based page number and the offset of its first item.
    pub fn at(&self, per_page: usize) -> (u64, u64) {
        let n = self.page.unwrap_or(1).clamp(1, 1_000_000);
        (n, (n - 1) * per_page as u64)
    }
}

/// `GET /`.
pub async fn overview(
    State(api): State<Arc<Api>>,
    Extension(caller): Extension<Caller>,
    Query(paging): Query<Paging>,
) -> Response {
    let (n, offset) = paging.at(JOBS_PER_PAGE);
    let store = match api.backends.store().await {
        Ok(store) => store,
        Err(e) => return page_error(&caller, e),
    };
    let listed = match jobs::page(store, offset, JOBS_PER_PAGE).await {
        Ok(listed) => listed,
        Err(e) => return page_error(&caller, e.into()),
    };
    let queues = api.dashboard.queue_rows(&api).await;
    let now = tributary::message::now_ms();
    let body = html! {
        section #queues { h2 { "Queues" } (queue_table(queues.as_deref())) }
        section #throughput { h2 { "Throughput" } (super::live::chart()) }
        section #jobs {
            h2 { "Jobs" }
            (jobs_table(&api, &listed.jobs, now))
            (pager("/", n, listed.count, JOBS_PER_PAGE))
        }
    };
    page("Overview", Some(&caller), body).into_response()
}

fn queue_table(rows: Option<&[QueueRow]>) -> Markup {
    let Some(rows) = rows else {
        return html! { p.error { "The broker is not reachable now." } };
    };
    let show = |n: Option<u64>| n.map_or_else(|| "-".to_string(), |n| n.to_string());
    let rate = |r: Option<f64>| r.map_or_else(|| "-".to_string(), |r| format!("{r:.1}"));
    let detailed = rows.iter().any(|r| r.unacked.is_some());
    html! {
        table.queues {
            thead { tr {
                th { "queue" } th { "stage" } th.num { "ready" } th.num { "unacked" }
                th.num { "consumers" } th.num { "in /s" } th.num { "out /s" }
            } }
            tbody {
                @for row in rows {
                    tr class=(kind_class(row.kind)) {
                        td { code { (row.queue) } }
                        td { (row.stage) (kind_note(row.kind)) }
                        td.num data-queue=(row.queue) data-field="ready" { (show(row.ready)) }
                        td.num data-queue=(row.queue) data-field="unacked" { (show(row.unacked)) }
                        td.num data-queue=(row.queue) data-field="consumers" { (show(row.consumers.map(u64::from))) }
                        td.num data-queue=(row.queue) data-field="rate_in" { (rate(row.rate_in)) }
                        td.num data-queue=(row.queue) data-field="rate_out" { (rate(row.rate_out)) }
                    }
                }
            }
        }
        @if !detailed {
            p.note #no-management { "Unacked counts, rates and the delay queues come from the RabbitMQ management API: start "
                code { "producer serve" } " with " code { "--management-url" } "." }
        }
    }
}

fn kind_class(kind: QueueKind) -> &'static str {
    match kind {
        QueueKind::Stage => "stage",
        QueueKind::Delay => "delay",
        QueueKind::Dead => "dead",
    }
}

fn kind_note(kind: QueueKind) -> &'static str {
    match kind {
        QueueKind::Stage => "",
        QueueKind::Delay => " (retry delays, summed)",
        QueueKind::Dead => " (dead letters)",
    }
}

fn jobs_table(api: &Api, jobs: &[JobEntry], now: u64) -> Markup {
    if jobs.is_empty() {
        return html! { p.empty { "No jobs yet. Enqueue one with " code { "producer enqueue" } " or " code { "POST /v1/jobs" } "." } };
    }
    html! {
        table.jobs {
            thead { tr {
                th { "job" } th { "created (UTC)" } th.num { "total" } th { "progress" }
                th.num { "tasks/s" } th { "state" }
            } }
            tbody {
                @for job in jobs {
                    @let s = &job.status;
                    @let state = api.dashboard.state_of(s);
                    tr data-job=(s.job_id) {
                        td { a href={ "/jobs/" (s.job_id) } { code { (s.job_id) } } }
                        td { (utc(job.created_ms)) }
                        td.num { (s.total) }
                        td { (progress_bar(s)) span.counts { (s.aggregated) " / " (s.total) @if s.dead > 0 { ", " (s.dead) " dead" } } }
                        td.num { (number(rate(job, now))) }
                        td { span class={ "state " (state.as_str()) } { (state.as_str()) } }
                    }
                }
            }
        }
    }
}

/// Tasks finished (aggregated or dead) per second since the job was created.
pub fn rate(job: &JobEntry, now: u64) -> f64 {
    let secs = now.saturating_sub(job.created_ms).max(1) as f64 / 1000.0;
    (job.status.aggregated + job.status.dead) as f64 / secs
}

/// "Newer / page N of M / Older" links, keeping the other query parameters in `base`.
pub fn pager(base: &str, n: u64, count: u64, per_page: usize) -> Markup {
    let pages = count.div_ceil(per_page as u64).max(1);
    let sep = if base.contains('?') { '&' } else { '?' };
    html! {
        nav.pager {
            @if n > 1 { a rel="prev" href={ (base) (sep) "page=" (n - 1) } { "← newer" } }
            span { "page " (n) " of " (pages) " (" (count) ")" }
            @if n < pages { a rel="next" href={ (base) (sep) "page=" (n + 1) } { "older →" } }
        }
    }
}

impl JobState {
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Running => "running",
            JobState::Done => "done",
            JobState::Stalled => "stalled",
        }
    }
}
