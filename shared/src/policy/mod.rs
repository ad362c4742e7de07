//! What happens to a task that failed: its class ([`failure`]), the retry ladder and the one
//! decision between retry and dead letter ([`retry`]), and capped exponential backoff with
//! full jitter ([`backoff`]).

pub mod backoff;
pub mod failure;
pub mod retry;

pub use failure::{ErrorClass, Failure};
pub use retry::{Delays, Disposition, RetryPolicy, parse_delays};
