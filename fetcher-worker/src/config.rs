//! `fetcher-worker` settings (clap derive + env).

use std::time::Duration;

use clap::Parser;
use tributary::policy::{Delays, RetryPolicy};
use tributary::runtime::config::{CommonArgs, WorkerArgs};

use crate::http::HttpOptions;
use crate::politeness::rates::{HostRates, Rate, RateTable};
use crate::prefetch::{PrefetchSizer, TASKS_PER_SLOT};

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
    #[arg(long, env = "FETCHER_BATCH_SIZE", default_value_t = 200)]
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

    /// Fleet-wide request rates per host, e.g. `example.com=20/s,*.example.org=5/s`
    /// (shared by every fetcher of the namespace through Redis). Off by default.
    #[arg(long, env = "FETCHER_HOST_RATE")]
    pub host_rate: Option<HostRates>,

    /// The fleet-wide rate of every host `--host-rate` does not name, e.g. `10/s`.
    #[arg(long, env = "FETCHER_DEFAULT_HOST_RATE")]
    pub default_host_rate: Option<Rate>,

    /// Longest a fetcher sleeps for a rate-limited host's slot while holding the task;
    /// longer waits put the task aside in a delay queue (not counted as an attempt).
    #[arg(long, env = "FETCHER_HOST_WAIT_MAX", default_value = "250ms", value_parser = humantime::parse_duration)]
    pub host_wait_max: Duration,

    /// A 429 or 503 with `Retry-After` pauses its host for every fetcher of the namespace
    /// (capped at the last `--retry-delays` step), not just the one task. On by default;
    /// `--host-pause false` turns it off.
    #[arg(long, env = "FETCHER_HOST_PAUSE", default_value_t = true, num_args = 0..=1,
          default_missing_value = "true", action = clap::ArgAction::Set)]
    pub host_pause: bool,

    /// Adaptive rates: each 429 from a host with a rate halves that rate fleet-wide (at most
    /// once a second, down to a tenth of the configured rate); it recovers by 5% of the
    /// configured rate per second. On by default; `--host-aimd false` turns it off.
    #[arg(long, env = "FETCHER_HOST_AIMD", default_value_t = true, num_args = 0..=1,
          default_missing_value = "true", action = clap::ArgAction::Set)]
    pub host_aimd: bool,

    /// Downloads in flight at once per host, across every fetcher of the namespace (a lease
    /// in Redis per download). Off by default.
    #[arg(long, env = "FETCHER_HOST_CONCURRENCY", value_parser = clap::value_parser!(u32).range(1..))]
    pub host_concurrency: Option<u32>,

    /// Conditional requests: remember each URL's `ETag` / `Last-Modified` and body (up to
    /// 64 KiB) in Redis for the job TTL, send `If-None-Match` / `If-Modified-Since`, and let
    /// a 304 reuse the remembered body as the payload. Off by default.
    #[arg(long, env = "FETCHER_CONDITIONAL")]
    pub conditional: bool,
}

impl Config {
    /// The retry ladder.
    pub fn retry_policy(&self) -> RetryPolicy {
        RetryPolicy::new(self.retry_delays.0.clone(), self.max_attempts)
    }

    /// The per-host rate limits (empty unless `--host-rate` or `--default-host-rate`).
    pub fn rate_table(&self) -> RateTable {
        RateTable {
            hosts: self.host_rate.clone().unwrap_or_default(),
            default: self.default_host_rate,
        }
    }

    /// The HTTP client's limits: the worker builds its client from these, and so does the
    /// bench's `--ceiling`, to measure the same client.
    pub fn http_options(&self) -> HttpOptions {
        HttpOptions {
            timeout: Duration::from_millis(self.timeout_ms.max(1)),
            max_body_bytes: self.max_body_bytes,
            allow_private: self.allow_private,
            pool_idle_per_host: self.concurrency.max(1),
        }
    }

    /// The most messages of prefetch: enough to keep every download slot busy with one
    /// task per message.
    pub fn prefetch(&self) -> u16 {
        self.worker
            .prefetch
            .unwrap_or_else(|| self.concurrency.clamp(8, 2000) as u16)
    }

    /// The prefetch, sized in tasks unless `--prefetch` fixes it ([`crate::prefetch`]).
    pub fn prefetch_sizer(&self) -> PrefetchSizer {
        let budget = self.concurrency.max(1).saturating_mul(TASKS_PER_SLOT);
        PrefetchSizer::new(self.prefetch(), budget, self.worker.prefetch.is_none())
    }
}

impl tributary::runtime::cli::BinaryConfig for Config {
    fn common(&self) -> &CommonArgs {
        &self.common
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Config {
        Config::try_parse_from(std::iter::once("fetcher-worker").chain(args.iter().copied()))
            .unwrap()
    }

    #[test]
    fn host_pause_and_aimd_are_on_unless_turned_off() {
        let on = parse(&[]);
        assert!(on.host_pause && on.host_aimd);
        assert!(parse(&["--host-pause"]).host_pause);
        assert!(parse(&["--host-pause", "true"]).host_pause);
        assert!(!parse(&["--host-pause", "false"]).host_pause);
        let mixed = parse(&["--host-pause=false", "--host-aimd"]);
        assert!(!mixed.host_pause && mixed.host_aimd);
        assert!(!parse(&["--host-aimd", "false"]).host_aimd);
    }
}
