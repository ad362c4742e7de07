//! `processor-worker` settings (clap derive + env).

use crate::json_stats::parse_pointer;
use clap::Parser;
use tributary::runtime::config::{CommonArgs, WorkerArgs};

#[derive(Debug, Clone, Parser)]
#[command(
    name = "processor-worker",
    version,
    about = "Consume fetched payloads, compute records, publish results"
)]
pub struct Config {
    #[command(flatten)]
    pub common: CommonArgs,

    #[command(flatten)]
    pub worker: WorkerArgs,

    /// JSON Pointer to the array of records ("" = the whole document is one record).
    #[arg(long, env = "PROCESSOR_RECORDS", default_value = "", value_parser = parse_pointer)]
    pub records: String,

    /// JSON Pointer (within a record) to the group key, a string or number.
    #[arg(long, env = "PROCESSOR_GROUP_BY", default_value = "/symbol", value_parser = parse_pointer)]
    pub group_by: String,

    /// JSON Pointer (within a record) to a number or an array of numbers.
    #[arg(long, env = "PROCESSOR_VALUES", default_value = "/prices", value_parser = parse_pointer)]
    pub values: String,

    /// `process` messages handled at once (each carries many payloads).
    #[arg(long, env = "PROCESSOR_CONCURRENCY", default_value_t = 4)]
    pub concurrency: usize,
}

impl Config {
    pub fn prefetch(&self) -> u16 {
        self.worker
            .prefetch
            .unwrap_or_else(|| (self.concurrency * 2).clamp(2, 1000) as u16)
    }
}

impl tributary::runtime::cli::BinaryConfig for Config {
    fn common(&self) -> &CommonArgs {
        &self.common
    }
}
