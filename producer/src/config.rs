//! `producer` command line (clap derive + env).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::builder::{PossibleValuesParser, TypedValueParser as _};
use clap::{Args, Parser, Subcommand};
use tributary::names::Stage;
use tributary::runtime::config::CommonArgs;
use uuid::Uuid;

#[derive(Debug, Clone, Parser)]
#[command(
    name = "producer",
    version,
    about = "Enqueue tributary jobs, watch them, handle dead letters"
)]
pub struct Config {
    #[command(flatten)]
    pub common: CommonArgs,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    /// Enqueue URLs (arguments, --file PATH, or - for stdin) as one job.
    Enqueue(EnqueueArgs),
    /// Print a job's status as JSON.
    Status {
        /// The job id.
        job_id: Uuid,
        /// Count the job's per-task states in Redis instead: do the counters agree, and
        /// which tasks are neither final nor in a queue? Exit 1 if anything is off.
        #[arg(long)]
        verify: bool,
        /// With --verify: list at most this many unaccounted task ids per stage.
        #[arg(long, default_value_t = 20, requires = "verify")]
        limit: usize,
    },
    /// Inspect, replay or purge dead letters (the `<ns>.<stage>.dead` queues).
    #[command(subcommand)]
    Dlq(DlqCommand),
    /// Register jobs for publishers that write to the broker themselves.
    #[command(subcommand)]
    Job(JobCommand),
    /// Serve the HTTP API: enqueue jobs, status, results, dead letters.
    Serve(ServeArgs),
}

/// `producer job ...`.
#[derive(Debug, Clone, Subcommand)]
pub enum JobCommand {
    /// Add N tasks to a job's total (creating the job) before publishing them to the
    /// broker yourself; prints {"job_id": "...", "total": T}, T the job's total now.
    Create {
        /// How many tasks you will publish.
        #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
        total: u64,
        /// The job (default: a new one).
        #[arg(long)]
        job_id: Option<Uuid>,
    },
}

/// `producer serve`.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Address to listen on (`IP:PORT`; port 0 picks a free one).
    #[arg(long, env = "PRODUCER_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    /// Require `Authorization: Bearer TOKEN` on every route but /healthz.
    #[arg(long, env = "TRIBUTARY_API_TOKEN", hide_env_values = true)]
    pub api_token: Option<ApiToken>,

    /// A second token that reads everything (API GETs, the dashboard) and changes nothing;
    /// needs --api-token.
    #[arg(long, env = "TRIBUTARY_READ_ONLY_TOKEN", hide_env_values = true)]
    pub read_only_token: Option<ApiToken>,

    /// Allow serving on a non-loopback address without --api-token.
    #[arg(long)]
    pub insecure_no_auth: bool,

    /// The RabbitMQ management API (`http://user:password@host:15672`), for the
    /// dashboard's unacked counts, queue rates and delay queues; without it the overview
    /// shows what AMQP tells (ready, consumers).
    #[arg(long, env = "TRIBUTARY_MANAGEMENT_URL", hide_env_values = true)]
    pub management_url: Option<String>,

    /// Largest request body accepted (413 beyond).
    #[arg(long, env = "PRODUCER_MAX_BODY_BYTES", default_value_t = 64 << 20)]
    pub max_body_bytes: u64,

    #[command(flatten)]
    pub publish: PublishArgs,
}

/// A bearer token; its `Debug` does not show it.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiToken(pub String);

impl std::fmt::Debug for ApiToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ApiToken(..)")
    }
}

impl std::str::FromStr for ApiToken {
    type Err = std::convert::Infallible;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(ApiToken(s.to_string()))
    }
}

/// How tasks are published (`enqueue` and `serve`).
#[derive(Debug, Clone, Args)]
pub struct PublishArgs {
    /// Tasks per broker message.
    #[arg(long, env = "PRODUCER_BATCH_SIZE", default_value_t = 100)]
    pub batch_size: usize,

    /// Broker messages awaiting their publisher confirm at once. An interrupted enqueue
    /// publishes them again when it is resumed (their tasks are not counted twice).
    #[arg(long, env = "PRODUCER_CONFIRM_WINDOW", default_value_t = 64)]
    pub confirm_window: usize,
}

#[derive(Debug, Clone, Args)]
pub struct EnqueueArgs {
    /// Add the tasks to this job (default: a new job).
    #[arg(long)]
    pub job_id: Option<Uuid>,

    /// Read URLs or task JSON objects, one per line, from this file (`-` for stdin).
    #[arg(long, short = 'f')]
    pub file: Option<PathBuf>,

    /// URLs to enqueue; `-` reads stdin.
    pub urls: Vec<String>,

    /// Report invalid lines and enqueue the rest (default: enqueue nothing and exit 1).
    #[arg(long)]
    pub skip_invalid: bool,

    #[command(flatten)]
    pub publish: PublishArgs,

    /// Show progress on stderr until the job is done, then print its final status.
    #[arg(long)]
    pub wait: bool,

    /// With --wait: give up (exit 1) after this long (humantime, e.g. `10m`).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub wait_timeout: Option<Duration>,
}

/// `producer dlq ...`: each reads the dead-letter queues of the chosen stages (all three
/// without `--stage`), up to the number of messages they held when the command started.
#[derive(Debug, Clone, Subcommand)]
pub enum DlqCommand {
    /// Print matching dead letters as NDJSON, one object per line: task_id, job_id, url,
    /// stage, error, reason, attempts, status (HTTP) and failed_at (null when unknown).
    /// Nothing is removed and the queues keep their order.
    List {
        #[command(flatten)]
        filter: DlqFilter,
        /// Print at most this many dead letters.
        #[arg(long)]
        limit: Option<u64>,
    },
    /// Send matching dead letters back to their stage with a fresh attempt count, then
    /// remove them from the dead-letter queue; prints {"replayed": N}. Each is published with
    /// a broker confirm before it is removed, so an interrupted replay loses nothing.
    /// Non-matching dead letters stay where they are.
    Replay {
        #[command(flatten)]
        filter: DlqFilter,
        /// Move nothing: print what would be replayed as NDJSON (as `list` does), then
        /// {"replayed": 0, "would_replay": N}.
        #[arg(long)]
        dry_run: bool,
    },
    /// Delete matching dead letters; prints {"purged": N}. Non-matching ones stay.
    Purge {
        #[command(flatten)]
        filter: DlqFilter,
    },
}

/// Which dead letters a `dlq` command touches; every given filter must match.
#[derive(Debug, Clone, Default, PartialEq, Eq, Args)]
pub struct DlqFilter {
    /// Only this stage's dead-letter queue (default: fetch, process and results).
    #[arg(long, value_parser = stage_parser())]
    pub stage: Option<Stage>,
    /// Only dead letters of this job (messages without a job id never match).
    #[arg(long)]
    pub job_id: Option<Uuid>,
    /// Only dead letters of this error class (`x-tributary-error`, e.g. http_status,
    /// timeout, connect, invalid_task, invalid_payload, no_values, delivery_limit).
    #[arg(long, value_name = "CLASS")]
    pub error: Option<String>,
    /// Only this task's dead letter(s).
    #[arg(long)]
    pub task_id: Option<Uuid>,
    /// Only dead letters whose URL (so host), error class or reason contains TEXT
    /// (case-insensitive).
    #[arg(long, value_name = "TEXT")]
    pub search: Option<String>,
}

fn stage_parser() -> impl clap::builder::TypedValueParser<Value = Stage> {
    PossibleValuesParser::new(Stage::ALL.map(Stage::as_str))
        .map(|s| Stage::parse(&s).expect("clap only passes a possible value"))
}

impl tributary::runtime::cli::BinaryConfig for Config {
    fn common(&self) -> &CommonArgs {
        &self.common
    }
}
