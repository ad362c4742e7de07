//! Polite fetching: what keeps a fleet of fetchers from overwhelming one origin.
//!
//! - [`rates`] — `--host-rate` / `--default-host-rate` parsing and lookup (pure).
//! - [`limiter`] + `lua/` — the fleet-wide per-host GCRA, pauses, AIMD factors and
//!   concurrency leases in Redis (the only code that writes a host's keys).
//! - [`admit`] — asking the limiter before a request; the local view of paused hosts.
//! - [`cap`] — `--host-concurrency`: per-process semaphores, then a fleet-wide lease.
//!
//! It lives in the fetcher because only the fetcher acts on it; what other binaries may
//! read of a host's state (the dashboard) is `tributary::store::hosts`, read-only.

pub mod admit;
pub mod cap;
pub mod limiter;
pub mod rates;
