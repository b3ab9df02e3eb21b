//! Capture: keyspace-notification listeners and deadline-index sweepers. Both only call the
//! capture step in the store, so any number of them may run at once: the index removal
//! inside the script decides which one emits.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{watch, Notify};

use crate::core::listener::{notify_classes_to_set, Action, Heard, ListenerCounts, ListenerMachine};
use crate::core::Via;
use crate::store::notify::Push;
use crate::store::RedisStore;

/// Observable listener counters (what actually happened on this listener).
#[derive(Debug, Default)]
pub struct ListenerStats {
    pub notifications: AtomicU64,
    pub emitted: AtomicU64,
    pub reconnects: AtomicU64,
}

impl ListenerStats {
    /// Publishes the listener machine's counts (they only grow).
    fn publish(&self, c: &ListenerCounts) {
        self.notifications.store(c.notifications, Ordering::Relaxed);
        self.emitted.store(c.emitted, Ordering::Relaxed);
        self.reconnects.store(c.reconnects, Ordering::Relaxed);
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
    let cur = match store.notify_config().await {
        Ok(v) => v,
        Err(e) => return NotifyConfig::NotPermitted(e.to_string()),
    };
    let Some(new) = notify_classes_to_set(&cur) else {
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

/// Listens for `expired` keyevent notifications on db `db` and runs the capture step for the
/// keys named, in batches. Survives reconnects (RESP3 connection manager with automatic
/// resubscription) and asks the sweepers to run at once after each, since notifications
/// sent while it was away are gone for good.
pub async fn run_listener(
    store: RedisStore,
    db: i64,
    key_prefix: Option<Vec<u8>>,
    sweep_now: Arc<Notify>,
    stats: Arc<ListenerStats>,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let (mut sub, mut pushes) = store.subscribe(&format!("__keyevent@{db}__:expired")).await?;
    // Anything that expired before we subscribed is for the sweepers.
    sweep_now.notify_waiters();
    let mut m = ListenerMachine::new(db, key_prefix);
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
                            Action::SweepNow => sweep_now.notify_waiters(),
                            Action::EnsureNotifications => {
                                if let NotifyConfig::NotPermitted(e) = ensure_notifications(&store).await {
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
