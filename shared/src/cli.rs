//! How binaries end: one lowercase line on stderr and exit 1 for runtime errors (clap
//! already exits 2 for usage errors); no panic, no backtrace.

use std::future::Future;
use std::process::ExitCode;

use crate::config::CommonArgs;
use crate::shutdown::CancellationToken;

/// A binary's config: clap-parsed, with the common arguments inside.
pub trait BinaryConfig: clap::Parser {
    fn common(&self) -> &CommonArgs;
}

/// The whole of a binary's `main`: parse the config, init telemetry, install the signal
/// handlers, call `run(config, shutdown)`, turn its result into the exit code.
pub async fn main<C, F, Fut>(run: F) -> ExitCode
where
    C: BinaryConfig,
    F: FnOnce(C, CancellationToken) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let config = C::parse();
    crate::telemetry::init(config.common().telemetry.log_format);
    let shutdown = crate::shutdown::on_signals();
    exit(run(config, shutdown).await)
}

/// A usage error found after parsing (exit 2).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// Maps a `run` result to the process exit code, printing the error chain on one line.
pub fn exit(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let line = tributary_error_line(&e);
            eprintln!("error: {line}");
            if e.downcast_ref::<UsageError>().is_some() {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

fn tributary_error_line(e: &anyhow::Error) -> String {
    crate::error::chain(e.as_ref())
}
