//! What every binary runs on: settings ([`config`]), logging ([`telemetry`]), signals
//! ([`shutdown`]), the exit convention ([`cli`]), the supervised worker sessions
//! ([`worker`]), metrics and health endpoints ([`metrics`]), trace context ([`trace`]) and
//! credential redaction for log lines ([`redact`]).

pub mod cli;
pub mod config;
pub mod metrics;
pub mod redact;
pub mod shutdown;
pub mod telemetry;
pub mod trace;
pub mod worker;
