//! `--enqueue-only`: the producer alone (no workers), its rate and its RSS over time.

use anyhow::Context as _;

use crate::procfs::{
    children_ticks, clock_ticks, cpu_ticks, kb_to_mb, machine_ticks, service_pids,
};
use crate::producer::{parse_enqueued, spawn_producer, succeeded, url_file};
use crate::report::{ProcRow, Report};
use crate::run::Ctx;
use crate::sampler::join_watch;

/// The producer alone: enqueue rate, its memory over time, the services' CPU meanwhile.
pub async fn enqueue_only(ctx: &Ctx<'_>) -> anyhow::Result<Report> {
    let file = url_file(&ctx.origin.base_url(), ctx.args.urls)?;
    let services = service_pids();
    let services_cpu = || -> Vec<Option<u64>> {
        services
            .iter()
            .map(|(_, p)| p.and_then(cpu_ticks))
            .collect()
    };
    let cpu_before = services_cpu();
    let machine_before = machine_ticks();
    let spawned = spawn_producer(ctx, file.path())?;
    let finished = spawned.wait.await.context("the producer waiter")?;
    let cpu_after = services_cpu();
    let machine_after = machine_ticks();
    let producer_ticks = children_ticks().saturating_sub(spawned.children_before);
    let (out, elapsed) = succeeded(ctx, finished)?;
    let enqueued = parse_enqueued(&out.stdout, spawned.job, ctx.args.urls)?;
    let (peak, series) = join_watch(spawned.watch);
    let enqueue_s = elapsed.as_secs_f64();
    let ticks = clock_ticks();
    let mut report = Report {
        mode: "enqueue-only",
        job: Some(spawned.job),
        enqueued,
        enqueue_s,
        ticks,
        rss_series: series,
        ..Report::default()
    };
    let cpu = producer_ticks as f64 / ticks;
    let mut producer = ProcRow::new("producer", Some(spawned.pid), Some(cpu), enqueue_s);
    producer.peak_rss_mb = peak.map(kb_to_mb);
    report.processes.push(producer);
    for (((name, pid), before), after) in services.iter().zip(cpu_before).zip(cpu_after) {
        let cpu = before
            .zip(after)
            .map(|(a, b)| b.saturating_sub(a) as f64 / ticks);
        report
            .processes
            .push(ProcRow::new(name.clone(), *pid, cpu, enqueue_s));
    }
    report.add_other_row(machine_before, machine_after, enqueue_s);
    Ok(report)
}
