//! tributary's service-backed tests, one binary of modules (one link of the workspace
//! instead of one per file). Every test runs the real code against the real RabbitMQ and
//! Redis in a namespace of its own (`tributary_tests::app`), and deletes its queues and keys.
//!
//! Tests that stop services, kill processes or measure timing are `#[ignore]`d here and run
//! one at a time in the serial step of `scripts/test.sh`:
//! `cargo test -p tributary-tests --test e2e -- --ignored --test-threads=1`.

mod api;
mod browser;
mod cluster;
mod dashboard;
mod dashboard_dlq;
mod deploy;
mod dlq;
mod encodings;
mod enqueue;
mod final_states;
mod foreign;
mod hostlimit;
mod http;
mod limiter;
mod metrics;
mod pipeline;
mod restarts;
mod retries;
mod store;
mod webdriver;
