//! tributary's shared library: the contract the four binaries agree on, and the plumbing
//! they all run on. Behaviour that belongs to one stage lives in that stage's crate.
//!
//! - [`message`] — the messages that cross the broker and their wire encodings; [`stats`]
//!   the numbers of the results contract; [`processor`] the trait processors implement.
//! - [`names`] — every exchange, routing key, queue and Redis key of a namespace.
//! - [`broker`] — AMQP connections and confirmed publishing, the topology, dead-letter
//!   headers.
//! - [`store`] — Redis: job counters, per-task state, the exactly-once apply, and read-only
//!   views of what the stages keep there.
//! - [`policy`] — failure classes and the one decision between retry and dead letter.
//! - [`runtime`] — config, telemetry, signals, exit codes, the supervised worker session,
//!   metrics, trace context.

pub mod broker;
pub mod message;
pub mod names;
pub mod policy;
pub mod processor;
pub mod runtime;
pub mod stats;
pub mod store;
