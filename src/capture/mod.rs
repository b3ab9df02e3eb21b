//! Capture: keyspace-notification listeners and deadline-index sweepers. Both only call the
//! capture step in the store, so any number of them may run at once: the index removal
//! inside the script decides which one emits.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{watch, Notify};

use crate::core::listener::{notify_classes_for, Action, Heard, ListenerCounts, ListenerMachine, ADOPT_EVENTS};
use crate::core::Via;
use crate::store::notify::Push;
use crate::store::RedisStore;

/// Observable listener counters (what actually happened on this listener).
#[derive(Debug, Default)]
pub struct ListenerStats {
    pub notifications: AtomicU64,
    pub emitted: AtomicU64,
    pub reconnects: AtomicU64,
    pub adoption_events: AtomicU64,
    pub adopted: AtomicU64,
}

impl ListenerStats {
    /// Publishes the listener machine's counts (they only grow).
    fn publish(&self, c: &ListenerCounts) {
        self.notifications.store(c.notifications, Ordering::Relaxed);
        self.emitted.store(c.emitted, Ordering::Relaxed);
        self.reconnects.store(c.reconnects, Ordering::Relaxed);
        self.adoption_events.store(c.adoption_events, Ordering::Relaxed);
        self.adopted.store(c.adopted, Ordering::Relaxed);
    }
}

/// Outcome of trying to enable keyspace notifications.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotifyConfig {
    /// Already had the `E` and `x` (or `A`) classes.
    AlreadyEnabled(String),
    /// We set it (old value, new value).
    Enabled { was: String, now: String },
    /// CONFIG is not allowed here (managed Redis): the user must configure it.
    NotPermitted(String),
}

/// Makes sure `notify-keyspace-events` includes keyevent notifications for expirations,
/// keeping whatever classes were already enabled.
pub async fn ensure_notifications(store: &RedisStore) -> NotifyConfig {
    ensure_notifications_for(store, false).await
}

/// [`ensure_notifications`], and with `adopt` the classes of the adoption events too
/// (`g` and `$`: `expire`, `rename_to`, `rename_from`, `del`, `set`).
pub async fn ensure_notifications_for(store: &RedisStore, adopt: bool) -> NotifyConfig {
    let cur = match store.notify_config().await {
        Ok(v) => v,
        Err(e) => return NotifyConfig::NotPermitted(e.to_string()),
    };
    let Some(new) = notify_classes_for(&cur, adopt) else {
        return NotifyConfig::AlreadyEnabled(cur);
    };
    match store.set_notify_config(&new).await {
        Ok(()) => NotifyConfig::Enabled { was: cur, now: new },
        Err(e) => NotifyConfig::NotPermitted(e.to_string()),
    }
}

/// Text shown when notifications cannot be enabled by the listener itself.
pub const NOTIFY_HELP: &str = "keyspace notifications are off and this client may not run CONFIG SET: \
set `notify-keyspace-events` to include `Ex` (for example `Ex` or `KEA`) in the server's \
configuration or your provider's parameter group. Tracked keys are still captured by the \
sweeper; untracked keys are not captured at all until this is set.";

/// What to adopt: keys written by other programs that match `patterns` (Redis glob patterns),
/// with their string values copied as the event's payload when at most `value_max` bytes
/// (0: no copy).
#[derive(Clone, Debug, Default)]
pub struct Adoption {
    pub patterns: Vec<Vec<u8>>,
    pub value_max: usize,
}

/// Listens for `expired` keyevent notifications on db `db` and runs the capture step for the
/// keys named, in batches. Survives reconnects (RESP3 connection manager with automatic
/// resubscription) and asks the sweepers to run at once after each, since notifications
/// sent while it was away are gone for good. With adoption patterns (`adopt`, Redis glob
/// patterns) it also hears the events that give keys a TTL or take them away
/// ([`ADOPT_EVENTS`]) and runs the adopt script for the keys that match.
pub async fn run_listener(
    store: RedisStore,
    db: i64,
    key_prefix: Option<Vec<u8>>,
    adopt: Adoption,
    sweep_now: Arc<Notify>,
    stats: Arc<ListenerStats>,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let adopting = !adopt.patterns.is_empty();
    let mut channels = vec![format!("__keyevent@{db}__:expired")];
    if adopting {
        channels.extend(ADOPT_EVENTS.iter().map(|e| format!("__keyevent@{db}__:{e}")));
    }
    let (mut sub, mut pushes) = store.subscribe_all(&channels).await?;
    // Anything that expired before we subscribed is for the sweepers.
    sweep_now.notify_waiters();
    let mut m = ListenerMachine::new(db, key_prefix).with_adopt(adopt.patterns);
    let mut ping = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            _ = ping.tick() => {
                // Keeps the connection checked: a dead socket is noticed and re-established
                // (and resubscribed) within a second even when no events flow.
                sub.ping().await;
            }
            msg = pushes.recv() => {
                let Some(first) = msg else { break };
                let mut burst = vec![first];
                while burst.len() < 512 {
                    match pushes.try_recv() {
                        Some(p) => burst.push(p),
                        None => break,
                    }
                }
                let heard = burst
                    .into_iter()
                    .filter_map(|p| match p {
                        Push::Message { channel, payload } => Some(Heard::Message { channel, payload }),
                        Push::Disconnected => Some(Heard::Disconnected),
                        Push::Subscribed => Some(Heard::Subscribed),
                        Push::Other => None,
                    })
                    .collect();
                let mut todo = m.heard(heard);
                while !todo.is_empty() {
                    let mut next = vec![];
                    for a in todo {
                        match a {
                            Action::Capture(keys) => {
                                let r = store.capture(&keys, Via::Notification).await;
                                next.extend(m.captured(r.map(|(e, _, _)| e).map_err(|e| e.to_string())));
                            }
                            Action::Adopt(keys) => {
                                let r = store.adopt(&keys, adopt.value_max).await;
                                next.extend(m.adopted(r.map(|(a, _)| a).map_err(|e| e.to_string())));
                            }
                            Action::SweepNow => sweep_now.notify_waiters(),
                            Action::EnsureNotifications => {
                                if let NotifyConfig::NotPermitted(e) = ensure_notifications_for(&store, adopting).await {
                                    eprintln!("listener: {NOTIFY_HELP} ({e})");
                                }
                            }
                            Action::Warn(w) => eprintln!("{w}"),
                        }
                    }
                    todo = next;
                }
                stats.publish(m.counts());
            }
        }
    }
    Ok(())
}

/// Sweeper settings.
#[derive(Clone, Copy, Debug)]
pub struct SweeperConfig {
    /// Keys captured per script call.
    pub batch: usize,
    /// Shortest pause between sweeps when nothing is due (bounds Redis load).
    pub min_interval: Duration,
    /// Longest sleep, even when the next deadline is far (picks up keys tracked elsewhere).
    pub max_interval: Duration,
}

impl Default for SweeperConfig {
    fn default() -> Self {
        SweeperConfig { batch: 1000, min_interval: Duration::from_millis(2), max_interval: Duration::from_millis(250) }
    }
}

#[derive(Debug, Default)]
pub struct SweeperStats {
    pub sweeps: AtomicU64,
    pub emitted: AtomicU64,
    pub errors: AtomicU64,
}

/// Wakes at the next deadline in the index (server clock), captures due entries in batches.
pub async fn run_sweeper(
    store: RedisStore,
    cfg: SweeperConfig,
    wake: Arc<Notify>,
    stats: Arc<SweeperStats>,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    loop {
        if *stop.borrow() {
            break;
        }
        let pause = match store.sweep(cfg.batch).await {
            Ok(s) => {
                stats.sweeps.fetch_add(1, Ordering::Relaxed);
                stats.emitted.fetch_add(s.emitted, Ordering::Relaxed);
                crate::core::sweep_pause(
                    s.examined,
                    cfg.batch,
                    s.next_deadline_ms,
                    s.now_ms,
                    cfg.min_interval,
                    cfg.max_interval,
                )
            }
            Err(e) => {
                stats.errors.fetch_add(1, Ordering::Relaxed);
                eprintln!("sweeper: {e}; retrying");
                Duration::from_millis(200)
            }
        };
        if pause.is_zero() {
            tokio::task::yield_now().await;
            continue;
        }
        tokio::select! {
            _ = stop.changed() => break,
            _ = wake.notified() => {}
            _ = tokio::time::sleep(pause) => {}
        }
    }
    Ok(())
}

/// Reconcile scan settings.
#[derive(Clone, Copy, Debug)]
pub struct ReconcileConfig {
    /// Keys examined per `SCAN` step (its `COUNT`).
    pub count: usize,
    /// At most this many keys examined per second (bounds Redis load on a big keyspace).
    pub keys_per_s: u64,
    /// Pause after a complete pass before the next.
    pub pass_pause: Duration,
    /// The value copy's bound in bytes (0: no copy), as [`Adoption::value_max`].
    pub value_max: usize,
}

impl Default for ReconcileConfig {
    fn default() -> Self {
        ReconcileConfig { count: 1000, keys_per_s: 100_000, pass_pause: Duration::from_secs(1), value_max: 0 }
    }
}

/// What one reconcile scan did, counted from replies.
#[derive(Debug, Default)]
pub struct ReconcileStats {
    /// `SCAN` steps answered.
    pub steps: AtomicU64,
    /// Keys the steps returned (matching the pattern).
    pub matched: AtomicU64,
    /// Keys the adopt script put into the index (not heard by any listener before).
    pub adopted: AtomicU64,
    /// Complete passes over the keyspace.
    pub passes: AtomicU64,
    pub errors: AtomicU64,
}

/// The reconcile scan for one adoption pattern: an incremental `SCAN MATCH` over the database,
/// adopting what it finds (keys whose `expire` event no listener heard). Its cursor is kept in
/// Redis after every step, so a restarted scan resumes where it stopped; several scans of one
/// pattern share it (each step is idempotent: adoption is). Paced to `keys_per_s` keys
/// examined per second.
pub async fn run_reconciler(
    store: RedisStore,
    pattern: Vec<u8>,
    cfg: ReconcileConfig,
    sweep_now: Arc<Notify>,
    stats: Arc<ReconcileStats>,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let step_pause = Duration::from_secs_f64(cfg.count as f64 / cfg.keys_per_s.max(1) as f64);
    loop {
        if *stop.borrow() {
            break;
        }
        let pause = match reconcile_step(&store, &pattern, cfg.count, cfg.value_max).await {
            Ok((next, matched, adopted)) => {
                stats.steps.fetch_add(1, Ordering::Relaxed);
                stats.matched.fetch_add(matched, Ordering::Relaxed);
                stats.adopted.fetch_add(adopted, Ordering::Relaxed);
                if adopted > 0 {
                    sweep_now.notify_waiters();
                }
                if next == 0 {
                    stats.passes.fetch_add(1, Ordering::Relaxed);
                    cfg.pass_pause.max(step_pause)
                } else {
                    step_pause
                }
            }
            Err(e) => {
                stats.errors.fetch_add(1, Ordering::Relaxed);
                eprintln!("reconcile scan ({}): {e}; retrying", String::from_utf8_lossy(&pattern));
                Duration::from_millis(200)
            }
        };
        tokio::select! {
            _ = stop.changed() => break,
            _ = tokio::time::sleep(pause) => {}
        }
    }
    Ok(())
}

/// One step: the kept cursor, one `SCAN`, adoption of what it found, the next cursor kept.
/// Returns (next cursor, keys matched, keys adopted).
async fn reconcile_step(
    store: &RedisStore,
    pattern: &[u8],
    count: usize,
    value_max: usize,
) -> crate::store::Result<(u64, u64, u64)> {
    let cursor = store.adopt_cursor(pattern).await?;
    let (next, keys) = store.scan_match(cursor, pattern, count).await?;
    let (adopted, _) = store.adopt(&keys, value_max).await?;
    // Kept only after the adoption: a step cut short is repeated, never skipped.
    store.set_adopt_cursor(pattern, next).await?;
    Ok((next, keys.len() as u64, adopted))
}
