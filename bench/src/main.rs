//! `bench`: the end-to-end benchmark harness (see BENCHMARKS.md for what it measures).
//!
//! ```text
//! cargo run --release -p tributary-bench -- [--urls 20000] [--fetchers 1] [--processors 1]
//!     [--aggregators 1] [--latency-ms 0] [--json PATH] [--peers] [--peer NAME]... [--ceiling]
//! ```
//!
//! Exit 0 when everything matched; 1 when the aggregate differs, a task is dead, a worker
//! did not exit 0, or anything failed (one line on stderr).

mod args;
mod ceiling;
mod enqueue;
mod json;
mod machine;
mod peers;
mod pipeline;
mod procfs;
mod producer;
mod report;
mod run;
mod sampler;
mod timeline;
mod workers;

use std::process::ExitCode;

use clap::Parser;
use tributary::runtime::cli::one_line;

fn main() -> ExitCode {
    let args = args::Args::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("bench: error: starting the tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run::run(args)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("bench: error: {}", one_line(&format!("{e:#}")));
            ExitCode::FAILURE
        }
    }
}
