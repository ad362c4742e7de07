//! The bench's command line.

use std::path::PathBuf;

use anyhow::bail;
use clap::Parser;

use crate::peers;

#[derive(Debug, Clone, Parser)]
#[command(
    name = "bench",
    about = "End-to-end benchmark of tributary: origin, workers, producer, Redis, report"
)]
pub struct Args {
    /// URLs in the job (`/quotes/0.json` .. `/quotes/{N-1}.json`).
    #[arg(long, default_value_t = 20_000)]
    pub urls: u64,

    /// fetcher-worker processes.
    #[arg(long, default_value_t = 1)]
    pub fetchers: usize,

    /// processor-worker processes.
    #[arg(long, default_value_t = 1)]
    pub processors: usize,

    /// aggregator processes.
    #[arg(long, default_value_t = 1)]
    pub aggregators: usize,

    /// Latency the origin adds to every request, in milliseconds.
    #[arg(long, default_value_t = 0)]
    pub latency_ms: u64,

    /// Also write the report as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,

    /// Also run the peer scripts (bench/peers/: seed, dramatiq, celery) against the same
    /// origin and report ratios.
    #[arg(long)]
    pub peers: bool,

    /// Run only this peer (repeatable: `--peer seed --peer celery`); implies --peers.
    #[arg(long = "peer", value_name = "NAME", value_parser = peers::parse_peer_key)]
    pub peer: Vec<String>,

    /// Also run the ceiling: the fetcher's HTTP client and the processor's parsing alone
    /// (no broker, no Redis) over the same URLs, and report the pipeline as a fraction of it.
    #[arg(long)]
    pub ceiling: bool,

    /// Python interpreter for --peers.
    #[arg(long, default_value = "python3")]
    pub python: String,

    /// Build the worker binaries first even if they exist.
    #[arg(long)]
    pub build: bool,

    /// Only run the producer (no workers): enqueue rate and its RSS over time.
    #[arg(long)]
    pub enqueue_only: bool,

    /// `--queue-type` for every binary (classic or quorum).
    #[arg(long, default_value = "classic")]
    pub queue_type: String,

    /// Extra flag for every fetcher-worker (repeatable: `--fetcher-arg=--concurrency=256`);
    /// the ceiling's HTTP client uses them too.
    #[arg(long = "fetcher-arg", allow_hyphen_values = true)]
    pub fetcher_args: Vec<String>,

    /// Extra flag for every processor-worker (repeatable); the ceiling's parser uses them too.
    #[arg(long = "processor-arg", allow_hyphen_values = true)]
    pub processor_args: Vec<String>,

    /// Extra flag for every aggregator (repeatable).
    #[arg(long = "aggregator-arg", allow_hyphen_values = true)]
    pub aggregator_args: Vec<String>,

    /// Extra flag for `producer enqueue` (repeatable: `--producer-arg=--batch-size=50`).
    #[arg(long = "producer-arg", allow_hyphen_values = true)]
    pub producer_args: Vec<String>,

    /// Give up when the job is not done after this many seconds.
    #[arg(long, default_value_t = 600)]
    pub timeout_secs: u64,
}

impl Args {
    /// Rejects combinations that cannot run.
    pub fn check(&self) -> anyhow::Result<()> {
        if self.urls == 0 {
            bail!("--urls must be at least 1");
        }
        if self.fetchers == 0 || self.processors == 0 || self.aggregators == 0 {
            bail!("every stage needs at least one worker");
        }
        if self.enqueue_only && (self.wants_peers() || self.ceiling) {
            bail!("--enqueue-only runs the producer alone: drop --peers, --peer and --ceiling");
        }
        Ok(())
    }

    /// Whether any peer runs: `--peers`, or a `--peer`.
    pub fn wants_peers(&self) -> bool {
        self.peers || !self.peer.is_empty()
    }
}
