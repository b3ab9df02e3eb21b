//! The listener's decisions, with no I/O: what a burst of pushes on the `expired` keyevent
//! channel means (which keys to capture, in one batch), and what a lost or re-established
//! subscription means (notifications sent meanwhile are gone for good: the sweepers must run
//! at once; a restarted Redis has forgotten a `CONFIG SET`: enable notifications again).
//! `capture::run_listener` drives it on Redis; the simulator drives the same machine.
//!
//! With adoption patterns (`capture --adopt PATTERN`), the listener also hears the events that
//! give a key a TTL (`expire`, and `set` and `rename_to`, after which the key may have one) or
//! take it away (`del`, `rename_from`) and asks for the adoption of the keys that match: the
//! adopt script puts a key with a TTL into the deadline index, from then on captured exactly
//! once like a tracked key, and settles a key already indexed (see [`ADOPT_EVENTS`]).

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
    /// Run the adopt script for these keys (they match an adoption pattern and may have a
    /// TTL now); answer with [`ListenerMachine::adopted`].
    Adopt(Vec<Vec<u8>>),
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
    /// [`ADOPT_EVENTS`] of this database for keys matching an adoption pattern.
    pub adoption_events: u64,
    /// Keys the adopt script put into the deadline index for them.
    pub adopted: u64,
}

/// The keyevents adoption follows: those that may give a key a TTL (or a new one: `expire`,
/// `set`, `rename_to`), and those that take an adopted key away before its deadline (`del`,
/// which `EXPIRE` with a time in the past publishes too, and `rename_from`): the adopt script
/// settles an indexed key at once, so a key deleted or renamed away is dropped, not captured
/// as expired at its old deadline.
pub const ADOPT_EVENTS: [&str; 5] = ["expire", "set", "rename_to", "del", "rename_from"];

/// One listener: the database it listens to and the key prefix it captures (None: every key).
#[derive(Clone, Debug)]
pub struct ListenerMachine {
    db: i64,
    key_prefix: Option<Vec<u8>>,
    adopt: Vec<Vec<u8>>,
    counts: ListenerCounts,
}

impl ListenerMachine {
    pub fn new(db: i64, key_prefix: Option<Vec<u8>>) -> ListenerMachine {
        ListenerMachine { db, key_prefix, adopt: vec![], counts: ListenerCounts::default() }
    }

    /// Adopts keys matching any of `patterns` (Redis glob patterns, [`super::glob`]).
    pub fn with_adopt(mut self, patterns: Vec<Vec<u8>>) -> ListenerMachine {
        self.adopt = patterns;
        self
    }

    /// True when `key` matches an adoption pattern.
    pub fn adopts(&self, key: &[u8]) -> bool {
        self.adopt.iter().any(|p| super::glob::matches(p, key))
    }

    /// The actions for one burst of pushes: at most one adoption and one capture (the burst's
    /// keys, in order), after the sweeps and re-enabling the burst's (re)subscriptions ask for.
    /// The adoption goes first: a key given a TTL and expired within one burst is in the index
    /// by the time its capture runs.
    pub fn heard(&mut self, burst: Vec<Heard>) -> Vec<Action> {
        let mut out = vec![];
        let mut keys = vec![];
        let mut adopt: Vec<Vec<u8>> = vec![];
        for h in burst {
            match h {
                Heard::Message { channel, payload } => {
                    let Some(n) = super::parse_notification(&channel, &payload) else { continue };
                    if i64::from(n.db) != self.db {
                        continue;
                    }
                    if ADOPT_EVENTS.iter().any(|e| n.event == e.as_bytes()) {
                        if self.adopts(&n.key) {
                            self.counts.adoption_events += 1;
                            if !adopt.contains(&n.key) {
                                adopt.push(n.key);
                            }
                        }
                        continue;
                    }
                    if n.event != b"expired" {
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
        if !adopt.is_empty() {
            out.push(Action::Adopt(adopt));
        }
        if !keys.is_empty() {
            out.push(Action::Capture(keys));
        }
        out
    }

    /// The adopt script's answer: keys put into the index, or why it failed. A failed adoption
    /// is left to the reconcile scan (the events are gone).
    pub fn adopted(&mut self, result: Result<u64, String>) -> Vec<Action> {
        match result {
            Ok(n) => {
                self.counts.adopted += n;
                // An adopted key may be due before the sweepers' next planned wake.
                if n > 0 {
                    vec![Action::SweepNow]
                } else {
                    vec![]
                }
            }
            Err(e) => {
                vec![Action::Warn(format!("listener: adoption failed ({e}); the reconcile scan will find these keys"))]
            }
        }
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

/// The `notify-keyspace-events` value that adds to `current` keyevent notifications (`E`) for
/// expirations (`x`, or `A` for all) and, with `adopt`, the classes of the adoption events:
/// generic commands (`g`: `expire`, `rename_*`, `del`) and strings (`$`: `set`); every class
/// already there is kept. None when all are on already.
pub fn notify_classes_for(current: &str, adopt: bool) -> Option<String> {
    let all = current.contains('A');
    let mut need = vec!['E', 'x'];
    if adopt {
        need.extend(['g', '$']);
    }
    let mut new = current.to_string();
    for c in need {
        let has = current.contains(c) || (c != 'E' && all);
        if !has {
            new.push(c);
        }
    }
    (new != current).then_some(new)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notification_classes_are_added_only_where_missing_and_others_are_kept() {
        assert_eq!(notify_classes_for("", false), Some("Ex".into()));
        assert_eq!(notify_classes_for("Kx", false), Some("KxE".into()));
        assert_eq!(notify_classes_for("Eg", false), Some("Egx".into()));
        assert_eq!(notify_classes_for("xE", false), None);
        assert_eq!(notify_classes_for("KEA", false), None);
        assert_eq!(notify_classes_for("KA", false), Some("KAE".into()));
    }

    #[test]
    fn adoption_adds_the_generic_and_string_classes_unless_all_are_on() {
        assert_eq!(notify_classes_for("", true), Some("Exg$".into()));
        assert_eq!(notify_classes_for("Ex", true), Some("Exg$".into()));
        assert_eq!(notify_classes_for("KEA", true), None);
        assert_eq!(notify_classes_for("Eg$x", true), None);
        assert_eq!(notify_classes_for("Eg$x", false), None);
    }

    #[test]
    fn ttl_events_of_keys_matching_a_pattern_become_one_adoption_before_the_burst_s_capture() {
        let mut l = ListenerMachine::new(0, None).with_adopt(vec![b"ext:*".to_vec(), b"job:[0-9]".to_vec()]);
        let a = l.heard(vec![
            msg("__keyevent@0__:set", "ext:1"),
            msg("__keyevent@0__:expire", "ext:1"),
            msg("__keyevent@0__:rename_to", "job:7"),
            msg("__keyevent@0__:expire", "job:x"),
            msg("__keyevent@1__:expire", "ext:2"),
            msg("__keyevent@0__:del", "ext:3"),
            msg("__keyevent@0__:rename_from", "ext:5"),
            msg("__keyevent@0__:evicted", "ext:6"),
            msg("__keyevent@0__:expired", "ext:4"),
        ]);
        let adopt = vec![b"ext:1".to_vec(), b"job:7".to_vec(), b"ext:3".to_vec(), b"ext:5".to_vec()];
        assert_eq!(a, vec![Action::Adopt(adopt), Action::Capture(vec![b"ext:4".to_vec()])]);
        assert_eq!((l.counts().adoption_events, l.counts().notifications), (5, 1));
        // Without patterns the same events are ignored.
        let mut plain = ListenerMachine::new(0, None);
        assert_eq!(plain.heard(vec![msg("__keyevent@0__:expire", "ext:1")]), vec![]);
        // Keys adopted wake the sweepers (one may be due before their next planned wake).
        assert_eq!(l.adopted(Ok(2)), vec![Action::SweepNow]);
        assert_eq!(l.adopted(Ok(0)), vec![]);
        assert_eq!(l.counts().adopted, 2);
        assert!(matches!(&l.adopted(Err("oops".into()))[..], [Action::Warn(w)] if w.contains("reconcile")));
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
