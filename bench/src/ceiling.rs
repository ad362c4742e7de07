//! `--ceiling`: what this machine can fetch and parse at all. The fetcher's HTTP client
//! (built from the fetcher's own settings, `--fetcher-arg` flags included) downloads every
//! URL of the run from the same origin with the fetchers' concurrency, and the processor's
//! parser (its settings, `--processor-arg` flags included) turns each body into records.
//! No broker, no Redis, no acks: the pipeline's rate as a fraction of this one is what the
//! queueing, durability and exactly-once bookkeeping cost.

use std::time::Instant;

use anyhow::{Context as _, bail};
use clap::Parser as _;
use fetcher_worker::http::Http;
use futures::StreamExt as _;
use processor_worker::json_stats::JsonStats;
use tributary::message::{Payload, PayloadHeader, Task, VERSION};
use tributary::processor::Processor as _;
use uuid::Uuid;

use crate::procfs::{clock_ticks, cpu_ticks};
use crate::report::CeilingResult;
use crate::run::Ctx;

/// The fetcher's client and the processor's parser, configured as the workers are.
struct Work {
    http: Http,
    parser: JsonStats,
    job: Uuid,
}

/// Fetches and parses every URL of the run; fails if any URL failed.
pub async fn ceiling(ctx: &Ctx<'_>) -> anyhow::Result<CeilingResult> {
    let fetcher = fetcher_worker::Config::try_parse_from(
        ["fetcher-worker", "--allow-private"]
            .into_iter()
            .map(String::from)
            .chain(ctx.args.fetcher_args.iter().cloned()),
    )
    .context("the fetcher flags")?;
    let processor = processor_worker::Config::try_parse_from(
        std::iter::once("processor-worker".to_string())
            .chain(ctx.args.processor_args.iter().cloned()),
    )
    .context("the processor flags")?;
    let work = Work {
        http: Http::new(fetcher.http_options())?,
        parser: JsonStats::new(&processor.records, &processor.group_by, &processor.values)
            .map_err(anyhow::Error::msg)?,
        job: Uuid::new_v4(),
    };
    let concurrency = fetcher.concurrency.max(1) * ctx.args.fetchers;
    let base = ctx.origin.base_url();
    eprintln!(
        "bench: ceiling: fetch + parse of {} URLs, {concurrency} in flight",
        ctx.args.urls
    );

    let cpu_before = cpu_ticks(std::process::id());
    let started = Instant::now();
    let (records, failed, first_error) = futures::stream::iter(0..ctx.args.urls)
        .map(|i| work.fetch_and_parse(format!("{base}/quotes/{i}.json")))
        .buffer_unordered(concurrency)
        .fold(
            (0u64, 0u64, None),
            |(records, failed, first), outcome| async move {
                match outcome {
                    Ok(n) => (records + n as u64, failed, first),
                    Err(e) => (records, failed + 1, first.or(Some(e))),
                }
            },
        )
        .await;
    let seconds = started.elapsed().as_secs_f64();
    let cpu_after = cpu_ticks(std::process::id());
    if let Some(e) = first_error {
        bail!("{failed} of {} URLs failed, the first: {e}", ctx.args.urls);
    }
    Ok(CeilingResult {
        urls_per_s: ctx.args.urls as f64 / seconds.max(1e-9),
        seconds,
        records,
        failed,
        concurrency,
        cpu_s: cpu_before
            .zip(cpu_after)
            .map(|(a, b)| b.saturating_sub(a) as f64 / clock_ticks()),
    })
}

impl Work {
    /// One URL: validated as the fetcher validates a task, downloaded with the fetcher's
    /// client, parsed by the processor; the number of records.
    async fn fetch_and_parse(&self, url: String) -> Result<usize, String> {
        let task = Task::new(self.job, url);
        let parsed = task.validate().map_err(|f| f.reason)?;
        let fetched = self
            .http
            .fetch(&task, &parsed, None)
            .await
            .map_err(|f| f.reason)?;
        let payload = Payload {
            header: PayloadHeader {
                v: VERSION,
                job_id: task.job_id,
                task_id: task.task_id,
                url: task.url,
                status: fetched.status,
                content_type: fetched.content_type,
                meta: None,
                attempts: 1,
                enqueued_ms: None,
                traceparent: None,
            },
            body: fetched.body,
        };
        let records = self.parser.process(&payload).map_err(|f| f.reason)?;
        Ok(records.len())
    }
}
