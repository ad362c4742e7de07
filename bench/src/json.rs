//! The report as JSON (`--json PATH`): machine, versions, date, command, config, results,
//! per-process rows, the peers and the ceiling.

use serde_json::{Value, json};

use crate::args::Args;
use crate::machine::Env;
use crate::procfs::kb_to_mb;
use crate::report::{CeilingResult, PeerResult, ProcRow, Report, percentile};

/// The whole report as one JSON value.
pub fn report_json(args: &Args, env: &Env, r: &Report) -> Value {
    let ours = r.end_to_end_rate();
    json!({
        "machine": {
            "nproc": env.nproc,
            "cpu_model": env.cpu_model,
            "ram_gb": round1(env.ram_gb),
        },
        "versions": {
            "rustc": env.rustc,
            "profile": env.profile,
            "rabbitmq": env.rabbitmq,
            "redis": env.redis,
            "tributary": env.git,
        },
        "date": env.date,
        "command": env.command,
        "config": config(args, r),
        "results": results(r),
        "processes": r.processes.iter().map(process).collect::<Vec<_>>(),
        "producer_rss_series_mb": r.rss_series.iter()
            .map(|(t, kb)| json!([round2(*t), round1(kb_to_mb(*kb))]))
            .collect::<Vec<_>>(),
        "peers": r.peers.iter().map(|p| peer(p, ours)).collect::<Vec<_>>(),
        "ceiling": r.ceiling.as_ref().map(|c| ceiling(c, ours)),
        "clock_ticks_per_s": r.ticks,
        "machine_cpu_s_in_window": r.machine_cpu_s.map(round2),
        "background_cpu_pct_before": r.background_pct.map(round1),
    })
}

fn config(args: &Args, r: &Report) -> Value {
    json!({
        "mode": r.mode,
        "urls": args.urls,
        "fetchers": args.fetchers,
        "processors": args.processors,
        "aggregators": args.aggregators,
        "latency_ms": args.latency_ms,
        "queue_type": args.queue_type,
        "fetcher_args": args.fetcher_args,
        "processor_args": args.processor_args,
        "aggregator_args": args.aggregator_args,
        "producer_args": args.producer_args,
    })
}

fn results(r: &Report) -> Value {
    json!({
        "job_id": r.job,
        "n": r.enqueued,
        "enqueue_seconds": round3(r.enqueue_s),
        "enqueue_tasks_per_s": r.enqueue_rate().round(),
        "end_to_end_seconds": r.end_to_end_s.map(round3),
        "end_to_end_urls_per_s": r.end_to_end_rate().map(f64::round),
        "latency_p50_ms": percentile(&r.latency, 0.50).map(round1),
        "latency_p99_ms": percentile(&r.latency, 0.99).map(round1),
        "latency_histogram": r.latency.iter()
            .map(|(b, n)| json!([round1(*b), n]))
            .collect::<Vec<_>>(),
        "status": r.status,
        "timeline": r.timeline.map(|t| t.entries().iter()
            .map(|(name, at)| ((*name).to_string(), json!(at.map(round3))))
            .collect::<serde_json::Map<_, _>>()),
        "aggregate_exact": r.verified,
        "problems": r.problems,
    })
}

fn process(p: &ProcRow) -> Value {
    json!({
        "name": p.name,
        "pid": p.pid,
        "peak_rss_mb": p.peak_rss_mb.map(round1),
        "cpu_s": p.cpu_s.map(round2),
        "cpu_pct_of_core": p.cpu_pct.map(round1),
        "log_warn_lines": p.log_problems.warns,
        "log_error_lines": p.log_problems.errors,
        "log_samples": p.log_problems.samples,
        "log": p.log.as_ref().map(|l| l.display().to_string()),
    })
}

fn peer(p: &PeerResult, ours: Option<f64>) -> Value {
    json!({
        "name": p.name,
        "urls_per_s": p.urls_per_s.map(f64::round),
        "seconds": p.seconds,
        "counted": p.counted,
        "verified": p.verified,
        "cpu_s": p.cpu_s.map(round2),
        "peak_rss_mb": p.peak_rss_mb.map(round1),
        "ratio_tributary_to_peer": ours.zip(p.urls_per_s).map(|(a, b)| round2(a / b)),
        "skipped": p.skipped,
    })
}

fn ceiling(c: &CeilingResult, ours: Option<f64>) -> Value {
    json!({
        "urls_per_s": c.urls_per_s.round(),
        "seconds": round3(c.seconds),
        "records": c.records,
        "failed": c.failed,
        "concurrency": c.concurrency,
        "bench_cpu_s": c.cpu_s.map(round2),
        "pipeline_fraction": ours.map(|a| round3(a / c.urls_per_s.max(1e-9))),
    })
}

fn round1(v: f64) -> f64 {
    (v * 10.0).round() / 10.0
}

fn round2(v: f64) -> f64 {
    (v * 100.0).round() / 100.0
}

fn round3(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}
