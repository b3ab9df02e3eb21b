//! One simulated run: the whole pipeline over the model, as actors woken by a virtual clock.
//! Each actor step makes at most one store call (one atomic script), so every interleaving
//! the scheduler produces is one real Redis could produce. Consumers are the production
//! state machine ([`crate::core::consumer::Machine`], the one `consume` drives with tokio):
//! each command it gives becomes an operation that completes in virtual time (a read, a
//! reclaim, a handler run, a retry after its backoff, a dead letter, a release), and commits
//! go to one group committer that sends whatever several consumers have gathered as one
//! `commit_many`, as `consume::Committer` does. Sweepers follow `capture::run_sweeper` (wake
//! at the next deadline, clamped).

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::fmt::Write as _;
use std::time::Duration;

use super::checker::Checker;
use super::options::{Options, Persistence};
use super::rng::{Fnv, Rng};
use crate::core::consumer::{self as machine, Command, Failure, Handled, Input, Machine};
use crate::core::listener::{Action as ListenerAction, Heard, ListenerMachine};
use crate::core::{encode_entry, CommitOutcome, Effect, HandlerError, Via};
use crate::store::model::Model;
use crate::store::ModelStore;
use crate::store::{CommitItem, LedgerConfig, Safety};

/// Virtual start time (Unix ms): fixed, so a seed replays exactly.
pub const EPOCH_MS: i64 = 1_700_000_000_000;
const MAX_PAYLOAD: usize = 1 << 20;
/// How long the drain phase may take before liveness is declared failed.
const DRAIN_LIMIT_MS: i64 = 600_000;
const FAULT_TICK_MS: i64 = 50;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Actor {
    Producer,
    Expiry,
    Faults,
    Persist,
    Listener(usize),
    Sweeper(usize),
    /// A consumer's wake-up: its machine's timer, or its restart after a crash or a stop.
    Consumer(usize),
    /// An operation a consumer's machine asked for, completing.
    Op(u64),
    Committer,
}

/// What happened, counted by the simulator (faults injected, protocol replies seen).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Counts {
    pub steps: u64,
    pub kill_consumer: u64,
    pub stop_consumer: u64,
    pub delay_acks: u64,
    pub replay: u64,
    pub duplicate_entry: u64,
    pub garbage_entry: u64,
    pub term_consumer: u64,
    pub kill_listener: u64,
    pub kill_sweeper: u64,
    pub drop_notification: u64,
    pub restart_redis: u64,
    pub handler_transient: u64,
    pub handler_permanent: u64,
    pub store_errors: u64,
    pub captured_notification: u64,
    pub captured_sweeper: u64,
    pub committed: u64,
    pub already_applied: u64,
    pub not_owner: u64,
    /// Commits the script refused for their effects (the simulated handler's always apply, so
    /// any is a failure).
    pub effects_refused: u64,
    pub dead_letter_calls: u64,
    pub retries: u64,
    pub reclaimed: u64,
    pub released: u64,
    /// Group commits whose one script call carried entries of more than one consumer.
    pub mixed_group_commits: u64,
    /// Read-ahead entries handed back at a graceful stop (the machines' count, from replies).
    pub readahead_released: u64,
    /// Reads that doubled because the previous one came back full (the machines' count).
    pub adaptive_growths: u64,
}

struct Consumer {
    incarnation: u32,
    name: String,
    /// None while dead (crashed, or stopped and not restarted yet).
    machine: Option<Machine>,
    /// What the machine had counted when last looked at (its counts are cumulative).
    seen: machine::Counts,
    paused_until: i64,
}

/// An operation in flight: a machine's command on its way to its reply.
enum OpKind {
    Read {
        count: usize,
    },
    Claim {
        cursor: String,
        count: usize,
    },
    Handle {
        slot: machine::Slot,
        entry_id: String,
        event: crate::core::Event,
    },
    Retry {
        slot: machine::Slot,
        entry_id: String,
        token: u64,
    },
    DeadLetter {
        slot: machine::Slot,
        entry_id: String,
        token: u64,
        reason: String,
    },
    Release(Vec<String>),
    /// On its way to the committer (after a delayed-commit fault, if any).
    Commit(Vec<Handled>),
    /// A blocking read that found nothing, answering when its block time ends.
    TimedOut,
}

struct Op {
    consumer: usize,
    incarnation: u32,
    kind: OpKind,
}

/// A listener process: the production listener's decisions ([`ListenerMachine`]), fed what
/// its subscription hears.
struct Listener {
    up: bool,
    machine: ListenerMachine,
    queue: Vec<Heard>,
    scheduled: bool,
}

impl Listener {
    /// A listener process that has just subscribed (started, restarted, or reconnected).
    fn subscribed() -> Listener {
        Listener { up: true, machine: ListenerMachine::new(0, None), queue: vec![Heard::Subscribed], scheduled: false }
    }
}

struct Producer {
    made: u64,
    next_key: u64,
    /// Keys with the deadline of their last generation, for rewrites.
    keys: Vec<(Vec<u8>, i64)>,
    done_at: Option<i64>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Faults,
    Drain,
}

/// The outcome of [`World::run`].
pub struct Outcome {
    pub counts: Counts,
    pub checker: Checker,
    pub drained: bool,
    pub end_ms: i64,
    pub log_hash: u64,
    pub model: crate::store::model::ModelCounters,
}

pub struct World {
    opts: Options,
    safety: Safety,
    rng: Rng,
    now: i64,
    store: ModelStore,
    queue: BinaryHeap<Reverse<(i64, u64, Actor, u64)>>,
    seq: u64,
    gens: BTreeMap<Actor, u64>,
    producer: Producer,
    listeners: Vec<Listener>,
    sweepers: Vec<bool>,
    consumers: Vec<Consumer>,
    ops: BTreeMap<u64, Op>,
    next_op: u64,
    /// Commits handed to the group committer, in arrival order: (consumer, incarnation, items).
    committing: Vec<(usize, u32, Vec<Handled>)>,
    redis_down_until: Option<i64>,
    snapshot: (i64, Model),
    phase: Phase,
    faults_end: Option<i64>,
    pub checker: Checker,
    counts: Counts,
    log: Fnv,
    line: String,
    trace: bool,
}

impl World {
    pub fn new(seed: u64, opts: Options, safety: Safety, trace: bool) -> World {
        let mut model = Model::new(EPOCH_MS);
        model.active_expire_lag_ms = opts.active_expiry_lag_ms.map(|l| l as i64);
        model.subscribed = opts.listeners > 0;
        let store = ModelStore::new(model, "sim", "g");
        let consumers = (0..opts.consumers as usize)
            .map(|i| Consumer {
                incarnation: 0,
                name: format!("c{i}.0"),
                machine: None,
                seen: Default::default(),
                paused_until: EPOCH_MS,
            })
            .collect();
        let mut w = World {
            rng: Rng::new(seed).fork(0x51A),
            now: EPOCH_MS,
            snapshot: (EPOCH_MS, store.model.clone()),
            store,
            queue: BinaryHeap::new(),
            seq: 0,
            gens: BTreeMap::new(),
            producer: Producer { made: 0, next_key: 0, keys: vec![], done_at: None },
            listeners: (0..opts.listeners).map(|_| Listener::subscribed()).collect(),
            sweepers: vec![true; opts.sweepers as usize],
            consumers,
            ops: BTreeMap::new(),
            next_op: 0,
            committing: vec![],
            redis_down_until: None,
            phase: Phase::Faults,
            faults_end: None,
            checker: Checker::default(),
            counts: Counts::default(),
            log: Fnv::default(),
            line: String::new(),
            trace,
            opts,
            safety,
        };
        w.schedule(Actor::Producer, 0);
        w.schedule(Actor::Expiry, 100);
        w.schedule(Actor::Faults, FAULT_TICK_MS);
        if w.opts.faults.restart_redis > 0 && w.opts.faults.persistence == Persistence::FsyncEverysec {
            w.schedule(Actor::Persist, 1000);
        }
        for i in 0..w.sweepers.len() {
            w.schedule(Actor::Sweeper(i), 0);
        }
        for i in 0..w.consumers.len() {
            w.start_consumer(i);
        }
        w
    }

    fn schedule(&mut self, a: Actor, after_ms: i64) {
        let g = self.gens.entry(a).or_insert(0);
        *g += 1;
        self.seq += 1;
        self.queue.push(Reverse((self.now + after_ms.max(0), self.seq, a, *g)));
    }

    /// Appends a line to the event log (hashed; printed with `--trace`).
    fn log(&mut self, args: std::fmt::Arguments<'_>) {
        self.line.clear();
        let _ = write!(self.line, "{} ", self.now - EPOCH_MS);
        let _ = self.line.write_fmt(args);
        self.log.write(self.line.as_bytes());
        self.log.write(b"\n");
        if self.trace {
            println!("{}", self.line);
        }
    }

    fn up(&self) -> bool {
        self.redis_down_until.is_none()
    }

    fn faults_on(&self) -> bool {
        self.phase == Phase::Faults
    }

    fn pm(&mut self, per_mille: u32) -> bool {
        per_mille > 0 && self.faults_on() && self.rng.below(1000) < u64::from(per_mille)
    }

    fn ledger(&self) -> LedgerConfig {
        LedgerConfig {
            bucket: Duration::from_millis(self.opts.ledger_bucket_ms),
            retention: Duration::from_millis(self.opts.ledger_retention_ms),
            safety: self.safety,
        }
    }

    /// Runs to the end: faults, then drain. Safety is checked after every step.
    pub fn run(mut self) -> Outcome {
        let mut drained = false;
        while let Some(Reverse((t, _, actor, g))) = self.queue.pop() {
            if self.gens.get(&actor) != Some(&g) {
                continue;
            }
            self.now = self.now.max(t);
            self.store.model.set_now(self.now);
            if let Some(until) = self.redis_down_until {
                if self.now >= until {
                    self.redis_up();
                }
            }
            if self.phase == Phase::Faults && self.faults_end.is_some_and(|e| self.now >= e) {
                self.start_drain();
            }
            self.counts.steps += 1;
            self.step(actor);
            self.fan_out();
            self.checker.observe(&mut self.store, self.now);
            if self.phase == Phase::Drain {
                if self.is_drained() {
                    drained = true;
                    break;
                }
                if self.now - self.faults_end.unwrap_or(self.now) > DRAIN_LIMIT_MS {
                    break;
                }
            }
        }
        self.checker.finish(&mut self.store);
        let causes = super::checker::DeadLetterCauses {
            permanent: self.counts.handler_permanent,
            transient: self.counts.handler_transient,
            redeliveries: self.counts.reclaimed + self.counts.retries,
            garbage: self.counts.garbage_entry,
            copies: self.counts.replay + self.counts.duplicate_entry,
            restarts: self.counts.restart_redis,
        };
        self.checker.judge_dead_letters(&mut self.store, causes);
        let log_hash = self.log.finish();
        Outcome {
            counts: self.counts,
            checker: self.checker,
            drained,
            end_ms: self.now - EPOCH_MS,
            log_hash,
            model: self.store.model.counters,
        }
    }

    fn start_drain(&mut self) {
        self.phase = Phase::Drain;
        self.log(format_args!("phase drain"));
        if let Some(until) = self.redis_down_until {
            self.now = self.now.max(until);
            self.redis_up();
        }
        for i in 0..self.listeners.len() {
            if !self.listeners[i].up {
                self.listeners[i] = Listener::subscribed();
                self.schedule_listener(i);
            }
        }
        self.store.model.subscribed = !self.listeners.is_empty();
        // The contract captures tracked keys "while a sweeper runs": liveness needs one.
        if self.sweepers.is_empty() {
            self.sweepers.push(true);
        }
        for i in 0..self.sweepers.len() {
            self.sweepers[i] = true;
            self.schedule(Actor::Sweeper(i), 0);
        }
    }

    fn is_drained(&mut self) -> bool {
        if self.producer.done_at.is_none() || !self.up() {
            return false;
        }
        if !self.consumers.iter().all(|c| c.machine.as_ref().is_some_and(|m| !m.is_stopping() && m.holds_nothing())) {
            return false;
        }
        if !self.committing.is_empty() {
            return false;
        }
        self.store.backlog().is_empty()
    }

    /// Delivers published notifications to every listener that is up (pub/sub fan-out), each
    /// delivery dropped with the seed's probability.
    fn fan_out(&mut self) {
        if self.store.model.pending_notifications() == 0 {
            return;
        }
        let notes = self.store.model.take_notifications();
        for i in 0..self.listeners.len() {
            if !self.listeners[i].up {
                continue;
            }
            for n in &notes {
                if self.pm(self.opts.faults.drop_notification) {
                    self.counts.drop_notification += 1;
                } else {
                    let channel = b"__keyevent@0__:expired".to_vec();
                    self.listeners[i].queue.push(Heard::Message { channel, payload: n.clone() });
                }
            }
            self.schedule_listener(i);
        }
    }

    /// The listener handles what it heard after its latency (once, however much arrives).
    fn schedule_listener(&mut self, i: usize) {
        if !self.listeners[i].queue.is_empty() && !self.listeners[i].scheduled {
            self.listeners[i].scheduled = true;
            let lat = self.opts.listener_latency_ms as i64;
            self.schedule(Actor::Listener(i), lat);
        }
    }

    fn step(&mut self, a: Actor) {
        match a {
            Actor::Producer => self.producer_step(),
            Actor::Expiry => {
                let n = self.store.model.active_expire(20);
                if n > 0 {
                    self.log(format_args!("expiry active {n}"));
                }
                self.schedule(Actor::Expiry, 100);
            }
            Actor::Persist => {
                if self.up() {
                    self.snapshot = (self.now, self.store.model.clone());
                }
                self.schedule(Actor::Persist, 1000);
            }
            Actor::Faults => self.faults_step(),
            Actor::Listener(i) => self.listener_step(i),
            Actor::Sweeper(i) => self.sweeper_step(i),
            Actor::Consumer(i) => self.consumer_step(i),
            Actor::Op(id) => self.op_step(id),
            Actor::Committer => self.committer_step(),
        }
    }

    fn producer_step(&mut self) {
        let o = self.opts.clone();
        if self.producer.made >= o.events {
            return;
        }
        if !self.up() {
            self.schedule(Actor::Producer, 100);
            return;
        }
        let n = self.rng.range(1, o.producer_batch).min(o.events - self.producer.made);
        let mut items = vec![];
        let mut tracked = vec![];
        for _ in 0..n {
            let ttl = self.rng.range(o.ttl_ms.0, o.ttl_ms.1).max(1);
            // Keys set by another program and then tracked are always fresh: a raw SET over a
            // tracked key whose last generation expired uncaptured loses that expiration (the
            // capture step then sees a new TTL and moves the deadline); the contract says
            // tracked keys are written through the library. Reported in docs/adr/005.
            let track = self.rng.below(1000) < u64::from(o.track);
            let reuse = !track && self.rng.below(1000) < u64::from(o.rewrite) && !self.producer.keys.is_empty();
            let key = if reuse {
                let i = self.rng.below(self.producer.keys.len() as u64) as usize;
                let (k, dl) = self.producer.keys[i].clone();
                if dl < self.now && !items.iter().any(|(x, _, _)| *x == k) {
                    Some(k)
                } else {
                    None
                }
            } else {
                None
            };
            let key = key.unwrap_or_else(|| {
                self.producer.next_key += 1;
                format!("{{sim}}:k:{}", self.producer.next_key).into_bytes()
            });
            let payload = format!("p{}", self.producer.made + items.len() as u64 + tracked.len() as u64).into_bytes();
            if track {
                tracked.push((key, payload, ttl));
            } else {
                items.push((key, payload, Duration::from_millis(ttl)));
            }
        }
        let dls = self.store.write_batch(&items);
        for ((k, p, _), dl) in items.iter().zip(&dls) {
            self.created(k, *dl, p);
        }
        // Keys set by another program, then registered: `SET PX` and `track` (two calls).
        for (k, p, ttl) in tracked {
            self.store.model.set(&k, &p, false, Some(ttl as i64));
            if let Some(dl) = self.store.track(&k) {
                self.created(&k, dl, &p);
            }
        }
        let made = self.producer.made;
        self.log(format_args!("producer wrote {n} total {made}"));
        if self.producer.made >= o.events {
            self.producer.done_at = Some(self.now);
            self.faults_end = Some(self.now + o.ttl_ms.1 as i64 + 1000);
        } else {
            let gap = self.rng.range(0, o.producer_gap_ms) as i64;
            self.schedule(Actor::Producer, gap);
        }
    }

    fn created(&mut self, key: &[u8], dl: i64, payload: &[u8]) {
        self.producer.made += 1;
        match self.producer.keys.iter_mut().find(|(k, _)| k == key) {
            Some(e) => e.1 = dl,
            None => self.producer.keys.push((key.to_vec(), dl)),
        }
        self.checker.created(key, dl, payload, self.now);
    }

    fn listener_step(&mut self, i: usize) {
        self.listeners[i].scheduled = false;
        if !self.listeners[i].up || !self.up() {
            self.listeners[i].queue.clear();
            return;
        }
        let heard = std::mem::take(&mut self.listeners[i].queue);
        let mut todo = self.listeners[i].machine.heard(heard);
        while !todo.is_empty() {
            let mut next = vec![];
            for a in todo {
                match a {
                    ListenerAction::Capture(keys) => {
                        let (e, m, d) = self.store.capture(&keys, Via::Notification);
                        self.counts.captured_notification += e;
                        self.log(format_args!("listener{i} capture {} -> {e}/{m}/{d}", keys.len()));
                        next.extend(self.listeners[i].machine.captured(Ok(e)));
                    }
                    ListenerAction::Adopt(keys) => {
                        let (a, _) = self.store.adopt(&keys, 0);
                        self.log(format_args!("listener{i} adopt {} -> {a}", keys.len()));
                        next.extend(self.listeners[i].machine.adopted(Ok(a)));
                    }
                    ListenerAction::SweepNow => self.wake_sweepers(),
                    // The model's notifications are on whenever someone listens.
                    ListenerAction::EnsureNotifications => {}
                    ListenerAction::Warn(w) => self.log(format_args!("listener{i} {w}")),
                }
            }
            todo = next;
        }
    }

    fn sweeper_step(&mut self, i: usize) {
        let max = self.opts.sweep_interval_ms as i64;
        if i >= self.sweepers.len() || !self.sweepers[i] {
            return;
        }
        if !self.up() {
            self.schedule(Actor::Sweeper(i), 100);
            return;
        }
        let batch = self.opts.sweep_batch as usize;
        let s = self.store.sweep(batch);
        self.counts.captured_sweeper += s.emitted;
        if s.emitted > 0 || s.examined > 0 {
            self.log(format_args!("sweeper{i} {} of {}", s.emitted, s.examined));
        }
        // The production sweeper's decision (`capture::run_sweeper`), its minimum 2 ms.
        let pause = crate::core::sweep_pause(
            s.examined,
            batch,
            s.next_deadline_ms,
            s.now_ms,
            Duration::from_millis(2),
            Duration::from_millis(max as u64),
        )
        .as_millis() as i64;
        self.schedule(Actor::Sweeper(i), pause);
    }

    fn faults_step(&mut self) {
        if !self.faults_on() {
            return;
        }
        let f = self.opts.faults.clone();
        if self.pm(f.replay) {
            if let Some(ev) = self.checker.pick_effected(&mut self.rng, self.now) {
                if self.up() {
                    self.store.xadd_raw(encode_entry(&ev));
                    self.counts.replay += 1;
                    self.log(format_args!("fault replay {}", ev.event_id));
                }
            }
        }
        if self.pm(f.duplicate_entry) && self.up() {
            let entries = self.store.range(&self.store.keys.stream.clone());
            if !entries.is_empty() {
                let e = &entries[self.rng.below(entries.len() as u64) as usize];
                let id = self.store.xadd_raw(e.fields.clone());
                self.counts.duplicate_entry += 1;
                self.log(format_args!("fault duplicate_entry {} as {id}", e.id));
            }
        }
        if self.pm(f.garbage_entry) && self.up() {
            let fields = if self.rng.chance(0.5) {
                vec![(b"foo".to_vec(), b"bar".to_vec())]
            } else {
                vec![(b"k".to_vec(), b"x".to_vec()), (b"d".to_vec(), b"soon".to_vec())]
            };
            self.store.xadd_raw(fields);
            self.counts.garbage_entry += 1;
            self.log(format_args!("fault garbage_entry"));
        }
        if self.pm(f.term_consumer) && !self.consumers.is_empty() {
            let i = self.rng.below(self.consumers.len() as u64) as usize;
            if self.consumers[i].machine.as_ref().is_some_and(|m| !m.is_stopping()) {
                self.counts.term_consumer += 1;
                let name = self.consumers[i].name.clone();
                self.log(format_args!("fault term_consumer {name}"));
                let inc = self.consumers[i].incarnation;
                self.deliver(i, inc, Input::Stop);
            }
        }
        if self.pm(f.kill_listener) && !self.listeners.is_empty() {
            let i = self.rng.below(self.listeners.len() as u64) as usize;
            let l = &mut self.listeners[i];
            // Killed, it hears nothing; restarted, it is a new process that subscribes.
            *l = if l.up {
                Listener { up: false, queue: vec![], ..Listener::subscribed() }
            } else {
                Listener::subscribed()
            };
            let up = l.up;
            if !up {
                self.counts.kill_listener += 1;
            }
            self.store.model.subscribed = self.up() && self.listeners.iter().any(|l| l.up);
            self.log(format_args!("fault kill_listener listener{i} up={up}"));
            // A restarted listener missed what expired meanwhile: its machine asks for a sweep.
            self.schedule_listener(i);
        }
        if self.pm(f.kill_sweeper) && !self.sweepers.is_empty() {
            let i = self.rng.below(self.sweepers.len() as u64) as usize;
            self.sweepers[i] = !self.sweepers[i];
            if self.sweepers[i] {
                self.schedule(Actor::Sweeper(i), 0);
            } else {
                self.counts.kill_sweeper += 1;
            }
            let up = self.sweepers[i];
            self.log(format_args!("fault kill_sweeper sweeper{i} up={up}"));
        }
        if self.pm(f.restart_redis) && self.up() {
            self.restart();
        }
        self.schedule(Actor::Faults, FAULT_TICK_MS);
    }

    fn wake_sweepers(&mut self) {
        for i in 0..self.sweepers.len() {
            if self.sweepers[i] {
                self.schedule(Actor::Sweeper(i), 0);
            }
        }
    }

    /// Redis goes down. What it comes back with is what the persistence kept: everything
    /// (fsync always), or the state of the last whole second (everysec after a host crash).
    fn restart(&mut self) {
        self.counts.restart_redis += 1;
        let kept_until = match self.opts.faults.persistence {
            Persistence::FsyncAlways => self.now,
            Persistence::FsyncEverysec => {
                self.store.model = self.snapshot.1.clone();
                self.store.model.set_now(self.now);
                self.snapshot.0
            }
        };
        self.store.model.restarted();
        for l in &mut self.listeners {
            l.queue.clear();
            // The connection is gone; it resubscribes when Redis is back (`redis_up`).
            l.queue.push(Heard::Disconnected);
        }
        self.checker.restarted(kept_until);
        let down = self.rng.range(100, 1000) as i64;
        self.redis_down_until = Some(self.now + down);
        self.log(format_args!("fault restart_redis kept_until {} down {down}", kept_until - EPOCH_MS));
    }

    fn redis_up(&mut self) {
        self.redis_down_until = None;
        self.store.model.subscribed = self.listeners.iter().any(|l| l.up);
        self.log(format_args!("redis up"));
        // Sweepers retry on their own; listeners hear their resubscription.
        self.wake_sweepers();
        for i in 0..self.listeners.len() {
            if self.listeners[i].up {
                self.listeners[i].queue.push(Heard::Subscribed);
                self.schedule_listener(i);
            }
        }
    }

    fn settings(&self) -> machine::Settings {
        machine::Settings {
            batch: self.opts.batch as usize,
            concurrency: self.opts.concurrency as usize,
            claim_interval: Duration::from_millis(self.opts.claim_interval_ms),
            prune_every: None,
            policy: crate::core::RetryPolicy {
                max_deliveries: self.opts.max_deliveries,
                backoff_base: Duration::from_millis(20),
                backoff_max: Duration::from_millis(500),
            },
            max_payload: MAX_PAYLOAD,
        }
    }

    /// A new incarnation of consumer `i`: a new name (the fence compares owner names) and a
    /// fresh machine, which asks for its first read at once.
    fn start_consumer(&mut self, i: usize) {
        let m = Machine::new(self.settings(), self.now);
        let c = &mut self.consumers[i];
        c.incarnation += 1;
        c.name = format!("c{i}.{}", c.incarnation);
        c.machine = Some(m);
        c.seen = Default::default();
        let (name, inc) = (c.name.clone(), c.incarnation);
        self.log(format_args!("{name} starts"));
        self.react(i, inc, vec![]);
    }

    /// Wake-up of consumer `i`: a restart if it is dead, otherwise its machine's timer.
    fn consumer_step(&mut self, i: usize) {
        if self.consumers[i].machine.is_none() {
            self.start_consumer(i);
            return;
        }
        let inc = self.consumers[i].incarnation;
        self.react(i, inc, vec![]);
    }

    /// Feeds an input to consumer `i`'s machine (if it is still that incarnation).
    fn deliver(&mut self, i: usize, incarnation: u32, input: Input) {
        let now = self.now;
        let c = &mut self.consumers[i];
        if c.incarnation != incarnation {
            return;
        }
        let Some(m) = c.machine.as_mut() else { return };
        let cmds = m.on(now, input);
        self.react(i, incarnation, cmds);
    }

    /// Polls consumer `i`'s machine and carries out its commands (with `first`, from `on`).
    fn react(&mut self, i: usize, incarnation: u32, first: Vec<Command>) {
        let now = self.now;
        let Some(m) = self.consumers[i].machine.as_mut() else { return };
        let mut cmds = first;
        cmds.extend(m.poll(now));
        let wake = m.next_wake(now);
        let counts = m.counts().clone();
        let seen = std::mem::replace(&mut self.consumers[i].seen, counts.clone());
        self.counts.readahead_released += counts.readahead_released - seen.readahead_released;
        self.counts.adaptive_growths += counts.adaptive_growths - seen.adaptive_growths;
        let name = self.consumers[i].name.clone();
        for c in cmds {
            let (kind, after) = match c {
                Command::Read { count } => (OpKind::Read { count }, 0),
                Command::Claim { cursor, count } => (OpKind::Claim { cursor, count }, 0),
                Command::Handle { slot, entry_id, event, .. } => {
                    let t = self.rng.range(self.opts.work_ms.0, self.opts.work_ms.1) as i64;
                    (OpKind::Handle { slot, entry_id, event }, t)
                }
                Command::Retry { slot, entry_id, token, after } => {
                    (OpKind::Retry { slot, entry_id, token }, after.as_millis() as i64)
                }
                Command::DeadLetter { slot, entry_id, token, reason } => {
                    (OpKind::DeadLetter { slot, entry_id, token, reason }, 0)
                }
                Command::Release(ids) => (OpKind::Release(ids), 0),
                Command::Commit(items) => {
                    let d = if self.pm(self.opts.faults.delay_acks) {
                        let d = self.rng.range(self.opts.faults.delay_ms.0, self.opts.faults.delay_ms.1) as i64;
                        self.counts.delay_acks += 1;
                        self.log(format_args!("fault delay_acks {name} {d}"));
                        d
                    } else {
                        0
                    };
                    (OpKind::Commit(items), d)
                }
                // The model has no connections to lose and keeps its group.
                Command::Prune | Command::Reconnect | Command::EnsureGroup => continue,
                Command::Warn(w) => {
                    self.log(format_args!("{name} warns: {w}"));
                    continue;
                }
                Command::Done => {
                    // A graceful stop ended: the process restarts it, with a new name.
                    self.log(format_args!("{name} stopped"));
                    self.consumers[i].machine = None;
                    self.schedule(Actor::Consumer(i), 0);
                    return;
                }
            };
            let id = self.next_op;
            self.next_op += 1;
            self.ops.insert(id, Op { consumer: i, incarnation, kind });
            self.schedule(Actor::Op(id), after);
        }
        if let Some(t) = wake {
            self.schedule(Actor::Consumer(i), t - now);
        }
    }

    fn store_down(&mut self) -> Failure {
        self.counts.store_errors += 1;
        Failure { message: "redis down".into(), no_group: false, reconnect: true }
    }

    /// An operation completes: its store call (one atomic script or command) happens now.
    fn op_step(&mut self, id: u64) {
        let Some(op) = self.ops.remove(&id) else { return };
        self.gens.remove(&Actor::Op(id));
        let i = op.consumer;
        let c = &self.consumers[i];
        if c.incarnation != op.incarnation || c.machine.is_none() {
            return; // its consumer crashed: the call is never made
        }
        let name = c.name.clone();
        // A paused consumer does nothing until it resumes.
        if c.paused_until > self.now {
            let d = c.paused_until - self.now;
            self.ops.insert(id, op);
            self.schedule(Actor::Op(id), d);
            return;
        }
        let f = self.opts.faults.clone();
        if self.pm(f.kill_consumer) {
            let held = self.consumers[i].machine.as_ref().map_or(0, Machine::held);
            self.consumers[i].machine = None;
            self.counts.kill_consumer += 1;
            self.log(format_args!("fault kill_consumer {name} holding {held}"));
            let d = self.rng.range(10, 500) as i64;
            self.schedule(Actor::Consumer(i), d);
            return;
        }
        if self.pm(f.stop_consumer) {
            let d = self.rng.range(f.stop_ms.0, f.stop_ms.1) as i64;
            self.consumers[i].paused_until = self.now + d;
            self.counts.stop_consumer += 1;
            self.log(format_args!("fault stop_consumer {name} {d}"));
            self.ops.insert(id, op);
            self.schedule(Actor::Op(id), d);
            return;
        }
        let input = match op.kind {
            OpKind::TimedOut => Input::Read(Ok(vec![])),
            OpKind::Read { .. }
            | OpKind::Claim { .. }
            | OpKind::Retry { .. }
            | OpKind::DeadLetter { .. }
            | OpKind::Release(_)
                if !self.up() =>
            {
                let failure = self.store_down();
                match op.kind {
                    OpKind::Read { .. } => Input::Read(Err(failure)),
                    OpKind::Claim { .. } => Input::Claimed(Err(failure)),
                    OpKind::Retry { slot, .. } => Input::Retried { slot, result: Err(failure) },
                    OpKind::DeadLetter { slot, .. } => Input::DeadLettered { slot, result: Err(failure) },
                    _ => Input::Released(Err(failure)),
                }
            }
            OpKind::Read { count } => {
                let got = self.store.read_new(&name, count).expect("model read");
                if got.is_empty() {
                    // An empty blocking read: it answers, empty, when `block` ends (here, a
                    // poll period later; what arrives meanwhile waits for the next read).
                    let p = self.opts.poll_ms as i64;
                    self.ops.insert(id, Op { consumer: i, incarnation: op.incarnation, kind: OpKind::TimedOut });
                    self.schedule(Actor::Op(id), p);
                    return;
                } else {
                    let ids: Vec<&str> = got.iter().map(|e| e.id.as_str()).collect();
                    self.log(format_args!("{name} read {}", ids.join(",")));
                    Input::Read(Ok(got))
                }
            }
            OpKind::Claim { cursor, count } => {
                let idle = Duration::from_millis(self.opts.claim_idle_ms);
                let (next, got) = self.store.autoclaim(&name, idle, &cursor, count).expect("model autoclaim");
                self.counts.reclaimed += got.len() as u64;
                if !got.is_empty() {
                    let ids: Vec<String> = got.iter().map(|(e, t)| format!("{}#{t}", e.id)).collect();
                    self.log(format_args!("{name} reclaimed {}", ids.join(",")));
                }
                let entries = got.into_iter().map(|(entry, token)| machine::Work { entry, token }).collect();
                Input::Claimed(Ok(machine::Claim { next, entries, deleted: vec![] }))
            }
            OpKind::Handle { slot, entry_id, event, .. } => {
                // The witness outside the commit path: every run, before the handler decides.
                self.checker.handler_run(&event.event_id, &entry_id);
                let result = if self.pm(f.handler_permanent) {
                    self.counts.handler_permanent += 1;
                    Err(HandlerError::Permanent("refused".into()))
                } else if self.pm(f.handler_transient) {
                    self.counts.handler_transient += 1;
                    Err(HandlerError::Transient("backend down".into()))
                } else {
                    let rec = format!("{}|{name}|{entry_id}", event.event_id);
                    Ok(vec![Effect::new("RPUSH", [self.store.keys.effects.as_bytes(), rec.as_bytes()])])
                };
                Input::Handled { slot, result, unit: self.rng.unit() }
            }
            OpKind::Retry { slot, entry_id, token } => {
                self.counts.retries += 1;
                let r = self.store.retry(&name, &entry_id, token);
                match r {
                    Some(t) => self.log(format_args!("{name} retry {entry_id} -> #{t}")),
                    None => self.log(format_args!("{name} retry {entry_id} lost it")),
                }
                Input::Retried { slot, result: Ok(r) }
            }
            OpKind::DeadLetter { slot, entry_id, token, reason } => {
                self.counts.dead_letter_calls += 1;
                let ok = self.store.dead_letter(&name, &entry_id, token, &reason);
                self.log(format_args!("{name} dead-letter {entry_id}#{token} {ok}: {reason}"));
                Input::DeadLettered { slot, result: Ok(ok) }
            }
            OpKind::Release(ids) => {
                let idle = Duration::from_millis(self.opts.claim_idle_ms * 10);
                let n = self.store.release(&name, &ids, idle);
                self.counts.released += n;
                self.log(format_args!("{name} released {n} of {}", ids.len()));
                Input::Released(Ok(n))
            }
            OpKind::Commit(items) => {
                // To the group committer, which sends whatever has gathered as one call.
                if self.committing.is_empty() {
                    let gather = self.rng.range(0, 3) as i64;
                    self.schedule(Actor::Committer, gather);
                }
                self.committing.push((i, op.incarnation, items));
                return;
            }
        };
        self.deliver(i, op.incarnation, input);
    }

    /// The group committer: one `commit_many` for everything gathered, each entry fenced
    /// against its own consumer; each consumer gets its share of the reply.
    fn committer_step(&mut self) {
        let reqs: Vec<(usize, u32, Vec<Handled>)> = std::mem::take(&mut self.committing)
            .into_iter()
            .filter(|(i, inc, _)| self.consumers[*i].incarnation == *inc && self.consumers[*i].machine.is_some())
            .collect();
        if reqs.is_empty() {
            return;
        }
        if !self.up() {
            for (i, inc, _) in reqs {
                let failure = self.store_down();
                let name = self.consumers[i].name.clone();
                self.log(format_args!("{name} commit failed: redis down"));
                self.deliver(i, inc, Input::Committed(Err(failure)));
            }
            return;
        }
        let names: Vec<String> = reqs.iter().map(|(i, _, _)| self.consumers[*i].name.clone()).collect();
        let mut distinct = names.clone();
        distinct.sort();
        distinct.dedup();
        if distinct.len() > 1 {
            self.counts.mixed_group_commits += 1;
        }
        let items: Vec<(&str, CommitItem<'_>)> = reqs
            .iter()
            .zip(&names)
            .flat_map(|((_, _, hs), n)| {
                hs.iter().map(move |h| {
                    (
                        n.as_str(),
                        CommitItem { entry_id: &h.entry_id, token: h.token, event: &h.event, effects: &h.effects },
                    )
                })
            })
            .collect();
        let refs: Vec<(&str, &CommitItem<'_>)> = items.iter().map(|(c, it)| (*c, it)).collect();
        let ledger = self.ledger();
        let out = self.store.commit_many(ledger, &refs).expect("allowed effects only");
        let mut codes = String::new();
        for (o, (n, it)) in out.iter().zip(&items) {
            let c = match o {
                CommitOutcome::Committed => {
                    self.counts.committed += 1;
                    'C'
                }
                CommitOutcome::AlreadyApplied => {
                    self.counts.already_applied += 1;
                    'A'
                }
                CommitOutcome::NotOwner => {
                    self.counts.not_owner += 1;
                    'F'
                }
                // The simulated handler's effects always apply; a refusal here is a
                // defect of the model or the commit, and the checker must see it.
                CommitOutcome::EffectsRefused(_) | CommitOutcome::PartiallyApplied(_) => {
                    self.counts.effects_refused += 1;
                    'R'
                }
            };
            let _ = write!(codes, "{n}:{}#{}:{c} ", it.entry_id, it.token);
        }
        drop(refs);
        drop(items);
        self.log(format_args!("commit {codes}"));
        let mut rest = out.as_slice();
        for (i, inc, hs) in reqs {
            let (mine, tail) = rest.split_at(hs.len().min(rest.len()));
            rest = tail;
            self.deliver(i, inc, Input::Committed(Ok(mine.to_vec())));
        }
    }
}
