//! The handler contract: what a consumer hands a handler ([`Event`], [`Delivery`]) and what it
//! gets back (effects, or a [`HandlerError`]). It lives in the core, not in `consume`, because
//! two layers implement or drive it: `consume` runs handlers, and the oracle's handler
//! implements it without depending on the consumer that judges it. Nothing here does I/O: a
//! handler's future is only a `std` future, driven by whichever runtime the caller uses.

use std::future::Future;
use std::pin::Pin;

use super::{Effect, Event};

/// Where and how an event is being delivered.
#[derive(Clone, Debug)]
pub struct Delivery {
    pub entry_id: String,
    pub consumer: String,
    /// Delivery count of this entry (the commit's fencing token): it increases with each
    /// redelivery (reclaim, retry), so an external sink can refuse a write carrying a lower
    /// token than one it has seen for the same event id. A group reset (`XGROUP SETID`)
    /// restarts it at 1: idempotency must rest on the event id, the token only orders
    /// deliveries within one reading of the stream.
    pub token: u64,
    /// The consumer's worker running the handler (0..its concurrency).
    pub worker: u32,
}

impl Delivery {
    /// `<consumer>/w<worker>`: the unit of concurrency, as reports count load per worker.
    pub fn worker_name(&self) -> String {
        format!("{}/w{}", self.consumer, self.worker)
    }
}

/// Why a handler did not produce effects.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HandlerError {
    /// Worth retrying (with backoff) until `max_deliveries`.
    #[error("transient: {0}")]
    Transient(String),
    /// Will never succeed: dead-letter at once with this reason.
    #[error("permanent: {0}")]
    Permanent(String),
}

pub type HandlerFuture<'a> = Pin<Box<dyn Future<Output = Result<Vec<Effect>, HandlerError>> + Send + 'a>>;

/// What to do with an event. Its Redis-side effects are returned, not applied: the commit
/// script applies them in the same atomic step as the ledger entry and the ack, so they
/// happen exactly once. External side effects should use `event.event_id` as idempotency
/// key and `delivery.token` as fencing token; they run at least once.
pub trait Handler: Send + Sync + 'static {
    fn handle<'a>(&'a self, event: &'a Event, delivery: &'a Delivery) -> HandlerFuture<'a>;
}
