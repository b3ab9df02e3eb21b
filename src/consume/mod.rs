//! Consumers: batched `XREADGROUP` on a dedicated connection each, a handler per event, one
//! fenced commit script call per batch, `XAUTOCLAIM` reclaim, retries with backoff, dead
//! letters, graceful shutdown. Knows no Redis command itself: every call goes through
//! [`crate::store::Store`].

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot, watch};

use crate::core::{admit, after_handler, Admit, CommitOutcome, Effect, Event, Next, RetryPolicy};
use crate::store::conn::Dedicated;
use crate::store::{CommitItem, LedgerConfig, RawEntry, Store};

// The handler contract is the core's (the oracle implements it too); re-exported here, where
// users of the consumer look for it.
pub use crate::core::{Delivery, Handler, HandlerError, HandlerFuture};

/// Consumer settings.
#[derive(Clone, Debug)]
pub struct ConsumerConfig {
    /// Most entries per `XREADGROUP`/`XAUTOCLAIM` (reads start at one and grow toward this
    /// only while they come back full, i.e. under a backlog).
    pub batch: usize,
    /// Handlers running at once within one consumer.
    pub concurrency: usize,
    /// How long one `XREADGROUP` blocks.
    pub block: Duration,
    /// Idle time after which another consumer may claim an entry. An entry is committed after
    /// its whole read batch is handled, so keep this above `batch × handler p99 / concurrency`
    /// (a consumer slower than that is fenced: safe, but its work is wasted).
    pub claim_idle: Duration,
    /// How often each consumer looks for claimable entries.
    pub claim_interval: Duration,
    /// Deliveries after which an entry is dead-lettered.
    pub max_deliveries: u64,
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    pub ledger: LedgerConfig,
    /// Payloads above this are dead-lettered as oversized.
    pub max_payload: usize,
    /// Consumers (of any process) idle this long with nothing pending are removed.
    pub prune_idle: Duration,
}

impl Default for ConsumerConfig {
    fn default() -> Self {
        ConsumerConfig {
            batch: 8,
            concurrency: 1,
            block: Duration::from_millis(500),
            claim_idle: Duration::from_secs(5),
            claim_interval: Duration::from_millis(1000),
            max_deliveries: 5,
            backoff_base: Duration::from_millis(20),
            backoff_max: Duration::from_secs(2),
            ledger: LedgerConfig::default(),
            max_payload: 1 << 20,
            prune_idle: Duration::from_secs(600),
        }
    }
}

impl ConsumerConfig {
    pub fn retry_policy(&self) -> RetryPolicy {
        RetryPolicy {
            max_deliveries: self.max_deliveries,
            backoff_base: self.backoff_base,
            backoff_max: self.backoff_max,
        }
    }
}

/// What one consumer did, counted from the commit script's replies.
#[derive(Debug, Default)]
pub struct ConsumerStats {
    pub committed: AtomicU64,
    pub duplicates_suppressed: AtomicU64,
    pub fenced: AtomicU64,
    pub dead_lettered: AtomicU64,
    pub retries: AtomicU64,
    pub reclaimed: AtomicU64,
    pub released: AtomicU64,
    pub errors: AtomicU64,
    /// Pending entries XAUTOCLAIM found deleted from the stream (dead-lettered by claim.lua).
    pub deleted_while_pending: AtomicU64,
    /// Entries whose effects could not apply (dead-lettered by the commit script).
    pub effects_refused: AtomicU64,
    /// Entries an effect failed for after the pre-flight passed (dead-lettered, loudly).
    pub partially_applied: AtomicU64,
}

/// A unique consumer name per incarnation: the fence compares owner names, so a restarted
/// process must never inherit the name (and pending entries) of one that may still run.
pub fn consumer_name(prefix: &str, index: usize) -> String {
    format!("{prefix}-{index}-{}-{:08x}", std::process::id(), fastrand::u32(..))
}

enum Done {
    Effects(Event, Vec<Effect>),
    Dead(String),
    Dropped,
}

struct Work {
    entry: RawEntry,
    token: u64,
}

/// Runs one consumer until `stop` turns true; then finishes what it started, commits it, and
/// releases what it had not started.
pub async fn run_consumer(
    store: Store,
    name: String,
    handler: Arc<dyn Handler>,
    cfg: ConsumerConfig,
    stats: Arc<ConsumerStats>,
    committer: Committer,
    mut stop: watch::Receiver<bool>,
    prune: bool,
) -> anyhow::Result<()> {
    // Two dedicated connections: one for the blocking reads (a read is outstanding while a
    // batch is handled), one for everything else, which must never wait behind a BLOCK.
    // A connection killed while the consumer starts is retried, not fatal (a restart storm
    // must not take consumers down with it); a Redis that never answers still ends it.
    let (mut conn, mut rconn) = connect_pair(&store, &name).await?;
    let mut ahead: Option<tokio::task::JoinHandle<crate::store::Result<Vec<RawEntry>>>> = None;
    // Entries per read: one while the consumer keeps up (the lowest latency, the most even
    // spread), doubling up to `cfg.batch` while reads come back full (a backlog: fewer calls
    // per entry, and the backlog's latency is what it is anyway), halving as it drains.
    let mut count = 1usize;
    let mut cursor = "0-0".to_string();
    let mut last_claim = Instant::now();
    let mut last_prune = Instant::now();
    // The commit of one batch runs (in the process's committer) while the next batch is read
    // and handled: one commit in flight per consumer, awaited before the next and at shutdown.
    let mut committing: Option<oneshot::Receiver<Result<Vec<CommitOutcome>, String>>> = None;
    loop {
        if *stop.borrow_and_update() {
            break;
        }
        let work: Vec<Work> = if last_claim.elapsed() >= cfg.claim_interval {
            last_claim = Instant::now();
            if prune && last_prune.elapsed() >= cfg.prune_idle / 4 {
                last_prune = Instant::now();
                let _ = store.prune_consumers(cfg.prune_idle).await;
            }
            match store.reclaim(&mut conn, &name, cfg.claim_idle, &cursor, cfg.batch).await {
                Ok(claimed) => {
                    cursor = claimed.next;
                    stats.reclaimed.fetch_add(claimed.entries.len() as u64, Ordering::Relaxed);
                    if !claimed.deleted.is_empty() {
                        // Already in the dead-letter stream (claim.lua); say so where people look.
                        stats.deleted_while_pending.fetch_add(claimed.deleted.len() as u64, Ordering::Relaxed);
                        eprintln!(
                            "{name}: {} pending entries were deleted from the stream by another program (dead-lettered): {}",
                            claimed.deleted.len(),
                            claimed.deleted.join(" ")
                        );
                    }
                    claimed.entries.into_iter().map(|(entry, token)| Work { entry, token }).collect()
                }
                Err(e) => {
                    stats.errors.fetch_add(1, Ordering::Relaxed);
                    eprintln!("{name}: reclaim failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    // The connection may be dead (CLIENT KILL, restart): make new ones, or the
                    // next reclaim fails the same way forever.
                    if e.is_retryable() {
                        if let (Ok(c), Ok(r)) = (store.dedicated().await, store.dedicated().await) {
                            (conn, rconn) = (c, r);
                        }
                    }
                    continue;
                }
            }
        } else {
            let read = match ahead.take() {
                Some(h) => h.await.unwrap_or_else(|e| {
                    Err(crate::store::StoreError::Reply { what: "read-ahead task", reply: e.to_string() })
                }),
                None => store.read_new(&mut rconn, &name, count, cfg.block).await,
            };
            match read {
                // Entries read with `>` are on their first delivery.
                Ok(entries) => {
                    count = if entries.len() >= count { (count * 2).min(cfg.batch.max(1)) } else { (count / 2).max(1) };
                    entries.into_iter().map(|entry| Work { entry, token: 1 }).collect()
                }
                Err(e) => {
                    stats.errors.fetch_add(1, Ordering::Relaxed);
                    if !e.to_string().contains("NOGROUP") {
                        eprintln!("{name}: read failed: {e}");
                    } else {
                        let _ = store.ensure_group().await;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    // The connections may be dead (CLIENT KILL, restart): make new ones.
                    if let (Ok(c), Ok(r)) = (store.dedicated().await, store.dedicated().await) {
                        (conn, rconn) = (c, r);
                    }
                    continue;
                }
            }
        };
        if work.is_empty() {
            continue;
        }
        if !*stop.borrow() {
            // Read the next entry while this batch is handled: the read's round trip leaves the
            // per-entry cycle. Redis serves blocked readers first come, first served, so a
            // consumer that is idle (blocked earlier) still gets a new entry before this one.
            let (s, mut c, n, b) = (store.clone(), rconn.clone(), name.clone(), count);
            let block = cfg.block;
            ahead = Some(tokio::spawn(async move { s.read_new(&mut c, &n, b, block).await }));
        }
        crate::fault::point("consume::after_read").await;
        let finished = process(&store, &mut conn, &name, &*handler, &cfg, &stats, &stop, work).await;
        if let Some(prev) = committing.take() {
            settle(&name, prev, &stats).await;
        }
        if !finished.is_empty() {
            crate::fault::point("consume::before_commit").await;
            committing = Some(committer.submit(&name, finished));
        }
    }
    if let Some(prev) = committing.take() {
        settle(&name, prev, &stats).await;
    }
    // A read still outstanding at shutdown: hand back whatever it delivered.
    if let Some(h) = ahead.take() {
        if let Ok(Ok(entries)) = h.await {
            let ids: Vec<String> = entries.into_iter().map(|e| e.id).collect();
            if let Ok(n) = store.release(&mut conn, &name, &ids, cfg.claim_idle * 10).await {
                stats.released.fetch_add(n, Ordering::Relaxed);
            }
        }
    }
    Ok(())
}

/// The consumer's two dedicated connections, retried for a while on connection loss.
async fn connect_pair(store: &Store, name: &str) -> anyhow::Result<(Dedicated, Dedicated)> {
    let mut attempt = 0u32;
    loop {
        let r = async { Ok::<_, crate::store::StoreError>((store.dedicated().await?, store.dedicated().await?)) }.await;
        match r {
            Ok(pair) => return Ok(pair),
            Err(e) if e.is_retryable() && attempt < 50 => {
                attempt += 1;
                eprintln!("{name}: connecting failed ({e}); retrying");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// A handled entry waiting for its commit.
pub struct Handled {
    pub entry_id: String,
    pub token: u64,
    pub event: Event,
    pub effects: Vec<Effect>,
}

struct CommitRequest {
    consumer: String,
    items: Vec<Handled>,
    reply: oneshot::Sender<Result<Vec<CommitOutcome>, String>>,
}

/// Group commit: the consumers of a process hand their handled batches to one committer
/// task, which sends whatever has gathered as one script call; while a call is in flight the
/// next one gathers. Far fewer round trips and script calls per event than one call per
/// consumer batch, and each entry is still fenced against its own consumer.
#[derive(Clone)]
pub struct Committer {
    tx: mpsc::UnboundedSender<CommitRequest>,
}

impl Committer {
    /// Starts the committer task; it ends when every clone of the handle is dropped.
    pub fn spawn(store: Store, ledger: LedgerConfig, max_entries: usize) -> Committer {
        let (tx, mut rx) = mpsc::unbounded_channel::<CommitRequest>();
        tokio::spawn(async move {
            // A few calls in flight at once: a slow call does not hold up the next batch.
            let slots = Arc::new(tokio::sync::Semaphore::new(4));
            while let Some(first) = rx.recv().await {
                let Ok(slot) = slots.clone().acquire_owned().await else { break };
                let mut reqs = vec![first];
                let mut n = reqs[0].items.len();
                while n < max_entries {
                    match rx.try_recv() {
                        Ok(r) => {
                            n += r.items.len();
                            reqs.push(r);
                        }
                        Err(_) => break,
                    }
                }
                let store = store.clone();
                tokio::spawn(async move {
                    let _slot = slot;
                    let mut conn = store.conn.clone();
                    let items: Vec<(&str, CommitItem<'_>)> = reqs
                        .iter()
                        .flat_map(|r| {
                            r.items.iter().map(|h| {
                                let item = CommitItem {
                                    entry_id: &h.entry_id,
                                    token: h.token,
                                    event: &h.event,
                                    effects: &h.effects,
                                };
                                (r.consumer.as_str(), item)
                            })
                        })
                        .collect();
                    let refs: Vec<(&str, &CommitItem<'_>)> = items.iter().map(|(c, i)| (*c, i)).collect();
                    let result = store.commit_many(&mut conn, ledger, &refs).await;
                    drop(refs);
                    drop(items);
                    match result {
                        Ok(outcomes) => {
                            let mut rest = outcomes.as_slice();
                            for r in reqs {
                                let (mine, tail) = rest.split_at(r.items.len().min(rest.len()));
                                rest = tail;
                                let _ = r.reply.send(Ok(mine.to_vec()));
                            }
                        }
                        Err(e) => {
                            let msg = e.to_string();
                            for r in reqs {
                                let _ = r.reply.send(Err(msg.clone()));
                            }
                        }
                    }
                });
            }
        });
        Committer { tx }
    }

    /// Queues a consumer's handled batch; the receiver yields the script's decisions.
    fn submit(&self, consumer: &str, items: Vec<Handled>) -> oneshot::Receiver<Result<Vec<CommitOutcome>, String>> {
        let (reply, rx) = oneshot::channel();
        // If the committer is gone the receiver reports it (the sender is dropped).
        let _ = self.tx.send(CommitRequest { consumer: consumer.to_string(), items, reply });
        rx
    }
}

/// Waits for a submitted commit and counts what the script decided.
async fn settle(name: &str, rx: oneshot::Receiver<Result<Vec<CommitOutcome>, String>>, stats: &ConsumerStats) {
    let result = rx.await.unwrap_or_else(|_| Err("committer stopped".into()));
    crate::fault::point("consume::after_commit").await;
    match result {
        Ok(outcomes) => {
            for o in outcomes {
                let c = match &o {
                    CommitOutcome::Committed => &stats.committed,
                    CommitOutcome::AlreadyApplied => &stats.duplicates_suppressed,
                    CommitOutcome::NotOwner => &stats.fenced,
                    CommitOutcome::EffectsRefused(_) => &stats.effects_refused,
                    CommitOutcome::PartiallyApplied(reason) => {
                        eprintln!("{name}: an entry was PARTIALLY APPLIED and dead-lettered: {reason}");
                        &stats.partially_applied
                    }
                };
                c.fetch_add(1, Ordering::Relaxed);
                if o.dead_lettered() {
                    stats.dead_lettered.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        // Not committed: the entries stay pending and are reclaimed after `claim_idle`;
        // the ledger makes the second attempt safe whatever happened to this one.
        Err(e) => {
            stats.errors.fetch_add(1, Ordering::Relaxed);
            eprintln!("{name}: commit failed: {e}");
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn process(
    store: &Store,
    conn: &mut Dedicated,
    name: &str,
    handler: &dyn Handler,
    cfg: &ConsumerConfig,
    stats: &ConsumerStats,
    stop: &watch::Receiver<bool>,
    work: Vec<Work>,
) -> Vec<Handled> {
    let mut finished: Vec<Handled> = Vec::with_capacity(work.len());
    let mut release: Vec<String> = vec![];
    let mut queue = work.into_iter();
    loop {
        if *stop.borrow() {
            // Not started: hand back at once rather than make others wait `claim_idle`.
            release.extend(queue.by_ref().map(|w| w.entry.id));
            break;
        }
        let chunk: Vec<Work> = queue.by_ref().take(cfg.concurrency.max(1)).collect();
        if chunk.is_empty() {
            break;
        }
        let results = futures_util::future::join_all(
            chunk.into_iter().map(|w| handle_one(store, conn.clone(), name, handler, cfg, stats, w)),
        )
        .await;
        for (w, done) in results {
            match done {
                Done::Effects(event, effects) => {
                    finished.push(Handled { entry_id: w.entry.id, token: w.token, event, effects })
                }
                Done::Dead(reason) => dead_letter(store, conn, name, stats, &w, &reason).await,
                Done::Dropped => {}
            }
        }
    }
    if !release.is_empty() {
        if let Ok(n) = store.release(conn, name, &release, cfg.claim_idle * 10).await {
            stats.released.fetch_add(n, Ordering::Relaxed);
        }
    }
    finished
}

async fn dead_letter(store: &Store, conn: &mut Dedicated, name: &str, stats: &ConsumerStats, w: &Work, reason: &str) {
    match store.dead_letter(conn, name, &w.entry.id, w.token, reason).await {
        Ok(true) => {
            stats.dead_lettered.fetch_add(1, Ordering::Relaxed);
        }
        Ok(false) => {
            stats.fenced.fetch_add(1, Ordering::Relaxed);
        }
        Err(e) => {
            stats.errors.fetch_add(1, Ordering::Relaxed);
            eprintln!("{name}: dead-letter of {} failed: {e}", w.entry.id);
        }
    }
}

async fn handle_one(
    store: &Store,
    mut conn: Dedicated,
    name: &str,
    handler: &dyn Handler,
    cfg: &ConsumerConfig,
    stats: &ConsumerStats,
    mut w: Work,
) -> (Work, Done) {
    let policy = cfg.retry_policy();
    let event = match admit(&w.entry.fields, w.token, &policy, cfg.max_payload) {
        Admit::Handle(e) => e,
        Admit::DeadLetter(reason) => return (w, Done::Dead(reason)),
    };
    loop {
        let delivery = Delivery { entry_id: w.entry.id.clone(), consumer: name.to_string(), token: w.token };
        let result = handler.handle(&event, &delivery).await;
        match after_handler(result, w.token, &policy, fastrand::f64()) {
            Next::Commit(effects) => return (w, Done::Effects(event, effects)),
            Next::DeadLetter(reason) => return (w, Done::Dead(reason)),
            Next::Retry { after } => {
                stats.retries.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(after).await;
                match store.retry(&mut conn, name, &w.entry.id, w.token).await {
                    Ok(Some(t)) => w.token = t,
                    // Someone else holds it now; they will deliver it.
                    Ok(None) => return (w, Done::Dropped),
                    Err(e) => {
                        eprintln!("{name}: retry of {} failed: {e}", w.entry.id);
                        return (w, Done::Dropped);
                    }
                }
            }
        }
    }
}
