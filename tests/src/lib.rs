//! Test support for tributary: shared by the integration tests, the demo
//! and the benchmarks.
//!
//! - [`quotes`]: the deterministic "quote document" workload and the
//!   expected aggregate computed directly from it.
//! - [`origin`]: a small in-process HTTP origin server (axum) that serves
//!   those documents plus error, flaky, rate-limited, slow and oversized
//!   routes, and records every request it sees.

pub mod app;
pub mod clusters;
pub mod dead;
pub mod origin;
pub mod procs;
pub mod quotes;
pub mod redis_node;
