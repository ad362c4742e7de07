//! How binaries end: one lowercase line on stderr and exit 1 for runtime errors (clap
//! already exits 2 for usage errors); no panic, no backtrace.

use std::future::Future;
use std::process::ExitCode;

use super::config::CommonArgs;
use super::shutdown::CancellationToken;

/// A binary's config: clap-parsed, with the common arguments inside.
pub trait BinaryConfig: clap::Parser {
    fn common(&self) -> &CommonArgs;
}

/// The whole of a binary's `main`: small pages ([`super::memory`]), parse the config, init
/// telemetry, install the signal handlers, call `run(config, shutdown)`, turn its result into the exit code.
pub async fn main<C, F, Fut>(run: F) -> ExitCode
where
    C: BinaryConfig,
    F: FnOnce(C, CancellationToken) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    super::memory::small_pages();
    let config = C::parse();
    super::telemetry::init(config.common().telemetry.log_format);
    let shutdown = super::shutdown::on_signals();
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
    chain(e.as_ref())
}

const MAX_LINE: usize = 300;

/// An error and its sources on one line, `: `-separated, skipping a source whose text the
/// line already holds (many libraries print their source inside their own message too).
pub fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut line = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        let text = e.to_string();
        if !line.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
        source = e.source();
    }
    one_line(&line)
}

/// Collapses a message to one line of at most 300 characters.
pub fn one_line(s: &str) -> String {
    let flat: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let flat = flat.split_whitespace().collect::<Vec<_>>().join(" ");
    if flat.chars().count() > MAX_LINE {
        let cut: String = flat.chars().take(MAX_LINE - 1).collect();
        format!("{cut}…")
    } else {
        flat
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chains_skip_repeated_sources() {
        let io = std::io::Error::other("connection refused");
        let wrapped = anyhow::Error::new(io).context("broker at x: connection refused");
        assert_eq!(chain(wrapped.as_ref()), "broker at x: connection refused");
        let plain = anyhow::Error::msg("inner").context("outer");
        assert_eq!(chain(plain.as_ref()), "outer: inner");
    }

    #[test]
    fn reasons_are_one_line() {
        assert_eq!(one_line("a\nb\t c"), "a b c");
        assert_eq!(one_line(&"x".repeat(400)).chars().count(), 300);
    }
}
