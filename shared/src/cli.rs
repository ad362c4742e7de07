//! How binaries end: one lowercase line on stderr and exit 1 for runtime errors (clap
//! already exits 2 for usage errors); no panic, no backtrace.

use std::process::ExitCode;

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
