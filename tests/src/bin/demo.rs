//! The demo: a local origin serving generated quote documents, the four stages, one job
//! pushed through the whole pipeline with a progress bar, and the aggregate printed.
//!
//! `scripts/demo.sh` (or `cargo run --release -p tributary-tests --bin demo`). Uses a fresh
//! namespace on the local RabbitMQ and Redis and deletes it at the end.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;
use tributary_tests::app::{App, AppOptions};
use tributary_tests::quotes::{check_close, expected_aggregate};

#[derive(Debug, Parser)]
#[command(
    name = "demo",
    about = "Push a real job through the whole tributary pipeline"
)]
struct Args {
    /// Quote documents to fetch.
    #[arg(long, default_value_t = 5000)]
    urls: u64,
    /// URLs that answer 404 (they end in the fetch dead-letter queue).
    #[arg(long, default_value_t = 20)]
    missing: u64,
    /// URLs whose body is not JSON (they end in the process dead-letter queue).
    #[arg(long, default_value_t = 10)]
    not_json: u64,
    /// Fetcher workers.
    #[arg(long, default_value_t = 2)]
    fetchers: usize,
}

#[tokio::main]
async fn main() -> ExitCode {
    tributary::runtime::telemetry::init_with_default(
        tributary::runtime::config::LogFormat::Text,
        "warn",
    );
    tributary::runtime::cli::exit(demo(Args::parse()).await)
}

async fn demo(args: Args) -> anyhow::Result<()> {
    eprintln!(
        "starting a local origin, {} fetcher(s), a processor and an aggregator ...",
        args.fetchers
    );
    let app = App::spawn(
        "demo",
        AppOptions {
            fetchers: args.fetchers,
            ..AppOptions::default()
        },
    )
    .await?;
    let mut lines: Vec<String> = (0..args.urls)
        .map(|i| app.origin.url(&format!("/quotes/{i}.json")))
        .collect();
    lines.extend((0..args.missing).map(|i| app.origin.url(&format!("/status/404?i={i}"))));
    lines.extend((0..args.not_json).map(|i| app.origin.url(&format!("/text/{i}.txt"))));
    eprintln!(
        "enqueueing {} URLs from {} in namespace {} ...",
        lines.len(),
        app.origin.base_url(),
        app.namespace
    );
    let started = Instant::now();
    let job = app.enqueue_lines(&lines, &[]).await?;
    let status = producer::progress::watch(&app.store, job, Some(Duration::from_secs(600))).await?;
    let secs = started.elapsed().as_secs_f64();
    let results = app.results_json(job).await?;
    println!("{}", serde_json::to_string_pretty(&results)?);
    println!("{}", serde_json::to_string(&status)?);
    let verdict = match check_close(&results, &expected_aggregate(0..args.urls)) {
        Ok(()) => "matches the aggregate computed directly from the documents".to_string(),
        Err(e) => format!("DOES NOT match the documents: {e}"),
    };
    eprintln!(
        "job {job}: {} tasks in {secs:.2} s ({:.0} URLs/s); {} aggregated, {} dead; the aggregate {verdict}",
        status.total,
        status.total as f64 / secs,
        status.aggregated,
        status.dead,
    );
    app.shutdown().await?;
    Ok(())
}
