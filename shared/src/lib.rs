//! tributary's shared library: everything the four binaries agree on.
//!
//! The message types and their wire encodings ([`message`]), the naming of every exchange,
//! queue and Redis key ([`names`]), topology declaration ([`topology`]), connection and
//! telemetry setup ([`config`], [`telemetry`], [`amqp`], [`store`]), the failure classes that
//! decide ack / retry / dead-letter ([`error`]), the processor trait and the built-in JSON
//! statistics processor ([`processor`]), and the supervised consume loop every worker runs
//! ([`worker`]).

pub mod amqp;
pub mod backoff;
pub mod cli;
pub mod config;
pub mod deadletter;
pub mod error;
pub mod hostlimit;
pub mod message;
pub mod metrics;
pub mod names;
pub mod processor;
pub mod redact;
pub mod shutdown;
pub mod stats;
pub mod store;
pub mod telemetry;
pub mod topology;
pub mod trace;
pub mod worker;
