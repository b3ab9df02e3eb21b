//! # expiry-stream
//!
//! Redis key expirations as events in a Redis Stream, spread over a consumer group, each
//! event's effect applied exactly once, with an independent oracle that checks it.
//!
//! # Layout
//! - [`core`]: the pure protocol: event ids, entry encoding, commit outcomes, backoff, and the
//!   handler contract ([`core::Handler`]). No I/O; imports no other module of the crate.
//! - [`store`]: the only code that speaks Redis; every multi-step change is one Lua script.
//!   Harness and fault commands too go through it ([`store::server::Server`], `RedisStore` methods).
//! - [`capture`]: keyspace-notification listeners and deadline-index sweepers. Never emit
//!   directly: they call the capture script, whose index removal is the deduplication.
//! - [`consume`]: consumers (running [`consume::Handler`]s), reclaim, retries, dead letters.
//!   Never commits outside the fenced commit script.
//! - [`fault`]: named fault points, armed per process by `EXPIRY_STREAM_FAULTS`.
//! - [`workload`]: the paced producer used by `produce`, `run` and the tests.
//! - [`oracle`]: created vs effected ledgers and the verdict. Never trusts library counters,
//!   never imports the consumer or capture it judges.
//! - [`provision`]: Redis for tests and `run`: a container or a `redis-server` process.
//! - [`run`]: the whole pipeline in one process, and its report.
//! - [`model`]: in-memory Redis model for simulation and loom, held to real Redis by differential tests.
//! - [`sim`]: deterministic simulation over the model: seeds, virtual time, faults, checker.
//! - [`scenario`]: chaos scenario files, the multi-process runner, fault injection, reports.
//! - [`report`]: the run report model ([`report::RunReport`], produced by `run`), as Markdown
//!   and a self-contained HTML page with SVG charts.
//! - [`timer`]: precise sleeps for simulated work (tokio's timer has 1 ms ticks).
//! - [`bench`]: the Redis server's own expire-and-notify rate, for side-by-side ratios.
//!
//! Each module imports only the modules below it; `tests/arch.rs` holds the table and checks
//! it (`just arch`).
//!
//! # Example
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use std::time::Duration;
//! use expiry_stream::store::RedisStore;
//! let store = RedisStore::connect("redis://127.0.0.1/", "orders", "expiry").await?;
//! // The key, its deadline index entry and its payload, in one atomic script.
//! let deadlines = store
//!     .write_batch(&[(b"order:42".to_vec(), b"cancel-if-unpaid".to_vec(), Duration::from_secs(30))])
//!     .await?;
//! # let _ = deadlines; Ok(()) }
//! ```

pub mod bench;
pub mod capture;
pub mod consume;
pub mod core;
pub mod fault;
pub mod oracle;
pub mod provision;
pub mod report;
pub mod run;
pub mod scenario;
pub mod sim;
pub mod store;
pub mod timer;
pub mod workload;

/// The README's examples compile (checked by `cargo test --doc`).
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
