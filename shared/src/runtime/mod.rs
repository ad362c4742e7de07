//! What every binary runs on: settings ([`config`]), logging ([`telemetry`]), signals
//! ([`shutdown`]), the exit convention ([`cli`]), the supervised worker sessions
//! ([`supervise`], [`session`]) and the accounting of what the broker dead-letters by itself
//! ([`accounting`]), metrics and health endpoints ([`metrics`]), trace context ([`trace`]) and
//! credential redaction for log lines ([`redact`]), and memory settings ([`memory`]).

pub mod accounting;
pub mod cli;
pub mod config;
pub mod memory;
pub mod metrics;
pub mod redact;
pub mod session;
pub mod shutdown;
pub mod supervise;
pub mod telemetry;
pub mod trace;
