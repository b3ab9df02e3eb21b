//! Consumers: each a fair dispatcher (ADR 016) reading with `XREADGROUP` what its idle workers
//! can take, a handler per event on the worker idle the longest, fenced commits as entries
//! finish, `XAUTOCLAIM` reclaim, retries with backoff, dead letters, graceful shutdown. Every
//! decision is the state machine's
//! ([`crate::core::consumer::Machine`], which the simulator and loom drive too); this module
//! is its tokio driver and the process's group committer. Knows no Redis command itself:
//! every call goes through the store seam [`crate::store::Store`] (Redis in production, the
//! model in `tests/model`).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::{FuturesUnordered, StreamExt};
use tokio::sync::{mpsc, oneshot, watch};

use crate::core::consumer::{Claim, Command, Counts, Failure, Input, Machine, Settings, Work};
use crate::core::{CommitOutcome, RetryPolicy};
use crate::store::{CommitItem, LedgerConfig, Store};

// The state machine's handled entry is what the committer commits.
pub use crate::core::consumer::Handled;

// The handler contract is the core's (the oracle implements it too); re-exported here, where
// users of the consumer look for it.
pub use crate::core::{Delivery, Handler, HandlerError, HandlerFuture};

/// Consumer settings.
#[derive(Clone, Debug)]
pub struct ConsumerConfig {
    /// Most entries per `XREADGROUP`/`XAUTOCLAIM`, and the most read ahead of the idle
    /// workers (the read-ahead starts at one and grows toward this only while reads come
    /// back full, i.e. under a backlog).
    pub batch: usize,
    /// Workers: handlers running at once within one consumer, each entry to the worker idle
    /// the longest (ADR 016).
    pub concurrency: usize,
    /// How long one `XREADGROUP` blocks.
    pub block: Duration,
    /// Idle time after which another consumer may claim an entry. An entry waits for a worker
    /// behind at most `2 × batch` others (read-ahead and reclaims), so keep this above
    /// `(2 × batch / concurrency + 1) × handler p99` (a consumer slower than that is fenced:
    /// safe, but its work is wasted).
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

/// What one consumer did: the state machine's own counts ([`Counts`], from the store's
/// replies), published after every step for the process's reports. One per consumer.
#[derive(Debug, Default)]
pub struct ConsumerStats(std::sync::Mutex<Counts>);

impl ConsumerStats {
    /// The counts as of the consumer's last step.
    pub fn snapshot(&self) -> Counts {
        self.0.lock().map(|c| c.clone()).unwrap_or_else(|p| p.into_inner().clone())
    }

    fn publish(&self, now: &Counts) {
        match self.0.lock() {
            Ok(mut c) => c.clone_from(now),
            Err(p) => p.into_inner().clone_from(now),
        }
    }
}

/// A unique consumer name per incarnation: the fence compares owner names, so a restarted
/// process must never inherit the name (and pending entries) of one that may still run.
pub fn consumer_name(prefix: &str, index: usize) -> String {
    format!("{prefix}-{index}-{}-{:08x}", std::process::id(), fastrand::u32(..))
}

/// The machine's settings from the consumer's.
fn settings(cfg: &ConsumerConfig, prune: bool) -> Settings {
    Settings {
        batch: cfg.batch,
        concurrency: cfg.concurrency,
        claim_interval: cfg.claim_interval,
        prune_every: prune.then_some(cfg.prune_idle / 4),
        policy: cfg.retry_policy(),
        max_payload: cfg.max_payload,
    }
}

fn failure(e: &crate::store::StoreError) -> Failure {
    let message = e.to_string();
    Failure { no_group: message.contains("NOGROUP"), reconnect: e.is_retryable(), message }
}

/// A command being carried out; it ends with the machine's input.
type Op = Pin<Box<dyn Future<Output = Input> + Send>>;

/// Runs one consumer until `stop` turns true; then finishes what it started, commits it, and
/// releases what it had not started. The decisions are [`Machine`]'s (the simulator drives the
/// same one); this is only its I/O: each command becomes a future, each future's result the
/// machine's next input.
#[allow(clippy::too_many_arguments)]
pub async fn run_consumer<S: Store>(
    store: S,
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
    let t0 = tokio::time::Instant::now();
    let now = || t0.elapsed().as_millis() as i64;
    let mut m = Machine::new(settings(&cfg, prune), now());
    let mut ops: FuturesUnordered<Op> = FuturesUnordered::new();
    let mut stop_sent = false;
    let mut cmds = vec![];
    loop {
        if !stop_sent && *stop.borrow_and_update() {
            stop_sent = true;
            cmds.extend(m.on(now(), Input::Stop));
        }
        // The machine's due times are judged at this poll. Some commands run inline and may
        // take long (a reconnect waits up to its timeout): the next wake-up is asked for as of
        // this poll, so a pause or a reclaim that fell due meanwhile is polled at once, not lost.
        let polled_at = now();
        cmds.extend(m.poll(polled_at));
        for c in cmds.drain(..) {
            match c {
                Command::Read { count } => {
                    let (s, mut c, n, block) = (store.clone(), rconn.clone(), name.clone(), cfg.block);
                    ops.push(Box::pin(async move {
                        let r = s.read_new(&mut c, &n, count, block).await;
                        if r.as_ref().is_ok_and(|v| !v.is_empty()) {
                            crate::fault::point("consume::after_read").await;
                        }
                        Input::Read(r.map_err(|e| failure(&e)))
                    }));
                }
                Command::Claim { cursor, count } => {
                    let (s, mut c, n, idle) = (store.clone(), conn.clone(), name.clone(), cfg.claim_idle);
                    ops.push(Box::pin(async move {
                        let r = s.reclaim(&mut c, &n, idle, &cursor, count).await.map(|c| Claim {
                            next: c.next,
                            entries: c.entries.into_iter().map(|(entry, token)| Work { entry, token }).collect(),
                            deleted: c.deleted,
                        });
                        Input::Claimed(r.map_err(|e| failure(&e)))
                    }));
                }
                Command::Prune => {
                    let (s, idle) = (store.clone(), cfg.prune_idle);
                    tokio::spawn(async move {
                        let _ = s.prune_consumers(idle).await;
                    });
                }
                Command::Handle { slot, worker, entry_id, token, event } => {
                    let h = handler.clone();
                    let delivery = Delivery { entry_id, consumer: name.clone(), token, worker };
                    ops.push(Box::pin(async move {
                        let result = h.handle(&event, &delivery).await;
                        Input::Handled { slot, result, unit: fastrand::f64() }
                    }));
                }
                Command::Retry { slot, entry_id, token, after } => {
                    let (s, mut c, n) = (store.clone(), conn.clone(), name.clone());
                    ops.push(Box::pin(async move {
                        tokio::time::sleep(after).await;
                        let result = s.retry(&mut c, &n, &entry_id, token).await.map_err(|e| failure(&e));
                        Input::Retried { slot, result }
                    }));
                }
                Command::DeadLetter { slot, entry_id, token, reason } => {
                    let (s, mut c, n) = (store.clone(), conn.clone(), name.clone());
                    ops.push(Box::pin(async move {
                        let result = s.dead_letter(&mut c, &n, &entry_id, token, &reason).await;
                        Input::DeadLettered { slot, result: result.map_err(|e| failure(&e)) }
                    }));
                }
                Command::Commit(items) => {
                    let (committer, n) = (committer.clone(), name.clone());
                    ops.push(Box::pin(async move {
                        crate::fault::point("consume::before_commit").await;
                        let rx = committer.submit(&n, items);
                        let result = rx.await.unwrap_or_else(|_| Err("committer stopped".into()));
                        crate::fault::point("consume::after_commit").await;
                        Input::Committed(result.map_err(|message| Failure {
                            message,
                            no_group: false,
                            reconnect: false,
                        }))
                    }));
                }
                Command::Release(ids) => {
                    let (s, mut c, n, idle) = (store.clone(), conn.clone(), name.clone(), cfg.claim_idle * 10);
                    ops.push(Box::pin(async move {
                        Input::Released(s.release(&mut c, &n, &ids, idle).await.map_err(|e| failure(&e)))
                    }));
                }
                // The connections may be dead (CLIENT KILL, restart): make new ones, or the
                // next call fails the same way forever.
                Command::Reconnect => {
                    if let (Ok(c), Ok(r)) = (store.dedicated().await, store.dedicated().await) {
                        (conn, rconn) = (c, r);
                    }
                }
                Command::EnsureGroup => {
                    let _ = store.ensure_group().await;
                }
                Command::Warn(w) => eprintln!("{name}: {w}"),
                Command::Done => {
                    stats.publish(m.counts());
                    return Ok(());
                }
            }
        }
        stats.publish(m.counts());
        let wake = m.next_wake(polled_at).map(|t| t0 + Duration::from_millis(t as u64));
        // Nothing out and nothing due cannot happen while the machine runs (a read is always out
        // or due); should it, the machine is polled again shortly rather than waited on forever.
        let idle = ops.is_empty() && wake.is_none();
        let input = tokio::select! {
            Some(input) = ops.next(), if !ops.is_empty() => Some(input),
            _ = stop.changed(), if !stop_sent => None,
            _ = tokio::time::sleep_until(wake.unwrap_or(t0)), if wake.is_some() => None,
            _ = tokio::time::sleep(Duration::from_millis(100)), if idle => None,
        };
        if let Some(input) = input {
            cmds = m.on(now(), input);
        }
        if stop.has_changed().is_err() && !stop_sent {
            // The sender is gone: nobody can ask for a stop any more; stop now.
            stop_sent = true;
            cmds.extend(m.on(now(), Input::Stop));
        }
    }
}

/// The consumer's two dedicated connections, retried for a while on connection loss.
async fn connect_pair<S: Store>(store: &S, name: &str) -> anyhow::Result<(S::Conn, S::Conn)> {
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
    pub fn spawn<S: Store>(store: S, ledger: LedgerConfig, max_entries: usize) -> Committer {
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
                    let result = store.commit_group(ledger, &refs).await;
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
