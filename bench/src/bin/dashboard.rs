//! `dashboard`: how long `producer serve` takes to answer the dashboard's pages in a big
//! namespace: 1,000 jobs in the jobs index and 100,000 dead letters in the dead-letter
//! queues (BENCHMARKS.md, "Dashboard pages").
//!
//! ```text
//! cargo run --release -p tributary-bench --bin dashboard -- [--jobs 1000] [--dead 100000]
//!     [--rounds 20]
//! ```
//!
//! It fills a fresh namespace on the local RabbitMQ and Redis (`AMQP_URL` / `REDIS_URL`
//! as everywhere), serves it in process, times each page over HTTP (median and slowest of
//! `--rounds`, after one warm-up), prints a table and deletes the namespace.

use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure};
use clap::Parser;
use reqwest::header;
use tributary::policy::{ErrorClass, Failure};
use tributary::runtime::shutdown::CancellationToken;
use tributary::store::{Mark, jobs};
use tributary_tests::app::{App, AppOptions, connection_flags, serve};
use tributary_tests::dead::{self, Grave};
use uuid::Uuid;

const TOKEN: &str = "dashboard-bench-token-0123";

/// A page slower than this is timed over 3 rounds, not `--rounds`.
const SLOW: Duration = Duration::from_secs(1);

#[derive(Debug, Parser)]
#[command(
    name = "dashboard",
    about = "Render times of the dashboard's pages in a big namespace"
)]
struct Args {
    /// Jobs in the jobs index.
    #[arg(long, default_value_t = 1000)]
    jobs: u64,
    /// Dead letters in the fetch dead-letter queue, spread over the jobs.
    #[arg(long, default_value_t = 100_000)]
    dead: u64,
    /// Timed requests per page.
    #[arg(long, default_value_t = 20)]
    rounds: usize,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    match run(Args::parse()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("dashboard: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    ensure!(
        args.jobs > 0 && args.rounds > 0,
        "--jobs and --rounds must be at least 1"
    );
    let app = App::spawn("bench-dash", AppOptions::no_stages()).await?;
    let measured = async {
        let jobs = fill(&app, &args).await?;
        let stop = CancellationToken::new();
        let connection = connection_flags(&app.namespace);
        let served = serve(&connection, &["--api-token", TOKEN], stop.clone()).await?;
        let timed = time_pages(&served.base, &jobs, args.rounds).await;
        stop.cancel();
        timed
    };
    let result = measured.await;
    app.shutdown().await?;
    result
}

/// Registers the jobs (a second apart, 100 tasks each), buries the dead letters (three
/// error classes, 50 hosts, spread over the jobs) and marks their tasks dead in their jobs;
/// returns the job ids, oldest first.
async fn fill(app: &App, args: &Args) -> anyhow::Result<Vec<Uuid>> {
    let started = Instant::now();
    let first_ms = tributary::message::now_ms() - args.jobs * 1000;
    let mut ids = Vec::new();
    for i in 0..args.jobs {
        let job = Uuid::new_v4();
        app.store.add_to_total(job, 100).await?;
        jobs::register_at(&app.store, job, first_ms + i * 1000).await?;
        ids.push(job);
    }
    let n_jobs = ids.len() as u64;
    let graves = (0..args.dead).map(|i| {
        let job = ids[(i % n_jobs) as usize];
        let failure = match i % 3 {
            0 => Failure::http(404, None),
            1 => Failure::http(503, None),
            _ => Failure::new(ErrorClass::Timeout, "no answer within 10s"),
        };
        Grave::fetch(
            job,
            &format!("http://host{}.example/doc/{i}", i % 50),
            failure,
        )
    });
    let graves: Vec<Grave> = graves.collect();
    let buried = dead::bury(app, graves.iter().cloned()).await?;
    // The jobs count their dead tasks, as the workers' dead path does.
    let tasks = graves.iter().map(|g| (g.job, g.task));
    app.store.mark_many(Mark::Dead, tasks).await?;
    eprintln!(
        "dashboard: {} jobs and {buried} dead letters in {:.1} s",
        args.jobs,
        started.elapsed().as_secs_f64()
    );
    Ok(ids)
}

/// Times every page and prints the table.
async fn time_pages(base: &str, jobs: &[Uuid], rounds: usize) -> anyhow::Result<()> {
    let newest = jobs.last().context("no jobs")?;
    let pages = [
        ("/".to_string(), "overview, newest jobs"),
        ("/?page=40".to_string(), "overview, oldest jobs"),
        (format!("/jobs/{newest}"), "a job"),
        ("/dlq".to_string(), "dead letters, first page"),
        ("/dlq?page=20".to_string(), "dead letters, page 20"),
        (format!("/dlq?job_id={newest}"), "dead letters of one job"),
        (
            "/dlq?search=doc/99999".to_string(),
            "dead letters, a search",
        ),
        ("/hosts".to_string(), "hosts"),
    ];
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(300))
        .build()?;
    println!("| page | what | bytes | median ms | slowest ms | rounds |");
    println!("|---|---|---:|---:|---:|---:|");
    for (path, what) in pages {
        let url = format!("{base}{path}");
        let (bytes, first) = get(&client, &url).await?;
        let n = if first > SLOW { 3 } else { rounds };
        let mut times = Vec::with_capacity(n);
        for _ in 0..n {
            times.push(get(&client, &url).await?.1);
        }
        times.sort();
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        println!(
            "| `{path}` | {what} | {bytes} | {:.1} | {:.1} | {n} |",
            ms(times[n / 2]),
            ms(times[n - 1])
        );
    }
    Ok(())
}

/// One page as a browser asks for it; returns its size and the time to the last byte.
async fn get(client: &reqwest::Client, url: &str) -> anyhow::Result<(usize, Duration)> {
    let started = Instant::now();
    let response = client
        .get(url)
        .bearer_auth(TOKEN)
        .header(header::ACCEPT, "text/html")
        .send()
        .await?;
    let status = response.status();
    let body = response.bytes().await?;
    ensure!(status.is_success(), "{url}: {status}");
    Ok((body.len(), started.elapsed()))
}
