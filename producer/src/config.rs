//! `producer` command line (clap derive + env).

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use tributary::config::CommonArgs;
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
    },
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

    /// Tasks per broker message.
    #[arg(long, env = "PRODUCER_BATCH_SIZE", default_value_t = 20)]
    pub batch_size: usize,

    /// Broker messages awaiting their publisher confirm at once.
    #[arg(long, env = "PRODUCER_CONFIRM_WINDOW", default_value_t = 256)]
    pub confirm_window: usize,

    /// Show progress on stderr until the job is done, then print its final status.
    #[arg(long)]
    pub wait: bool,

    /// With --wait: give up (exit 1) after this long (humantime, e.g. `10m`).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub wait_timeout: Option<Duration>,
}
