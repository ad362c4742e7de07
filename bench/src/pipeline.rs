//! The pipeline run: the workers up, the producer enqueues N URLs, the job is timed until
//! Redis says it is done, then the aggregate is verified, every process's CPU and peak
//! memory become rows and the workers are stopped with SIGTERM.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use tributary::runtime::config::ConnectionArgs;
use tributary::store::{JobStatus, Store};
use tributary_tests::quotes::{check_close, expected_aggregate};
use uuid::Uuid;

use crate::procfs::{children_ticks, cpu_ticks, kb_to_mb, machine_ticks, service_pids};
use crate::producer::{
    Finished, parse_enqueued, producer_log, spawn_producer, succeeded, url_file,
};
use crate::report::{ProcRow, Report};
use crate::run::Ctx;
use crate::sampler::{Sampler, join_watch};
use crate::timeline::Timeline;
use crate::workers::{Worker, log_problems, spawn_workers, stop_workers, wait_for_workers};

/// How often the job status is polled.
const POLL_EVERY: Duration = Duration::from_millis(10);

/// A process whose CPU is measured over the end-to-end window.
struct Watched {
    name: String,
    pid: u32,
    cpu_before: Option<u64>,
    /// Its peak RSS is this run's (not a service's whole life).
    own_memory: bool,
    log: Option<PathBuf>,
}

/// The pipeline run, measured.
pub async fn pipeline(ctx: &Ctx<'_>) -> anyhow::Result<Report> {
    let conn = ConnectionArgs::local(ctx.namespace);
    let store = Store::connect(&conn).await.context("connecting to Redis")?;
    let file = url_file(&ctx.origin.base_url(), ctx.args.urls)?;
    let sampler = Sampler::start();
    let workers = start_workers(ctx, &sampler).await?;
    let (watched, missing) = watch_processes(&workers, &sampler);
    let machine_before = machine_ticks();
    let mut spawned = spawn_producer(ctx, file.path())?;
    let mut timeline = Timeline::default();
    let (done_at, status, finished) = wait_done(ctx, &store, &mut spawned, &mut timeline).await?;
    let cpu_after: Vec<Option<u64>> = watched.iter().map(|w| cpu_ticks(w.pid)).collect();
    let machine_after = machine_ticks();
    let producer_ticks = children_ticks().saturating_sub(spawned.children_before);
    let (out, enqueue_time) = finished;
    let enqueued = parse_enqueued(&out.stdout, spawned.job, ctx.args.urls)?;
    eprintln!(
        "bench: done in {:.2}s (enqueue {:.2}s)",
        done_at.as_secs_f64(),
        enqueue_time.as_secs_f64()
    );

    let mut report = Report {
        mode: "pipeline",
        job: Some(spawned.job),
        enqueued,
        enqueue_s: enqueue_time.as_secs_f64(),
        end_to_end_s: Some(done_at.as_secs_f64()),
        ticks: crate::procfs::clock_ticks(),
        timeline: Some(timeline),
        ..Report::default()
    };
    verify(ctx, &store, spawned.job, &status, &mut report).await?;
    report.status = Some(status);

    let window = done_at.as_secs_f64();
    for w in &workers {
        sampler.sample_now(w.process.pid());
    }
    let (producer_peak, _) = join_watch(spawned.watch);
    let mut producer = ProcRow::new(
        "producer",
        Some(spawned.pid),
        Some(producer_ticks as f64 / report.ticks),
        report.enqueue_s,
    );
    producer.peak_rss_mb = producer_peak.map(kb_to_mb);
    producer.log = Some(producer_log(ctx));
    report.processes.push(producer);
    add_watched_rows(&mut report, &watched, &cpu_after, &sampler, window);
    for name in missing {
        report.processes.push(ProcRow::new(
            format!("{name} (not found)"),
            None,
            None,
            window,
        ));
    }
    report.add_other_row(machine_before, machine_after, window);
    drop(sampler);
    report.problems.extend(stop_workers(workers));
    for row in &mut report.processes {
        if let Some(log) = &row.log {
            row.log_problems = log_problems(log);
        }
    }
    Ok(report)
}

/// Starts the workers, watches their memory and waits until they all consume.
async fn start_workers(ctx: &Ctx<'_>, sampler: &Sampler) -> anyhow::Result<Vec<Worker>> {
    let mut workers = spawn_workers(ctx.args, ctx.paths, ctx.namespace)?;
    for w in &workers {
        sampler.watch(w.process.pid());
    }
    wait_for_workers(ctx.namespace, &mut workers).await?;
    eprintln!(
        "bench: {} workers up; enqueueing {} URLs",
        workers.len(),
        ctx.args.urls
    );
    Ok(workers)
}

/// The workers, the broker, Redis and this process (the origin), with their CPU now; and
/// the names of the services not found.
fn watch_processes(workers: &[Worker], sampler: &Sampler) -> (Vec<Watched>, Vec<String>) {
    let mut watched: Vec<Watched> = workers
        .iter()
        .map(|w| Watched {
            name: w.name.clone(),
            pid: w.process.pid(),
            cpu_before: None,
            own_memory: true,
            log: Some(w.log.clone()),
        })
        .collect();
    let mut missing = Vec::new();
    for (name, pid) in service_pids() {
        let Some(pid) = pid else {
            missing.push(name);
            continue;
        };
        watched.push(Watched {
            name,
            pid,
            cpu_before: None,
            own_memory: false,
            log: None,
        });
    }
    watched.push(Watched {
        name: "bench (origin, in-process)".into(),
        pid: std::process::id(),
        cpu_before: None,
        own_memory: true,
        log: None,
    });
    for w in &mut watched {
        sampler.watch(w.pid);
        w.cpu_before = cpu_ticks(w.pid);
    }
    (watched, missing)
}

/// Polls the job until Redis says it is done and the producer has exited 0, noting its
/// milestones in `timeline`; returns the end-to-end time, the final status and the
/// producer's output.
async fn wait_done(
    ctx: &Ctx<'_>,
    store: &Store,
    spawned: &mut crate::producer::Spawned,
    timeline: &mut Timeline,
) -> anyhow::Result<(Duration, JobStatus, (std::process::Output, Duration))> {
    let limit = Duration::from_secs(ctx.args.timeout_secs);
    let mut producer_done = None;
    let mut last_progress = Instant::now();
    let mut last_status: Option<JobStatus> = None;
    loop {
        if producer_done.is_none() && spawned.wait.is_finished() {
            let finished: Finished = (&mut spawned.wait).await.context("the producer waiter")?;
            producer_done = Some(succeeded(ctx, finished)?);
        }
        if let Some(status) = store.status(spawned.job).await? {
            timeline.observe(&status, spawned.started.elapsed());
            if status.done
                && let Some(done) = producer_done.take()
            {
                return Ok((spawned.started.elapsed(), status, done));
            }
            last_status = Some(status);
        }
        if spawned.started.elapsed() > limit {
            bail!(
                "job {} not done after {limit:?}; last status {last_status:?}",
                spawned.job
            );
        }
        if last_progress.elapsed() > Duration::from_secs(2) {
            last_progress = Instant::now();
            print_progress(spawned.started, last_status.as_ref());
        }
        tokio::select! {
            _ = tokio::time::sleep(POLL_EVERY) => {}
            _ = tokio::signal::ctrl_c() => bail!("interrupted"),
        }
    }
}

fn print_progress(started: Instant, status: Option<&JobStatus>) {
    if let Some(s) = status {
        eprintln!(
            "bench: {:>5.1}s  fetched {} processed {} aggregated {} / {}  retrying {} dead {}",
            started.elapsed().as_secs_f64(),
            s.fetched,
            s.processed,
            s.aggregated,
            s.total,
            s.retrying,
            s.dead
        );
    }
}

/// Reads the latency histogram and checks the counts and the exact aggregate.
async fn verify(
    ctx: &Ctx<'_>,
    store: &Store,
    job: Uuid,
    status: &JobStatus,
    report: &mut Report,
) -> anyhow::Result<()> {
    report.latency = store.latency(job).await?;
    if status.dead > 0 {
        report.problems.push(format!(
            "{} tasks are dead (see `producer dlq list`)",
            status.dead
        ));
    }
    if status.aggregated != ctx.args.urls {
        report.problems.push(format!(
            "aggregated {} tasks, expected {}",
            status.aggregated, ctx.args.urls
        ));
    }
    let results = store
        .results(job)
        .await?
        .with_context(|| format!("Redis has no results for job {job}"))?;
    let actual = serde_json::to_value(&results)?;
    let expected = expected_aggregate(0..ctx.args.urls);
    match check_close(&actual, &expected) {
        Ok(()) => report.verified = Some(true),
        Err(diff) => {
            report.verified = Some(false);
            report.problems.push(format!(
                "the aggregate differs from the expected one: {}",
                first_lines(&diff)
            ));
        }
    }
    Ok(())
}

/// The first three lines of a diff on one line, at most about 300 bytes.
fn first_lines(diff: &str) -> String {
    let mut first = diff.lines().take(3).collect::<Vec<_>>().join("; ");
    if first.len() > 300 {
        let cut = (0..=300)
            .rev()
            .find(|i| first.is_char_boundary(*i))
            .unwrap_or(0);
        first.truncate(cut);
        first.push_str(" ...");
    }
    first
}

/// One row per watched process: its CPU over the window and, for the processes of this run,
/// its peak memory.
fn add_watched_rows(
    report: &mut Report,
    watched: &[Watched],
    cpu_after: &[Option<u64>],
    sampler: &Sampler,
    window: f64,
) {
    for (w, after) in watched.iter().zip(cpu_after) {
        let cpu = w
            .cpu_before
            .zip(*after)
            .map(|(a, b)| b.saturating_sub(a) as f64 / report.ticks);
        let mut row = ProcRow::new(w.name.clone(), Some(w.pid), cpu, window);
        row.peak_rss_mb = w
            .own_memory
            .then(|| kb_to_mb(sampler.peak(w.pid).peak_kb()));
        row.log = w.log.clone();
        report.processes.push(row);
    }
}
