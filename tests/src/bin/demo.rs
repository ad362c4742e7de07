//! The demo: a local origin serving generated quote documents, the four stages, one job
//! pushed through the whole pipeline with a progress bar, then a short table of the
//! aggregate (the whole JSON with `--json` or `--json-file PATH`), the job's status and a
//! check of the aggregate against one computed directly from the documents (exit 1 if it
//! does not match).
//!
//! `scripts/demo.sh` (or `cargo run --release -p tributary-tests --bin demo`). Uses a fresh
//! namespace on the local RabbitMQ and Redis and deletes it at the end.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Parser;
use tributary::stats::GroupStats;
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
    /// Print the whole aggregate as JSON on stdout (as `aggregator results` does).
    #[arg(long)]
    json: bool,
    /// Write the whole aggregate as JSON to this file.
    #[arg(long, value_name = "PATH")]
    json_file: Option<std::path::PathBuf>,
    /// Groups shown in the table (the most records first).
    #[arg(long, default_value_t = 10)]
    top: usize,
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
    // Ctrl-C ends the demo at once (no signal handler here), so nothing cancels the wait.
    let never = tributary::runtime::shutdown::CancellationToken::new();
    let limit = Some(Duration::from_secs(600));
    let status = producer::progress::watch(&app.store, job, limit, &never).await?;
    let secs = started.elapsed().as_secs_f64();
    let results = app.store.results(job).await?.context("no results")?;
    let json = serde_json::to_value(&results)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&json)?);
    }
    if let Some(path) = &args.json_file {
        std::fs::write(path, serde_json::to_string_pretty(&json)?)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    println!("{}", table(&results.groups, args.top));
    println!(
        "job {job}: {} tasks in {secs:.2} s ({:.0} URLs/s): {} aggregated, {} dead ({} not found, {} not JSON: see `producer dlq list --job-id {job}`)",
        status.total,
        status.total as f64 / secs,
        status.aggregated,
        status.dead,
        args.missing,
        args.not_json,
    );
    if cfg!(debug_assertions) {
        println!(
            "debug build, quick to compile: `scripts/demo.sh --release` runs optimized (BENCHMARKS.md has the throughput)"
        );
    }
    let checked = check_close(&json, &expected_aggregate(0..args.urls));
    app.shutdown().await?;
    match checked {
        Ok(()) => {
            println!("check: the aggregate matches one computed directly from the documents");
            Ok(())
        }
        Err(e) => anyhow::bail!("the aggregate does not match the documents: {e}"),
    }
}

/// The `top` groups with the most records, as a text table.
fn table(groups: &BTreeMap<String, GroupStats>, top: usize) -> String {
    let mut rows: Vec<(&String, &GroupStats)> = groups.iter().collect();
    rows.sort_by(|a, b| b.1.records.cmp(&a.1.records).then(a.0.cmp(b.0)));
    let mut out = format!(
        "{:<10} {:>8} {:>8} {:>10} {:>10} {:>10}\n",
        "group", "records", "values", "min", "max", "mean"
    );
    for (group, g) in rows.iter().take(top) {
        out.push_str(&format!(
            "{group:<10} {:>8} {:>8} {:>10.2} {:>10.2} {:>10.2}\n",
            g.records, g.count, g.min, g.max, g.mean
        ));
    }
    if groups.len() > top {
        out.push_str(&format!(
            "... and {} more groups (--json for all)\n",
            groups.len() - top
        ));
    }
    out.trim_end().to_string()
}
