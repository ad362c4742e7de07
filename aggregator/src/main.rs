//! `aggregator` binary: parse config, init telemetry, run (see `tributary::runtime::cli::main`).

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    tributary::runtime::cli::main(aggregator::run).await
}
