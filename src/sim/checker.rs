//! The simulator's oracle, the same arithmetic as [`crate::oracle`] (its [`crate::oracle::tally`]): a ledger of every event
//! the producer was told it created (key, deadline) and the effects ledger the handlers wrote
//! (`{ns}:oracle:effects`, an `RPUSH` committed with the ack, read back from the model as the
//! real oracle reads it from Redis). Compared as multisets; it never reads library counters.
//! Safety (no event effected twice) is checked after every step; liveness at the end.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use super::rng::Rng;
use crate::core::{event_id, Event, Via};
use crate::store::ModelStore;

#[derive(Clone, Debug)]
struct Created {
    key: Vec<u8>,
    deadline: i64,
    payload: Vec<u8>,
    at: i64,
    times: u32,
    /// Created after the last state a restart kept: the persistence may have lost it.
    at_risk: bool,
}

/// The checker's verdict.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Verdict {
    pub created: u64,
    pub effected: u64,
    /// Created events with no effect and no dead-letter entry (and not excused below).
    pub lost: u64,
    /// Created events that a restart's persistence lost (everysec only), reported apart.
    pub lost_by_restart: u64,
    pub duplicate_effects: u64,
    pub unexpected_effects: u64,
    pub dead_lettered: u64,
    /// Created events with an effect and also a dead-letter entry: a contradiction.
    pub effected_and_dead_lettered: u64,
    /// Handler runs, witnessed as they start (outside the commit path).
    pub handler_runs: u64,
    /// Stream entries beyond one per event id among those handlers ran on.
    pub capture_duplicates: u64,
}

/// How many dead letters each legitimate cause can explain: a dead letter whose reason no
/// injected fault accounts for (or more of a kind than the faults could cause) fails the seed.
#[derive(Clone, Copy, Debug, Default)]
pub struct DeadLetterCauses {
    /// Permanent handler errors raised.
    pub permanent: u64,
    /// Transient handler errors raised.
    pub transient: u64,
    /// Redeliveries (reclaims and retries): the only way past max_deliveries.
    pub redeliveries: u64,
    /// Malformed entries injected.
    pub garbage: u64,
    /// Copies of stream entries injected (replays and duplicates): a copy of an effected
    /// event can be dead-lettered (the event is then both), a copy of garbage is malformed.
    pub copies: u64,
    /// Redis restarts: a persistence rollback forgets captures (the index entry comes back and
    /// is captured again), so capture duplicates are then explained.
    pub restarts: u64,
}

#[derive(Default)]
pub struct Checker {
    created: BTreeMap<String, Created>,
    seen: usize,
    counts: BTreeMap<String, u32>,
    records: BTreeMap<String, Vec<String>>,
    effected_order: Vec<String>,
    /// The first safety violation, as found at the step it happened.
    pub violation: Option<String>,
    pub verdict: Verdict,
    pub lost_sample: Vec<String>,
    /// Set by [`Checker::judge_dead_letters`] when dead letters or stream copies exceed what
    /// the injected faults explain.
    pub unexplained: Option<String>,
    /// Stream entries each event's handler runs came from (the witness of capture duplicates).
    runs: BTreeMap<String, BTreeSet<String>>,
    handler_runs: u64,
}

impl Checker {
    pub fn created(&mut self, key: &[u8], deadline: i64, payload: &[u8], now: i64) {
        let id = event_id(key, deadline);
        let e = self.created.entry(id).or_insert_with(|| Created {
            key: key.to_vec(),
            deadline,
            payload: payload.to_vec(),
            at: now,
            times: 0,
            at_risk: false,
        });
        e.times += 1;
    }

    /// A restart kept the state as of `kept_until`: later creations may be gone, and the
    /// effects list is re-read from what survived.
    pub fn restarted(&mut self, kept_until: i64) {
        for c in self.created.values_mut() {
            if c.at >= kept_until {
                c.at_risk = true;
            }
        }
        self.seen = 0;
        self.counts.clear();
        self.records.clear();
        self.effected_order.clear();
    }

    /// Reads effects appended since the last step; records the first duplicate.
    pub fn observe(&mut self, store: &mut ModelStore, now: i64) {
        let key = store.keys.effects.clone();
        let len = store.model.llen(key.as_bytes()).expect("effects is a list");
        if len < self.seen {
            // Only a restart shrinks it, and `restarted` already reset the view.
            self.seen = 0;
            self.counts.clear();
            self.records.clear();
        }
        if len == self.seen {
            return;
        }
        let new = store.model.lrange_from(key.as_bytes(), self.seen).expect("list");
        self.seen = len;
        for rec in new {
            let rec = String::from_utf8_lossy(&rec).into_owned();
            let id = rec.split('|').next().unwrap_or_default().to_string();
            let n = self.counts.entry(id.clone()).or_insert(0);
            *n += 1;
            if *n == 1 {
                self.effected_order.push(id.clone());
            }
            let recs = self.records.entry(id.clone()).or_default();
            if recs.len() < 4 {
                recs.push(rec);
            }
            if *n == 2 && self.violation.is_none() {
                let what = self
                    .created
                    .get(&id)
                    .map(|c| format!("{}@{}", String::from_utf8_lossy(&c.key), c.deadline))
                    .unwrap_or_else(|| "never created".into());
                self.violation = Some(format!(
                    "at t={} ms: event {id} ({what}) effected twice: [{}]",
                    now - super::world::EPOCH_MS,
                    recs.join("; ")
                ));
            }
        }
    }

    /// An event that has been effected, to replay (None when there is none yet).
    pub fn pick_effected(&mut self, rng: &mut Rng, now: i64) -> Option<Event> {
        if self.effected_order.is_empty() {
            return None;
        }
        let id = &self.effected_order[rng.below(self.effected_order.len() as u64) as usize];
        let c = self.created.get(id)?;
        Some(Event {
            key: c.key.clone(),
            deadline_ms: c.deadline,
            event_id: id.clone(),
            via: Via::Sweeper,
            captured_ms: now,
            payload: c.payload.clone(),
        })
    }

    /// Witnesses a handler run on stream entry `entry` of event `event_id`.
    pub fn handler_run(&mut self, event_id: &str, entry: &str) {
        self.handler_runs += 1;
        self.runs.entry(event_id.to_string()).or_default().insert(entry.to_string());
    }

    /// Dead letters are not success: each reason class is bounded by the faults that can cause
    /// it, and a reason no injected fault explains (effects refused, partially applied, deleted
    /// while pending, anything unknown) is a failure.
    pub fn judge_dead_letters(&mut self, store: &mut ModelStore, causes: DeadLetterCauses) {
        let dead_key = store.keys.dead.clone();
        let (mut refused, mut failed, mut exceeded, mut malformed) = (0u64, 0u64, 0u64, 0u64);
        for e in store.range(&dead_key) {
            let reason =
                e.fields.iter().find(|(k, _)| k == b"reason").map(|(_, v)| String::from_utf8_lossy(v).into_owned());
            let reason = reason.unwrap_or_default();
            if reason.starts_with("handler refused: ") {
                refused += 1;
            } else if reason.starts_with("handler failed ") {
                failed += 1;
            } else if reason.starts_with("delivered ") && reason.contains("more than max_deliveries") {
                exceeded += 1;
            } else if reason.starts_with("malformed entry: ") {
                malformed += 1;
            } else {
                self.unexplained = Some(format!("dead letter with no injected cause: {reason:?}"));
                return;
            }
        }
        let checks = [
            ("handler refused", refused, causes.permanent),
            ("handler failed", failed, causes.transient),
            ("past max_deliveries", exceeded, causes.redeliveries),
            ("malformed", malformed, causes.garbage + causes.copies),
        ];
        // Capture dedup, judged outside the ledger: more entries of one event than were
        // injected as copies means capture emitted twice.
        if causes.restarts == 0 && self.verdict.capture_duplicates > causes.copies {
            self.unexplained = Some(format!(
                "{} stream entries beyond one per event reached handlers but only {} copies were injected",
                self.verdict.capture_duplicates, causes.copies
            ));
            return;
        }
        if self.verdict.effected_and_dead_lettered > causes.copies {
            self.unexplained = Some(format!(
                "{} events both effected and dead-lettered but only {} entry copies were injected",
                self.verdict.effected_and_dead_lettered, causes.copies
            ));
            return;
        }
        for (what, n, bound) in checks {
            if n > bound {
                self.unexplained =
                    Some(format!("{n} dead letters \"{what}\" but the faults injected can explain only {bound}"));
                return;
            }
        }
    }

    /// The final comparison: created vs effected, dead letters read from the model.
    pub fn finish(&mut self, store: &mut ModelStore) {
        let dead_key = store.keys.dead.clone();
        let mut dead = BTreeSet::new();
        for e in store.range(&dead_key) {
            let get = |n: &[u8]| e.fields.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
            if let (Some(k), Some(d)) = (get(b"f:k"), get(b"f:d")) {
                if let Some(d) = std::str::from_utf8(&d).ok().and_then(|s| s.parse::<i64>().ok()) {
                    dead.insert(event_id(&k, d));
                }
            }
        }
        // The oracle's own arithmetic (`oracle::tally`), on the model's ledgers.
        let mut lost_sample = vec![];
        let t = crate::oracle::tally(
            self.created.iter().map(|(id, c)| (id, c.at_risk)),
            self.counts.iter().map(|(id, n)| (id, u64::from(*n))),
            |id| self.counts.get(id).map_or(0, |n| u64::from(*n)),
            |id| self.created.contains_key(id),
            |id| dead.contains(id),
            |id| {
                if lost_sample.len() < 5 {
                    let c = &self.created[id];
                    lost_sample.push(format!("{}@{}", String::from_utf8_lossy(&c.key), c.deadline));
                }
            },
        );
        self.lost_sample.extend(lost_sample);
        let mut v = Verdict {
            created: self.created.values().map(|c| u64::from(c.times)).sum(),
            effected: self.counts.values().map(|n| u64::from(*n)).sum(),
            lost: t.lost,
            lost_by_restart: t.lost_by_restart,
            duplicate_effects: t.duplicate_effects,
            unexpected_effects: t.unexpected_effects,
            dead_lettered: t.dead_lettered,
            effected_and_dead_lettered: t.effected_and_dead_lettered,
            ..Verdict::default()
        };
        v.handler_runs = self.handler_runs;
        v.capture_duplicates = self.runs.values().map(|e| (e.len() as u64).saturating_sub(1)).sum();
        self.verdict = v;
    }
}
