//! Property tests (`just model`): the consumer and commit protocol, run on the in-memory model
//! through the real script logic, against a plain reference model (proptest-state-machine:
//! deliver, commit, crash, pause, reclaim, retry, release, replay, tick), and round trips of
//! every encoding. Failures shrink to a minimal sequence; `proptest-regressions/` keeps them.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;
use proptest_state_machine::{prop_state_machine, ReferenceStateMachine, StateMachineTest};

use expiry_stream::core::{
    backoff, decode_entry, encode_entry, event_id, CommitOutcome, DecodeError, Effect, Event, Via,
};
use expiry_stream::store::model::{Model, StreamId};
use expiry_stream::store::ModelStore;
use expiry_stream::store::{CommitItem, LedgerConfig, Safety};

/// Minimal failing cases found so far, re-run first on every run (committed).
const REGRESSIONS: &str = "proptest-regressions/model.txt";

// ---------------------------------------------------------------- reference model

const CONSUMERS: usize = 2;
/// The claim timeout (ms) every reclaim uses.
const CLAIM: i64 = 100;
const RELEASE_IDLE: i64 = CLAIM * 10;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum EState {
    New,
    Pending { owner: (usize, u32), token: u64, delivered: i64 },
    Gone,
}

#[derive(Clone, Debug)]
struct REntry {
    event: u32,
    state: EState,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Held {
    entry: usize,
    token: u64,
}

/// Plain data: what the protocol promises, with no Redis in it.
#[derive(Clone, Debug, Default)]
struct Ref {
    now: i64,
    events: u32,
    entries: Vec<REntry>,
    ledger: BTreeSet<u32>,
    effects: BTreeMap<u32, u32>,
    held: [Vec<Held>; CONSUMERS],
    incarnation: [u32; CONSUMERS],
    /// What the last transition must have returned.
    expect: Expect,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
enum Expect {
    #[default]
    Nothing,
    /// Entry indexes handed to the consumer, with tokens.
    Got(Vec<Held>),
    Outcomes(Vec<CommitOutcome>),
    Retried(Option<u64>),
    Released(u64),
}

#[derive(Clone, Debug)]
enum T {
    /// A capture path emits a new event.
    Capture,
    Deliver {
        c: usize,
        count: usize,
    },
    Commit {
        c: usize,
        pick: usize,
        n: usize,
    },
    /// The consumer process dies: its in-memory batch is gone; it comes back under a new name.
    Crash {
        c: usize,
    },
    /// Time passes while a consumer is frozen (a pause past the claim timeout when long).
    Tick {
        ms: i64,
    },
    Reclaim {
        c: usize,
        count: usize,
    },
    Retry {
        c: usize,
        pick: usize,
    },
    Release {
        c: usize,
    },
    /// A committed event's entry is added to the stream again.
    Replay {
        pick: usize,
    },
}

fn pending_scan(r: &mut Ref, c: usize, count: usize) -> Vec<Held> {
    // XAUTOCLAIM from 0-0: PEL in id order, at most count*10 attempts.
    let mut attempts = count * 10;
    let mut left = count;
    let mut got = vec![];
    let owner = (c, r.incarnation[c]);
    for (i, e) in r.entries.iter_mut().enumerate() {
        if attempts == 0 || left == 0 {
            break;
        }
        if let EState::Pending { token, delivered, .. } = e.state {
            attempts -= 1;
            if r.now - delivered >= CLAIM {
                e.state = EState::Pending { owner, token: token + 1, delivered: r.now };
                got.push(Held { entry: i, token: token + 1 });
                left -= 1;
            }
        }
    }
    got
}

impl ReferenceStateMachine for Ref {
    type State = Ref;
    type Transition = T;

    fn init_state() -> BoxedStrategy<Ref> {
        Just(Ref::default()).boxed()
    }

    fn transitions(s: &Ref) -> BoxedStrategy<T> {
        let c = 0..CONSUMERS;
        let mut options: Vec<(u32, BoxedStrategy<T>)> = vec![
            (3, Just(T::Capture).boxed()),
            (3, (c.clone(), 1..4usize).prop_map(|(c, count)| T::Deliver { c, count }).boxed()),
            (1, c.clone().prop_map(|c| T::Crash { c }).boxed()),
            (2, prop_oneof![1..CLAIM, CLAIM..CLAIM * 3].prop_map(|ms| T::Tick { ms }).boxed()),
            (2, (c.clone(), 1..4usize).prop_map(|(c, count)| T::Reclaim { c, count }).boxed()),
        ];
        if s.held.iter().any(|h| !h.is_empty()) {
            options.push((
                4,
                (c.clone(), any::<usize>(), 1..3usize).prop_map(|(c, pick, n)| T::Commit { c, pick, n }).boxed(),
            ));
            options.push((1, (c.clone(), any::<usize>()).prop_map(|(c, pick)| T::Retry { c, pick }).boxed()));
            options.push((1, c.clone().prop_map(|c| T::Release { c }).boxed()));
        }
        if !s.ledger.is_empty() {
            options.push((1, any::<usize>().prop_map(|pick| T::Replay { pick }).boxed()));
        }
        proptest::strategy::Union::new_weighted(options).boxed()
    }

    fn preconditions(s: &Ref, t: &T) -> bool {
        match t {
            T::Commit { c, .. } | T::Retry { c, .. } | T::Release { c } => !s.held[*c].is_empty(),
            T::Replay { .. } => !s.ledger.is_empty(),
            _ => true,
        }
    }

    fn apply(mut s: Ref, t: &T) -> Ref {
        s.expect = Expect::Nothing;
        match *t {
            T::Capture => {
                s.entries.push(REntry { event: s.events, state: EState::New });
                s.events += 1;
            }
            T::Deliver { c, count } => {
                let owner = (c, s.incarnation[c]);
                let now = s.now;
                let mut got = vec![];
                for (i, e) in s.entries.iter_mut().enumerate() {
                    if got.len() == count {
                        break;
                    }
                    if e.state == EState::New {
                        e.state = EState::Pending { owner, token: 1, delivered: now };
                        got.push(Held { entry: i, token: 1 });
                    }
                }
                s.held[c].extend(got.iter().copied());
                s.expect = Expect::Got(got);
            }
            T::Commit { c, pick, n } => {
                let mut out = vec![];
                for h in take_held(&mut s.held[c], pick, n) {
                    let owner = (c, s.incarnation[c]);
                    let e = &mut s.entries[h.entry];
                    let owns =
                        matches!(e.state, EState::Pending { owner: o, token, .. } if o == owner && token == h.token);
                    if !owns {
                        out.push(CommitOutcome::NotOwner);
                        continue;
                    }
                    e.state = EState::Gone;
                    if s.ledger.insert(e.event) {
                        *s.effects.entry(e.event).or_insert(0) += 1;
                        out.push(CommitOutcome::Committed);
                    } else {
                        out.push(CommitOutcome::AlreadyApplied);
                    }
                }
                s.expect = Expect::Outcomes(out);
            }
            T::Crash { c } => {
                s.held[c].clear();
                s.incarnation[c] += 1;
            }
            T::Tick { ms } => s.now += ms,
            T::Reclaim { c, count } => {
                let got = pending_scan(&mut s, c, count);
                s.held[c].extend(got.iter().copied());
                s.expect = Expect::Got(got);
            }
            T::Retry { c, pick } => {
                let h = take_held(&mut s.held[c], pick, 1)[0];
                let owner = (c, s.incarnation[c]);
                let now = s.now;
                let e = &mut s.entries[h.entry];
                let r = match e.state {
                    EState::Pending { owner: o, token, .. } if o == owner && token == h.token => {
                        e.state = EState::Pending { owner, token: token + 1, delivered: now };
                        s.held[c].push(Held { entry: h.entry, token: token + 1 });
                        Some(token + 1)
                    }
                    _ => None,
                };
                s.expect = Expect::Retried(r);
            }
            T::Release { c } => {
                let owner = (c, s.incarnation[c]);
                let mut n = 0;
                let held = std::mem::take(&mut s.held[c]);
                for h in held {
                    if let EState::Pending { owner: o, token, .. } = s.entries[h.entry].state {
                        if o == owner {
                            s.entries[h.entry].state =
                                EState::Pending { owner, token, delivered: s.now - RELEASE_IDLE };
                            n += 1;
                        }
                    }
                }
                s.expect = Expect::Released(n);
            }
            T::Replay { pick } => {
                let ev = *s.ledger.iter().nth(pick % s.ledger.len()).expect("non-empty");
                s.entries.push(REntry { event: ev, state: EState::New });
            }
        }
        s
    }
}

/// Removes `n` held items starting at `pick` (mod len), in order.
fn take_held(held: &mut Vec<Held>, pick: usize, n: usize) -> Vec<Held> {
    let start = pick % held.len();
    let n = n.min(held.len() - start);
    held.drain(start..start + n).collect()
}

// ---------------------------------------------------------------- system under test

struct Sut {
    store: ModelStore,
    /// Entry ids in creation order (the reference's entry indexes).
    ids: Vec<String>,
    events: Vec<Event>,
    held: [Vec<(usize, u64)>; CONSUMERS],
    incarnation: [u32; CONSUMERS],
}

impl Sut {
    fn name(&self, c: usize) -> String {
        format!("c{c}.{}", self.incarnation[c])
    }
    fn index_of(&self, id: &str) -> usize {
        self.ids.iter().position(|x| x == id).expect("known entry id")
    }
    fn ledger() -> LedgerConfig {
        LedgerConfig { bucket: Duration::from_secs(60), retention: Duration::from_secs(3600), safety: Safety::ON }
    }
    fn effects(&mut self) -> BTreeMap<String, u32> {
        let k = self.store.keys.effects.clone();
        let mut m = BTreeMap::new();
        for rec in self.store.model.lrange_all(k.as_bytes()).unwrap() {
            let s = String::from_utf8(rec).unwrap();
            *m.entry(s.split('|').next().unwrap().to_string()).or_insert(0) += 1;
        }
        m
    }
}

fn event(n: u32) -> Event {
    let key = format!("{{p}}:k:{n}").into_bytes();
    let deadline_ms = 1_000 + i64::from(n);
    Event {
        event_id: event_id(&key, deadline_ms),
        key,
        deadline_ms,
        via: Via::Sweeper,
        captured_ms: 2_000,
        payload: vec![],
    }
}

struct Protocol;

impl StateMachineTest for Protocol {
    type SystemUnderTest = Sut;
    type Reference = Ref;

    fn init_test(_: &Ref) -> Sut {
        Sut {
            store: ModelStore::new(Model::new(10_000), "p", "g"),
            ids: vec![],
            events: vec![],
            held: Default::default(),
            incarnation: [0; CONSUMERS],
        }
    }

    fn apply(mut s: Sut, r: &Ref, t: T) -> Sut {
        match t {
            T::Capture => {
                let ev = event(s.events.len() as u32);
                s.ids.push(s.store.xadd_raw(encode_entry(&ev)));
                s.events.push(ev);
            }
            T::Replay { .. } => {
                // The reference chose the event; the new entry is its last one.
                let ev = s.events[r.entries.last().unwrap().event as usize].clone();
                s.ids.push(s.store.xadd_raw(encode_entry(&ev)));
            }
            T::Deliver { c, count } => {
                let name = s.name(c);
                let got = s.store.read_new(&name, count).unwrap();
                let got: Vec<Held> = got.iter().map(|e| Held { entry: s.index_of(&e.id), token: 1 }).collect();
                s.held[c].extend(got.iter().map(|h| (h.entry, h.token)));
                assert_eq!(Expect::Got(got), r.expect);
            }
            T::Reclaim { c, count } => {
                let name = s.name(c);
                let (_, got) = s.store.autoclaim(&name, Duration::from_millis(CLAIM as u64), "0-0", count).unwrap();
                let got: Vec<Held> = got.iter().map(|(e, t)| Held { entry: s.index_of(&e.id), token: *t }).collect();
                s.held[c].extend(got.iter().map(|h| (h.entry, h.token)));
                assert_eq!(Expect::Got(got), r.expect);
            }
            T::Commit { c, pick, n } => {
                let name = s.name(c);
                let start = pick % s.held[c].len();
                let n = n.min(s.held[c].len() - start);
                let batch: Vec<(usize, u64)> = s.held[c].drain(start..start + n).collect();
                let effects: Vec<Vec<Effect>> = batch
                    .iter()
                    .map(|(i, _)| {
                        let ev = &s.events[r.entries[*i].event as usize];
                        let rec = format!("{}|{name}|{}", ev.event_id, s.ids[*i]);
                        vec![Effect::new("RPUSH", [s.store.keys.effects.as_bytes(), rec.as_bytes()])]
                    })
                    .collect();
                let items: Vec<CommitItem<'_>> = batch
                    .iter()
                    .zip(&effects)
                    .map(|((i, token), eff)| CommitItem {
                        entry_id: &s.ids[*i],
                        token: *token,
                        event: &s.events[r.entries[*i].event as usize],
                        effects: eff,
                    })
                    .collect();
                let out = s.store.commit(&name, Sut::ledger(), &items).unwrap();
                drop(items);
                assert_eq!(Expect::Outcomes(out), r.expect);
            }
            T::Crash { c } => {
                s.held[c].clear();
                s.incarnation[c] += 1;
            }
            T::Tick { ms } => s.store.model.advance(ms),
            T::Retry { c, pick } => {
                let name = s.name(c);
                let i = pick % s.held[c].len();
                let (e, token) = s.held[c].remove(i);
                let got = s.store.retry(&name, &s.ids[e], token);
                if let Some(t) = got {
                    s.held[c].push((e, t));
                }
                assert_eq!(Expect::Retried(got), r.expect);
            }
            T::Release { c } => {
                let name = s.name(c);
                let ids: Vec<String> = s.held[c].drain(..).map(|(e, _)| s.ids[e].clone()).collect();
                let n = s.store.release(&name, &ids, Duration::from_millis(RELEASE_IDLE as u64));
                assert_eq!(Expect::Released(n), r.expect);
            }
        }
        s
    }

    fn check_invariants(s: &Sut, r: &Ref) {
        let mut s2 = Sut {
            store: s.store.clone(),
            ids: s.ids.clone(),
            events: vec![],
            held: Default::default(),
            incarnation: s.incarnation,
        };
        // Safety: never more than one effect per event, and exactly the reference's effects.
        let effects = s2.effects();
        assert!(effects.values().all(|n| *n == 1), "an event was effected twice: {effects:?}");
        let expect: BTreeMap<String, u32> = r.effects.iter().map(|(e, n)| (event(*e).event_id, *n)).collect();
        assert_eq!(effects, expect);
        // The PEL is exactly the reference's pending entries (owner, delivery count).
        let pel: Vec<(usize, String, u64)> =
            s2.store.pending_all().into_iter().map(|(id, c, _, n)| (s2.index_of(&id), c, n)).collect();
        let want: Vec<(usize, String, u64)> = r
            .entries
            .iter()
            .enumerate()
            .filter_map(|(i, e)| match e.state {
                EState::Pending { owner, token, .. } => Some((i, format!("c{}.{}", owner.0, owner.1), token)),
                _ => None,
            })
            .collect();
        assert_eq!(pel, want);
        // Committed entries are gone from the stream; the rest are still there.
        let live = s2.store.range(&s2.store.keys.stream.clone()).len();
        assert_eq!(live, r.entries.iter().filter(|e| e.state != EState::Gone).count());
    }
}

prop_state_machine! {
    #![proptest_config(ProptestConfig {
        cases: 400,
        max_shrink_iters: 4096,
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(REGRESSIONS))),
        .. ProptestConfig::default()
    })]
    #[test]
    fn consumer_and_commit_protocol_matches_the_reference(sequential 1..60 => Protocol);
}

// ---------------------------------------------------------------- encodings

fn via() -> impl Strategy<Value = Via> {
    prop_oneof![Just(Via::Notification), Just(Via::Sweeper), Just(Via::Write)]
}

fn any_event() -> impl Strategy<Value = Event> {
    (
        proptest::collection::vec(any::<u8>(), 0..40),
        0i64..=i64::MAX / 2,
        via(),
        0i64..=i64::MAX / 2,
        proptest::collection::vec(any::<u8>(), 0..64),
    )
        .prop_map(|(key, deadline_ms, via, captured_ms, payload)| Event {
            event_id: event_id(&key, deadline_ms),
            key,
            deadline_ms,
            via,
            captured_ms,
            payload,
        })
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 512,
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(REGRESSIONS))),
        .. ProptestConfig::default()
    })]

    #[test]
    fn entries_round_trip(ev in any_event()) {
        prop_assert_eq!(decode_entry(&encode_entry(&ev), 1 << 20), Ok(ev));
    }

    #[test]
    fn decode_never_panics_and_refuses_what_capture_would_not_write(
        fields in proptest::collection::vec(
            (prop_oneof![Just(b"k".to_vec()), Just(b"d".to_vec()), Just(b"id".to_vec()), Just(b"via".to_vec()),
                         Just(b"c".to_vec()), Just(b"p".to_vec()), proptest::collection::vec(any::<u8>(), 0..4)],
             proptest::collection::vec(any::<u8>(), 0..12)),
            0..9)
    ) {
        if let Ok(ev) = decode_entry(&fields, 1 << 20) {
            // Whatever decodes must re-encode to the same fields (up to order).
            let mut a = encode_entry(&ev);
            let mut b = fields.clone();
            a.sort();
            b.sort();
            prop_assert_eq!(a, b);
        }
    }

    #[test]
    fn a_tampered_event_id_is_refused(ev in any_event(), flip in 0usize..32) {
        let mut f = encode_entry(&ev);
        let id = &mut f[2].1;
        id[flip] = if id[flip] == b'0' { b'1' } else { b'0' };
        let refused = matches!(decode_entry(&f, 1 << 20), Err(DecodeError::IdMismatch { .. }));
        prop_assert!(refused);
    }

    #[test]
    fn event_ids_are_32_hex_and_separate_key_and_deadline(
        k1 in proptest::collection::vec(any::<u8>(), 0..12), d1 in 0i64..1_000_000,
        k2 in proptest::collection::vec(any::<u8>(), 0..12), d2 in 0i64..1_000_000,
    ) {
        let a = event_id(&k1, d1);
        prop_assert_eq!(a.len(), 32);
        prop_assert!(a.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
        prop_assert_eq!(a == event_id(&k2, d2), (k1, d1) == (k2, d2));
    }

    #[test]
    fn stream_ids_round_trip(ms in any::<u64>(), seq in any::<u64>()) {
        let id = StreamId { ms, seq };
        prop_assert_eq!(StreamId::parse(&id.to_string()), Some(id));
    }

    #[test]
    fn backoff_stays_within_half_to_full_ceiling(attempt in 0u32..64, base in 1u64..1000, max in 1u64..100_000, unit in any::<f64>()) {
        let (b, m) = (Duration::from_millis(base), Duration::from_millis(max));
        let d = backoff(attempt, b, m, unit);
        let ceiling = b.saturating_mul(1u32 << attempt.saturating_sub(1).min(30)).min(m);
        prop_assert!(d <= ceiling);
        prop_assert!(d >= ceiling / 2);
    }

    /// The model's sorted set against a plain map.
    #[test]
    fn zset_matches_a_map(ops in proptest::collection::vec((0u8..6, 0i64..5, any::<bool>()), 0..60)) {
        let mut m = Model::new(0);
        let mut reference: BTreeMap<u8, i64> = BTreeMap::new();
        for (member, score, add) in ops {
            let name = [member];
            if add {
                m.zadd(b"z", score, &name).unwrap();
                reference.insert(member, score);
            } else {
                m.zrem(b"z", &name).unwrap();
                reference.remove(&member);
            }
        }
        let mut want: Vec<(Vec<u8>, i64)> = reference.iter().map(|(k, v)| (vec![*k], *v)).collect();
        want.sort_by(|a, b| (a.1, &a.0).cmp(&(b.1, &b.0)));
        prop_assert_eq!(m.zrange_all(b"z").unwrap(), want);
        prop_assert_eq!(m.exists(b"z"), !reference.is_empty());
    }
}

// ---------------------------------------------------------------- the production driver on the model

/// Pushes `<key>|<consumer>` to the effects list; the consumer named `slow` holds every batch
/// far longer than the claim timeout (it is killed holding one).
struct PushEffect {
    effects: String,
    slow: String,
    /// Every event takes this long to handle.
    work: Duration,
}

impl expiry_stream::consume::Handler for PushEffect {
    fn handle<'a>(
        &'a self,
        event: &'a Event,
        d: &'a expiry_stream::consume::Delivery,
    ) -> expiry_stream::consume::HandlerFuture<'a> {
        Box::pin(async move {
            if d.consumer == self.slow {
                tokio::time::sleep(Duration::from_secs(3600)).await;
            }
            tokio::time::sleep(self.work).await;
            let rec = format!("{}|{}", event.key_lossy(), d.consumer);
            Ok(vec![Effect::new("RPUSH", [self.effects.as_bytes(), rec.as_bytes()])])
        })
    }
}

/// The production consumer, unchanged: `consume::run_consumer` (the tokio driver of the
/// state machine) and the group committer, on the model through the store seam
/// (`store::Store` for `SharedModel`), running the real scripts. Three consumers; one is
/// killed (its task aborted) while it holds entries it will never commit; the others reclaim
/// them. Every event is applied exactly once, judged from the model's effects list.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_production_consumer_runs_on_the_model_and_applies_each_event_once() {
    use expiry_stream::consume::{self, Committer, ConsumerConfig, ConsumerStats};
    use expiry_stream::store::SharedModel;
    use std::sync::Arc;

    const KEYS: usize = 300;
    let store = SharedModel::new(ModelStore::new(Model::new(1_000_000), "drv", "g"));
    let items: Vec<(Vec<u8>, Vec<u8>, Duration)> =
        (0..KEYS).map(|i| (format!("k{i}").into_bytes(), b"v".to_vec(), Duration::from_millis(1 + i as u64))).collect();
    store.with(|m| m.write_batch(&items));
    let effects = store.with(|m| m.keys.effects.clone());
    let names: Vec<String> = (0..3).map(|i| consume::consumer_name("c", i)).collect();
    let handler = Arc::new(PushEffect { effects: effects.clone(), slow: names[0].clone(), work: Duration::ZERO });
    let cfg = ConsumerConfig {
        batch: 8,
        block: Duration::from_millis(20),
        claim_idle: Duration::from_millis(300),
        claim_interval: Duration::from_millis(50),
        ..ConsumerConfig::default()
    };
    let committer = Committer::spawn(store.clone(), cfg.ledger, 64);
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let mut tasks = vec![];
    let mut stats = vec![];
    for n in &names {
        let (s, h, c, cm, rx) = (store.clone(), handler.clone(), cfg.clone(), committer.clone(), stop_rx.clone());
        let st = Arc::new(ConsumerStats::default());
        stats.push(st.clone());
        tasks.push(tokio::spawn(consume::run_consumer(s, n.clone(), h, c, st, cm, rx, false)));
    }

    // Capture as the keys fall due (the sweeper's script), until every key is in the stream.
    let mut emitted = 0;
    let mut killed_holding = 0;
    let t0 = std::time::Instant::now();
    while emitted < KEYS as u64 {
        emitted += store.with(|m| m.sweep(100)).emitted;
        // Kill the slow consumer once it holds entries (it never commits them).
        if !tasks[0].is_finished() {
            let held = store.with(|m| m.pending_all()).iter().filter(|p| p.1 == names[0]).count();
            if held > 0 {
                tasks[0].abort();
                killed_holding = held;
            }
        }
        assert!(t0.elapsed() < Duration::from_secs(30), "captured only {emitted} of {KEYS}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let drained = || store.with(|m| m.backlog()).is_empty();
    while !drained() {
        assert!(t0.elapsed() < Duration::from_secs(60), "not drained: {:?}", store.with(|m| m.backlog()));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop.send(true).unwrap();
    for t in tasks.drain(1..) {
        t.await.unwrap().unwrap();
    }
    assert!(killed_holding > 0, "the killed consumer held nothing: the kill did not bite");

    let lrange = [b"LRANGE".to_vec(), effects.into_bytes(), b"0".to_vec(), b"-1".to_vec()];
    let recs = match store.with(|m| m.call(&lrange)).unwrap() {
        expiry_stream::store::model::Reply::Array(a) => a,
        other => panic!("LRANGE: {other:?}"),
    };
    let mut per_key: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for r in recs {
        let expiry_stream::store::model::Reply::Bulk(b) = r else { panic!("effect record {r:?}") };
        let rec = String::from_utf8(b).unwrap();
        let (key, consumer) = rec.split_once('|').unwrap();
        per_key.entry(key.to_string()).or_default().push(consumer.to_string());
    }
    let twice: Vec<_> = per_key.iter().filter(|(_, c)| c.len() > 1).collect();
    assert!(twice.is_empty(), "applied more than once: {twice:?}");
    assert_eq!(per_key.len(), KEYS, "lost: {} of {KEYS} never applied", KEYS - per_key.len());
    assert!(per_key.values().all(|c| c[0] != names[0]), "the killed consumer applied nothing");
    // The library's counters, held to what happened: the survivors committed every event and
    // took over at least what the killed one held.
    let survivors: Vec<_> = stats[1..].iter().map(|s| s.snapshot()).collect();
    assert_eq!(survivors.iter().map(|c| c.committed).sum::<u64>(), KEYS as u64, "{survivors:?}");
    assert!(survivors.iter().map(|c| c.reclaimed).sum::<u64>() >= killed_holding as u64, "{survivors:?}");
}

/// The model store with a connection that fails `fails` times first, retryably or not (the
/// rest is the model, unchanged): for the driver's connection retries.
#[derive(Clone)]
struct FailingConnects {
    inner: expiry_stream::store::SharedModel,
    fails: std::sync::Arc<std::sync::atomic::AtomicU32>,
    retryable: bool,
    /// The consumers of each group commit call, in call order.
    commits: std::sync::Arc<std::sync::Mutex<Vec<Vec<String>>>>,
}

impl expiry_stream::store::Store for FailingConnects {
    type Conn = ();

    async fn dedicated(&self) -> expiry_stream::store::Result<()> {
        use std::sync::atomic::Ordering::SeqCst;
        if self.fails.fetch_update(SeqCst, SeqCst, |n| n.checked_sub(1)).is_ok() {
            return Err(if self.retryable {
                redis::RedisError::from(std::io::Error::from(std::io::ErrorKind::ConnectionRefused)).into()
            } else {
                expiry_stream::store::StoreError::Unsupported("no such server".into())
            });
        }
        Ok(())
    }
    async fn ensure_group(&self) -> expiry_stream::store::Result<()> {
        self.inner.ensure_group().await
    }
    async fn read_new(
        &self,
        c: &mut (),
        n: &str,
        count: usize,
        block: Duration,
    ) -> expiry_stream::store::Result<Vec<expiry_stream::store::RawEntry>> {
        self.inner.read_new(c, n, count, block).await
    }
    async fn reclaim(
        &self,
        c: &mut (),
        n: &str,
        idle: Duration,
        cursor: &str,
        count: usize,
    ) -> expiry_stream::store::Result<expiry_stream::store::Claimed> {
        self.inner.reclaim(c, n, idle, cursor, count).await
    }
    async fn commit_group(
        &self,
        l: LedgerConfig,
        items: &[(&str, &CommitItem<'_>)],
    ) -> expiry_stream::store::Result<Vec<CommitOutcome>> {
        self.commits.lock().unwrap().push(items.iter().map(|(c, _)| c.to_string()).collect());
        // A round trip's worth of time, as a server's commit takes.
        tokio::time::sleep(Duration::from_millis(20)).await;
        self.inner.commit_group(l, items).await
    }
    async fn dead_letter(&self, c: &mut (), n: &str, id: &str, t: u64, r: &str) -> expiry_stream::store::Result<bool> {
        self.inner.dead_letter(c, n, id, t, r).await
    }
    async fn retry(&self, c: &mut (), n: &str, id: &str, t: u64) -> expiry_stream::store::Result<Option<u64>> {
        self.inner.retry(c, n, id, t).await
    }
    async fn release(&self, c: &mut (), n: &str, ids: &[String], idle: Duration) -> expiry_stream::store::Result<u64> {
        self.inner.release(c, n, ids, idle).await
    }
    async fn prune_consumers(&self, idle: Duration) -> expiry_stream::store::Result<u64> {
        self.inner.prune_consumers(idle).await
    }
}

/// One production consumer on `store` until `stop` (or its sender's drop) ends it.
fn spawn_consumer<S: expiry_stream::store::Store>(
    store: S,
    name: &str,
    cfg: &expiry_stream::consume::ConsumerConfig,
    stop: tokio::sync::watch::Receiver<bool>,
    work: Duration,
) -> tokio::task::JoinHandle<anyhow::Result<()>> {
    use expiry_stream::consume::{self, Committer, ConsumerStats};
    let effects = "drv-effects".to_string();
    let handler = std::sync::Arc::new(PushEffect { effects, slow: String::new(), work });
    let committer = Committer::spawn(store.clone(), cfg.ledger, 64);
    let stats = std::sync::Arc::new(ConsumerStats::default());
    tokio::spawn(consume::run_consumer(store, name.to_string(), handler, cfg.clone(), stats, committer, stop, false))
}

fn shared_model(ns: &str) -> expiry_stream::store::SharedModel {
    expiry_stream::store::SharedModel::new(ModelStore::new(Model::new(1_000_000), ns, "g"))
}

/// A consumer whose connections cannot be made yet retries while the failure is a connection's
/// (a restart storm must not take consumers down), and gives up at once on any other error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_retries_connecting_only_while_the_connection_is_what_fails() {
    use std::sync::atomic::AtomicU32;
    use std::sync::Arc;
    let cfg = expiry_stream::consume::ConsumerConfig::default();
    let flaky = FailingConnects {
        inner: shared_model("cr"),
        fails: Arc::new(AtomicU32::new(3)),
        retryable: true,
        commits: Arc::default(),
    };
    let (stop, rx) = tokio::sync::watch::channel(false);
    let t = spawn_consumer(flaky.clone(), "c-retry", &cfg, rx, Duration::ZERO);
    let t0 = std::time::Instant::now();
    while flaky.fails.load(std::sync::atomic::Ordering::SeqCst) > 0 {
        assert!(t0.elapsed() < Duration::from_secs(20), "the consumer stopped retrying");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.send(true).unwrap();
    let r = tokio::time::timeout(Duration::from_secs(20), t).await.expect("the consumer ends at stop").unwrap();
    assert!(r.is_ok(), "connected after three refused attempts, then ran: {r:?}");

    let broken = FailingConnects {
        inner: shared_model("cn"),
        fails: Arc::new(AtomicU32::new(1)),
        retryable: false,
        commits: Arc::default(),
    };
    let (_stop, rx) = tokio::sync::watch::channel(false);
    let t = spawn_consumer(broken, "c-broken", &cfg, rx, Duration::ZERO);
    let r = tokio::time::timeout(Duration::from_secs(20), t).await.expect("a non-connection error ends it").unwrap();
    assert!(r.unwrap_err().to_string().contains("no such server"), "the real reason is reported");
}

/// Nobody can ask a consumer to stop once its stop sender is gone: it stops by itself
/// (finishing and committing what it started) rather than run on unstoppable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_whose_stop_sender_is_dropped_stops() {
    let (stop, rx) = tokio::sync::watch::channel(false);
    let cfg = expiry_stream::consume::ConsumerConfig::default();
    let t = spawn_consumer(shared_model("drop"), "c-drop", &cfg, rx, Duration::ZERO);
    tokio::time::sleep(Duration::from_millis(100)).await;
    drop(stop);
    let r = tokio::time::timeout(Duration::from_secs(20), t).await.expect("the consumer stops").unwrap();
    assert!(r.is_ok(), "{r:?}");
}

/// What a consumer read but never started is released at stop, marked idle long enough that
/// another consumer reclaims it at once, not a whole claim timeout later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_released_at_stop_are_reclaimed_at_once_by_another_consumer() {
    let store = shared_model("rel");
    let items: Vec<(Vec<u8>, Vec<u8>, Duration)> =
        (0..40).map(|i| (format!("r{i}").into_bytes(), b"v".to_vec(), Duration::from_millis(1))).collect();
    store.with(|m| m.write_batch(&items));
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(store.with(|m| m.sweep(100)).emitted, 40);
    // A long claim timeout: only a release makes the entries claimable soon.
    let cfg = expiry_stream::consume::ConsumerConfig {
        batch: 8,
        block: Duration::from_millis(20),
        claim_idle: Duration::from_secs(30),
        claim_interval: Duration::from_millis(50),
        ..expiry_stream::consume::ConsumerConfig::default()
    };
    // The first consumer handles slowly, so its next read waits unstarted (read-ahead) when
    // it is stopped: those entries are released, not handled.
    let (stop_a, rx) = tokio::sync::watch::channel(false);
    let a = spawn_consumer(store.clone(), "c-a", &cfg, rx, Duration::from_millis(300));
    let t0 = std::time::Instant::now();
    while store.with(|m| m.pending_all()).len() < 2 {
        assert!(t0.elapsed() < Duration::from_secs(10), "nothing was read ahead");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    stop_a.send(true).unwrap();
    a.await.unwrap().unwrap();
    let released = store.with(|m| m.pending_all());
    assert!(!released.is_empty(), "the stopped consumer released nothing: the test did not bite");
    let (stop_b, rx) = tokio::sync::watch::channel(false);
    let b = spawn_consumer(store.clone(), "c-b", &cfg, rx, Duration::ZERO);
    let t1 = std::time::Instant::now();
    while !store.with(|m| m.backlog()).is_empty() {
        assert!(
            t1.elapsed() < Duration::from_secs(10),
            "released entries still pending 10 s later (claim timeout 30 s): {:?}",
            store.with(|m| m.pending_all())
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop_b.send(true).unwrap();
    b.await.unwrap().unwrap();
}

/// A server that never lets a consumer connect still ends it, with the connection error, after
/// 50 retries 100 ms apart (about five seconds): the 51st failure is the last.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_that_never_connects_gives_up_after_fifty_retries() {
    use std::sync::atomic::{AtomicU32, Ordering::SeqCst};
    use std::sync::Arc;
    let cfg = expiry_stream::consume::ConsumerConfig::default();
    let never = FailingConnects {
        inner: shared_model("nv"),
        fails: Arc::new(AtomicU32::new(51)),
        retryable: true,
        commits: Arc::default(),
    };
    let (_stop, rx) = tokio::sync::watch::channel(false);
    let t = spawn_consumer(never.clone(), "c-never", &cfg, rx, Duration::ZERO);
    let r = tokio::time::timeout(Duration::from_secs(60), t).await.expect("it gives up").unwrap();
    assert!(r.unwrap_err().to_string().contains("redis connection"), "the connection error is the reason");
    assert_eq!(never.fails.load(SeqCst), 0, "all 51 attempts were made");
}

/// The consumers of a process hand their batches to one committer, which sends what has
/// gathered as one script call: with more consumers than calls in flight (4) and commits that
/// take a round trip, calls mixing consumers happen, and no entry is committed twice or left
/// out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_group_committer_sends_batches_of_several_consumers_in_one_call() {
    use expiry_stream::consume::{self, Committer, ConsumerConfig, ConsumerStats};
    use std::sync::atomic::AtomicU32;
    use std::sync::Arc;
    let store = FailingConnects {
        inner: shared_model("grp"),
        fails: Arc::new(AtomicU32::new(0)),
        retryable: true,
        commits: Arc::default(),
    };
    let items: Vec<(Vec<u8>, Vec<u8>, Duration)> =
        (0..400).map(|i| (format!("g{i}").into_bytes(), b"v".to_vec(), Duration::from_millis(1))).collect();
    store.inner.with(|m| m.write_batch(&items));
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(store.inner.with(|m| m.sweep(1000)).emitted, 400);
    let cfg = ConsumerConfig { batch: 8, block: Duration::from_millis(20), ..ConsumerConfig::default() };
    let handler =
        Arc::new(PushEffect { effects: "grp-effects".into(), slow: String::new(), work: Duration::from_millis(1) });
    let committer = Committer::spawn(store.clone(), cfg.ledger, 64);
    let (stop, rx) = tokio::sync::watch::channel(false);
    let tasks: Vec<_> = (0..8)
        .map(|i| {
            let stats = Arc::new(ConsumerStats::default());
            let name = consume::consumer_name("g", i);
            let f = consume::run_consumer(
                store.clone(),
                name,
                handler.clone(),
                cfg.clone(),
                stats,
                committer.clone(),
                rx.clone(),
                false,
            );
            tokio::spawn(f)
        })
        .collect();
    let t0 = std::time::Instant::now();
    while !store.inner.with(|m| m.backlog()).is_empty() {
        assert!(t0.elapsed() < Duration::from_secs(30), "not drained");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop.send(true).unwrap();
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    let calls = store.commits.lock().unwrap().clone();
    let entries: usize = calls.iter().map(|c| c.len()).sum();
    assert_eq!(entries, 400, "every entry committed once");
    let mixed = calls.iter().filter(|c| c.iter().collect::<BTreeSet<_>>().len() > 1).count();
    assert!(mixed > 0, "no commit call mixed consumers in {} calls", calls.len());
}
