//! `producer serve`: the HTTP API (axum).
//!
//! | route | what |
//! | --- | --- |
//! | `POST /v1/jobs` | enqueue a job: JSON `{"urls": [...]}` / `{"tasks": [...]}`, or NDJSON / text lines |
//! | `GET /v1/jobs/{id}` | the status JSON of `producer status` |
//! | `GET /v1/jobs/{id}/results` | the results JSON of `aggregator results` |
//! | `GET /v1/dlq` | `producer dlq list` (query: stage, job_id, task_id, error, search, limit, offset) |
//! | `POST /v1/dlq/replay` | `producer dlq replay` (filters in the query or a JSON body) |
//! | `POST /v1/dlq/purge` | `producer dlq purge` (the same; `dry_run` counts) |
//! | `GET /v1/openapi.json` | the OpenAPI document (`producer/openapi.json`) |
//! | `GET /healthz` | broker and Redis reachable; never needs the token |
//! | `GET /`, `/jobs/{id}`, `/login` ... | the web dashboard ([`crate::dashboard`]) |
//!
//! Handlers call the code the CLI runs ([`crate::enqueue`], [`crate::dlq`], the store) over
//! one broker connection and one Redis store ([`backend`]). Errors are
//! `{"error", "detail"}` ([`error`]); the token check is [`auth`].

pub mod auth;
pub mod backend;
pub mod body;
pub mod dlq;
pub mod error;
pub mod idempotency;
pub mod routes;

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use axum::Router;
use axum::http::{Method, Uri};
use axum::routing::{get, post};
use tokio::net::TcpListener;
use tower_http::trace::{DefaultOnFailure, TraceLayer};
use tributary::runtime::config::ConnectionArgs;
use tributary::runtime::shutdown::CancellationToken;

use crate::config::{PublishArgs, ServeArgs};
use crate::dashboard::Dashboard;
use crate::dashboard::management::Management;
use backend::Backends;
use error::ApiError;

/// The OpenAPI document of this API, served at `/v1/openapi.json`.
pub const OPENAPI: &str = include_str!("../../openapi.json");

/// The routes behind the token, as (method, path) the way `openapi.json` spells them.
pub const ROUTES: [(&str, &str); 7] = [
    ("post", "/v1/jobs"),
    ("get", "/v1/jobs/{id}"),
    ("get", "/v1/jobs/{id}/results"),
    ("get", "/v1/dlq"),
    ("post", "/v1/dlq/replay"),
    ("get", "/v1/openapi.json"),
    ("post", "/v1/dlq/purge"),
];

/// The route that needs no token.
pub const HEALTH_ROUTE: (&str, &str) = ("get", "/healthz");

/// What every handler shares.
pub struct Api {
    pub backends: Backends,
    /// The tokens and the session cookie key.
    pub access: auth::Access,
    /// The dashboard's state.
    pub dashboard: crate::dashboard::Dashboard,
    pub publish: PublishArgs,
    pub max_body_bytes: u64,
    /// Cancelled when the server stops (interrupts long dead-letter passes).
    pub shutdown: CancellationToken,
}

/// The router: every route of [`ROUTES`] behind the token (when there is one), `/healthz`
/// without, the dashboard ([`crate::dashboard`]); for the rest a 404 to known callers and
/// a 401 (or the login form) to anonymous ones, so no path is confirmed to them.
pub fn router(api: Arc<Api>) -> Router {
    let v1 = Router::new()
        .route(ROUTES[0].1, post(routes::create_job))
        .route(ROUTES[1].1, get(routes::job_status))
        .route(ROUTES[2].1, get(routes::job_results))
        .route(ROUTES[3].1, get(dlq::dlq_list))
        .route(ROUTES[4].1, post(dlq::dlq_replay))
        .route(ROUTES[5].1, get(routes::openapi))
        .route(ROUTES[6].1, post(dlq::dlq_purge))
        .route_layer(axum::middleware::from_fn(auth::require_api));
    Router::new()
        .route(HEALTH_ROUTE.1, get(routes::healthz))
        .merge(v1)
        .merge(crate::dashboard::routes())
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(
            api.clone(),
            auth::identify,
        ))
        // 5xx answers are logged (as warnings) where they are made, with their reason.
        .layer(
            TraceLayer::new_for_http()
                .on_failure(DefaultOnFailure::new().level(tracing::Level::DEBUG)),
        )
        .with_state(api)
}

async fn not_found(
    caller: Option<axum::Extension<auth::Caller>>,
    headers: axum::http::HeaderMap,
    method: Method,
    uri: Uri,
) -> axum::response::Response {
    use axum::response::IntoResponse as _;
    let Some(axum::Extension(caller)) = caller else {
        return crate::dashboard::login::anonymous(&headers);
    };
    let html = headers
        .get(axum::http::header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("text/html"));
    if html {
        let status = axum::http::StatusCode::NOT_FOUND;
        return crate::dashboard::layout::error_page(status, Some(&caller), "No such page.");
    }
    ApiError::not_found("not found", format!("no route {method} {}", uri.path())).into_response()
}

async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    ApiError::new(
        axum::http::StatusCode::METHOD_NOT_ALLOWED,
        "method not allowed",
        format!("{method} is not allowed on {}", uri.path()),
    )
}

/// A bound, not yet serving, API server.
pub struct Server {
    listener: TcpListener,
    addr: SocketAddr,
    api: Arc<Api>,
    router: Router,
}

impl Server {
    /// Checks the auth settings (a usage error, exit 2, for unsafe ones), binds
    /// `--listen`, and tries the broker and Redis once (serving starts either way: requests
    /// that need them get 503 until they are back).
    pub async fn bind(
        connection: &ConnectionArgs,
        args: &ServeArgs,
        shutdown: CancellationToken,
    ) -> anyhow::Result<Server> {
        let access = auth::Access::from_args(args)?;
        let management = match &args.management_url {
            Some(url) => Some(Management::new(url, connection.amqp_url.first())?),
            None => None,
        };
        if access.is_open() {
            tracing::warn!(listen = %args.listen, "serving without an API token");
        }
        let listener = TcpListener::bind(args.listen)
            .await
            .with_context(|| format!("cannot listen on {}", args.listen))?;
        let addr = listener.local_addr()?;
        let api = Arc::new(Api {
            backends: Backends::new(connection),
            access,
            dashboard: Dashboard::new(management),
            publish: args.publish.clone(),
            max_body_bytes: args.max_body_bytes,
            shutdown,
        });
        let (broker, redis) = api.backends.health().await;
        if !(broker && redis) {
            tracing::warn!(broker, redis, "not every backend is reachable yet");
        }
        let router = router(api.clone());
        Ok(Server {
            listener,
            addr,
            api,
            router,
        })
    }

    /// The address it listens on (the real port when `--listen` had port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serves until the shutdown token is cancelled, then finishes in-flight requests.
    pub async fn run(self) -> anyhow::Result<()> {
        tracing::info!(addr = %self.addr, "serving the HTTP API");
        crate::dashboard::live::start(self.api.clone(), self.api.shutdown.clone());
        let stop = self.api.shutdown.clone();
        let served = axum::serve(self.listener, self.router)
            .with_graceful_shutdown(async move { stop.cancelled().await })
            .await
            .context("serving the HTTP API");
        self.api.backends.close().await;
        served
    }
}

/// `producer serve`: bind, print `{"listening": "IP:PORT"}`, serve until shutdown.
pub async fn serve(
    connection: &ConnectionArgs,
    args: &ServeArgs,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let server = Server::bind(connection, args, shutdown).await?;
    crate::print_json(&serde_json::json!({"listening": server.local_addr().to_string()}))?;
    server.run().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_openapi_document_lists_every_route() {
        let doc: serde_json::Value = serde_json::from_str(OPENAPI).expect("openapi.json parses");
        assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
        let paths = doc["paths"].as_object().expect("paths");
        let mut documented: Vec<(String, String)> = paths
            .iter()
            .flat_map(|(path, item)| {
                let methods = item.as_object().expect("a path item");
                methods
                    .keys()
                    .filter(|m| ["get", "post", "put", "delete", "patch"].contains(&m.as_str()))
                    .map(|m| (m.clone(), path.clone()))
                    .collect::<Vec<_>>()
            })
            .collect();
        documented.sort();
        let mut served: Vec<(String, String)> = ROUTES
            .iter()
            .chain([&HEALTH_ROUTE])
            .map(|(m, p)| (m.to_string(), p.to_string()))
            .collect();
        served.sort();
        assert_eq!(documented, served);
        for (method, path) in ROUTES {
            let op = &paths[path][method];
            assert!(op["operationId"].is_string(), "{method} {path}");
            assert!(op["responses"]["401"].is_object(), "{method} {path}: 401");
            assert!(op["responses"]["503"].is_object() || path == "/v1/openapi.json");
        }
        assert_eq!(paths["/healthz"]["get"]["security"], serde_json::json!([]));
        let referenced = OPENAPI
            .match_indices("\"#/components/")
            .map(|(i, _)| OPENAPI[i + 3..].split('"').next().unwrap())
            .collect::<Vec<_>>();
        for reference in referenced {
            let mut node = &doc;
            for part in reference.trim_start_matches("/").split('/') {
                node = &node[part];
            }
            assert!(!node.is_null(), "dangling $ref {reference}");
        }
    }
}
