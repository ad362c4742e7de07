//! A small in-process HTTP origin server (axum) for tests, demos and
//! benchmarks.
//!
//! [`Origin::start`] binds `127.0.0.1:0`, serves on a runtime of its own
//! and records every request. It stops when [`Origin::shutdown`] is called
//! or the `Origin` is dropped.
//!
//! Routes (`{i}` is a document id; a `.json` suffix is accepted on it
//! everywhere):
//!
//! | route                          | answer                                                        |
//! |--------------------------------|---------------------------------------------------------------|
//! | `GET /quotes/{i}.json`         | 200 `application/json`, [`quote_body(i)`](crate::quotes::quote_body) |
//! | `GET /text/{i}.txt`            | 200 `text/plain`, `this is not json {i}\n`                    |
//! | `GET /status/{code}`           | `code` with a short text body                                 |
//! | `GET /missing/{i}.json`       | 404 until [`Origin::publish_missing`], then the quote document `i` |
//! | `GET /flaky/{key}/{n}/{i}`     | 503 (no `Retry-After`) for the first `n` requests of `(key, i)`, then 200 quote |
//! | `GET /retry-after/{secs}/{i}`  | 429 with `Retry-After: secs` for the first request of `(secs, i)`, then 200 quote |
//! | `GET /big/{bytes}`             | 200, `bytes` bytes of `x`, streamed, with `Content-Length`    |
//! | `GET /big-chunked/{bytes}`     | as `/big`, but chunked (no `Content-Length`)                  |
//! | `GET /slow/{ms}/{i}`           | sleeps `ms` milliseconds, then 200 quote                      |
//! | `GET /etag/{i}`                | 200 quote with `ETag: "q{i}"`; 304 (empty) to a matching `If-None-Match` |
//! | `GET /stall-body/{ms}/{i}`     | 200 quote headers and its first byte at once, the rest after `ms` milliseconds |
//! | `GET /redirect/{n}/{i}`        | 302 to `/redirect/{n-1}/{i}`, and from `n` = 1 to `/quotes/{i}`: `n` redirects in all |
//! | `GET /redirect-to?to={url}`    | 302 to `url`                                                  |
//! | `GET /bearer/{token}/{i}`      | 200 quote with `Authorization: Bearer {token}`, else 401     |
//! | `GET /basic/{user}/{password}/{i}` | 200 quote with that Basic `Authorization`, else 401       |
//! | `GET /no-auth/{i}`             | 200 quote without an `Authorization` header, 400 with one     |
//! | anything else                  | 404                                                           |

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context as _;
use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use bytes::Bytes;
use tokio::sync::oneshot;

use crate::quotes::quote_body;

mod routes;

use routes::*;

/// Size of the chunks `/big/{bytes}` is streamed in.
const BIG_CHUNK: usize = 64 * 1024;

/// How long [`Origin::shutdown`] waits for in-flight requests.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Options for [`Origin::start`].
#[derive(Debug, Clone, Default)]
pub struct OriginOptions {
    /// Added to every request (before the handler runs) with
    /// `tokio::time::sleep`.
    pub latency: Option<Duration>,
}

/// One request seen by the origin.
#[derive(Debug, Clone)]
pub struct RequestLog {
    /// When the request arrived (before [`OriginOptions::latency`]).
    pub at: Instant,
    /// The same moment on the system clock, the clock Redis and RabbitMQ time pauses and
    /// message TTLs by (it may be stepped, where `at` is monotonic).
    pub wall: SystemTime,
    /// The `Host` header (or the URI authority if there is none; empty if
    /// neither).
    pub host: String,
    /// The request path, without the query.
    pub path: String,
    /// The status code answered.
    pub status: u16,
}

/// State shared between the handle and the server task.
#[derive(Debug)]
struct Shared {
    latency: Option<Duration>,
    log: Mutex<Vec<RequestLog>>,
    /// Requests seen per flaky / retry-after key.
    attempts: Mutex<HashMap<String, u64>>,
    /// Whether `/missing/{i}.json` documents exist yet.
    missing_published: std::sync::atomic::AtomicBool,
    /// Per `Host` header: requests being answered now, and the most there ever were.
    in_flight: Mutex<HashMap<String, (u64, u64)>>,
}

impl Shared {
    /// Counts one more request for `key` and returns its 1-based number.
    fn attempt(&self, key: String) -> u64 {
        let mut attempts = lock(&self.attempts);
        let n = attempts.entry(key).or_insert(0);
        *n += 1;
        *n
    }
}

/// A running in-process HTTP origin. Stops on drop.
#[derive(Debug)]
pub struct Origin {
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: Option<oneshot::Sender<()>>,
    /// Fires when the origin's thread is done.
    finished: Option<oneshot::Receiver<()>>,
}

impl Origin {
    /// Binds `127.0.0.1:0` and starts serving on a runtime of its own (two worker threads,
    /// named `test-origin`), so the origin answers like a separate server: requests are not
    /// queued behind the test's own tasks (in-process workers), which would bunch the
    /// arrival times the rate-limit tests count.
    pub async fn start(options: OriginOptions) -> anyhow::Result<Origin> {
        let listener = std::net::TcpListener::bind(("127.0.0.1", 0))
            .context("binding the test origin to 127.0.0.1:0")?;
        listener
            .set_nonblocking(true)
            .context("making the test origin's socket non-blocking")?;
        let addr = listener
            .local_addr()
            .context("reading the test origin's address")?;
        let shared = Arc::new(Shared {
            latency: options.latency,
            log: Mutex::new(Vec::new()),
            attempts: Mutex::new(HashMap::new()),
            missing_published: std::sync::atomic::AtomicBool::new(false),
            in_flight: Mutex::new(HashMap::new()),
        });
        let app = router(shared.clone());
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("test-origin")
            .enable_all()
            .build()
            .context("starting the test origin's runtime")?;
        let (stop, stopped) = oneshot::channel::<()>();
        let (done, finished) = oneshot::channel::<()>();
        std::thread::Builder::new()
            .name("test-origin".into())
            .spawn(move || {
                if let Err(e) = runtime.block_on(serve(listener, app, stopped)) {
                    tracing::warn!(error = %e, "test origin stopped with an error");
                }
                // Connections still open after the grace period are dropped.
                runtime.shutdown_background();
                let _ = done.send(());
            })
            .context("starting the test origin's thread")?;
        tracing::debug!(%addr, "test origin started");
        Ok(Origin {
            addr,
            shared,
            stop: Some(stop),
            finished: Some(finished),
        })
    }

    /// The address the origin listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`, without a trailing slash.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `base_url()` followed by `path` (which should start with `/`).
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base_url())
    }

    /// Every request seen so far, in the order they were answered.
    pub fn requests(&self) -> Vec<RequestLog> {
        lock(&self.shared.log).clone()
    }

    /// Number of requests seen so far.
    pub fn request_count(&self) -> usize {
        lock(&self.shared.log).len()
    }

    /// Number of requests seen so far whose path starts with `prefix`.
    pub fn count_path_prefix(&self, prefix: &str) -> usize {
        lock(&self.shared.log)
            .iter()
            .filter(|r| r.path.starts_with(prefix))
            .count()
    }

    /// Number of requests seen so far for exactly `path`.
    pub fn hits(&self, path: &str) -> usize {
        lock(&self.shared.log)
            .iter()
            .filter(|r| r.path == path)
            .count()
    }

    /// The most requests with `Host: host` (e.g. `127.0.0.1:PORT`) ever answered at
    /// once (counted from arrival to the end of the handler).
    pub fn max_in_flight(&self, host: &str) -> u64 {
        lock(&self.shared.in_flight)
            .get(host)
            .map_or(0, |(_, most)| *most)
    }

    /// From now on `/missing/{i}.json` serves the quote document `i` instead of 404.
    pub fn publish_missing(&self) {
        self.shared
            .missing_published
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// Forgets the request log and the flaky / retry-after attempt
    /// counters.
    pub fn reset(&self) {
        lock(&self.shared.log).clear();
        lock(&self.shared.attempts).clear();
    }

    /// Stops accepting connections and waits (up to 5 s) for in-flight
    /// requests to finish; after that their connections are dropped.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(finished) = self.finished.take() {
            let _ = finished.await;
        }
    }
}

impl Drop for Origin {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Serves `app` on `listener` until `stopped` fires (or its sender is dropped), then for
/// up to [`SHUTDOWN_GRACE`] while in-flight requests finish.
async fn serve(
    listener: std::net::TcpListener,
    app: Router,
    stopped: oneshot::Receiver<()>,
) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::from_std(listener)?;
    let (graceful, draining) = oneshot::channel::<()>();
    let server = axum::serve(listener, app).with_graceful_shutdown(async {
        let _ = draining.await;
    });
    let server = std::future::IntoFuture::into_future(server);
    tokio::pin!(server);
    tokio::select! {
        served = &mut server => served,
        _ = stopped => {
            let _ = graceful.send(());
            tokio::time::timeout(SHUTDOWN_GRACE, server).await.unwrap_or(Ok(()))
        }
    }
}

/// Locks `m`, ignoring poisoning (a panicking test thread must not take
/// the origin down with it).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/quotes/{file}", get(quote))
        .route("/text/{file}", get(text))
        .route("/missing/{file}", get(missing))
        .route("/status/{code}", get(status))
        .route("/flaky/{key}/{n}/{i}", get(flaky))
        .route("/retry-after/{secs}/{i}", get(retry_after))
        .route("/big/{bytes}", get(big))
        .route("/big-chunked/{bytes}", get(big_chunked))
        .route("/slow/{ms}/{i}", get(slow))
        .route("/etag/{i}", get(etag))
        .route("/stall-body/{ms}/{i}", get(stall_body))
        .route("/redirect/{n}/{i}", get(redirect))
        .route("/redirect-to", get(redirect_to))
        .route("/bearer/{token}/{i}", get(bearer))
        .route("/basic/{user}/{password}/{i}", get(basic))
        .route("/no-auth/{i}", get(no_auth))
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(shared.clone(), record))
        .with_state(shared)
}

/// Applies the latency and records the request.
async fn record(State(shared): State<Arc<Shared>>, req: Request, next: Next) -> Response {
    let (at, wall) = (Instant::now(), SystemTime::now());
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_owned)
        .or_else(|| req.uri().authority().map(|a| a.to_string()))
        .unwrap_or_default();
    let path = req.uri().path().to_owned();
    {
        let mut in_flight = lock(&shared.in_flight);
        let (now, most) = in_flight.entry(host.clone()).or_insert((0, 0));
        *now += 1;
        *most = (*most).max(*now);
    }
    if let Some(latency) = shared.latency {
        tokio::time::sleep(latency).await;
    }
    let response = next.run(req).await;
    if let Some((now, _)) = lock(&shared.in_flight).get_mut(&host) {
        *now -= 1;
    }
    let status = response.status().as_u16();
    lock(&shared.log).push(RequestLog {
        at,
        wall,
        host,
        path,
        status,
    });
    response
}

#[cfg(test)]
mod tests;
