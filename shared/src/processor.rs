//! The processor trait: the contract between the `processor-worker` runtime and the code
//! that turns one fetched payload into records. Processors written in Rust implement
//! [`Processor`] and run with `processor_worker::run_with`; the built-in one is
//! `processor_worker::json_stats::JsonStats`.

use crate::message::{Payload, Record};
use crate::policy::Failure;

/// Turns one payload into records. An `Err` is dead-lettered (or retried if its class is
/// retryable); it must never panic on bad input.
pub trait Processor: Send + Sync + 'static {
    fn process(&self, payload: &Payload) -> Result<Vec<Record>, Failure>;
}
