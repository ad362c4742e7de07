//! One bench run from start to end: the origin, a fresh namespace, the measured mode
//! (pipeline or enqueue-only), the clean-up, then the ceiling and the peers on the same
//! origin, and the report.

use std::time::Duration;

use anyhow::Context as _;
use tributary::runtime::cli::one_line;
use tributary_tests::app::{cleanup, fresh_namespace};
use tributary_tests::origin::{Origin, OriginOptions};

use crate::args::Args;
use crate::machine::{Env, environment};
use crate::procfs::background_cpu;
use crate::report::{Report, print_report};
use crate::workers::Paths;
use crate::{ceiling, enqueue, json, peers, pipeline};

/// What every phase needs.
pub struct Ctx<'a> {
    pub args: &'a Args,
    pub paths: &'a Paths,
    pub namespace: &'a str,
    pub origin: &'a Origin,
}

/// Runs the benchmark; `Ok(false)` when a check failed (already reported).
pub async fn run(args: Args) -> anyhow::Result<bool> {
    args.check()?;
    let paths = Paths::locate()?;
    if paths.profile == "dev" {
        eprintln!(
            "bench: warning: debug binaries; run with --release for figures that mean anything"
        );
    }
    paths.ensure_binaries(args.build)?;
    std::fs::create_dir_all(&paths.logs)
        .with_context(|| format!("creating {}", paths.logs.display()))?;
    let env = environment(&paths.root, &paths.profile);
    let origin = Origin::start(OriginOptions {
        latency: (args.latency_ms > 0).then(|| Duration::from_millis(args.latency_ms)),
    })
    .await?;
    let background = background_cpu(Duration::from_secs(1));
    if let Some(busy) = background.filter(|b| *b > 25.0) {
        eprintln!(
            "bench: warning: the machine is busy before the start ({busy:.0}% of a core); figures will be noisy"
        );
    }
    let namespace = fresh_namespace("bench");
    eprintln!(
        "bench: namespace {namespace}, origin {}, logs in {}",
        origin.base_url(),
        paths.logs.display()
    );
    let ctx = Ctx {
        args: &args,
        paths: &paths,
        namespace: &namespace,
        origin: &origin,
    };
    let mut report = measure(&ctx).await?;
    report.background_pct = background;
    extras(&ctx, &mut report).await;
    origin.shutdown().await;
    output(&args, &env, &report)?;
    Ok(report.problems.is_empty())
}

/// The measured mode, then the namespace's queues and keys deleted whatever happened.
async fn measure(ctx: &Ctx<'_>) -> anyhow::Result<Report> {
    let outcome = if ctx.args.enqueue_only {
        enqueue::enqueue_only(ctx).await
    } else {
        pipeline::pipeline(ctx).await
    };
    let cleaned = cleanup(ctx.namespace).await;
    let mut report = match outcome {
        Ok(report) => report,
        Err(e) => {
            if let Err(c) = cleaned {
                let c = one_line(&format!("{c:#}"));
                eprintln!("bench: warning: deleting namespace {}: {c}", ctx.namespace);
            }
            return Err(e);
        }
    };
    if let Err(e) = cleaned {
        let e = one_line(&format!("{e:#}"));
        report
            .problems
            .push(format!("deleting namespace {}: {e}", ctx.namespace));
    }
    Ok(report)
}

/// `--ceiling` and `--peers`, each against the same origin with its log cleared.
async fn extras(ctx: &Ctx<'_>, report: &mut Report) {
    if ctx.args.ceiling {
        ctx.origin.reset();
        match ceiling::ceiling(ctx).await {
            Ok(c) => report.ceiling = Some(c),
            Err(e) => report
                .problems
                .push(format!("ceiling: {}", one_line(&format!("{e:#}")))),
        }
    }
    if ctx.args.wants_peers() {
        for peer in peers::selected(ctx.args) {
            ctx.origin.reset();
            report.peers.push(peers::run_peer(ctx, peer).await);
        }
    }
}

/// The report on stdout, as JSON with `--json`, and the problems on stderr.
fn output(args: &Args, env: &Env, report: &Report) -> anyhow::Result<()> {
    print_report(args, env, report);
    if let Some(path) = &args.json {
        let value = json::report_json(args, env, report);
        let text = serde_json::to_string_pretty(&value)?;
        std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))?;
        eprintln!("bench: wrote {}", path.display());
    }
    for problem in &report.problems {
        eprintln!("bench: FAILED: {problem}");
    }
    Ok(())
}
