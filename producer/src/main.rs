//! `producer` binary: parse config, init telemetry, run (see `tributary::cli::main`).

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    tributary::cli::main(producer::run).await
}
