//! One simulated run: the whole pipeline over the model, as actors woken by a virtual clock.
//! Each actor step makes at most one store call (one atomic script), so every interleaving
//! the scheduler produces is one real Redis could produce. Actors mirror the real code:
//! consumers follow `consume::run_consumer`/`process` (read or reclaim, admit, handle, retry
//! with backoff, dead-letter, one commit per batch, release on graceful stop) and sweepers
//! follow `capture::run_sweeper` (wake at the next deadline, clamped).

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, VecDeque};
use std::fmt::Write as _;
use std::time::Duration;

use super::checker::Checker;
use super::options::{Options, Persistence};
use super::rng::{Fnv, Rng};
use crate::core::{admit, after_handler, encode_entry, Admit, CommitOutcome, Effect, Event, HandlerError, Next, Via};
use crate::store::model::Model;
use crate::store::ModelStore;
use crate::store::{CommitItem, LedgerConfig, RawEntry, Safety};

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
    Consumer(usize),
}

/// What happened, counted by the simulator (faults injected, protocol replies seen).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Counts {
    pub steps: u64,
    pub crashes: u64,
    pub pauses: u64,
    pub delayed_commits: u64,
    pub replays: u64,
    pub duplicates: u64,
    pub garbage: u64,
    pub graceful_stops: u64,
    pub listener_downs: u64,
    pub sweeper_downs: u64,
    pub notifications_dropped: u64,
    pub restarts: u64,
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
}

struct Work {
    entry: RawEntry,
    token: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum CState {
    Dead,
    Idle,
    Next,
    Handled,
    Retrying,
    Commit,
}

struct Consumer {
    incarnation: u32,
    name: String,
    state: CState,
    queue: VecDeque<Work>,
    current: Option<(Work, Event)>,
    finished: Vec<(Work, Event, Vec<Effect>)>,
    cursor: String,
    last_claim: i64,
    stop: bool,
    resumed: bool,
}

impl Consumer {
    fn holds_nothing(&self) -> bool {
        self.queue.is_empty() && self.current.is_none() && self.finished.is_empty()
    }
}

struct Listener {
    up: bool,
    queue: Vec<Vec<u8>>,
    scheduled: bool,
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
                state: CState::Idle,
                queue: VecDeque::new(),
                current: None,
                finished: vec![],
                cursor: "0-0".into(),
                last_claim: EPOCH_MS,
                stop: false,
                resumed: false,
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
            listeners: (0..opts.listeners).map(|_| Listener { up: true, queue: vec![], scheduled: false }).collect(),
            sweepers: vec![true; opts.sweepers as usize],
            consumers,
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
        if w.opts.faults.restart > 0 && w.opts.faults.persistence == Persistence::FsyncEverysec {
            w.schedule(Actor::Persist, 1000);
        }
        for i in 0..w.sweepers.len() {
            w.schedule(Actor::Sweeper(i), 0);
        }
        for i in 0..w.consumers.len() {
            w.schedule(Actor::Consumer(i), 0);
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
            garbage: self.counts.garbage,
            copies: self.counts.replays + self.counts.duplicates,
            restarts: self.counts.restarts,
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
                self.listeners[i].up = true;
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
        if !self.consumers.iter().all(|c| c.state == CState::Idle && c.holds_nothing()) {
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
                if self.pm(self.opts.faults.notify_drop) {
                    self.counts.notifications_dropped += 1;
                } else {
                    self.listeners[i].queue.push(n.clone());
                }
            }
            if !self.listeners[i].queue.is_empty() && !self.listeners[i].scheduled {
                self.listeners[i].scheduled = true;
                let lat = self.opts.listener_latency_ms as i64;
                self.schedule(Actor::Listener(i), lat);
            }
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
        let keys = std::mem::take(&mut self.listeners[i].queue);
        let (e, m, d) = self.store.capture(&keys, Via::Notification);
        self.counts.captured_notification += e;
        self.log(format_args!("listener{i} capture {} -> {e}/{m}/{d}", keys.len()));
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
        let pause = if s.examined as usize >= batch {
            0
        } else {
            match s.next_deadline_ms {
                Some(d) => (d - s.now_ms + 1).clamp(2, max.max(2)),
                None => max,
            }
        };
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
                    self.counts.replays += 1;
                    self.log(format_args!("fault replay {}", ev.event_id));
                }
            }
        }
        if self.pm(f.duplicate) && self.up() {
            let entries = self.store.range(&self.store.keys.stream.clone());
            if !entries.is_empty() {
                let e = &entries[self.rng.below(entries.len() as u64) as usize];
                let id = self.store.xadd_raw(e.fields.clone());
                self.counts.duplicates += 1;
                self.log(format_args!("fault duplicate {} as {id}", e.id));
            }
        }
        if self.pm(f.garbage) && self.up() {
            let fields = if self.rng.chance(0.5) {
                vec![(b"foo".to_vec(), b"bar".to_vec())]
            } else {
                vec![(b"k".to_vec(), b"x".to_vec()), (b"d".to_vec(), b"soon".to_vec())]
            };
            self.store.xadd_raw(fields);
            self.counts.garbage += 1;
            self.log(format_args!("fault garbage"));
        }
        if self.pm(f.graceful_stop) && !self.consumers.is_empty() {
            let i = self.rng.below(self.consumers.len() as u64) as usize;
            if !self.consumers[i].stop && self.consumers[i].state != CState::Dead {
                self.consumers[i].stop = true;
                self.counts.graceful_stops += 1;
                let name = self.consumers[i].name.clone();
                self.log(format_args!("fault stop {name}"));
            }
        }
        if self.pm(f.listener_down) && !self.listeners.is_empty() {
            let i = self.rng.below(self.listeners.len() as u64) as usize;
            let l = &mut self.listeners[i];
            l.up = !l.up;
            l.queue.clear();
            let up = l.up;
            if !up {
                self.counts.listener_downs += 1;
            }
            self.store.model.subscribed = self.up() && self.listeners.iter().any(|l| l.up);
            self.log(format_args!("fault listener{i} up={up}"));
            if up {
                // A reconnected listener missed what expired meanwhile: sweep at once.
                self.wake_sweepers();
            }
        }
        if self.pm(f.sweeper_down) && !self.sweepers.is_empty() {
            let i = self.rng.below(self.sweepers.len() as u64) as usize;
            self.sweepers[i] = !self.sweepers[i];
            if self.sweepers[i] {
                self.schedule(Actor::Sweeper(i), 0);
            } else {
                self.counts.sweeper_downs += 1;
            }
            let up = self.sweepers[i];
            self.log(format_args!("fault sweeper{i} up={up}"));
        }
        if self.pm(f.restart) && self.up() {
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
        self.counts.restarts += 1;
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
        }
        self.checker.restarted(kept_until);
        let down = self.rng.range(100, 1000) as i64;
        self.redis_down_until = Some(self.now + down);
        self.log(format_args!("fault restart kept_until {} down {down}", kept_until - EPOCH_MS));
    }

    fn redis_up(&mut self) {
        self.redis_down_until = None;
        self.store.model.subscribed = self.listeners.iter().any(|l| l.up);
        self.log(format_args!("redis up"));
        self.wake_sweepers();
    }

    fn poll(&mut self, i: usize) {
        let p = self.opts.poll_ms as i64;
        self.schedule(Actor::Consumer(i), p);
    }

    fn reincarnate(&mut self, i: usize) {
        let c = &mut self.consumers[i];
        c.incarnation += 1;
        // A new name per incarnation: the fence compares owner names.
        c.name = format!("c{i}.{}", c.incarnation);
        c.state = CState::Idle;
        c.queue.clear();
        c.current = None;
        c.finished.clear();
        c.cursor = "0-0".into();
        c.stop = false;
        c.resumed = false;
        c.last_claim = self.now;
    }

    fn consumer_step(&mut self, i: usize) {
        let f = self.opts.faults.clone();
        if self.consumers[i].state == CState::Dead {
            self.reincarnate(i);
            let name = self.consumers[i].name.clone();
            self.log(format_args!("{name} starts"));
            self.schedule(Actor::Consumer(i), 0);
            return;
        }
        if !self.consumers[i].resumed {
            if self.pm(f.crash) {
                let c = &mut self.consumers[i];
                c.state = CState::Dead;
                let held = c.queue.len() + c.finished.len() + c.current.is_some() as usize;
                let name = c.name.clone();
                self.counts.crashes += 1;
                self.log(format_args!("fault crash {name} holding {held}"));
                let d = self.rng.range(10, 500) as i64;
                self.schedule(Actor::Consumer(i), d);
                return;
            }
            if self.pm(f.pause) {
                self.consumers[i].resumed = true;
                let d = self.rng.range(f.pause_ms.0, f.pause_ms.1) as i64;
                self.counts.pauses += 1;
                let name = self.consumers[i].name.clone();
                self.log(format_args!("fault pause {name} {d}"));
                self.schedule(Actor::Consumer(i), d);
                return;
            }
        }
        self.consumers[i].resumed = false;
        match self.consumers[i].state {
            CState::Dead => unreachable!("handled above"),
            CState::Idle => self.consumer_fetch(i),
            CState::Next => self.consumer_next(i),
            CState::Handled => self.consumer_handled(i),
            CState::Retrying => self.consumer_retry(i),
            CState::Commit => self.consumer_commit(i),
        }
    }

    fn consumer_fetch(&mut self, i: usize) {
        if self.consumers[i].stop {
            self.reincarnate(i);
            self.schedule(Actor::Consumer(i), 0);
            return;
        }
        if !self.up() {
            self.counts.store_errors += 1;
            self.schedule(Actor::Consumer(i), 100);
            return;
        }
        let (batch, name) = (self.opts.batch as usize, self.consumers[i].name.clone());
        let claim = self.now - self.consumers[i].last_claim >= self.opts.claim_interval_ms as i64;
        let work: Vec<Work> = if claim {
            self.consumers[i].last_claim = self.now;
            let cursor = self.consumers[i].cursor.clone();
            let idle = Duration::from_millis(self.opts.claim_idle_ms);
            let (next, got) = self.store.autoclaim(&name, idle, &cursor, batch).expect("model autoclaim");
            self.consumers[i].cursor = next;
            self.counts.reclaimed += got.len() as u64;
            if !got.is_empty() {
                let ids: Vec<String> = got.iter().map(|(e, t)| format!("{}#{t}", e.id)).collect();
                self.log(format_args!("{name} reclaimed {}", ids.join(",")));
            }
            got.into_iter().map(|(entry, token)| Work { entry, token }).collect()
        } else {
            let got = self.store.read_new(&name, batch).expect("model read");
            if !got.is_empty() {
                let ids: Vec<&str> = got.iter().map(|e| e.id.as_str()).collect();
                self.log(format_args!("{name} read {}", ids.join(",")));
            }
            got.into_iter().map(|entry| Work { entry, token: 1 }).collect()
        };
        if work.is_empty() {
            if claim {
                // As `run_consumer`: an empty reclaim goes straight on to a (blocking) read.
                self.schedule(Actor::Consumer(i), 0);
            } else {
                // An empty blocking read: returns when entries arrive or `block` ends.
                self.poll(i);
            }
            return;
        }
        let c = &mut self.consumers[i];
        c.queue = work.into();
        c.state = CState::Next;
        self.schedule(Actor::Consumer(i), 0);
    }

    fn policy(&self) -> crate::core::RetryPolicy {
        crate::core::RetryPolicy {
            max_deliveries: self.opts.max_deliveries,
            backoff_base: Duration::from_millis(20),
            backoff_max: Duration::from_millis(500),
        }
    }

    fn dead_letter(&mut self, i: usize, w: &Work, reason: &str) {
        let name = self.consumers[i].name.clone();
        if !self.up() {
            self.counts.store_errors += 1;
            return;
        }
        self.counts.dead_letter_calls += 1;
        let ok = self.store.dead_letter(&name, &w.entry.id, w.token, reason);
        self.log(format_args!("{name} dead-letter {}#{} {ok}: {reason}", w.entry.id, w.token));
    }

    fn consumer_next(&mut self, i: usize) {
        if self.consumers[i].stop {
            // Not started: hand back at once rather than make others wait `claim_idle`.
            let ids: Vec<String> = self.consumers[i].queue.drain(..).map(|w| w.entry.id).collect();
            if !ids.is_empty() && self.up() {
                let name = self.consumers[i].name.clone();
                let idle = Duration::from_millis(self.opts.claim_idle_ms * 10);
                let n = self.store.release(&name, &ids, idle);
                self.counts.released += n;
                self.log(format_args!("{name} released {n} of {}", ids.len()));
            }
            self.consumers[i].state = CState::Commit;
            self.schedule(Actor::Consumer(i), 0);
            return;
        }
        let Some(w) = self.consumers[i].queue.pop_front() else {
            self.consumers[i].state = CState::Commit;
            if !self.consumers[i].finished.is_empty() && self.pm(self.opts.faults.delayed_commit) {
                let d = self.rng.range(self.opts.faults.delay_ms.0, self.opts.faults.delay_ms.1) as i64;
                self.counts.delayed_commits += 1;
                let name = self.consumers[i].name.clone();
                self.log(format_args!("fault delay-commit {name} {d}"));
                self.schedule(Actor::Consumer(i), d);
            } else {
                self.schedule(Actor::Consumer(i), 0);
            }
            return;
        };
        match admit(&w.entry.fields, w.token, &self.policy(), MAX_PAYLOAD) {
            Admit::DeadLetter(reason) => {
                self.dead_letter(i, &w, &reason);
                self.schedule(Actor::Consumer(i), 0);
            }
            Admit::Handle(ev) => {
                self.consumers[i].current = Some((w, ev));
                self.consumers[i].state = CState::Handled;
                let t = self.rng.range(self.opts.work_ms.0, self.opts.work_ms.1) as i64;
                self.schedule(Actor::Consumer(i), t);
            }
        }
    }

    /// The handler finished: its outcome, then the core's decision.
    fn consumer_handled(&mut self, i: usize) {
        let f = self.opts.faults.clone();
        let (w, ev) = self.consumers[i].current.take().expect("handling something");
        let name = self.consumers[i].name.clone();
        // The witness outside the commit path: every run, before the handler decides.
        self.checker.handler_run(&ev.event_id, &w.entry.id);
        let result = if self.pm(f.handler_permanent) {
            self.counts.handler_permanent += 1;
            Err(HandlerError::Permanent("refused".into()))
        } else if self.pm(f.handler_transient) {
            self.counts.handler_transient += 1;
            Err(HandlerError::Transient("backend down".into()))
        } else {
            let rec = format!("{}|{name}|{}", ev.event_id, w.entry.id);
            Ok(vec![Effect::new("RPUSH", [self.store.keys.effects.as_bytes(), rec.as_bytes()])])
        };
        let unit = self.rng.unit();
        match after_handler(result, w.token, &self.policy(), unit) {
            Next::Commit(effects) => {
                self.consumers[i].finished.push((w, ev, effects));
                self.consumers[i].state = CState::Next;
                self.schedule(Actor::Consumer(i), 0);
            }
            Next::DeadLetter(reason) => {
                self.dead_letter(i, &w, &reason);
                self.consumers[i].state = CState::Next;
                self.schedule(Actor::Consumer(i), 0);
            }
            Next::Retry { after } => {
                self.consumers[i].current = Some((w, ev));
                self.consumers[i].state = CState::Retrying;
                self.schedule(Actor::Consumer(i), after.as_millis() as i64);
            }
        }
    }

    fn consumer_retry(&mut self, i: usize) {
        let (mut w, ev) = self.consumers[i].current.take().expect("retrying something");
        self.consumers[i].state = CState::Next;
        if !self.up() {
            self.counts.store_errors += 1;
            self.schedule(Actor::Consumer(i), 0);
            return;
        }
        let name = self.consumers[i].name.clone();
        self.counts.retries += 1;
        match self.store.retry(&name, &w.entry.id, w.token) {
            Some(t) => {
                self.log(format_args!("{name} retry {} -> #{t}", w.entry.id));
                w.token = t;
                self.consumers[i].current = Some((w, ev));
                self.consumers[i].state = CState::Handled;
                let t = self.rng.range(self.opts.work_ms.0, self.opts.work_ms.1) as i64;
                self.schedule(Actor::Consumer(i), t);
            }
            None => {
                self.log(format_args!("{name} retry {} lost it", w.entry.id));
                self.schedule(Actor::Consumer(i), 0);
            }
        }
    }

    fn consumer_commit(&mut self, i: usize) {
        let finished = std::mem::take(&mut self.consumers[i].finished);
        self.consumers[i].state = CState::Idle;
        if !finished.is_empty() {
            let name = self.consumers[i].name.clone();
            if self.up() {
                let items: Vec<CommitItem<'_>> = finished
                    .iter()
                    .map(|(w, ev, eff)| CommitItem { entry_id: &w.entry.id, token: w.token, event: ev, effects: eff })
                    .collect();
                let out = self.store.commit(&name, self.ledger(), &items).expect("allowed effects only");
                let mut codes = String::new();
                for (o, (w, _, _)) in out.iter().zip(&finished) {
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
                    let _ = write!(codes, "{}#{}:{c} ", w.entry.id, w.token);
                }
                self.log(format_args!("{name} commit {codes}"));
            } else {
                // Not committed: the entries stay pending and are reclaimed after claim_idle.
                self.counts.store_errors += 1;
                self.log(format_args!("{name} commit failed: redis down"));
            }
        }
        self.schedule(Actor::Consumer(i), 0);
    }
}
