//! `GET /hosts`: the fetchers' per-host limiter state (read-only, from Redis): paused for,
//! AIMD rate factor, leases in flight, next slot, deferred backlog. The configured rates
//! are the fetchers' `--host-rate` flags and are not in Redis.

use std::sync::Arc;

use axum::extract::{Extension, State};
use axum::response::{IntoResponse, Response};
use futures::future::join_all;
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
        let states = join_all(known.iter().map(|h| hosts::read(store, h))).await;
        states
            .into_iter()
            .collect::<Result<Vec<_>, _>>()
            .map_err(Into::into)
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
    html! {
        p { "Configured rates are the fetchers' " code { "--host-rate" } " flags; this is what the fleet shares in Redis now." }
        table.hosts {
            thead { tr {
                th { "host" } th { "paused for" } th.num { "rate factor (AIMD)" }
                th.num { "leases in flight" } th { "next slot in" } th { "deferred backlog" }
            } }
            tbody {
                @for h in states {
                    tr data-host=(h.host) {
                        td { code { (h.host) } }
                        td.paused[h.paused_for_ms.is_some()] { (ms(h.paused_for_ms)) }
                        td.num { (h.rate_factor.map_or_else(|| "1".to_string(), number)) }
                        td.num { (h.leases) }
                        td { (ms(h.next_slot_ms)) }
                        td { (ms(h.deferred_for_ms)) }
                    }
                }
            }
        }
    }
}
