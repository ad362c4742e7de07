//! `producer` binary: parse config, init telemetry, run.

use clap::Parser;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let config = producer::Config::parse();
    tributary::telemetry::init(config.common.telemetry.log_format);
    let shutdown = tributary::shutdown::on_signals();
    tributary::cli::exit(producer::run(config, shutdown).await)
}
