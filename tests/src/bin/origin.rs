//! A standalone origin for manual runs and acceptance checks: serves the generated quote
//! documents (and the error routes of [`tributary_tests::origin`]) until Ctrl-C.
//!
//! `cargo run --release -p tributary-tests --bin origin -- --urls 5000 > urls.txt` prints the
//! URLs of documents 0..N on stdout, then serves them.

use std::time::Duration;

use clap::Parser;
use tributary_tests::origin::{Origin, OriginOptions};

#[derive(Debug, Parser)]
#[command(
    name = "origin",
    about = "Serve generated quote documents on 127.0.0.1"
)]
struct Args {
    /// Print the URLs of this many documents on stdout.
    #[arg(long, default_value_t = 0)]
    urls: u64,
    /// Print the aggregate of documents 0..N, computed directly from them, and exit.
    #[arg(long)]
    expected: Option<u64>,
    /// Latency added to every request, in milliseconds.
    #[arg(long, default_value_t = 0)]
    latency_ms: u64,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = Args::parse();
    tributary::runtime::cli::exit(serve(args).await)
}

async fn serve(args: Args) -> anyhow::Result<()> {
    if let Some(n) = args.expected {
        let expected = tributary_tests::quotes::expected_aggregate(0..n);
        println!("{}", serde_json::to_string(&expected)?);
        return Ok(());
    }
    let latency = (args.latency_ms > 0).then(|| Duration::from_millis(args.latency_ms));
    let origin = Origin::start(OriginOptions { latency }).await?;
    for i in 0..args.urls {
        println!("{}", origin.url(&format!("/quotes/{i}.json")));
    }
    eprintln!("serving on {} (Ctrl-C to stop)", origin.base_url());
    tokio::signal::ctrl_c().await?;
    origin.shutdown().await;
    Ok(())
}
