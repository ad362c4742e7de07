//! The page shell every dashboard page shares (head, navigation, logout form) and the small
//! pieces of markup pages repeat: progress bars, times, CSRF fields, error pages.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use maud::{DOCTYPE, Markup, html};
use tributary::store::JobStatus;

use crate::api::auth::{Caller, Role};

/// The navigation entries: (path, label).
const NAV: [(&str, &str); 3] = [
    ("/", "Overview"),
    ("/dlq", "Dead letters"),
    ("/hosts", "Hosts"),
];

/// A whole page: `title`, the caller's navigation, `body`.
pub fn page(title: &str, caller: Option<&Caller>, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · tributary" }
                link rel="stylesheet" href="/assets/style.css";
                link rel="stylesheet" href="/assets/uplot.css";
                script src="/assets/uplot.js" defer {}
                script src="/assets/live.js" defer {}
            }
            body data-rendered-ms=(tributary::message::now_ms()) {
                header {
                    span.brand { "tributary" }
                    @if let Some(caller) = caller {
                        nav { @for (href, label) in NAV { a href=(href) { (label) } } }
                        @if caller.role == Role::ReadOnly { span.badge { "read-only" } }
                        form.logout method="post" action="/logout" {
                            (csrf_field(caller))
                            button type="submit" { "Log out" }
                        }
                    }
                }
                main { h1 { (title) } (body) }
            }
        }
    }
}

/// The hidden CSRF field of a form posted by `caller`.
pub fn csrf_field(caller: &Caller) -> Markup {
    html! { input type="hidden" name="csrf" value=(caller.csrf.as_deref().unwrap_or_default()); }
}

/// An error page (no detail that names jobs, URLs or hosts unless the caller is known).
pub fn error_page(status: StatusCode, caller: Option<&Caller>, message: &str) -> Response {
    let body = html! { p.error { (message) } p { a href="/" { "Back to the overview" } } };
    let title = status.canonical_reason().unwrap_or("Error");
    (status, page(title, caller, body)).into_response()
}

/// A job's progress bar: aggregated, dead and retrying shares of its total.
pub fn progress_bar(status: &JobStatus) -> Markup {
    let total = status.total.max(1) as f64;
    let share = |n: u64| format!("width:{:.2}%", (n as f64 / total * 100.0).min(100.0));
    let title = format!(
        "{} aggregated, {} dead, {} retrying of {}",
        status.aggregated, status.dead, status.retrying, status.total
    );
    html! {
        div.bar title=(title) {
            span.ok style=(share(status.aggregated)) {}
            span.dead style=(share(status.dead)) {}
            span.retrying style=(share(status.retrying)) {}
        }
    }
}

/// `2026-12-05 12:34:56` (UTC) for a time in ms since the epoch.
pub fn utc(ms: u64) -> String {
    let format = time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]:[second]");
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| t.format(&format).ok())
        .unwrap_or_else(|| "-".into())
}

/// A number with at most 4 significant decimals (`12.5`, `0.0031`, `1e300`).
pub fn number(x: f64) -> String {
    if x.is_finite() && x.abs() < 1e15 {
        let s = format!("{x:.4}");
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        format!("{x}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_and_times_read_well() {
        assert_eq!(number(12.5), "12.5");
        assert_eq!(number(3.0), "3");
        assert_eq!(number(f64::INFINITY), "inf");
        assert_eq!(utc(0), "1970-01-01 00:00:00");
    }
}
