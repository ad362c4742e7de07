//! `aggregator` settings (clap derive + env).

use std::time::Duration;

use clap::{Parser, Subcommand};
use tributary::runtime::config::{CommonArgs, WorkerArgs};
use uuid::Uuid;

#[derive(Debug, Clone, Parser)]
#[command(
    name = "aggregator",
    version,
    about = "Apply result records to Redis exactly once per task; query results"
)]
pub struct Config {
    #[command(flatten)]
    pub common: CommonArgs,

    #[command(flatten)]
    pub worker: WorkerArgs,

    /// `results` messages applied in one Redis script call (per job).
    #[arg(long, env = "AGGREGATOR_BATCH_MESSAGES", default_value_t = 64)]
    pub batch_messages: usize,

    /// Longest the first message of a batch waits for more.
    #[arg(long, env = "AGGREGATOR_BATCH_LINGER", default_value = "5ms", value_parser = humantime::parse_duration)]
    pub batch_linger: Duration,

    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    /// Run the consumer (the default).
    Run,
    /// Print a job's aggregate as JSON.
    Results {
        /// The job id.
        job_id: Uuid,
    },
}

impl Config {
    pub fn prefetch(&self) -> u16 {
        self.worker
            .prefetch
            .unwrap_or_else(|| (self.batch_messages * 4).clamp(8, 2000) as u16)
    }
}

impl tributary::runtime::cli::BinaryConfig for Config {
    fn common(&self) -> &CommonArgs {
        &self.common
    }
}
