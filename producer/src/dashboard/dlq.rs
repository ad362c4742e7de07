//! `GET /dlq`: dead letters filtered by stage, job, error class and a search text, a page at
//! a time, with counts per error class; `POST /dlq/replay` and `POST /dlq/purge`: a dry run
//! first (how many would go), then the confirmed change. Both call what `POST
//! /v1/dlq/replay` and `/v1/dlq/purge` call ([`crate::api::dlq`]).

use std::sync::Arc;

use axum::extract::{Extension, Form, Query, State};
use axum::response::{IntoResponse, Response};
use maud::{Markup, html};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use serde::Deserialize;
use tributary::broker::deadletter::DeadInfo;

use super::layout::{csrf_field, page};
use super::login::check_form;
use super::overview::Paging;
use super::page_error;
use crate::api::Api;
use crate::api::auth::{Caller, Role};
use crate::api::dlq::{self, Change, DlqParams};
use crate::config::DlqCommand;
use crate::dlq::Collect;

/// Dead letters per page.
pub const PER_PAGE: usize = 50;

/// The most dead letters one page view reads (a filter that matches few of a deep queue
/// would otherwise read all of it); the page says when it stopped short, and `producer dlq
/// list` / `GET /v1/dlq` read everything.
pub const SCAN_BUDGET: u64 = 3_000;

/// The filters of the page (and of its forms), as `GET /v1/dlq` names them.
#[derive(Debug, Default, Clone, Deserialize)]
pub struct Filters {
    #[serde(default)]
    pub stage: String,
    #[serde(default)]
    pub job_id: String,
    #[serde(default)]
    pub task_id: String,
    #[serde(default)]
    pub error: String,
    #[serde(default)]
    pub search: String,
}

impl Filters {
    fn params(&self) -> Result<DlqParams, crate::api::error::ApiError> {
        let uuid = |s: &str, name: &str| {
            let s = s.trim();
            (!s.is_empty()).then(|| s.parse()).transpose().map_err(|_| {
                crate::api::error::ApiError::bad_request(
                    "invalid filter",
                    format!("{name} is not a UUID"),
                )
            })
        };
        Ok(DlqParams {
            stage: Some(self.stage.clone()),
            job_id: uuid(&self.job_id, "job_id")?,
            task_id: uuid(&self.task_id, "task_id")?,
            error: Some(self.error.clone()),
            search: Some(self.search.clone()),
            ..Default::default()
        })
    }

    /// The filters as hidden form fields.
    fn hidden(&self) -> Markup {
        html! {
            @for (name, value) in self.pairs() { input type="hidden" name=(name) value=(value); }
        }
    }

    fn pairs(&self) -> [(&'static str, &str); 5] {
        [
            ("stage", &self.stage),
            ("job_id", &self.job_id),
            ("task_id", &self.task_id),
            ("error", &self.error),
            ("search", &self.search),
        ]
    }

    /// `/dlq?stage=...` with the filters that are set.
    fn url(&self) -> String {
        let query: Vec<String> = self
            .pairs()
            .into_iter()
            .filter(|(_, v)| !v.is_empty())
            .map(|(k, v)| format!("{k}={}", encode(v)))
            .collect();
        format!("/dlq?{}", query.join("&"))
    }
}

/// Every byte but RFC 3986's unreserved characters is percent-encoded in a query value.
const QUERY_VALUE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// A query value, percent-encoded.
fn encode(s: &str) -> String {
    utf8_percent_encode(s, QUERY_VALUE).to_string()
}

/// `GET /dlq`.
pub async fn dlq_page(
    State(api): State<Arc<Api>>,
    Extension(caller): Extension<Caller>,
    Query(filters): Query<Filters>,
    Query(paging): Query<Paging>,
) -> Response {
    let (n, offset) = paging.at(PER_PAGE);
    let page_ = match listing(&api, &filters, (offset, PER_PAGE), SCAN_BUDGET).await {
        Ok(page_) => page_,
        Err(e) => return page_error(&caller, e),
    };
    let more = page_.seen > offset + PER_PAGE as u64;
    let body = html! {
        (filter_form(&filters))
        (class_counts(&page_, &filters))
        (cut_short(&page_))
        @if page_.entries.is_empty() {
            p.empty { "No dead letters match." }
        } @else {
            (actions(&caller, &filters, "these"))
            (entries_table(&caller, &page_.entries))
        }
        nav.pager {
            @if n > 1 { a rel="prev" href={ (filters.url()) "&page=" (n - 1) } { "← previous" } }
            span { "page " (n) }
            @if more { a rel="next" href={ (filters.url()) "&page=" (n + 1) } { "next →" } }
        }
    };
    page("Dead letters", Some(&caller), body).into_response()
}

/// The dead letters matching `filters`: `keep` after skipping `offset` (one more is
/// looked for, to know whether there is a next page), reading at most `budget`.
pub async fn listing(
    api: &Api,
    filters: &Filters,
    (offset, keep): (u64, usize),
    budget: u64,
) -> Result<Collect, crate::api::error::ApiError> {
    let params = filters.params()?;
    let command = DlqCommand::List {
        filter: dlq::filter_of(&params)?,
        limit: Some(offset + keep as u64 + 1),
    };
    let page_ = Collect::page(offset, keep).within(budget);
    Ok(dlq::run(api, &command, page_).await?.1)
}

/// The note a listing shows when its budget ended it before the queues did.
pub fn cut_short(page_: &Collect) -> Markup {
    html! {
        @if page_.cut_short() {
            p.cut #cut-short {
                "Read the first " (page_.read) " of " (page_.depth) " dead letters (a page reads at most "
                (page_.budget.unwrap_or_default()) "): narrow by stage, or use " code { "producer dlq list" } " or "
                code { "GET /v1/dlq" } " for the rest."
            }
        }
    }
}

fn filter_form(f: &Filters) -> Markup {
    html! {
        form.filters method="get" action="/dlq" {
            select name="stage" {
                option value="" { "any stage" }
                @for stage in ["fetch", "process", "results"] {
                    option value=(stage) selected[f.stage == stage] { (stage) }
                }
            }
            input name="job_id" placeholder="job id" value=(f.job_id) size="36";
            input name="error" placeholder="error class" value=(f.error);
            input name="search" placeholder="URL, host or detail contains" value=(f.search);
            button type="submit" { "Filter" }
        }
    }
}

fn class_counts(page_: &Collect, f: &Filters) -> Markup {
    html! {
        @if !page_.by_error.is_empty() {
            p.classes {
                "Error classes (of the " (page_.seen) " matching dead letters read): "
                @for (class, n) in &page_.by_error {
                    @let narrowed = Filters { error: class.clone(), ..f.clone() };
                    a.class href=(narrowed.url()) { (class) " " (n) } " "
                }
            }
        }
    }
}

/// The "replay" / "purge" buttons for the filtered set (`what` = "these") or one entry.
pub fn actions(caller: &Caller, f: &Filters, what: &str) -> Markup {
    html! {
        @if caller.role == Role::Admin {
            @for (action, label) in [("replay", "Replay"), ("purge", "Purge")] {
                form.inline method="post" action={ "/dlq/" (action) } {
                    (csrf_field(caller)) (f.hidden())
                    button type="submit" name="step" value="dry_run" { (label) " " (what) "…" }
                }
            }
        }
    }
}

pub fn entries_table(caller: &Caller, entries: &[DeadInfo]) -> Markup {
    let text = |s: &Option<String>| s.clone().unwrap_or_else(|| "-".into());
    html! {
        table.dlq {
            thead { tr { th { "URL" } th { "stage" } th { "job" } th { "error" } th { "detail" } th.num { "attempts" } th { "failed at" } th {} } }
            tbody {
                @for d in entries {
                    tr {
                        td.url { (text(&d.url)) }
                        td { (text(&d.stage)) }
                        td { @if let Some(job) = d.job_id { a href={ "/jobs/" (job) } { code { (job.to_string()[..8]) } } } }
                        td { (text(&d.error)) }
                        td.detail { (text(&d.reason)) }
                        td.num { (d.attempts.map(|a| a.to_string()).unwrap_or_default()) }
                        td { (text(&d.failed_at)) }
                        td { @if let Some(task) = d.task_id {
                            (actions(caller, &Filters { task_id: task.to_string(), stage: text(&d.stage), ..Default::default() }, ""))
                        } }
                    }
                }
            }
        }
    }
}

/// The fields of a replay / purge form.
#[derive(Debug, Deserialize)]
pub struct ChangeForm {
    csrf: String,
    #[serde(flatten)]
    filters: Filters,
    /// `dry_run` (first step) or `confirm`.
    #[serde(default)]
    step: String,
}

/// `POST /dlq/replay`.
pub async fn replay(
    State(api): State<Arc<Api>>,
    caller: Option<Extension<Caller>>,
    Form(form): Form<ChangeForm>,
) -> Response {
    change(&api, caller.map(|Extension(c)| c), Change::Replay, form).await
}

/// `POST /dlq/purge`.
pub async fn purge(
    State(api): State<Arc<Api>>,
    caller: Option<Extension<Caller>>,
    Form(form): Form<ChangeForm>,
) -> Response {
    change(&api, caller.map(|Extension(c)| c), Change::Purge, form).await
}

async fn change(api: &Api, caller: Option<Caller>, change: Change, form: ChangeForm) -> Response {
    if let Err(refused) = check_form(caller.as_ref(), &form.csrf, Role::Admin) {
        return refused;
    }
    let Some(caller) = caller else {
        return super::login::anonymous(&Default::default());
    };
    let dry_run = form.step != "confirm";
    let ran = async {
        let filter = dlq::filter_of(&form.filters.params()?)?;
        dlq::run(api, &change.command(filter, dry_run), Collect::page(0, 0)).await
    };
    let (summary, _) = match ran.await {
        Ok(done) => done,
        Err(e) => return page_error(&caller, e),
    };
    let (verb, done, title) = match change {
        Change::Replay => ("replay", "replayed", "Replay dead letters"),
        Change::Purge => ("purge", "purged", "Purge dead letters"),
    };
    let n = summary.count();
    let back = form.filters.url();
    let body = html! {
        @if dry_run {
            p.confirm { "This would " (verb) " " strong #would { (n) } " dead letter(s)." }
            @if n > 0 {
                form method="post" action={ "/dlq/" (verb) } {
                    (csrf_field(&caller)) (form.filters.hidden())
                    button type="submit" name="step" value="confirm" { "Confirm: " (verb) " " (n) }
                }
            }
        } @else {
            p.done { "Done: " (done) " " strong #done { (n) } " dead letter(s)." }
        }
        p { a href=(back) { "Back to the dead letters" } }
    };
    page(title, Some(&caller), body).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_values_keep_only_unreserved_characters() {
        assert_eq!(encode("a-b_c.d~e"), "a-b_c.d~e");
        assert_eq!(encode("x y/z&é"), "x%20y%2Fz%26%C3%A9");
    }
}
