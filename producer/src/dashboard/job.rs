//! `GET /jobs/{id}`: a job's counters, progress, rate chart, first dead tasks (with replay
//! and purge for all of them) and results table (sortable, with CSV and JSON downloads);
//! `GET /jobs/{id}/results.csv`.

use std::sync::Arc;

use axum::extract::{Extension, Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use maud::{Markup, html};
use serde::Deserialize;
use tributary::stats::GroupStats;
use tributary::store::{JobResults, JobStatus, jobs};
use uuid::Uuid;

use super::layout::{error_page, number, page, progress_bar, utc};
use super::page_error;
use crate::api::Api;
use crate::api::auth::Caller;

/// The results table's columns, in order (also the `sort` values).
pub const COLUMNS: [&str; 7] = ["group", "records", "count", "sum", "min", "max", "mean"];

/// `?sort=COLUMN&desc=true`.
#[derive(Debug, Default, Deserialize)]
pub struct Sort {
    sort: Option<String>,
    #[serde(default)]
    desc: bool,
}

/// The status and results of a job the caller may see, or the page to answer instead.
async fn load(api: &Api, caller: &Caller, id: &str) -> Result<(JobStatus, JobResults), Response> {
    let unknown = || error_page(StatusCode::NOT_FOUND, Some(caller), "No such job.");
    let job = Uuid::parse_str(id).map_err(|_| unknown())?;
    let store = api
        .backends
        .store()
        .await
        .map_err(|e| page_error(caller, e))?;
    let status = store
        .status(job)
        .await
        .map_err(|e| page_error(caller, e.into()))?;
    let results = store
        .results(job)
        .await
        .map_err(|e| page_error(caller, e.into()))?;
    status.zip(results).ok_or_else(unknown)
}

/// `GET /jobs/{id}`.
pub async fn job_page(
    State(api): State<Arc<Api>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    Query(sort): Query<Sort>,
) -> Response {
    let (status, results) = match load(&api, &caller, &id).await {
        Ok(found) => found,
        Err(page) => return page,
    };
    let created = match api.backends.store().await {
        Ok(store) => jobs::created_ms(store, status.job_id).await.ok().flatten(),
        Err(_) => None,
    };
    let state = api.dashboard.state_of(&status);
    let body = html! {
        section #status data-job=(status.job_id) {
            p { "State: " span class={ "state " (state.as_str()) } { (state.as_str()) }
                @if let Some(ms) = created { " · created " (utc(ms)) " UTC" } }
            (progress_bar(&status))
            (counters(&status))
        }
        section #rate { h2 { "Rate" } (super::live::job_chart(status.job_id)) }
        section #dead {
            h2 { "Dead tasks" }
            p { strong { (status.dead) } " dead" @if status.dead > 0 { " · " a href={ "/dlq?job_id=" (status.job_id) } { "all of them, with filters" } } }
            @if status.dead > 0 { (dead_tasks(&api, &caller, status.job_id).await) }
        }
        section #results {
            h2 { "Results" }
            p.downloads {
                a href={ "/jobs/" (status.job_id) "/results.csv" } download { "CSV" } " · "
                a href={ "/v1/jobs/" (status.job_id) "/results" } { "JSON" }
            }
            (results_table(status.job_id, &results, &sort))
        }
    };
    page(&format!("Job {}", status.job_id), Some(&caller), body).into_response()
}

/// Dead tasks shown on a job's page (the dead-letter page has them all).
pub const DEAD_SHOWN: usize = 20;
/// The most dead letters a job page reads to find them (less than the dead-letter page's
/// budget: this is a part of the page, not its point).
pub const DEAD_BUDGET: u64 = 2_000;

/// The job's first dead tasks, with "replay these" / "purge these" for all of them.
async fn dead_tasks(api: &Api, caller: &Caller, job: Uuid) -> Markup {
    let filters = super::dlq::Filters {
        job_id: job.to_string(),
        ..Default::default()
    };
    let listed = super::dlq::listing(api, &filters, (0, DEAD_SHOWN), DEAD_BUDGET).await;
    html! {
        (super::dlq::actions(caller, &filters, "these"))
        @match listed {
            Ok(page_) => {
                (super::dlq::cut_short(&page_))
                @if page_.entries.is_empty() {
                    p.empty { "None of them is in a dead-letter queue now (replayed, purged, or counted dead by the broker)." }
                } @else {
                    (super::dlq::entries_table(caller, &page_.entries))
                    @if page_.seen > DEAD_SHOWN as u64 { p { "The first " (DEAD_SHOWN) " shown." } }
                }
            }
            Err(e) => p.error { "The dead-letter queues cannot be read now: " (e.detail) }
        }
    }
}

fn counters(s: &JobStatus) -> Markup {
    let rows = [
        ("total", s.total),
        ("fetched", s.fetched),
        ("processed", s.processed),
        ("aggregated", s.aggregated),
        ("retrying", s.retrying),
        ("deferred", s.deferred),
        ("dead", s.dead),
    ];
    html! {
        dl.counters {
            @for (name, value) in rows { div { dt { (name) } dd data-counter=(name) { (value) } } }
        }
    }
}

/// The groups in the order `sort` asks for (by group name by default).
pub fn sorted<'a>(results: &'a JobResults, sort: &Sort) -> Vec<(&'a String, &'a GroupStats)> {
    let mut groups: Vec<_> = results.groups.iter().collect();
    let key = |g: &GroupStats| match sort.sort.as_deref() {
        Some("records") => g.records as f64,
        Some("count") => g.count as f64,
        Some("sum") => g.sum,
        Some("min") => g.min,
        Some("max") => g.max,
        Some("mean") => g.mean,
        _ => 0.0,
    };
    groups.sort_by(|a, b| key(a.1).total_cmp(&key(b.1)).then_with(|| a.0.cmp(b.0)));
    if sort.desc {
        groups.reverse();
    }
    groups
}

fn results_table(job: Uuid, results: &JobResults, sort: &Sort) -> Markup {
    if results.groups.is_empty() {
        return html! { p.empty { "No results yet." } };
    }
    let current = sort.sort.as_deref().unwrap_or("group");
    html! {
        table.results {
            thead { tr {
                @for column in COLUMNS {
                    @let desc = column == current && !sort.desc;
                    th.num[column != "group"] {
                        a href={ "/jobs/" (job) "?sort=" (column) @if desc { "&desc=true" } } { (column) }
                    }
                }
            } }
            tbody {
                @for (group, g) in sorted(results, sort) {
                    tr {
                        td { (group) } td.num { (g.records) } td.num { (g.count) }
                        td.num { (number(g.sum)) } td.num { (number(g.min)) }
                        td.num { (number(g.max)) } td.num { (number(g.mean)) }
                    }
                }
            }
        }
    }
}

/// `GET /jobs/{id}/results.csv`.
pub async fn results_csv(
    State(api): State<Arc<Api>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Response {
    let (status, results) = match load(&api, &caller, &id).await {
        Ok(found) => found,
        Err(page) => return page,
    };
    let mut csv = COLUMNS.join(",");
    csv.push('\n');
    for (group, g) in &results.groups {
        let row = format!(
            "{},{},{},{},{},{},{}\n",
            csv_field(group),
            g.records,
            g.count,
            g.sum,
            g.min,
            g.max,
            g.mean
        );
        csv.push_str(&row);
    }
    let disposition = format!("attachment; filename=\"{}.csv\"", status.job_id);
    (
        [
            (header::CONTENT_TYPE, "text/csv; charset=utf-8".to_string()),
            (header::CONTENT_DISPOSITION, disposition),
        ],
        csv,
    )
        .into_response()
}

/// A CSV field, quoted when it holds a comma, quote or line break (RFC 4180).
pub fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_fields_are_quoted_when_needed() {
        assert_eq!(csv_field("plain"), "plain");
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
    }

    #[test]
    fn groups_sort_by_any_column() {
        let mut results = JobResults {
            job_id: Uuid::nil(),
            groups: Default::default(),
        };
        for (name, value) in [("a", 3.0), ("b", 1.0), ("c", 2.0)] {
            let mut g = GroupStats::empty();
            g.merge(1, 1, value, value, value);
            results.groups.insert(name.into(), g);
        }
        let order = |sort: Option<&str>, desc| {
            let sort = Sort {
                sort: sort.map(str::to_string),
                desc,
            };
            sorted(&results, &sort)
                .into_iter()
                .map(|(n, _)| n.as_str())
                .collect::<String>()
        };
        assert_eq!(order(None, false), "abc");
        assert_eq!(order(Some("sum"), false), "bca");
        assert_eq!(order(Some("max"), true), "acb");
    }
}
