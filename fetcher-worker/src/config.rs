//! `fetcher-worker` settings (clap derive + env).

use std::time::Duration;

use clap::Parser;
use tributary::config::{CommonArgs, WorkerArgs};
use tributary::error::{Delays, RetryPolicy};

#[derive(Debug, Clone, Parser)]
#[command(
    name = "fetcher-worker",
    version,
    about = "Consume URL tasks, download them, publish raw payloads"
)]
pub struct Config {
    #[command(flatten)]
    pub common: CommonArgs,

    #[command(flatten)]
    pub worker: WorkerArgs,

    /// Downloads in flight at once.
    #[arg(long, env = "FETCHER_CONCURRENCY", default_value_t = 128)]
    pub concurrency: usize,

    /// Whole-request timeout (connect, headers and body), in milliseconds.
    #[arg(long, env = "FETCHER_TIMEOUT_MS", default_value_t = 10_000)]
    pub timeout_ms: u64,

    /// Largest body accepted; larger ones are dead-lettered as `too_large`.
    #[arg(long, env = "FETCHER_MAX_BODY_BYTES", default_value_t = 8 * 1024 * 1024)]
    pub max_body_bytes: u64,

    /// Attempts per task in all, the first included.
    #[arg(long, env = "FETCHER_MAX_ATTEMPTS", default_value_t = 5)]
    pub max_attempts: u32,

    /// The retry ladder: delay-queue steps, each wait drawn with full jitter.
    #[arg(long, env = "FETCHER_RETRY_DELAYS", default_value = "1s,5s,30s,2m,10m")]
    pub retry_delays: Delays,

    /// Payloads per `process` message.
    #[arg(long, env = "FETCHER_BATCH_SIZE", default_value_t = 50)]
    pub batch_size: usize,

    /// Bytes of payload per `process` message before it is sent.
    #[arg(long, env = "FETCHER_BATCH_BYTES", default_value_t = 1024 * 1024)]
    pub batch_bytes: usize,

    /// Longest a payload waits for its batch to fill.
    #[arg(long, env = "FETCHER_BATCH_LINGER", default_value = "20ms", value_parser = humantime::parse_duration)]
    pub batch_linger: Duration,

    /// Allow URLs that resolve to loopback, private or link-local addresses (tests, demos).
    #[arg(long, env = "FETCHER_ALLOW_PRIVATE")]
    pub allow_private: bool,
}

impl Config {
    /// The retry ladder.
    pub fn retry_policy(&self) -> RetryPolicy {
        RetryPolicy::new(self.retry_delays.0.clone(), self.max_attempts)
    }

    /// Broker prefetch: enough messages to keep every download slot busy.
    pub fn prefetch(&self) -> u16 {
        self.worker
            .prefetch
            .unwrap_or_else(|| self.concurrency.clamp(8, 2000) as u16)
    }
}

impl tributary::cli::BinaryConfig for Config {
    fn common(&self) -> &CommonArgs {
        &self.common
    }
}
