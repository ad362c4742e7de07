//! `--peers`: other implementations of the same job run against the same origin, each a
//! script under `bench/peers/` that prints one JSON line `{"seconds", "counted", ...}`
//! (`"verified"` too when it checks its aggregate). A script that starts workers waits for
//! them, so its CPU (the bench's `cutime`/`cstime`) covers theirs; its peak memory adds
//! theirs (as PSS: forked pool processes share pages).

use std::process::{Command, Stdio};

use serde_json::Value;
use tributary::runtime::config::ConnectionArgs;

use crate::args::Args;
use crate::procfs::{children_ticks, clock_ticks, kb_to_mb};
use crate::report::PeerResult;
use crate::run::Ctx;
use crate::sampler::{join_tree_watch, watch_tree};

/// A peer script.
#[derive(Debug, Clone, Copy)]
pub struct Peer {
    /// What `--peer` calls it.
    pub key: &'static str,
    /// What the report calls it.
    pub name: &'static str,
    /// The script, relative to `bench/peers/`.
    pub script: &'static str,
    /// A Python statement that fails when the peer's packages are missing.
    pub imports: &'static str,
    /// How to install them.
    pub install: &'static str,
}

/// Every peer `--peers` runs, in order.
pub const PEERS: [Peer; 3] = [
    Peer {
        key: "seed",
        name: "seed (asyncio/aiohttp, bench/peers/seed.py)",
        script: "seed.py",
        imports: "import aiohttp, redis.asyncio",
        install: "pip install aiohttp redis",
    },
    Peer {
        key: "dramatiq",
        name: "dramatiq (Dramatiq on RabbitMQ, bench/peers/dramatiq_peer.py)",
        script: "dramatiq_peer.py",
        imports: "import dramatiq, dramatiq.brokers.rabbitmq, pika, redis, requests",
        install: "pip install 'dramatiq[rabbitmq]' redis requests",
    },
    Peer {
        key: "celery",
        name: "celery (Celery 5.4 on RabbitMQ, bench/peers/celery_peer.py)",
        script: "celery_peer.py",
        imports: "import celery, kombu, redis, requests",
        install: "pip install celery==5.4.0 redis requests",
    },
];

/// `--peer NAME`: the name of one of [`PEERS`].
pub fn parse_peer_key(name: &str) -> Result<String, String> {
    match PEERS.iter().find(|p| p.key == name) {
        Some(p) => Ok(p.key.to_string()),
        None => Err(format!("unknown peer (the peers are {})", peer_keys())),
    }
}

/// The peers' keys, comma-separated.
fn peer_keys() -> String {
    PEERS.map(|p| p.key).join(", ")
}

/// The peers to run: those `--peer` names, or all of them, in [`PEERS`] order.
pub fn selected(args: &Args) -> Vec<Peer> {
    PEERS
        .into_iter()
        .filter(|p| args.peer.is_empty() || args.peer.iter().any(|k| k == p.key))
        .collect()
}

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

/// Runs the script to its end, recording the CPU and peak memory of its process tree;
/// returns its stdout.
async fn run_script(ctx: &Ctx<'_>, peer: Peer, result: &mut PeerResult) -> Result<String, String> {
    let script = ctx.paths.root.join("bench").join("peers").join(peer.script);
    let children_before = children_ticks();
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
    let watch = watch_tree(child.id());
    let waited = tokio::task::spawn_blocking(move || child.wait_with_output()).await;
    result.cpu_s = Some(children_ticks().saturating_sub(children_before) as f64 / clock_ticks());
    result.peak_rss_mb = join_tree_watch(watch).map(kb_to_mb);
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
    result.verified = v.get("verified").and_then(Value::as_bool);
    result.urls_per_s = result.seconds.map(|s| ctx.args.urls as f64 / s.max(1e-9));
    if result.counted != Some(ctx.args.urls) {
        eprintln!(
            "bench: peers: {} counted {:?} of {} URLs",
            result.name, result.counted, ctx.args.urls
        );
    }
    if result.verified == Some(false) {
        eprintln!(
            "bench: peers: {}: its aggregate does not match the documents",
            result.name
        );
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[test]
    fn peer_names_select_in_order() {
        assert_eq!(parse_peer_key("celery"), Ok("celery".to_string()));
        let unknown = parse_peer_key("rq").unwrap_err();
        assert!(unknown.contains("seed, dramatiq, celery"), "{unknown}");
        assert!(Args::try_parse_from(["bench", "--peer", "rq"]).is_err());

        let some = Args::parse_from(["bench", "--peer", "celery", "--peer", "seed"]);
        let keys: Vec<_> = selected(&some).iter().map(|p| p.key).collect();
        assert_eq!(keys, ["seed", "celery"]);
        assert!(some.wants_peers());

        let all = Args::parse_from(["bench", "--peers"]);
        let keys: Vec<_> = selected(&all).iter().map(|p| p.key).collect();
        assert_eq!(keys, ["seed", "dramatiq", "celery"]);
        assert!(!Args::parse_from(["bench"]).wants_peers());
    }
}
