//! `--peers`: other implementations of the same job run against the same origin, each a
//! script under `bench/peers/` that prints one JSON line `{"seconds", "counted", ...}`.

use std::process::{Command, Stdio};
use std::time::Instant;

use serde_json::Value;
use tributary::runtime::config::ConnectionArgs;

use crate::procfs::{children_ticks, clock_ticks, kb_to_mb};
use crate::report::PeerResult;
use crate::run::Ctx;
use crate::sampler::{join_watch, watch_closely};

/// A peer script.
#[derive(Debug, Clone, Copy)]
pub struct Peer {
    pub name: &'static str,
    /// The script, relative to `bench/peers/`.
    pub script: &'static str,
    /// A Python statement that fails when the peer's packages are missing.
    pub imports: &'static str,
    /// How to install them.
    pub install: &'static str,
}

/// Every peer `--peers` runs, in order.
pub const PEERS: [Peer; 1] = [Peer {
    name: "seed (asyncio/aiohttp, bench/peers/seed.py)",
    script: "seed.py",
    imports: "import aiohttp, redis.asyncio",
    install: "pip install aiohttp redis",
}];

/// Runs one peer; a peer that cannot run is reported as skipped, never as a failure.
pub async fn run_peer(ctx: &Ctx<'_>, peer: Peer) -> PeerResult {
    let mut result = PeerResult {
        name: peer.name.to_string(),
        ..PeerResult::default()
    };
    if let Err(why) = packages_present(&ctx.args.python, peer) {
        eprintln!("bench: peers: skipping {}: {why}", peer.name);
        result.skipped = Some(why);
        return result;
    }
    eprintln!(
        "bench: running the peer {} with {} URLs",
        peer.name, ctx.args.urls
    );
    match run_script(ctx, peer, &mut result).await {
        Ok(stdout) => read_output(ctx, &stdout, &mut result),
        Err(why) => {
            eprintln!("bench: peers: {}: {why}", peer.name);
            result.skipped = Some(why);
        }
    }
    result
}

/// Whether the interpreter runs and has the peer's packages.
fn packages_present(python: &str, peer: Peer) -> Result<(), String> {
    let status = Command::new(python)
        .args(["-c", peer.imports])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    match status {
        Ok(s) if s.success() => Ok(()),
        Ok(_) => Err(format!("Python packages missing ({})", peer.install)),
        Err(e) => Err(format!("cannot run {python}: {e}")),
    }
}

/// Runs the script to its end, recording its CPU and peak memory; returns its stdout.
async fn run_script(ctx: &Ctx<'_>, peer: Peer, result: &mut PeerResult) -> Result<String, String> {
    let script = ctx.paths.root.join("bench").join("peers").join(peer.script);
    let children_before = children_ticks();
    let started = Instant::now();
    let child = Command::new(&ctx.args.python)
        .arg(&script)
        .arg(ctx.args.urls.to_string())
        .arg(ctx.origin.base_url())
        .arg(format!("{}:peer", ctx.namespace))
        .arg(ConnectionArgs::local(ctx.namespace).redis_url.first())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", script.display()))?;
    let watch = watch_closely(child.id(), started);
    let waited = tokio::task::spawn_blocking(move || child.wait_with_output()).await;
    result.cpu_s = Some(children_ticks().saturating_sub(children_before) as f64 / clock_ticks());
    result.peak_rss_mb = join_watch(watch).0.map(kb_to_mb);
    let out = match waited {
        Ok(Ok(out)) => out,
        Ok(Err(e)) => return Err(format!("waiting for the peer: {e}")),
        Err(e) => return Err(format!("waiting for the peer: {e}")),
    };
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let last = err.lines().last().unwrap_or("");
        return Err(format!("the peer failed ({}): {last}", out.status));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The peer's rate from its last JSON line.
fn read_output(ctx: &Ctx<'_>, stdout: &str, result: &mut PeerResult) {
    let Some(v) = stdout
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str::<Value>(l).ok())
    else {
        result.skipped = Some(format!("the peer printed no JSON: {stdout:?}"));
        return;
    };
    result.seconds = v.get("seconds").and_then(Value::as_f64);
    result.counted = v.get("counted").and_then(Value::as_u64);
    result.urls_per_s = result.seconds.map(|s| ctx.args.urls as f64 / s.max(1e-9));
    if result.counted != Some(ctx.args.urls) {
        eprintln!(
            "bench: peers: {} counted {:?} of {} URLs",
            result.name, result.counted, ctx.args.urls
        );
    }
}
