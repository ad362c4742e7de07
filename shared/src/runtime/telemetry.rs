//! The one telemetry init: tracing-subscriber on stderr, `RUST_LOG`-style filtering
//! (default `info`), text or JSON lines.

use tracing_subscriber::{EnvFilter, fmt, prelude::*};

use crate::runtime::config::LogFormat;

/// Installs the global subscriber. Safe to call more than once (later calls do nothing),
/// so tests that start several stages in one process can call it freely.
pub fn init(format: LogFormat) {
    init_with_default(format, "info");
}

/// lapin logs a benign "Connection error" at ERROR level whenever a connection closes while
/// a channel is closing, and redis's cluster client a warning for every reconnect attempt to
/// a node that is down (several a second); their real errors reach us as `Result`s and the
/// supervisor logs what they mean (node lost, Redis unavailable, back again).
const QUIET: &str = ",lapin=off,redis=error";

/// [`init`] with another filter when `RUST_LOG` is unset (the demo keeps quiet: `warn`).
pub fn init_with_default(format: LogFormat, default_filter: &str) {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(format!("{default_filter}{QUIET}")));
    let registry = tracing_subscriber::registry().with(filter);
    let result = match format {
        LogFormat::Json => registry
            .with(
                fmt::layer()
                    .json()
                    .with_current_span(true)
                    .with_writer(std::io::stderr),
            )
            .try_init(),
        LogFormat::Text => registry
            .with(fmt::layer().with_target(false).with_writer(std::io::stderr))
            .try_init(),
    };
    let _ = result;
}
