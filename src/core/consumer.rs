//! The consumer's logic as a state machine with no I/O: replies, handler outcomes and the
//! clock go in ([`Input`]), commands to issue come out ([`Command`]). Two drivers run the same
//! machine: `consume` with tokio against Redis, and the simulator in virtual time against the
//! model. So read-ahead, adaptive reads, the in-flight table, backoff, dead letters, the
//! pipelined commit and the release at shutdown are one implementation, simulated and run.
//!
//! One consumer is a fair dispatcher over `concurrency` workers (ADR 016). A read (or, every
//! `claim_interval`, a reclaim) asks for what the idle workers can take, plus a small read-ahead
//! that grows only while reads come back full (a backlog) and shrinks as it drains; so a
//! consumer never holds more than its idle workers and that bound, and nothing it holds waits
//! behind a batch. Each entry goes to the worker idle the longest (even load across workers).
//! Handled entries are committed as they finish: one commit is in flight at a time, and what
//! finishes meanwhile goes in the next. On stop, what was never started (read-ahead entries, a
//! read still out) is released at once, what runs finishes and is committed, and then the
//! machine says [`Command::Done`].

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use super::{admit, after_handler, Admit, CommitOutcome, Effect, Event, HandlerError, Next, RawEntry, RetryPolicy};

/// What the machine needs to decide; the driver's other settings (block time, claim idle
/// time, ledger) belong to the I/O it does.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Most entries per read or reclaim, and the most read ahead of the workers.
    pub batch: usize,
    /// Workers: handlers running at once.
    pub concurrency: usize,
    pub claim_interval: Duration,
    /// Remove idle consumers this often (`None`: this consumer does not prune).
    pub prune_every: Option<Duration>,
    pub policy: RetryPolicy,
    pub max_payload: usize,
}

/// An entry and its delivery count (the commit's fencing token).
#[derive(Clone, Debug)]
pub struct Work {
    pub entry: RawEntry,
    pub token: u64,
}

/// A handled entry waiting for its commit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Handled {
    pub entry_id: String,
    pub token: u64,
    pub event: Event,
    pub effects: Vec<Effect>,
}

/// A failed store call, as the machine needs to know it.
#[derive(Clone, Debug)]
pub struct Failure {
    pub message: String,
    /// The group is gone (`NOGROUP`): create it again.
    pub no_group: bool,
    /// The connection may be dead: make new ones.
    pub reconnect: bool,
}

/// What a reclaim returned.
#[derive(Clone, Debug, Default)]
pub struct Claim {
    pub next: String,
    pub entries: Vec<Work>,
    /// Pending entries the stream no longer held (already dead-lettered by the script).
    pub deleted: Vec<String>,
}

/// Identifies an entry in the in-flight table across a handler run or a retry.
pub type Slot = u64;

/// Something that happened, fed to [`Machine::on`].
#[derive(Debug)]
pub enum Input {
    Read(Result<Vec<RawEntry>, Failure>),
    Claimed(Result<Claim, Failure>),
    /// A handler finished; `unit` is a uniform draw from [0, 1) for the backoff jitter.
    Handled {
        slot: Slot,
        result: Result<Vec<Effect>, HandlerError>,
        unit: f64,
    },
    /// The retry call after the backoff: the new token, or `None` when the entry is no longer ours.
    Retried {
        slot: Slot,
        result: Result<Option<u64>, Failure>,
    },
    /// `true`: dead-lettered; `false`: the fence refused.
    DeadLettered {
        slot: Slot,
        result: Result<bool, Failure>,
    },
    Committed(Result<Vec<CommitOutcome>, Failure>),
    Released(Result<u64, Failure>),
    /// Finish what runs, release the rest, then [`Command::Done`].
    Stop,
}

/// What the driver must do. Every command but `Prune`, `Reconnect`, `EnsureGroup`, `Warn` and
/// `Done` answers with exactly one [`Input`].
#[derive(Debug, PartialEq)]
pub enum Command {
    /// Read new entries (`XREADGROUP ... >`, blocking); answers [`Input::Read`].
    Read { count: usize },
    /// Reclaim idle entries from `cursor`; answers [`Input::Claimed`].
    Claim { cursor: String, count: usize },
    /// Remove idle consumers holding nothing (no answer).
    Prune,
    /// Run the handler on `worker` (0..concurrency, the worker idle the longest); answers
    /// [`Input::Handled`].
    Handle { slot: Slot, worker: u32, entry_id: String, token: u64, event: Event },
    /// Wait `after`, then take another delivery; answers [`Input::Retried`].
    Retry { slot: Slot, entry_id: String, token: u64, after: Duration },
    /// Answers [`Input::DeadLettered`].
    DeadLetter { slot: Slot, entry_id: String, token: u64, reason: String },
    /// The fenced commit of entries handled since the last one; answers [`Input::Committed`].
    Commit(Vec<Handled>),
    /// Hand entries back for immediate reclaim; answers [`Input::Released`].
    Release(Vec<String>),
    /// The connections may be dead: make new ones (no answer).
    Reconnect,
    /// Create the consumer group again (no answer).
    EnsureGroup,
    /// Something people should see (no answer).
    Warn(String),
    /// Stopped: nothing held, nothing outstanding.
    Done,
}

/// What the machine saw happen, counted from replies (never from what it asked for).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Counts {
    pub committed: u64,
    pub duplicates_suppressed: u64,
    pub fenced: u64,
    pub dead_lettered: u64,
    pub effects_refused: u64,
    pub partially_applied: u64,
    pub retries: u64,
    pub reclaimed: u64,
    pub deleted_while_pending: u64,
    pub released: u64,
    /// Of `released`: entries read ahead (in `ready`, or from a read that came back after stop).
    pub readahead_released: u64,
    /// Times the read-ahead bound doubled because a read came back full.
    pub adaptive_growths: u64,
    pub errors: u64,
}

/// Why an entry is in the in-flight table.
#[derive(Debug)]
enum Flight {
    Handling {
        worker: u32,
        entry_id: String,
        token: u64,
        event: Event,
    },
    /// The worker waits out the backoff with its entry, then handles the new delivery.
    Retrying {
        worker: u32,
        entry_id: String,
        event: Event,
    },
    DeadLettering,
}

/// Pause after a failed read or reclaim before the next.
const ERROR_PAUSE: Duration = Duration::from_millis(100);

/// One consumer's decisions. Time is milliseconds on the driver's clock.
pub struct Machine {
    s: Settings,
    /// The read-ahead bound: entries a read may ask for beyond the idle workers. One while the
    /// consumer keeps up (nothing waits for a worker), doubling up to `batch` while reads come
    /// back full (a backlog: fewer, larger reads), halving as it drains.
    ahead: usize,
    /// What the read out asked for.
    asked: usize,
    cursor: String,
    last_claim: i64,
    last_prune: i64,
    /// No read or reclaim before this (after a failure).
    hold_until: i64,
    reading: bool,
    claiming: bool,
    /// Read (or reclaimed) and not started: waiting for a worker.
    ready: VecDeque<Work>,
    /// Idle workers, the one idle the longest first.
    idle: VecDeque<u32>,
    /// The in-flight table: handlers, retries and dead letters outstanding.
    flight: BTreeMap<Slot, Flight>,
    next_slot: Slot,
    /// Handled entries waiting for the commit in flight to settle.
    finished: Vec<Handled>,
    committing: bool,
    releasing: usize,
    /// Entries to release once (collected at stop).
    to_release: Vec<String>,
    readahead_to_release: u64,
    releasing_readahead: VecDeque<u64>,
    stopping: bool,
    done: bool,
    counts: Counts,
}

impl Machine {
    pub fn new(settings: Settings, now: i64) -> Machine {
        Machine {
            idle: (0..settings.concurrency.max(1) as u32).collect(),
            s: settings,
            ahead: 1,
            asked: 0,
            cursor: "0-0".into(),
            last_claim: now,
            last_prune: now,
            hold_until: now,
            reading: false,
            claiming: false,
            ready: VecDeque::new(),
            flight: BTreeMap::new(),
            next_slot: 0,
            finished: vec![],
            committing: false,
            releasing: 0,
            to_release: vec![],
            readahead_to_release: 0,
            releasing_readahead: VecDeque::new(),
            stopping: false,
            done: false,
            counts: Counts::default(),
        }
    }

    pub fn counts(&self) -> &Counts {
        &self.counts
    }

    /// The read-ahead bound now.
    pub fn read_ahead(&self) -> usize {
        self.ahead
    }

    pub fn is_stopping(&self) -> bool {
        self.stopping
    }

    /// Holds no entry and waits for no commit, dead letter, retry or release: what is left
    /// is at most a read or reclaim, which holds nothing until it answers.
    pub fn holds_nothing(&self) -> bool {
        self.ready.is_empty()
            && self.flight.is_empty()
            && self.finished.is_empty()
            && !self.committing
            && self.releasing == 0
            && self.to_release.is_empty()
    }

    /// Entries this consumer holds in memory (read, not yet committed, released or dead-lettered).
    pub fn held(&self) -> usize {
        self.ready.len() + self.flight.len() + self.finished.len()
    }

    /// Feeds one input. Call [`Machine::poll`] afterwards for what to do next.
    pub fn on(&mut self, now: i64, input: Input) -> Vec<Command> {
        let mut out = vec![];
        match input {
            Input::Stop => {
                if !self.stopping {
                    self.stopping = true;
                    // Not started: hand back at once rather than make others wait `claim_idle`.
                    let n = self.ready.len() as u64;
                    self.readahead_to_release += n;
                    self.to_release.extend(self.ready.drain(..).map(|w| w.entry.id));
                }
            }
            Input::Read(r) => {
                self.reading = false;
                match r {
                    Ok(entries) => {
                        let n = entries.len();
                        if n >= self.asked {
                            let grown = (self.ahead * 2).min(self.s.batch.max(1));
                            if grown > self.ahead {
                                self.counts.adaptive_growths += 1;
                            }
                            self.ahead = grown;
                        } else {
                            self.ahead = (self.ahead / 2).max(1);
                        }
                        // Entries read with `>` are on their first delivery.
                        let work = entries.into_iter().map(|entry| Work { entry, token: 1 });
                        if self.stopping {
                            // A read still out at shutdown: hand back whatever it delivered.
                            self.readahead_to_release += n as u64;
                            self.to_release.extend(work.map(|w| w.entry.id));
                        } else {
                            self.ready.extend(work);
                        }
                    }
                    Err(f) => self.failed(now, "read", f, &mut out),
                }
            }
            Input::Claimed(r) => {
                self.claiming = false;
                match r {
                    Ok(c) => {
                        self.cursor = c.next;
                        self.counts.reclaimed += c.entries.len() as u64;
                        if !c.deleted.is_empty() {
                            // Already in the dead-letter stream (claim.lua); say so where people look.
                            self.counts.deleted_while_pending += c.deleted.len() as u64;
                            out.push(Command::Warn(format!(
                                "{} pending entries were deleted from the stream by another program (dead-lettered): {}",
                                c.deleted.len(),
                                c.deleted.join(" ")
                            )));
                        }
                        if self.stopping {
                            self.to_release.extend(c.entries.into_iter().map(|w| w.entry.id));
                        } else {
                            // Behind what this consumer read itself: pushed ahead, its own entries
                            // would idle past the claim timeout in turn and be taken from it.
                            self.ready.extend(c.entries);
                        }
                    }
                    Err(f) => self.failed(now, "reclaim", f, &mut out),
                }
            }
            Input::Handled { slot, result, unit } => {
                let Some(Flight::Handling { worker, entry_id, token, event }) = self.flight.remove(&slot) else {
                    return out;
                };
                match after_handler(result, token, &self.s.policy, unit) {
                    Next::Commit(effects) => {
                        self.finished.push(Handled { entry_id, token, event, effects });
                        self.idle.push_back(worker);
                    }
                    Next::DeadLetter(reason) => {
                        self.dead_letter(slot, entry_id, token, reason, &mut out);
                        self.idle.push_back(worker);
                    }
                    // Stopping: no new delivery is taken; the entry goes back at once.
                    Next::Retry { .. } if self.stopping => {
                        self.to_release.push(entry_id);
                        self.idle.push_back(worker);
                    }
                    Next::Retry { after } => {
                        self.counts.retries += 1;
                        out.push(Command::Retry { slot, entry_id: entry_id.clone(), token, after });
                        self.flight.insert(slot, Flight::Retrying { worker, entry_id, event });
                    }
                }
            }
            Input::Retried { slot, result } => {
                let Some(Flight::Retrying { worker, entry_id, event }) = self.flight.remove(&slot) else {
                    return out;
                };
                match result {
                    // Stopping: this delivery is ours but not started; hand it back.
                    Ok(Some(_)) if self.stopping => {
                        self.to_release.push(entry_id);
                        self.idle.push_back(worker);
                    }
                    Ok(Some(token)) => {
                        out.push(Command::Handle {
                            slot,
                            worker,
                            entry_id: entry_id.clone(),
                            token,
                            event: event.clone(),
                        });
                        self.flight.insert(slot, Flight::Handling { worker, entry_id, token, event });
                    }
                    // Someone else holds it now; they will deliver it.
                    Ok(None) => self.idle.push_back(worker),
                    Err(f) => {
                        self.counts.errors += 1;
                        self.idle.push_back(worker);
                        out.push(Command::Warn(format!("retry of {entry_id} failed: {}", f.message)));
                    }
                }
            }
            Input::DeadLettered { slot, result } => {
                self.flight.remove(&slot);
                match result {
                    Ok(true) => self.counts.dead_lettered += 1,
                    Ok(false) => self.counts.fenced += 1,
                    Err(f) => {
                        self.counts.errors += 1;
                        out.push(Command::Warn(format!("dead-letter failed: {}", f.message)));
                    }
                }
            }
            Input::Committed(r) => {
                self.committing = false;
                match r {
                    Ok(outcomes) => {
                        for o in outcomes {
                            let c = &mut self.counts;
                            *match &o {
                                CommitOutcome::Committed => &mut c.committed,
                                CommitOutcome::AlreadyApplied => &mut c.duplicates_suppressed,
                                CommitOutcome::NotOwner => &mut c.fenced,
                                CommitOutcome::EffectsRefused(_) => &mut c.effects_refused,
                                CommitOutcome::PartiallyApplied(reason) => {
                                    out.push(Command::Warn(format!(
                                        "an entry was PARTIALLY APPLIED and dead-lettered: {reason}"
                                    )));
                                    &mut c.partially_applied
                                }
                            } += 1;
                            if o.dead_lettered() {
                                c.dead_lettered += 1;
                            }
                        }
                    }
                    // Not committed: the entries stay pending and are reclaimed after
                    // `claim_idle`; the ledger makes the second attempt safe whatever happened.
                    Err(f) => {
                        self.counts.errors += 1;
                        out.push(Command::Warn(format!("commit failed: {}", f.message)));
                    }
                }
            }
            Input::Released(r) => {
                self.releasing = self.releasing.saturating_sub(1);
                let readahead = self.releasing_readahead.pop_front().unwrap_or(0);
                match r {
                    Ok(n) => {
                        self.counts.released += n;
                        self.counts.readahead_released += readahead.min(n);
                    }
                    Err(f) => {
                        self.counts.errors += 1;
                        out.push(Command::Warn(format!("release failed: {}", f.message)));
                    }
                }
            }
        }
        out
    }

    fn failed(&mut self, now: i64, what: &str, f: Failure, out: &mut Vec<Command>) {
        self.counts.errors += 1;
        if f.no_group {
            out.push(Command::EnsureGroup);
        } else {
            out.push(Command::Warn(format!("{what} failed: {}", f.message)));
        }
        self.hold_until = now + ERROR_PAUSE.as_millis() as i64;
        if f.reconnect || f.no_group || what == "read" {
            out.push(Command::Reconnect);
        }
    }

    fn dead_letter(&mut self, slot: Slot, entry_id: String, token: u64, reason: String, out: &mut Vec<Command>) {
        out.push(Command::DeadLetter { slot, entry_id, token, reason });
        self.flight.insert(slot, Flight::DeadLettering);
    }

    /// What to do now. Call after every [`Machine::on`] and whenever the clock reaches
    /// [`Machine::next_wake`].
    pub fn poll(&mut self, now: i64) -> Vec<Command> {
        let mut out = vec![];
        if self.done {
            return out;
        }
        // What finished since the last commit, once that one has settled (one in flight).
        if !self.committing && !self.finished.is_empty() {
            self.committing = true;
            out.push(Command::Commit(std::mem::take(&mut self.finished)));
        }
        if !self.to_release.is_empty() {
            self.releasing += 1;
            self.releasing_readahead.push_back(std::mem::take(&mut self.readahead_to_release));
            out.push(Command::Release(std::mem::take(&mut self.to_release)));
        }
        if self.stopping {
            if self.holds_nothing() && !self.reading && !self.claiming {
                self.done = true;
                out.push(Command::Done);
            }
            return out;
        }
        // Each ready entry to the worker idle the longest (a malformed one needs no worker).
        while let Some(&worker) = self.idle.front() {
            let Some(w) = self.ready.pop_front() else { break };
            let slot = self.next_slot;
            self.next_slot += 1;
            match admit(&w.entry.fields, w.token, &self.s.policy, self.s.max_payload) {
                Admit::DeadLetter(reason) => self.dead_letter(slot, w.entry.id, w.token, reason, &mut out),
                Admit::Handle(event) => {
                    self.idle.pop_front();
                    out.push(Command::Handle {
                        slot,
                        worker,
                        entry_id: w.entry.id.clone(),
                        token: w.token,
                        event: event.clone(),
                    });
                    self.flight.insert(slot, Flight::Handling { worker, entry_id: w.entry.id, token: w.token, event });
                }
            }
        }
        // Ask for what the idle workers can take and the read-ahead bound: the read is out
        // while workers run, so its round trip leaves the per-entry cycle, and what comes back
        // waits for a worker only up to that bound.
        // A refill waits until what waits has fallen to half the bound (a low-water mark): under
        // a backlog a busy consumer reads half the bound at a time, not one entry per entry
        // handled. An idle worker finds nothing waiting (it would have taken it), so it never
        // waits for the mark.
        let refill = self.ready.len() <= self.ahead / 2;
        let want = if refill {
            (self.idle.len() + self.ahead).saturating_sub(self.ready.len()).min(self.s.batch.max(1))
        } else {
            0
        };
        if now >= self.hold_until {
            // A reclaim goes out when due, beside a blocking read (on the other connection) and
            // whatever waits, unless more than `batch` waits: entries of a dead consumer must
            // not wait for a backlog to drain, and what waits stays below twice `batch`.
            let claim_due = now - self.last_claim >= self.s.claim_interval.as_millis() as i64;
            if !self.claiming && claim_due && self.ready.len() <= self.s.batch.max(1) {
                self.last_claim = now;
                self.claiming = true;
                if let Some(every) = self.s.prune_every {
                    if now - self.last_prune >= every.as_millis() as i64 {
                        self.last_prune = now;
                        out.push(Command::Prune);
                    }
                }
                out.push(Command::Claim { cursor: self.cursor.clone(), count: self.s.batch.max(1) });
            } else if !self.reading && !self.claiming && want > 0 {
                self.reading = true;
                self.asked = want;
                out.push(Command::Read { count: want });
            }
        }
        out
    }

    /// When the machine next wants [`Machine::poll`] although no input arrived (a reclaim
    /// falls due, a pause after an error ends), or `None`. Ask with the time of the last
    /// `poll`: a time already past by the time the driver waits means "poll at once" (a driver
    /// that asks with a later clock, after slow work of its own, gets `None` for what fell due
    /// in between and would wait for an input that never comes).
    pub fn next_wake(&self, now: i64) -> Option<i64> {
        if self.stopping || self.done {
            return None;
        }
        let claim = self.last_claim + self.s.claim_interval.as_millis() as i64;
        [claim, self.hold_until].into_iter().filter(|t| *t > now).min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::{encode_entry, Via};

    fn settings(batch: usize, concurrency: usize) -> Settings {
        Settings {
            batch,
            concurrency,
            claim_interval: Duration::from_millis(1000),
            prune_every: None,
            policy: RetryPolicy {
                max_deliveries: 3,
                backoff_base: Duration::from_millis(10),
                backoff_max: Duration::from_millis(100),
            },
            max_payload: 1 << 20,
        }
    }

    fn entry(i: u64) -> RawEntry {
        let ev = Event {
            key: format!("k{i}").into_bytes(),
            deadline_ms: 1000 + i as i64,
            event_id: crate::core::event_id(format!("k{i}").as_bytes(), 1000 + i as i64),
            via: Via::Sweeper,
            captured_ms: 2000,
            payload: vec![],
        };
        RawEntry { id: format!("{i}-0"), fields: encode_entry(&ev) }
    }

    fn reads(cmds: &[Command]) -> Vec<usize> {
        cmds.iter().filter_map(|c| if let Command::Read { count } = c { Some(*count) } else { None }).collect()
    }

    fn handles(cmds: &[Command]) -> Vec<Slot> {
        cmds.iter().filter_map(|c| if let Command::Handle { slot, .. } = c { Some(*slot) } else { None }).collect()
    }

    fn ok(m: &mut Machine, slot: Slot) -> Vec<Command> {
        let mut v = m.on(0, Input::Handled { slot, result: Ok(vec![]), unit: 0.5 });
        v.extend(m.poll(0));
        v
    }

    fn workers(cmds: &[Command]) -> Vec<u32> {
        cmds.iter().filter_map(|c| if let Command::Handle { worker, .. } = c { Some(*worker) } else { None }).collect()
    }

    #[test]
    fn reads_ask_for_the_idle_workers_and_entries_go_to_the_worker_idle_the_longest() {
        let mut m = Machine::new(settings(16, 4), 0);
        // Four idle workers and a read-ahead of one.
        assert_eq!(reads(&m.poll(0)), vec![5]);
        m.on(0, Input::Read(Ok(vec![entry(1), entry(2)])));
        let c = m.poll(0);
        assert_eq!(workers(&c), vec![0, 1]);
        assert_eq!(reads(&c), vec![3], "two idle workers and the read-ahead");
        assert_eq!(m.counts().adaptive_growths, 0, "a read that is not full does not grow");
        // Worker 1 finishes first: it goes behind 2 and 3, which have been idle longer.
        let slots = handles(&c);
        ok(&mut m, slots[1]);
        m.on(0, Input::Read(Ok(vec![entry(3), entry(4), entry(5)])));
        let c = m.poll(0);
        assert_eq!(workers(&c), vec![2, 3, 1]);
        // No idle worker: only the read-ahead, doubled because the last read came back full.
        assert_eq!(reads(&c), vec![2]);
        assert_eq!(m.counts().adaptive_growths, 1);
    }

    #[test]
    fn entries_are_committed_as_they_finish_with_one_commit_in_flight() {
        let mut m = Machine::new(settings(4, 2), 0);
        m.poll(0);
        m.on(0, Input::Read(Ok(vec![entry(1), entry(2), entry(3)])));
        let c = m.poll(0);
        let slots = handles(&c);
        assert_eq!(slots.len(), 2, "two at once (two workers)");
        // The first to finish is committed at once; the third starts on the freed worker.
        let c = ok(&mut m, slots[0]);
        assert!(c.iter().any(|c| matches!(c, Command::Commit(v) if v.len() == 1 && v[0].entry_id == "1-0")));
        let third = handles(&c);
        assert_eq!(third.len(), 1);
        // Two finish while that commit is out: they wait for it, then go in one commit.
        let c = ok(&mut m, slots[1]);
        assert!(!c.iter().any(|c| matches!(c, Command::Commit(_))), "one commit in flight at a time");
        ok(&mut m, third[0]);
        assert_eq!(m.held(), 2);
        m.on(0, Input::Committed(Ok(vec![CommitOutcome::Committed])));
        let c = m.poll(0);
        assert!(c.iter().any(|c| matches!(c, Command::Commit(v) if v.len() == 2)));
        assert_eq!(m.counts().committed, 1);
        assert_eq!(m.held(), 0, "committing: the entries are the commit's now");
        m.on(0, Input::Committed(Ok(vec![CommitOutcome::Committed; 2])));
        assert_eq!(m.counts().committed, 3);
    }

    #[test]
    fn stop_releases_what_never_started_and_commits_what_finished() {
        let mut m = Machine::new(settings(4, 1), 0);
        m.poll(0);
        m.on(0, Input::Read(Ok(vec![entry(1), entry(2)])));
        let c = m.poll(0);
        let h = handles(&c);
        assert_eq!(h.len(), 1);
        // 2 waits for the worker; the read-ahead returns one more entry, then stop arrives.
        m.on(0, Input::Read(Ok(vec![entry(3)])));
        m.on(0, Input::Stop);
        let c = m.poll(0);
        let released: Vec<_> =
            c.iter().filter_map(|c| if let Command::Release(v) = c { Some(v.clone()) } else { None }).collect();
        assert_eq!(released, vec![vec!["2-0".to_string(), "3-0".to_string()]]);
        assert!(reads(&c).is_empty(), "nothing more is read after stop");
        assert!(!c.contains(&Command::Done), "a handler still runs");
        let c = ok(&mut m, h[0]);
        assert!(c.iter().any(|c| matches!(c, Command::Commit(v) if v.len() == 1)));
        m.on(0, Input::Released(Ok(2)));
        assert!(!m.poll(0).contains(&Command::Done), "the commit is still out");
        m.on(0, Input::Committed(Ok(vec![CommitOutcome::Committed])));
        assert_eq!(m.poll(0), vec![Command::Done]);
        assert_eq!((m.counts().released, m.counts().readahead_released), (2, 2));
    }

    #[test]
    fn a_read_out_at_stop_is_released_when_it_answers() {
        let mut m = Machine::new(settings(4, 1), 0);
        assert_eq!(reads(&m.poll(0)), vec![2]);
        m.on(0, Input::Stop);
        assert!(m.poll(0).is_empty(), "the read is still out");
        m.on(0, Input::Read(Ok(vec![entry(1)])));
        assert_eq!(m.poll(0), vec![Command::Release(vec!["1-0".into()])]);
        m.on(0, Input::Released(Ok(1)));
        assert_eq!(m.poll(0), vec![Command::Done]);
        assert_eq!(m.counts().readahead_released, 1);
    }

    #[test]
    fn transient_failures_retry_with_a_new_token_then_dead_letter() {
        let mut m = Machine::new(settings(1, 1), 0);
        m.poll(0);
        m.on(0, Input::Read(Ok(vec![entry(1)])));
        let slot = handles(&m.poll(0))[0];
        let c = m.on(0, Input::Handled { slot, result: Err(HandlerError::Transient("x".into())), unit: 0.0 });
        assert!(matches!(&c[..], [Command::Retry { token: 1, .. }]));
        let c = m.on(0, Input::Retried { slot, result: Ok(Some(2)) });
        assert!(c.iter().any(|c| matches!(c, Command::Handle { token: 2, .. })));
        let c = m.on(0, Input::Handled { slot, result: Err(HandlerError::Permanent("no".into())), unit: 0.0 });
        assert!(matches!(&c[..], [Command::DeadLetter { token: 2, .. }]));
        m.on(0, Input::DeadLettered { slot, result: Ok(true) });
        assert_eq!((m.counts().retries, m.counts().dead_lettered), (1, 1));
        assert!(m.holds_nothing());
    }

    #[test]
    fn malformed_and_over_delivered_entries_are_dead_lettered_without_a_handler() {
        let mut m = Machine::new(settings(4, 4), 0);
        m.poll(0);
        let bad = RawEntry { id: "9-0".into(), fields: vec![(b"foo".to_vec(), b"bar".to_vec())] };
        m.on(
            0,
            Input::Claimed(Ok(Claim {
                next: "0-0".into(),
                entries: vec![Work { entry: bad, token: 1 }, Work { entry: entry(1), token: 4 }],
                deleted: vec![],
            })),
        );
        let c = m.poll(0);
        assert_eq!(handles(&c).len(), 0);
        let reasons: Vec<_> = c
            .iter()
            .filter_map(|c| if let Command::DeadLetter { reason, .. } = c { Some(reason.as_str()) } else { None })
            .collect();
        assert_eq!(reasons.len(), 2);
        assert!(reasons[0].starts_with("malformed entry"));
        assert!(reasons[1].contains("delivered 4 times"));
    }

    #[test]
    fn reclaims_fall_due_every_interval_and_a_failure_pauses_reads() {
        let mut m = Machine::new(settings(4, 1), 0);
        assert_eq!(m.poll(0), vec![Command::Read { count: 2 }]);
        assert_eq!(m.next_wake(0), Some(1000));
        m.on(500, Input::Read(Ok(vec![])));
        m.poll(500);
        m.on(999, Input::Read(Ok(vec![])));
        let c = m.poll(1000);
        assert_eq!(c, vec![Command::Claim { cursor: "0-0".into(), count: 4 }]);
        let c = m.on(1001, Input::Claimed(Err(Failure { message: "boom".into(), no_group: false, reconnect: true })));
        assert!(c.contains(&Command::Reconnect));
        assert!(m.poll(1050).is_empty(), "held after a failure");
        assert_eq!(m.next_wake(1050), Some(1101));
        assert_eq!(m.poll(1101), vec![Command::Read { count: 2 }]);
        assert_eq!(m.counts().errors, 1);
    }

    fn claim(entries: Vec<Work>, deleted: &[&str]) -> Input {
        Input::Claimed(Ok(Claim {
            next: "0-0".into(),
            entries,
            deleted: deleted.iter().map(|d| d.to_string()).collect(),
        }))
    }

    fn fail(message: &str, no_group: bool, reconnect: bool) -> Failure {
        Failure { message: message.into(), no_group, reconnect }
    }

    fn handled_ids(cmds: &[Command]) -> Vec<String> {
        cmds.iter()
            .filter_map(|c| if let Command::Handle { entry_id, .. } = c { Some(entry_id.clone()) } else { None })
            .collect()
    }

    fn warnings(cmds: &[Command]) -> Vec<String> {
        cmds.iter().filter_map(|c| if let Command::Warn(w) = c { Some(w.clone()) } else { None }).collect()
    }

    #[test]
    fn the_read_ahead_doubles_while_reads_come_back_full_up_to_the_batch_and_halves_as_they_drain() {
        // One worker: each read asks for the idle worker (if any) and the read-ahead bound.
        let mut m = Machine::new(settings(8, 1), 0);
        assert_eq!(m.read_ahead(), 1);
        assert_eq!(reads(&m.poll(0)), vec![2]);
        m.on(0, Input::Read(Ok(vec![entry(1), entry(2)])));
        assert_eq!((m.read_ahead(), m.counts().adaptive_growths), (2, 1));
        // 1 runs, 2 waits: the next read asks for the rest of the bound.
        let c = m.poll(0);
        assert_eq!((handled_ids(&c), reads(&c)), (vec!["1-0".to_string()], vec![1]));
        m.on(0, Input::Read(Ok(vec![entry(3)])));
        assert_eq!((m.read_ahead(), m.counts().adaptive_growths), (4, 2));
        assert_eq!(reads(&m.poll(0)), vec![2]);
        m.on(0, Input::Read(Ok(vec![entry(4), entry(5)])));
        assert_eq!((m.read_ahead(), m.counts().adaptive_growths), (8, 3));
        assert_eq!(reads(&m.poll(0)), vec![4]);
        // Full at the top: the bound stays at the batch and no growth is counted.
        m.on(0, Input::Read(Ok(vec![entry(6), entry(7), entry(8), entry(9)])));
        assert_eq!((m.read_ahead(), m.counts().adaptive_growths), (8, 3));
        assert_eq!(m.held(), 9);
        assert_eq!(m.poll(0), vec![], "8 wait for the busy worker: the bound is reached, nothing is read");
        // The worker takes the next entries; a read goes out only once half the bound (4)
        // or fewer wait, and asks for the rest of the bound.
        let steps: Vec<(String, Vec<usize>)> = (0..4)
            .map(|slot| {
                let c = ok(&mut m, slot);
                (handled_ids(&c)[0].clone(), reads(&c))
            })
            .collect();
        let expected = [("2-0", vec![]), ("3-0", vec![]), ("4-0", vec![]), ("5-0", vec![4])];
        assert_eq!(steps, expected.map(|(id, r)| (id.to_string(), r)).to_vec());
        // Not full: halved (8 -> 4 -> 2 -> 1), never below one; each refill again waits for
        // half the (smaller) bound.
        m.on(0, Input::Read(Ok(vec![])));
        assert_eq!(m.read_ahead(), 4);
        assert_eq!(reads(&ok(&mut m, 4)), Vec::<usize>::new(), "three wait");
        assert_eq!(reads(&ok(&mut m, 5)), vec![2], "two wait");
        m.on(0, Input::Read(Ok(vec![])));
        assert_eq!(m.read_ahead(), 2);
        assert_eq!(reads(&ok(&mut m, 6)), vec![1], "one waits");
        m.on(0, Input::Read(Ok(vec![])));
        assert_eq!(m.read_ahead(), 1);
    }

    #[test]
    fn under_a_backlog_a_busy_consumer_refills_its_read_ahead_in_halves_not_one_entry_per_handled_entry() {
        // The seed's layout: one worker, reads of up to 16. With the bound at 16 and the
        // worker busy, a read goes out only once the waiting entries fall to half the bound:
        // one read per eight entries handled, not one per entry (each read is a round trip
        // and a command the server runs).
        let mut m = Machine::new(settings(16, 1), 0);
        let mut next = 1u64;
        let mut batch = |n: usize| {
            let v: Vec<RawEntry> = (next..next + n as u64).map(entry).collect();
            next += n as u64;
            v
        };
        let mut cmds = m.poll(0);
        let mut running = None;
        let mut read_sizes = vec![];
        for _ in 0..400 {
            for cmd in std::mem::take(&mut cmds) {
                match cmd {
                    Command::Read { count } => {
                        read_sizes.push(count);
                        cmds.extend(m.on(0, Input::Read(Ok(batch(count)))));
                    }
                    Command::Commit(v) => {
                        cmds.extend(m.on(0, Input::Committed(Ok(vec![CommitOutcome::Committed; v.len()]))));
                    }
                    Command::Handle { slot, .. } => running = Some(slot),
                    _ => {}
                }
            }
            cmds.extend(m.poll(0));
            if cmds.is_empty() {
                // Nothing else to do: the running handler finishes.
                let slot = running.take().expect("the worker runs an entry");
                cmds = m.on(0, Input::Handled { slot, result: Ok(vec![]), unit: 0.5 });
            }
        }
        assert_eq!(m.read_ahead(), 16, "every read came back full: the bound grew to the batch");
        let steady = &read_sizes[read_sizes.len() - 5..];
        assert!(steady.iter().all(|n| *n >= 8), "reads under a backlog: {read_sizes:?}");
        assert!(m.held() <= 17, "the bound still holds: {} held", m.held());
    }

    #[test]
    fn held_counts_every_place_an_entry_can_wait_and_holds_nothing_only_when_all_are_empty() {
        let mut m = Machine::new(settings(4, 1), 0);
        assert!(m.holds_nothing());
        assert_eq!(m.held(), 0);
        assert_eq!(reads(&m.poll(0)), vec![2]);
        // Read, not started: only the read-ahead holds entries.
        m.on(0, Input::Read(Ok(vec![entry(1), entry(2), entry(3)])));
        assert_eq!(m.held(), 3);
        assert!(!m.holds_nothing(), "entries read and not started");
        // One handler runs (one worker), two wait for it: the bound (2) is reached, no read.
        let c = m.poll(0);
        assert_eq!((handled_ids(&c), reads(&c)), (vec!["1-0".to_string()], vec![]));
        assert_eq!(m.held(), 3);
        // 1 finished and is committed at once, 2 runs, 3 waits; a read asks for one more.
        let c = ok(&mut m, handles(&c)[0]);
        assert!(c.iter().any(|c| matches!(c, Command::Commit(v) if v.len() == 1)));
        assert_eq!((handled_ids(&c), reads(&c)), (vec!["2-0".to_string()], vec![1]));
        assert_eq!(m.held(), 2, "committing: 1 is the commit's now");
        // 2 finishes while that commit is out: it waits for it; 3 starts.
        let c = ok(&mut m, handles(&c)[0]);
        assert!(!c.iter().any(|c| matches!(c, Command::Commit(_))));
        assert_eq!(handled_ids(&c), vec!["3-0"]);
        let third = handles(&c)[0];
        assert_eq!(m.held(), 2);
        m.on(0, Input::Read(Ok(vec![])));
        m.on(0, Input::Committed(Ok(vec![CommitOutcome::Committed])));
        let c = m.poll(0);
        assert!(c.contains(&Command::Commit(vec![Handled {
            entry_id: "2-0".into(),
            token: 1,
            event: decode(&entry(2)),
            effects: vec![],
        }])));
        assert_eq!(m.held(), 1);
        ok(&mut m, third);
        m.on(0, Input::Committed(Ok(vec![CommitOutcome::Committed])));
        m.poll(0);
        assert!(!m.holds_nothing(), "the commit of 3 is out");
        m.on(0, Input::Committed(Ok(vec![CommitOutcome::Committed])));
        m.poll(0);
        assert!(m.holds_nothing());
    }

    fn decode(e: &RawEntry) -> Event {
        crate::core::decode_entry(&e.fields, 1 << 20).unwrap()
    }

    #[test]
    fn holds_nothing_sees_a_release_not_yet_sent_and_one_not_yet_answered() {
        let mut m = Machine::new(settings(4, 1), 0);
        m.poll(0);
        m.on(0, Input::Read(Ok(vec![entry(1)])));
        m.on(0, Input::Stop);
        assert!(m.is_stopping());
        assert!(!m.holds_nothing(), "to be released");
        assert_eq!(m.poll(0), vec![Command::Release(vec!["1-0".into()])]);
        assert!(!m.holds_nothing(), "the release is out");
        m.on(0, Input::Released(Ok(1)));
        assert!(m.holds_nothing());
        assert_eq!(m.poll(0), vec![Command::Done]);
    }

    #[test]
    fn a_stopping_machine_wakes_for_nothing() {
        let mut m = Machine::new(settings(4, 1), 0);
        assert!(!m.is_stopping());
        m.poll(0);
        assert_eq!(m.next_wake(0), Some(1000));
        m.on(0, Input::Stop);
        assert!(m.is_stopping());
        assert_eq!(m.next_wake(0), None, "a read is still out, but no reclaim falls due any more");
        m.on(0, Input::Read(Ok(vec![])));
        assert_eq!(m.poll(0), vec![Command::Done]);
        assert_eq!(m.next_wake(0), None);
    }

    #[test]
    fn a_reclaim_due_under_a_backlog_goes_out_and_queues_behind_what_was_read_up_to_a_bound() {
        // The only worker is busy and reads filled the read-ahead: a reclaim still goes out
        // when due (pause-consumer: entries of a stopped consumer must not wait for the
        // backlog to drain). What it takes waits behind what was read (ahead of it, those
        // would idle past the claim timeout and be taken in turn), and no reclaim goes out
        // while more than `batch` entries wait.
        let mut m = Machine::new(settings(4, 1), 0);
        m.poll(0);
        m.on(0, Input::Read(Ok(vec![entry(1), entry(2)])));
        let c = m.poll(0);
        let first = handles(&c)[0];
        m.on(0, Input::Read(Ok(vec![entry(3)])));
        assert_eq!(m.poll(500), vec![Command::Read { count: 2 }], "the read-ahead grew to 4");
        m.on(500, Input::Read(Ok(vec![])));
        assert_eq!(m.poll(600), vec![], "the read-ahead bound (2 again) is reached");
        assert_eq!(m.poll(1000), vec![Command::Claim { cursor: "0-0".into(), count: 4 }]);
        m.on(1000, claim((10..14).map(|i| Work { entry: entry(i), token: 2 }).collect(), &[]));
        let c = ok(&mut m, first);
        assert_eq!(handled_ids(&c), vec!["2-0"]);
        assert_eq!(m.held(), 6, "3 and the four reclaimed wait, 2 runs");
        assert_eq!(m.poll(2000), vec![], "five wait, more than the batch (4): no reclaim");
        let c = ok(&mut m, handles(&c)[0]);
        assert_eq!(handled_ids(&c), vec!["3-0"]);
        assert_eq!(m.poll(2000), vec![Command::Claim { cursor: "0-0".into(), count: 4 }], "four wait");
    }

    #[test]
    fn while_a_reclaim_is_out_nothing_is_read_and_prunes_fall_due_with_reclaims() {
        let mut s = settings(4, 1);
        s.prune_every = Some(Duration::from_millis(3000));
        let mut m = Machine::new(s, 0);
        let (mut claims, mut prunes) = (vec![], vec![]);
        for t in (0..=7000).step_by(500) {
            for c in m.poll(t) {
                match c {
                    Command::Read { .. } => {
                        m.on(t, Input::Read(Ok(vec![])));
                    }
                    Command::Claim { .. } => {
                        claims.push(t);
                        assert_eq!(m.poll(t), vec![], "the reclaim is out: no read beside it");
                        m.on(t, claim(vec![], &[]));
                    }
                    Command::Prune => prunes.push(t),
                    other => panic!("unexpected {other:?}"),
                }
            }
        }
        assert_eq!(claims, vec![1000, 2000, 3000, 4000, 5000, 6000, 7000]);
        assert_eq!(prunes, vec![3000, 6000]);
    }

    #[test]
    fn a_reclaim_counts_what_it_took_and_warns_of_entries_deleted_while_pending() {
        let mut m = Machine::new(settings(4, 1), 0);
        let c = m.on(0, claim(vec![Work { entry: entry(1), token: 2 }, Work { entry: entry(2), token: 3 }], &[]));
        assert_eq!(c, vec![], "nothing deleted, nothing to say");
        let c = m.on(0, claim(vec![Work { entry: entry(3), token: 2 }], &["7-0", "8-0"]));
        assert_eq!(
            warnings(&c),
            vec!["2 pending entries were deleted from the stream by another program (dead-lettered): 7-0 8-0"]
        );
        assert_eq!((m.counts().reclaimed, m.counts().deleted_while_pending), (3, 2));
        assert_eq!(m.held(), 3);
        // Reclaimed entries carry their delivery count.
        let c = m.poll(0);
        assert!(c.iter().any(|c| matches!(c, Command::Handle { token: 2, entry_id, .. } if entry_id == "1-0")));
    }

    #[test]
    fn at_stop_a_failed_handler_is_released_not_retried_and_so_is_a_retry_that_answers() {
        // A transient failure after stop: back at once, no new delivery.
        let mut m = Machine::new(settings(1, 1), 0);
        m.poll(0);
        m.on(0, Input::Read(Ok(vec![entry(1)])));
        let slot = handles(&m.poll(0))[0];
        m.on(0, Input::Stop);
        let c = m.on(0, Input::Handled { slot, result: Err(HandlerError::Transient("x".into())), unit: 0.5 });
        assert_eq!(c, vec![]);
        assert_eq!(m.poll(0), vec![Command::Release(vec!["1-0".into()])]);
        m.on(0, Input::Released(Ok(1)));
        m.on(0, Input::Read(Ok(vec![])));
        assert_eq!(m.poll(0), vec![Command::Done]);
        assert_eq!((m.counts().retries, m.counts().released), (0, 1));

        // A retry out at stop: the new delivery is ours but not started, so it goes back.
        let mut m = Machine::new(settings(1, 1), 0);
        m.poll(0);
        m.on(0, Input::Read(Ok(vec![entry(1)])));
        let slot = handles(&m.poll(0))[0];
        let c = m.on(0, Input::Handled { slot, result: Err(HandlerError::Transient("x".into())), unit: 0.5 });
        assert!(matches!(&c[..], [Command::Retry { token: 1, .. }]));
        m.on(0, Input::Stop);
        assert_eq!(m.on(0, Input::Retried { slot, result: Ok(Some(2)) }), vec![]);
        assert_eq!(m.poll(0), vec![Command::Release(vec!["1-0".into()])]);
        assert_eq!(m.counts().retries, 1);
    }

    #[test]
    fn every_reply_is_counted_and_every_failed_call_is_an_error_with_a_warning() {
        let mut m = Machine::new(settings(8, 8), 0);
        m.poll(0);
        m.on(0, Input::Read(Ok((1..=4).map(entry).collect())));
        let c = m.poll(0);
        let s = handles(&c);
        assert_eq!(s.len(), 4);
        let transient = || Err(HandlerError::Transient("x".into()));
        let permanent = || Err(HandlerError::Permanent("no".into()));
        // 0: retry fails; 1: its dead letter is fenced; 2: its dead letter fails; 3: handled.
        m.on(0, Input::Handled { slot: s[0], result: transient(), unit: 0.5 });
        let c = m.on(0, Input::Retried { slot: s[0], result: Err(fail("gone", false, false)) });
        assert_eq!(warnings(&c), vec!["retry of 1-0 failed: gone"]);
        m.on(0, Input::Handled { slot: s[1], result: permanent(), unit: 0.5 });
        assert_eq!(m.on(0, Input::DeadLettered { slot: s[1], result: Ok(false) }), vec![]);
        m.on(0, Input::Handled { slot: s[2], result: permanent(), unit: 0.5 });
        let c = m.on(0, Input::DeadLettered { slot: s[2], result: Err(fail("io", false, false)) });
        assert_eq!(warnings(&c), vec!["dead-letter failed: io"]);
        ok(&mut m, s[3]);
        let c = m.on(0, Input::Committed(Err(fail("timeout", false, false))));
        assert_eq!(warnings(&c), vec!["commit failed: timeout"]);
        let c = m.on(
            0,
            Input::Committed(Ok(vec![
                CommitOutcome::Committed,
                CommitOutcome::AlreadyApplied,
                CommitOutcome::AlreadyApplied,
                CommitOutcome::NotOwner,
                CommitOutcome::EffectsRefused("WRONGTYPE".into()),
                CommitOutcome::PartiallyApplied("ERR half".into()),
                CommitOutcome::PartiallyApplied("ERR other half".into()),
            ])),
        );
        assert_eq!(
            warnings(&c),
            vec![
                "an entry was PARTIALLY APPLIED and dead-lettered: ERR half",
                "an entry was PARTIALLY APPLIED and dead-lettered: ERR other half"
            ]
        );
        m.on(0, Input::Stop);
        let c = m.on(0, Input::Released(Err(fail("reset", false, false))));
        assert_eq!(warnings(&c), vec!["release failed: reset"]);
        assert_eq!(
            m.counts(),
            &Counts {
                committed: 1,
                duplicates_suppressed: 2,
                fenced: 2,
                dead_lettered: 3,
                effects_refused: 1,
                partially_applied: 2,
                retries: 1,
                errors: 4,
                ..Counts::default()
            }
        );
    }

    #[test]
    fn a_failed_read_reconnects_a_failed_reclaim_only_when_asked_and_a_lost_group_is_created_again() {
        let mut m = Machine::new(settings(4, 1), 0);
        m.poll(0);
        let c = m.on(0, Input::Read(Err(fail("broken pipe", false, false))));
        assert_eq!(c, vec![Command::Warn("read failed: broken pipe".into()), Command::Reconnect]);
        let c = m.on(0, Input::Claimed(Err(fail("busy", false, false))));
        assert_eq!(c, vec![Command::Warn("reclaim failed: busy".into())]);
        let c = m.on(0, Input::Claimed(Err(fail("NOGROUP", true, false))));
        assert_eq!(c, vec![Command::EnsureGroup, Command::Reconnect]);
        let c = m.on(0, Input::Read(Err(fail("NOGROUP", true, false))));
        assert_eq!(c, vec![Command::EnsureGroup, Command::Reconnect]);
        assert_eq!(m.counts().errors, 4);
        assert!(m.poll(99).is_empty(), "paused for 100 ms after the last failure");
        assert_eq!(m.poll(100), vec![Command::Read { count: 2 }]);
    }
}
