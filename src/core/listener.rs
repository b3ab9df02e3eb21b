//! The listener's decisions, with no I/O: what a burst of pushes on the `expired` keyevent
//! channel means (which keys to capture, in one batch), and what a lost or re-established
//! subscription means (notifications sent meanwhile are gone for good: the sweepers must run
//! at once; a restarted Redis has forgotten a `CONFIG SET`: enable notifications again).
//! `capture::run_listener` drives it on Redis; the simulator drives the same machine.

/// What the subscription delivered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Heard {
    /// A published message: its channel and payload.
    Message { channel: Vec<u8>, payload: Vec<u8> },
    /// The connection was lost (what is published until the resubscription is lost too).
    Disconnected,
    /// A (re)subscription took effect.
    Subscribed,
}

/// What the driver must do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Run the capture script for these keys; answer with [`ListenerMachine::captured`].
    Capture(Vec<Vec<u8>>),
    /// Wake the sweepers now.
    SweepNow,
    /// Make sure keyspace notifications are enabled (a restarted server forgot them).
    EnsureNotifications,
    /// Say this on stderr.
    Warn(String),
}

/// What the listener did, counted as it happened.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ListenerCounts {
    /// `expired` notifications of this database heard.
    pub notifications: u64,
    /// Events the capture script emitted for them.
    pub emitted: u64,
    /// Subscriptions lost.
    pub reconnects: u64,
}

/// One listener: the database it listens to and the key prefix it captures (None: every key).
#[derive(Clone, Debug)]
pub struct ListenerMachine {
    db: i64,
    key_prefix: Option<Vec<u8>>,
    counts: ListenerCounts,
}

impl ListenerMachine {
    pub fn new(db: i64, key_prefix: Option<Vec<u8>>) -> ListenerMachine {
        ListenerMachine { db, key_prefix, counts: ListenerCounts::default() }
    }

    /// The actions for one burst of pushes: at most one capture (the burst's keys, in order),
    /// after the sweeps and re-enabling the burst's (re)subscriptions ask for.
    pub fn heard(&mut self, burst: Vec<Heard>) -> Vec<Action> {
        let mut out = vec![];
        let mut keys = vec![];
        for h in burst {
            match h {
                Heard::Message { channel, payload } => {
                    let Some(n) = super::parse_notification(&channel, &payload) else { continue };
                    if n.event != b"expired" || i64::from(n.db) != self.db {
                        continue;
                    }
                    self.counts.notifications += 1;
                    if self.key_prefix.as_ref().is_none_or(|pre| n.key.starts_with(pre)) {
                        keys.push(n.key);
                    }
                }
                Heard::Disconnected => {
                    self.counts.reconnects += 1;
                    out.push(Action::SweepNow);
                }
                Heard::Subscribed => {
                    out.push(Action::EnsureNotifications);
                    out.push(Action::SweepNow);
                }
            }
        }
        if !keys.is_empty() {
            out.push(Action::Capture(keys));
        }
        out
    }

    /// The capture script's answer: events emitted, or why it failed. A failed capture loses
    /// nothing (the index entries stay): the sweepers take those keys, now.
    pub fn captured(&mut self, result: Result<u64, String>) -> Vec<Action> {
        match result {
            Ok(e) => {
                self.counts.emitted += e;
                vec![]
            }
            Err(e) => vec![
                Action::Warn(format!("listener: capture failed ({e}); the sweeper will take these keys")),
                Action::SweepNow,
            ],
        }
    }

    pub fn counts(&self) -> &ListenerCounts {
        &self.counts
    }
}

/// The `notify-keyspace-events` value that adds keyevent notifications (`E`) for expirations
/// (`x`, or `A` for all) to `current`, keeping every class already there; None when both are
/// on already.
pub fn notify_classes_to_set(current: &str) -> Option<String> {
    let has_e = current.contains('E');
    let has_x = current.contains('x') || current.contains('A');
    if has_e && has_x {
        return None;
    }
    let mut new = current.to_string();
    if !has_e {
        new.push('E');
    }
    if !has_x {
        new.push('x');
    }
    Some(new)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notification_classes_are_added_only_where_missing_and_others_are_kept() {
        assert_eq!(notify_classes_to_set(""), Some("Ex".into()));
        assert_eq!(notify_classes_to_set("Kx"), Some("KxE".into()));
        assert_eq!(notify_classes_to_set("Eg"), Some("Egx".into()));
        assert_eq!(notify_classes_to_set("xE"), None);
        assert_eq!(notify_classes_to_set("KEA"), None);
        assert_eq!(notify_classes_to_set("KA"), Some("KAE".into()));
    }

    fn msg(channel: &str, key: &str) -> Heard {
        Heard::Message { channel: channel.as_bytes().to_vec(), payload: key.as_bytes().to_vec() }
    }

    #[test]
    fn a_burst_becomes_one_capture_of_this_databases_expired_keys_under_the_prefix() {
        let mut l = ListenerMachine::new(0, Some(b"app:".to_vec()));
        let a = l.heard(vec![
            msg("__keyevent@0__:expired", "app:1"),
            msg("__keyevent@1__:expired", "app:2"),
            msg("__keyevent@0__:evicted", "app:3"),
            msg("__keyevent@0__:expired", "other:4"),
            msg("garbage", "app:5"),
            msg("__keyevent@0__:expired", "app:6"),
        ]);
        assert_eq!(a, vec![Action::Capture(vec![b"app:1".to_vec(), b"app:6".to_vec()])]);
        // Notifications counts what was heard for this database, prefix or not.
        assert_eq!(l.counts().notifications, 3);
    }

    #[test]
    fn a_lost_subscription_sweeps_and_a_new_one_reenables_notifications_then_sweeps() {
        let mut l = ListenerMachine::new(0, None);
        assert_eq!(l.heard(vec![Heard::Disconnected]), vec![Action::SweepNow]);
        assert_eq!(l.counts().reconnects, 1);
        assert_eq!(
            l.heard(vec![Heard::Subscribed, msg("__keyevent@0__:expired", "k")]),
            vec![Action::EnsureNotifications, Action::SweepNow, Action::Capture(vec![b"k".to_vec()])]
        );
        assert_eq!(l.counts().reconnects, 1);
    }

    #[test]
    fn a_failed_capture_hands_the_keys_to_the_sweepers_and_a_good_one_is_counted() {
        let mut l = ListenerMachine::new(0, None);
        assert_eq!(l.captured(Ok(3)), vec![]);
        assert_eq!(l.counts().emitted, 3);
        let a = l.captured(Err("broken pipe".into()));
        assert!(matches!(&a[..], [Action::Warn(w), Action::SweepNow] if w.contains("broken pipe")));
        assert_eq!(l.counts().emitted, 3);
    }
}
