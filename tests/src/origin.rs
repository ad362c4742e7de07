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
//! | anything else                  | 404                                                           |

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

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
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(shared.clone(), record))
        .with_state(shared)
}

/// Applies the latency and records the request.
async fn record(State(shared): State<Arc<Shared>>, req: Request, next: Next) -> Response {
    let at = Instant::now();
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
        host,
        path,
        status,
    });
    response
}

/// Parses a document id, accepting an optional `suffix`.
fn parse_id(s: &str, suffix: &str) -> Option<u64> {
    s.strip_suffix(suffix).unwrap_or(s).parse().ok()
}

fn quote_response(i: u64) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], quote_body(i)).into_response()
}

fn not_found_response() -> Response {
    (StatusCode::NOT_FOUND, "not found\n").into_response()
}

async fn not_found() -> Response {
    not_found_response()
}

async fn quote(Path(file): Path<String>) -> Response {
    match parse_id(&file, ".json") {
        Some(i) => quote_response(i),
        None => not_found_response(),
    }
}

async fn missing(State(shared): State<Arc<Shared>>, Path(file): Path<String>) -> Response {
    if shared
        .missing_published
        .load(std::sync::atomic::Ordering::SeqCst)
    {
        quote(Path(file)).await
    } else {
        not_found_response()
    }
}

async fn text(Path(file): Path<String>) -> Response {
    match parse_id(&file, ".txt") {
        Some(i) => (
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            format!("this is not json {i}\n"),
        )
            .into_response(),
        None => not_found_response(),
    }
}

async fn status(Path(code): Path<String>) -> Response {
    match code
        .parse::<u16>()
        .ok()
        .and_then(|c| StatusCode::from_u16(c).ok())
    {
        Some(code) => (code, format!("status {}\n", code.as_u16())).into_response(),
        None => (StatusCode::BAD_REQUEST, "bad status code\n").into_response(),
    }
}

async fn flaky(
    State(shared): State<Arc<Shared>>,
    Path((key, n, i)): Path<(String, String, String)>,
) -> Response {
    let (Ok(n), Some(i)) = (n.parse::<u64>(), parse_id(&i, ".json")) else {
        return not_found_response();
    };
    if shared.attempt(format!("flaky/{key}/{i}")) <= n {
        (StatusCode::SERVICE_UNAVAILABLE, "flaky: try again\n").into_response()
    } else {
        quote_response(i)
    }
}

async fn retry_after(
    State(shared): State<Arc<Shared>>,
    Path((secs, i)): Path<(String, String)>,
) -> Response {
    let (Ok(secs), Some(i)) = (secs.parse::<u64>(), parse_id(&i, ".json")) else {
        return not_found_response();
    };
    if shared.attempt(format!("retry-after/{secs}/{i}")) == 1 {
        (
            StatusCode::TOO_MANY_REQUESTS,
            [(header::RETRY_AFTER, HeaderValue::from(secs))],
            "slow down\n",
        )
            .into_response()
    } else {
        quote_response(i)
    }
}

/// A body of `total` bytes of `x`, streamed in [`BIG_CHUNK`] pieces.
fn big_body(total: u64) -> Body {
    let chunk = Bytes::from(vec![b'x'; BIG_CHUNK]);
    let stream = futures::stream::unfold(total, move |remaining| {
        let chunk = chunk.clone();
        async move {
            if remaining == 0 {
                return None;
            }
            let n = usize::try_from(remaining).map_or(BIG_CHUNK, |r| r.min(BIG_CHUNK));
            Some((Ok::<_, Infallible>(chunk.slice(..n)), remaining - n as u64))
        }
    });
    Body::from_stream(stream)
}

async fn big(Path(bytes): Path<String>) -> Response {
    match bytes.parse::<u64>() {
        Ok(total) => (
            [
                (header::CONTENT_TYPE, HeaderValue::from_static("text/plain")),
                (header::CONTENT_LENGTH, HeaderValue::from(total)),
            ],
            big_body(total),
        )
            .into_response(),
        Err(_) => not_found_response(),
    }
}

async fn big_chunked(Path(bytes): Path<String>) -> Response {
    match bytes.parse::<u64>() {
        Ok(total) => ([(header::CONTENT_TYPE, "text/plain")], big_body(total)).into_response(),
        Err(_) => not_found_response(),
    }
}

async fn slow(Path((ms, i)): Path<(String, String)>) -> Response {
    let (Ok(ms), Some(i)) = (ms.parse::<u64>(), parse_id(&i, ".json")) else {
        return not_found_response();
    };
    tokio::time::sleep(Duration::from_millis(ms)).await;
    quote_response(i)
}

async fn etag(Path(file): Path<String>, headers: axum::http::HeaderMap) -> Response {
    let Some(i) = parse_id(&file, ".json") else {
        return not_found_response();
    };
    let tag = format!("\"q{i}\"");
    let etag = HeaderValue::from_str(&tag).expect("a valid header");
    if headers
        .get(header::IF_NONE_MATCH)
        .is_some_and(|v| v.as_bytes() == tag.as_bytes())
    {
        return (StatusCode::NOT_MODIFIED, [(header::ETAG, etag)]).into_response();
    }
    let mut response = quote_response(i);
    response.headers_mut().insert(header::ETAG, etag);
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    /// A response read by [`get`].
    #[derive(Debug)]
    struct Reply {
        status: u16,
        headers: BTreeMap<String, String>,
        body: Vec<u8>,
    }

    /// A minimal HTTP/1.1 client: one request per connection.
    async fn get_with_host(addr: SocketAddr, path: &str, host: &str) -> Reply {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let request = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await.unwrap();

        let split = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
        let head = std::str::from_utf8(&raw[..split]).unwrap();
        let mut lines = head.split("\r\n");
        let status = lines.next().unwrap().split(' ').nth(1).unwrap();
        let headers: BTreeMap<String, String> = lines
            .map(|l| {
                let (k, v) = l.split_once(':').unwrap();
                (k.trim().to_ascii_lowercase(), v.trim().to_owned())
            })
            .collect();
        let mut body = raw[split + 4..].to_vec();
        if headers.get("transfer-encoding").map(String::as_str) == Some("chunked") {
            body = dechunk(&body);
        }
        Reply {
            status: status.parse().unwrap(),
            headers,
            body,
        }
    }

    async fn get(origin: &Origin, path: &str) -> Reply {
        get_with_host(origin.addr(), path, &origin.addr().to_string()).await
    }

    fn dechunk(mut data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        loop {
            let eol = data.windows(2).position(|w| w == b"\r\n").unwrap();
            let size = std::str::from_utf8(&data[..eol]).unwrap();
            let size = usize::from_str_radix(size.split(';').next().unwrap(), 16).unwrap();
            data = &data[eol + 2..];
            if size == 0 {
                return out;
            }
            out.extend_from_slice(&data[..size]);
            data = &data[size + 2..];
        }
    }

    #[tokio::test]
    async fn serves_quotes_text_and_statuses() {
        let origin = Origin::start(OriginOptions::default()).await.unwrap();
        assert!(origin.base_url().starts_with("http://127.0.0.1:"));
        assert_eq!(origin.url("/x"), format!("{}/x", origin.base_url()));

        let r = get(&origin, "/quotes/7.json").await;
        assert_eq!(r.status, 200);
        assert_eq!(r.headers["content-type"], "application/json");
        assert_eq!(r.body, quote_body(7));
        let r = get(&origin, "/quotes/8").await;
        assert_eq!((r.status, r.body), (200, quote_body(8).to_vec()));
        assert_eq!(get(&origin, "/quotes/x.json").await.status, 404);

        let r = get(&origin, "/text/3.txt").await;
        assert_eq!(r.status, 200);
        assert!(r.headers["content-type"].starts_with("text/plain"));
        assert_eq!(r.body, b"this is not json 3\n");
        assert!(serde_json::from_slice::<serde_json::Value>(&r.body).is_err());

        for code in [404, 500, 503, 301, 204] {
            assert_eq!(get(&origin, &format!("/status/{code}")).await.status, code);
        }
        assert_eq!(get(&origin, "/status/abc").await.status, 400);
        assert_eq!(get(&origin, "/nope").await.status, 404);

        let log = origin.requests();
        assert_eq!(log.len(), 11);
        assert_eq!(origin.request_count(), 11);
        assert_eq!(log[0].path, "/quotes/7.json");
        assert_eq!(log[0].status, 200);
        assert_eq!(log[0].host, origin.addr().to_string());
        assert_eq!(log.last().unwrap().path, "/nope");
        assert_eq!(log.last().unwrap().status, 404);
        assert!(log.windows(2).all(|w| w[0].at <= w[1].at));
        assert_eq!(origin.count_path_prefix("/status/"), 6);
        assert_eq!(origin.count_path_prefix("/quotes/"), 3);
        assert_eq!(origin.hits("/quotes/7.json"), 1);
        assert_eq!(origin.hits("/quotes/7"), 0);

        origin.reset();
        assert_eq!(origin.request_count(), 0);
        origin.shutdown().await;
    }

    #[tokio::test]
    async fn flaky_fails_n_times_per_key_and_id() {
        let origin = Origin::start(OriginOptions::default()).await.unwrap();
        for _ in 0..2 {
            let r = get(&origin, "/flaky/a/2/5").await;
            assert_eq!(r.status, 503);
            assert!(!r.headers.contains_key("retry-after"));
        }
        // Another id and another key have their own counters.
        assert_eq!(get(&origin, "/flaky/a/2/6").await.status, 503);
        assert_eq!(get(&origin, "/flaky/b/1/5").await.status, 503);
        for _ in 0..2 {
            let r = get(&origin, "/flaky/a/2/5").await;
            assert_eq!((r.status, r.body), (200, quote_body(5).to_vec()));
        }
        assert_eq!(get(&origin, "/flaky/b/1/5").await.status, 200);
        assert_eq!(get(&origin, "/flaky/c/0/5.json").await.status, 200);
        assert_eq!(origin.hits("/flaky/a/2/5"), 4);
        assert_eq!(origin.count_path_prefix("/flaky/"), 8);
    }

    #[tokio::test]
    async fn retry_after_answers_429_once() {
        let origin = Origin::start(OriginOptions::default()).await.unwrap();
        let r = get(&origin, "/retry-after/2/9").await;
        assert_eq!(r.status, 429);
        assert_eq!(r.headers["retry-after"], "2");
        let r = get(&origin, "/retry-after/2/9").await;
        assert_eq!((r.status, r.body), (200, quote_body(9).to_vec()));
        assert_eq!(get(&origin, "/retry-after/2/9").await.status, 200);
        assert_eq!(get(&origin, "/retry-after/3/9").await.status, 429);
        assert_eq!(get(&origin, "/retry-after/2/10").await.status, 429);

        // reset() also forgets the attempt counters.
        origin.reset();
        assert_eq!(get(&origin, "/retry-after/2/9").await.status, 429);
    }

    #[tokio::test]
    async fn big_bodies_are_streamed() {
        let origin = Origin::start(OriginOptions::default()).await.unwrap();
        let size = 3 * BIG_CHUNK as u64 + 17;
        let r = get(&origin, &format!("/big/{size}")).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.headers["content-length"], size.to_string());
        assert_eq!(r.body.len() as u64, size);
        assert!(r.body.iter().all(|&b| b == b'x'));

        let r = get(&origin, &format!("/big-chunked/{size}")).await;
        assert_eq!(r.status, 200);
        assert!(!r.headers.contains_key("content-length"));
        assert_eq!(r.body.len() as u64, size);

        let r = get(&origin, "/big/0").await;
        assert_eq!((r.status, r.body.len()), (200, 0));
        assert_eq!(get(&origin, "/big/lots").await.status, 404);
    }

    #[tokio::test]
    async fn latency_slow_and_host_header() {
        let latency = Duration::from_millis(100);
        let origin = Origin::start(OriginOptions {
            latency: Some(latency),
        })
        .await
        .unwrap();
        let t = Instant::now();
        let r = get_with_host(origin.addr(), "/quotes/1.json", "example.test:8080").await;
        assert_eq!(r.status, 200);
        assert!(t.elapsed() >= latency);
        let log = origin.requests();
        assert_eq!(log[0].host, "example.test:8080");

        let t = Instant::now();
        let r = get(&origin, "/slow/150/4").await;
        assert_eq!((r.status, r.body), (200, quote_body(4).to_vec()));
        assert!(t.elapsed() >= latency + Duration::from_millis(150));
        assert_eq!(get(&origin, "/slow/x/4").await.status, 404);
    }

    #[tokio::test]
    async fn stops_on_shutdown_and_drop() {
        let origin = Origin::start(OriginOptions::default()).await.unwrap();
        let addr = origin.addr();
        assert_eq!(get(&origin, "/quotes/1.json").await.status, 200);
        origin.shutdown().await;
        assert!(TcpStream::connect(addr).await.is_err());

        let origin = Origin::start(OriginOptions::default()).await.unwrap();
        let addr = origin.addr();
        drop(origin);
        let deadline = Instant::now() + Duration::from_secs(5);
        while TcpStream::connect(addr).await.is_ok() {
            assert!(
                Instant::now() < deadline,
                "origin still listening after drop"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}
