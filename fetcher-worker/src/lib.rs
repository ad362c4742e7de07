//! `fetcher-worker`: consumes `ns.fetch`, downloads each task's URL, publishes the raw
//! payloads (many per message) to `process`, retries or dead-letters failures.
//!
//! [`run`] is the whole worker; `main.rs` only parses the config and installs telemetry.

pub mod acks;
pub mod conditional;
pub mod config;
pub mod fetch;
pub mod guard;
pub mod http;
pub mod pipeline;
pub mod politeness;
pub mod prefetch;
pub mod sink;

use std::sync::Arc;

use tributary::broker::topology::Topology;
use tributary::names::{Names, Stage};
use tributary::runtime::shutdown::CancellationToken;
use tributary::runtime::supervise::supervise;

pub use config::Config;

/// Runs the fetcher until `shutdown` is cancelled and in-flight work is settled.
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    tributary::runtime::metrics::serve_if_asked(&config.worker, &shutdown).await?;
    let names = Names::new(&config.common.connection.namespace);
    let policy = config.retry_policy();
    let rates = config.rate_table();
    rates.publish_rates();
    anyhow::ensure!(
        rates.is_empty() || !policy.delays.is_empty(),
        "--host-rate and --default-host-rate need at least one --retry-delays step to put \
         tasks aside in"
    );
    let http = http::Http::new(config.http_options())?;
    let topology = Topology::new(names.clone(), config.common.connection.queue_type)
        .with_retries(Stage::Fetch, &policy.delays);
    let connection = config.common.connection.clone();
    let ctx = Arc::new(pipeline::Context {
        config,
        http,
        names,
        policy: Arc::new(policy),
        rates,
    });
    supervise(
        "fetcher-worker",
        &connection,
        topology,
        shutdown,
        |session| pipeline::session(ctx.clone(), session),
    )
    .await
}
