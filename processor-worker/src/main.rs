//! `processor-worker` binary: parse config, init telemetry, run.

use clap::Parser;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let config = processor_worker::Config::parse();
    tributary::telemetry::init(config.common.telemetry.log_format);
    let shutdown = tributary::shutdown::on_signals();
    tributary::cli::exit(processor_worker::run(config, shutdown).await)
}
