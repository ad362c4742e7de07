//! Prometheus metrics and health endpoints of a long-running binary.
//!
//! One process-wide registry ([`metrics`]); stages count into it. `--metrics-listen ADDR`
//! serves `/metrics` (Prometheus text), `/livez` (the process is up) and `/readyz` (200 only
//! while a session consumes and Redis answers). Labels are bounded: stage, error class,
//! HTTP status code, queue, and the fetcher's host buckets (a `--host-rate` pattern or
//! `other`, never a host the operator did not name); never a URL or job id.

use std::net::SocketAddr;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

use crate::names::Stage;
use crate::policy::ErrorClass;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StageLabel {
    pub stage: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FailureLabels {
    pub stage: &'static str,
    pub class: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatusLabel {
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct QueueLabel {
    pub queue: String,
}

/// A per-host bucket: a `--host-rate` pattern or [`OTHER_HOSTS`].
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HostLabel {
    pub host: String,
}

impl HostLabel {
    fn of(bucket: &str) -> Self {
        Self {
            host: bucket.to_string(),
        }
    }
}

/// The bucket of every host no `--host-rate` pattern names.
pub const OTHER_HOSTS: &str = "other";

/// Every metric tributary exports.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    consumed: Family<StageLabel, Counter>,
    succeeded: Family<StageLabel, Counter>,
    retried: Family<FailureLabels, Counter>,
    dead: Family<FailureLabels, Counter>,
    in_flight: Family<StageLabel, Gauge>,
    prefetch: Family<StageLabel, Gauge>,
    queue_depth: Family<QueueLabel, Gauge>,
    http_responses: Family<StatusLabel, Counter>,
    fetched_bytes: Counter,
    fetch_seconds: Histogram,
    host_requests: Family<HostLabel, Counter>,
    host_throttled: Family<HostLabel, Counter>,
    host_deferred: Family<HostLabel, Counter>,
    host_rate: Family<HostLabel, Gauge<f64, AtomicU64>>,
    hosts_paused: Gauge,
    broker_blocked: Gauge,
    sessions: Counter,
    delivery_held: Histogram,
}

impl Metrics {
    fn new() -> Self {
        let mut registry = Registry::with_prefix("tributary");
        let m = Self {
            registry: Registry::default(),
            consumed: Family::default(),
            succeeded: Family::default(),
            retried: Family::default(),
            dead: Family::default(),
            in_flight: Family::default(),
            prefetch: Family::default(),
            queue_depth: Family::default(),
            http_responses: Family::default(),
            fetched_bytes: Counter::default(),
            fetch_seconds: Histogram::new(exponential_buckets(0.001, 2.0, 16)),
            host_requests: Family::default(),
            host_throttled: Family::default(),
            host_deferred: Family::default(),
            host_rate: Family::default(),
            hosts_paused: Gauge::default(),
            broker_blocked: Gauge::default(),
            sessions: Counter::default(),
            delivery_held: Histogram::new(exponential_buckets(0.01, 2.0, 14)),
        };
        macro_rules! register {
            ($($name:literal, $help:literal => $metric:expr;)*) => {
                $(registry.register($name, $help, $metric.clone());)*
            };
        }
        register! {
            "tasks_consumed", "Tasks taken from a stage queue" => m.consumed;
            "tasks_succeeded", "Tasks a stage passed on" => m.succeeded;
            "tasks_retried", "Tasks sent to a delay queue, by error class" => m.retried;
            "tasks_dead", "Tasks dead-lettered, by error class" => m.dead;
            "in_flight", "Tasks (fetch) or messages (process) being worked on" => m.in_flight;
            "prefetch", "The AMQP prefetch of a stage's consumer (the fetcher's follows its tasks per message)" => m.prefetch;
            "queue_depth", "Messages ready in a stage queue, sampled" => m.queue_depth;
            "http_responses", "Origin responses by status code" => m.http_responses;
            "fetched_bytes", "Body bytes downloaded" => m.fetched_bytes;
            "fetch_duration_seconds", "Time to download one task" => m.fetch_seconds;
            "host_requests", "Origin responses per host bucket (a --host-rate pattern or other)" => m.host_requests;
            "host_throttled", "429 responses per host bucket" => m.host_throttled;
            "host_deferred", "Tasks put aside in a delay queue by a host bucket's rate limit or pause (not attempts)" => m.host_deferred;
            "host_rate", "Configured requests per second of a host bucket" => m.host_rate;
            "hosts_paused", "Hosts this fetcher holds off because an origin asked to wait (Retry-After), as last read from Redis" => m.hosts_paused;
            "broker_blocked", "Broker connections of this process the broker has blocked (memory or disk alarm)" => m.broker_blocked;
            "sessions", "Worker sessions started (after connecting to the broker, or after Redis answered again)" => m.sessions;
            "delivery_held_seconds", "Time a fetcher holds a task message, from its delivery to its ack" => m.delivery_held;
        }
        Self { registry, ..m }
    }

    pub fn consumed(&self, stage: Stage, n: u64) {
        self.consumed
            .get_or_create(&StageLabel {
                stage: stage.as_str(),
            })
            .inc_by(n);
    }

    pub fn succeeded(&self, stage: Stage, n: u64) {
        self.succeeded
            .get_or_create(&StageLabel {
                stage: stage.as_str(),
            })
            .inc_by(n);
    }

    pub fn retried(&self, stage: Stage, class: ErrorClass) {
        let labels = FailureLabels {
            stage: stage.as_str(),
            class: class.as_str(),
        };
        self.retried.get_or_create(&labels).inc();
    }

    pub fn dead(&self, stage: Stage, class: ErrorClass) {
        let labels = FailureLabels {
            stage: stage.as_str(),
            class: class.as_str(),
        };
        self.dead.get_or_create(&labels).inc();
    }

    pub fn set_in_flight(&self, stage: Stage, n: usize) {
        self.in_flight
            .get_or_create(&StageLabel {
                stage: stage.as_str(),
            })
            .set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    pub fn set_prefetch(&self, stage: Stage, n: u16) {
        self.prefetch
            .get_or_create(&StageLabel {
                stage: stage.as_str(),
            })
            .set(i64::from(n));
    }

    pub fn set_queue_depth(&self, queue: &str, n: u32) {
        self.queue_depth
            .get_or_create(&QueueLabel {
                queue: queue.to_string(),
            })
            .set(i64::from(n));
    }

    /// One origin response (any status) and how long the download took.
    pub fn fetched(&self, status: Option<u16>, bytes: usize, took: Duration) {
        if let Some(status) = status {
            self.http_responses
                .get_or_create(&StatusLabel { status })
                .inc();
        }
        self.fetched_bytes.inc_by(bytes as u64);
        self.fetch_seconds.observe(took.as_secs_f64());
    }

    /// One origin response (any status) for a host of `bucket`; a 429 also counts as
    /// throttled.
    pub fn host_response(&self, bucket: &str, status: u16) {
        let labels = HostLabel::of(bucket);
        self.host_requests.get_or_create(&labels).inc();
        if status == 429 {
            self.host_throttled.get_or_create(&labels).inc();
        }
    }

    /// One task of a host bucket put aside by its rate limit or pause.
    pub fn host_deferred(&self, bucket: &str) {
        self.host_deferred
            .get_or_create(&HostLabel::of(bucket))
            .inc();
    }

    /// The rate (requests per second) of a host bucket.
    pub fn set_host_rate(&self, bucket: &str, per_second: f64) {
        self.host_rate
            .get_or_create(&HostLabel::of(bucket))
            .set(per_second);
    }

    /// The hosts paused fleet-wide, as this fetcher last read them.
    pub fn set_hosts_paused(&self, n: usize) {
        self.hosts_paused.set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// A broker connection was blocked (a resource alarm) or unblocked.
    pub fn set_broker_blocked(&self, blocked: bool) {
        if blocked {
            self.broker_blocked.inc();
        } else {
            self.broker_blocked.dec();
        }
    }

    /// A worker session started.
    pub fn session_started(&self) {
        self.sessions.inc();
    }

    /// A delivery was acked `held` after it arrived.
    pub fn delivery_held(&self, held: Duration) {
        self.delivery_held.observe(held.as_secs_f64());
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// The process-wide metrics.
pub fn metrics() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(Metrics::new)
}

/// Sessions consuming now in this process, and supervisors waiting for Redis to answer
/// (set through [`Readiness`] guards by `runtime::supervise`).
static CONSUMING: AtomicI64 = AtomicI64::new(0);
static REDIS_DOWN: AtomicI64 = AtomicI64::new(0);

/// What a supervisor reports to `/readyz` while it holds the guard: a session consuming,
/// or Redis not answering. Dropping the guard (the state ended, or the task was aborted)
/// takes the report back.
#[derive(Debug)]
pub enum Readiness {
    Consuming,
    RedisDown,
}

impl Readiness {
    fn counter(&self) -> &'static AtomicI64 {
        match self {
            Readiness::Consuming => &CONSUMING,
            Readiness::RedisDown => &REDIS_DOWN,
        }
    }

    /// Reports this state until the returned guard is dropped.
    pub fn report(self) -> ReadinessGuard {
        self.counter().fetch_add(1, Ordering::SeqCst);
        ReadinessGuard(self)
    }
}

/// See [`Readiness::report`].
#[derive(Debug)]
pub struct ReadinessGuard(Readiness);

impl Drop for ReadinessGuard {
    fn drop(&mut self) {
        self.0.counter().fetch_sub(1, Ordering::SeqCst);
    }
}

/// Ready while a session consumes and no supervisor of the process waits for Redis.
fn readiness() -> Result<(), &'static str> {
    if REDIS_DOWN.load(Ordering::SeqCst) > 0 {
        return Err("redis does not answer\n");
    }
    if CONSUMING.load(Ordering::SeqCst) <= 0 {
        return Err("not connected to the broker\n");
    }
    Ok(())
}

async fn ready() -> impl IntoResponse {
    match readiness() {
        Ok(()) => (StatusCode::OK, "ready\n"),
        Err(reason) => (StatusCode::SERVICE_UNAVAILABLE, reason),
    }
}

/// Starts the endpoints if the worker was asked to (`--metrics-listen`).
pub async fn serve_if_asked(
    worker: &crate::runtime::config::WorkerArgs,
    shutdown: &CancellationToken,
) -> anyhow::Result<Option<SocketAddr>> {
    match worker.metrics_listen {
        Some(listen) => Ok(Some(serve(listen, shutdown.clone()).await?)),
        None => Ok(None),
    }
}

/// Binds `listen` and serves the endpoints until `shutdown`; returns the bound address.
pub async fn serve(listen: SocketAddr, shutdown: CancellationToken) -> anyhow::Result<SocketAddr> {
    let app = Router::new()
        .route(
            "/metrics",
            get(|| async {
                (
                    [(
                        "content-type",
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    )],
                    metrics().encode(),
                )
            }),
        )
        .route("/livez", get(|| async { "alive\n" }))
        .route("/readyz", get(ready));
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen for metrics on {listen}: {e}"))?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await;
        if let Err(e) = served {
            tracing::warn!("metrics server stopped: {e}");
        }
    });
    tracing::info!(%addr, "serving /metrics, /livez, /readyz");
    Ok(addr)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_show_in_the_exposition() {
        let m = metrics();
        m.consumed(Stage::Fetch, 3);
        m.dead(Stage::Fetch, ErrorClass::HttpStatus);
        m.fetched(Some(200), 10, Duration::from_millis(5));
        m.host_response("*.example.org", 429);
        m.set_host_rate("*.example.org", 2.5);
        let text = m.encode();
        for line in [
            "tributary_host_requests_total{host=\"*.example.org\"} ",
            "tributary_host_throttled_total{host=\"*.example.org\"} ",
            "tributary_host_rate{host=\"*.example.org\"} 2.5",
        ] {
            assert!(text.contains(line), "no {line} in {text}");
        }
        assert!(
            text.contains("tributary_tasks_consumed_total{stage=\"fetch\"}"),
            "{text}"
        );
        assert!(
            text.contains("tributary_tasks_dead_total{stage=\"fetch\",class=\"http_status\"}"),
            "{text}"
        );
        assert!(
            text.contains("tributary_http_responses_total{status=\"200\"}"),
            "{text}"
        );
        assert!(
            text.contains("tributary_fetch_duration_seconds_bucket"),
            "{text}"
        );
    }
}
