//! `GET /hosts`: the fetchers' per-host limiter state (read-only, from Redis): configured
//! rate (as the fetchers advertise their `--host-rate` / `--default-host-rate`), AIMD rate
//! factor, paused for, leases in flight, next slot, tasks deferred and their backlog.

use std::sync::Arc;

use axum::extract::{Extension, State};
use axum::response::{IntoResponse, Response};
use maud::{Markup, html};
use tributary::store::hosts::{self, HostState};

use super::layout::{number, page};
use super::page_error;
use crate::api::Api;
use crate::api::auth::Caller;

/// `GET /hosts`.
pub async fn hosts_page(
    State(api): State<Arc<Api>>,
    Extension(caller): Extension<Caller>,
) -> Response {
    let read = async {
        let store = api.backends.store().await?;
        let known = hosts::known(store).await?;
        hosts::states(store, &known).await.map_err(Into::into)
    };
    let states: Vec<HostState> = match read.await {
        Ok(states) => states,
        Err(e) => return page_error(&caller, e),
    };
    page("Hosts", Some(&caller), table(&states)).into_response()
}

fn table(states: &[HostState]) -> Markup {
    if states.is_empty() {
        return html! { p.empty { "No host has limiter state now (no --host-rate, --host-concurrency or pause in effect)." } };
    }
    let ms = |v: Option<u64>| v.map_or_else(|| "-".to_string(), |v| format!("{v} ms"));
    let count = |v: Option<u64>| v.map_or_else(|| "-".to_string(), |v| v.to_string());
    html! {
        p { "Rates are the fetchers' " code { "--host-rate" } " / " code { "--default-host-rate" }
            " as they last advertised them; the rest is what the fleet shares in Redis now." }
        table.hosts {
            thead { tr {
                th { "host" } th.num { "configured rate /s" } th.num { "rate factor (AIMD)" }
                th { "paused for" } th.num { "leases in flight" } th { "next slot in" }
                th.num { "deferred" } th { "deferred backlog" }
            } }
            tbody {
                @for h in states {
                    tr data-host=(h.host) {
                        td { code { (h.host) } }
                        td.num data-field="rate" { (h.rate_per_sec.map_or_else(|| "-".to_string(), number)) }
                        td.num { (h.rate_factor.map_or_else(|| "1".to_string(), number)) }
                        td.paused[h.paused_for_ms.is_some()] { (ms(h.paused_for_ms)) }
                        td.num { (h.leases) }
                        td { (ms(h.next_slot_ms)) }
                        td.num data-field="deferred" { (count(h.deferred)) }
                        td { (ms(h.deferred_for_ms)) }
                    }
                }
            }
        }
    }
}
