//! loom models (`just loom`): every interleaving of two or three threads, each model asking
//! one question. Redis is the in-memory model behind one lock, so each script call is atomic,
//! as on the server; everything between two calls may interleave. Run with
//! `LOOM_MAX_PREEMPTIONS=3 cargo test --features loom --test loom`.
//!
//! The `should_panic` models are deliberately broken (the seed's lock-only protocol, the
//! commit without its fence or without its ledger): they prove the checks can fail.
#![cfg(feature = "loom")]

use std::collections::VecDeque;
use std::time::Duration;

use expiry_stream::core::sync::{lock, thread, Arc, Mutex};
use expiry_stream::core::{decode_entry, encode_entry, CommitOutcome, Effect, Event, Via};
use expiry_stream::store::model::{Model, Reply};
use expiry_stream::store::ModelStore;
use expiry_stream::store::{CommitItem, LedgerConfig, RawEntry, Safety};

type Redis = Arc<Mutex<ModelStore>>;

/// Stack of every thread of a model. The model runs the real scripts in an embedded Lua
/// interpreter, whose parser and calls need more than loom's default (a few KiB); the first
/// thread of `loom::model` cannot be given more, so each model body runs in a thread that can.
const STACK: usize = 4 << 20;

/// `loom::model`, with the body in a thread of [`STACK`] (the extra thread only starts the
/// body and waits for it, so it adds no interleavings).
fn model<F: Fn() + Send + Sync + 'static>(body: F) {
    let body = std::sync::Arc::new(body);
    loom::model(move || {
        let body = body.clone();
        let t = thread::Builder::new().stack_size(STACK).spawn(move || body()).expect("spawn");
        if let Err(panic) = t.join() {
            std::panic::resume_unwind(panic);
        }
    });
}

/// `thread::spawn` with a stack of [`STACK`].
fn spawn<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> thread::JoinHandle<T> {
    thread::Builder::new().stack_size(STACK).spawn(f).expect("spawn")
}

const CLAIM: Duration = Duration::from_millis(100);

fn ledger(safety: Safety) -> LedgerConfig {
    // A short bucket and no retention: the ledger forgets an event at once (a legitimate
    // config), so only the fence stands between a stale consumer and a second effect.
    let short = LedgerConfig { bucket: Duration::from_millis(1), retention: Duration::ZERO, safety };
    let long = LedgerConfig { bucket: Duration::from_secs(60), retention: Duration::from_secs(3600), safety };
    if safety.fence {
        long
    } else {
        short
    }
}

/// A namespace with `n` expired tracked keys, captured into the stream.
fn captured(n: usize) -> ModelStore {
    let mut s = ModelStore::new(Model::new(1_000_000), "l", "g");
    let items: Vec<_> =
        (0..n).map(|i| (format!("k{i}").into_bytes(), b"v".to_vec(), Duration::from_millis(10))).collect();
    s.write_batch(&items);
    s.model.advance(20);
    s.sweep(100);
    s
}

fn effects(s: &mut ModelStore) -> Vec<String> {
    let k = s.keys.effects.clone();
    s.model.lrange_all(k.as_bytes()).unwrap().into_iter().map(|r| String::from_utf8(r).unwrap()).collect()
}

/// One effect per event id, or panics with the effects ledger.
fn assert_once_each(s: &mut ModelStore, events: usize) {
    let fx = effects(s);
    let mut ids: Vec<&str> = fx.iter().map(|r| r.split('|').next().unwrap()).collect();
    ids.sort();
    let n = ids.len();
    ids.dedup();
    assert_eq!(n, ids.len(), "an event was effected twice: {fx:?}");
    assert_eq!(ids.len(), events, "an event has no effect: {fx:?}");
}

/// The handler: one Redis-side effect naming the event and who applied it.
fn effect(s: &ModelStore, ev: &Event, who: &str, entry: &str) -> Vec<Effect> {
    let rec = format!("{}|{who}|{entry}", ev.event_id);
    vec![Effect::new("RPUSH", [s.keys.effects.as_bytes(), rec.as_bytes()])]
}

fn commit(r: &Redis, who: &str, e: &RawEntry, token: u64, safety: Safety) -> CommitOutcome {
    let ev = decode_entry(&e.fields, 1 << 20).unwrap();
    let mut s = lock(r);
    let eff = effect(&s, &ev, who, &e.id);
    let item = CommitItem { entry_id: &e.id, token, event: &ev, effects: &eff };
    s.commit(who, ledger(safety), &[item]).unwrap().remove(0)
}

// ------------------------------------------------------------------ capture

/// Two listeners told of the same expiration and a sweeper that finds it due: exactly one
/// stream entry, whatever the order (the index removal inside the script is the dedup).
#[test]
fn two_listeners_and_a_sweeper_capture_one_expiration_once() {
    model(|| {
        let mut s = ModelStore::new(Model::new(1_000_000), "l", "g");
        s.write_batch(&[(b"k".to_vec(), b"v".to_vec(), Duration::from_millis(10))]);
        s.model.advance(20);
        let r: Redis = Arc::new(Mutex::new(s));
        let listeners: Vec<_> = (0..2)
            .map(|_| {
                let r = r.clone();
                spawn(move || lock(&r).capture(&[b"k".to_vec()], Via::Notification).0)
            })
            .collect();
        let swept = lock(&r).sweep(10).emitted;
        let total: u64 = listeners.into_iter().map(|t| t.join().unwrap()).sum::<u64>() + swept;
        assert_eq!(total, 1);
        let mut s = lock(&r);
        let stream = s.keys.stream.clone();
        assert_eq!(s.range(&stream).len(), 1);
        assert_eq!(s.backlog().tracked, 0);
    });
}

// ------------------------------------------------------------------ pause past the claim timeout

/// Consumer A holds an entry and pauses past the claim timeout; B reclaims it and commits;
/// then A wakes and commits. Exactly one effect, in every order.
fn paused_consumer(safety: Safety) {
    model(move || {
        let mut s = captured(1);
        let a_entry = s.read_new("A", 1).unwrap().remove(0);
        let r: Redis = Arc::new(Mutex::new(s));
        let a = {
            let r = r.clone();
            // A: its handler finished; it commits whenever it wakes up.
            spawn(move || commit(&r, "A", &a_entry, 1, safety))
        };
        // B: time passes (A's pause), then B reclaims what is idle and commits it.
        lock(&r).model.advance(CLAIM.as_millis() as i64 + 1);
        let claimed = lock(&r).autoclaim("B", CLAIM, "0-0", 10).unwrap().1;
        for (e, token) in &claimed {
            commit(&r, "B", e, *token, safety);
        }
        a.join().unwrap();
        assert_once_each(&mut lock(&r), 1);
    });
}

#[test]
fn a_paused_consumers_late_commit_is_fenced() {
    paused_consumer(Safety::ON);
}

/// The same with the fence switched off (and a ledger that has forgotten): a duplicate.
#[test]
#[should_panic(expected = "effected twice")]
fn without_the_fence_a_paused_consumer_duplicates() {
    paused_consumer(Safety { fence: false, ledger: true });
}

// ------------------------------------------------------------------ replays against the ledger

/// A committed event is replayed (its entry added again) while consumers run: the ledger
/// suppresses the second delivery, whoever reads it.
fn replayed(safety: Safety) {
    model(move || {
        let mut s = captured(1);
        let first = s.read_new("A", 1).unwrap().remove(0);
        let r: Redis = Arc::new(Mutex::new(s));
        let replayer = {
            let r = r.clone();
            let fields = first.fields.clone();
            spawn(move || {
                lock(&r).xadd_raw(fields);
            })
        };
        let b = {
            let r = r.clone();
            spawn(move || {
                let got = lock(&r).read_new("B", 1).unwrap();
                for e in &got {
                    commit(&r, "B", e, 1, safety);
                }
            })
        };
        commit(&r, "A", &first, 1, safety);
        replayer.join().unwrap();
        b.join().unwrap();
        // Drain what B may have missed.
        let rest = lock(&r).read_new("C", 10).unwrap();
        for e in &rest {
            commit(&r, "C", e, 1, safety);
        }
        let mut s = lock(&r);
        assert_eq!(s.backlog(), Default::default(), "nothing left pending");
        assert_once_each(&mut s, 1);
    });
}

#[test]
fn a_replayed_entry_is_suppressed_by_the_ledger() {
    replayed(Safety::ON);
}

#[test]
#[should_panic(expected = "effected twice")]
fn without_the_ledger_a_replay_duplicates() {
    replayed(Safety { fence: true, ledger: false });
}

// ------------------------------------------------------------------ in-flight table and shutdown

/// The consumer's in-process side is the production state machine
/// ([`expiry_stream::core::consumer::Machine`]), driven here as `consume` drives it: each
/// handler runs on its own thread and reports to the machine when it finishes, while the
/// driver carries out the machine's other commands against the model and, at one moment,
/// asks it to stop. loom tries every order of those reports and the stop: a batch read, a
/// read-ahead, handlers finishing before or after the stop, the commit of what finished and
/// the release of what never started. Another consumer then reclaims the released entries at
/// once. Every event exactly once, nothing pending, and the machine's own counts agree.
#[test]
fn the_consumer_machine_with_concurrent_handlers_and_a_stop_loses_nothing_and_commits_nothing_twice() {
    use expiry_stream::core::consumer::{Command, Input, Machine, Settings};
    use expiry_stream::core::RetryPolicy;

    type Queue = Arc<Mutex<VecDeque<Command>>>;

    /// Feeds `input` and queues what the machine answers, in one critical section.
    fn feed(m: &Mutex<Machine>, q: &Queue, input: Input) {
        let mut m = lock(m);
        let mut cmds = m.on(0, input);
        cmds.extend(m.poll(0));
        lock(q).extend(cmds);
    }

    // Which ends loom reached, across all its executions (std atomics: outside the model).
    static STOP_FIRST: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    static HANDLER_FIRST: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    model(|| {
        let s = captured(3);
        let fx_key = s.keys.effects.clone();
        let r: Redis = Arc::new(Mutex::new(s));
        let settings = Settings {
            batch: 4,
            concurrency: 2,
            claim_interval: Duration::from_secs(3600),
            prune_every: None,
            policy: RetryPolicy {
                max_deliveries: 5,
                backoff_base: Duration::from_millis(1),
                backoff_max: Duration::from_millis(1),
            },
            max_payload: 1 << 20,
        };
        let m = Arc::new(Mutex::new(Machine::new(settings, 0)));
        let q: Queue = Arc::new(Mutex::new(lock(&m).poll(0).into()));
        let mut handlers: VecDeque<thread::JoinHandle<()>> = VecDeque::new();
        let mut stop_after_reads = 2;
        let mut done = false;
        while !done {
            let next = lock(&q).pop_front();
            let Some(cmd) = next else {
                // Nothing to do until a handler reports: wait for the oldest.
                let h = handlers.pop_front().expect("the machine waits for nothing");
                h.join().unwrap();
                continue;
            };
            match cmd {
                Command::Read { count } => {
                    let got = lock(&r).read_new("C", count).unwrap();
                    feed(&m, &q, Input::Read(Ok(got)));
                    stop_after_reads -= 1;
                    if stop_after_reads == 0 {
                        // Two reads in (a batch and its read-ahead), handlers may still run.
                        feed(&m, &q, Input::Stop);
                    }
                }
                Command::Handle { slot, entry_id, event, .. } => {
                    let (m, q, fx_key) = (m.clone(), q.clone(), fx_key.clone());
                    handlers.push_back(spawn(move || {
                        let rec = format!("{}|C|{entry_id}", event.event_id);
                        let effects = vec![Effect::new("RPUSH", [fx_key.as_bytes(), rec.as_bytes()])];
                        feed(&m, &q, Input::Handled { slot, result: Ok(effects), unit: 0.5 });
                    }));
                }
                Command::Commit(items) => {
                    let out = {
                        let mut s = lock(&r);
                        let its: Vec<CommitItem<'_>> = items
                            .iter()
                            .map(|h| CommitItem {
                                entry_id: &h.entry_id,
                                token: h.token,
                                event: &h.event,
                                effects: &h.effects,
                            })
                            .collect();
                        s.commit("C", ledger(Safety::ON), &its).unwrap()
                    };
                    assert!(out.iter().all(|o| *o == CommitOutcome::Committed), "{out:?}");
                    feed(&m, &q, Input::Committed(Ok(out)));
                }
                Command::Release(ids) => {
                    let n = lock(&r).release("C", &ids, CLAIM * 10);
                    assert_eq!(n, ids.len() as u64);
                    feed(&m, &q, Input::Released(Ok(n)));
                }
                Command::Done => done = true,
                other => panic!("a command this model does not expect: {other:?}"),
            }
        }
        for h in handlers {
            h.join().unwrap();
        }
        let counts = lock(&m).counts().clone();
        assert_eq!(
            counts.committed + counts.released,
            3,
            "an entry was taken but neither committed nor released: {counts:?}"
        );
        let end = if counts.readahead_released > 0 { &STOP_FIRST } else { &HANDLER_FIRST };
        end.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut s = lock(&r);
        // Released entries are claimable at once, with no wait for the claim timeout.
        let (_, again) = s.autoclaim("D", CLAIM, "0-0", 10).unwrap();
        assert_eq!(again.len() as u64, counts.released);
        for (e, token) in &again {
            let ev = decode_entry(&e.fields, 1 << 20).unwrap();
            let eff = effect(&s, &ev, "D", &e.id);
            let item = CommitItem { entry_id: &e.id, token: *token, event: &ev, effects: &eff };
            assert_eq!(s.commit("D", ledger(Safety::ON), &[item]).unwrap(), vec![CommitOutcome::Committed]);
        }
        assert_eq!(s.backlog(), Default::default());
        assert_once_each(&mut s, 3);
    });
    // Both orders were explored: the stop before the first handler reported (the read-ahead
    // is released) and after it (the read-ahead became a batch, handled and committed).
    let (a, b) = (
        STOP_FIRST.load(std::sync::atomic::Ordering::Relaxed),
        HANDLER_FIRST.load(std::sync::atomic::Ordering::Relaxed),
    );
    assert!(a > 0 && b > 0, "loom explored stop-first {a} times and handler-first {b} times");
}

// ------------------------------------------------------------------ the seed's protocol

/// The seed's design: `SET lock NX PX 500`, then "if not in the processed SET: do the work,
/// SADD processed". Worker A takes the lock and pauses longer than the lock; B takes the
/// expired lock; both find the event unprocessed. loom finds that interleaving.
#[test]
#[should_panic(expected = "effected twice")]
fn the_seeds_lock_only_protocol_duplicates_when_a_worker_pauses_past_its_lock() {
    fn worker(r: &Arc<Mutex<Model>>, who: &str, pause_ms: i64) {
        let ok = lock(r).cmd(&["SET", "lock:e1", who, "NX", "PX", "500"]).unwrap();
        if ok == Reply::Nil {
            return;
        }
        if pause_ms > 0 {
            lock(r).advance(pause_ms);
        }
        if lock(r).cmd(&["SISMEMBER", "processed", "e1"]).unwrap() == Reply::Int(1) {
            return;
        }
        lock(r).cmd(&["RPUSH", "effects", who]).unwrap();
        lock(r).cmd(&["SADD", "processed", "e1"]).unwrap();
        lock(r).cmd(&["DEL", "lock:e1"]).unwrap();
    }
    model(|| {
        let r = Arc::new(Mutex::new(Model::new(0)));
        let a = {
            let r = r.clone();
            spawn(move || worker(&r, "A", 600))
        };
        worker(&r, "B", 0);
        a.join().unwrap();
        let fx = lock(&r).lrange_all(b"effects").unwrap();
        assert!(fx.len() <= 1, "event e1 effected twice: {fx:?}");
    });
}

/// Sanity of the helpers used above, outside loom's scheduler is not possible (loom types), so
/// the fixture itself is checked inside a trivial model.
#[test]
fn fixture_captures_one_entry_per_key() {
    model(|| {
        let mut s = captured(2);
        let stream = s.keys.stream.clone();
        let entries = s.range(&stream);
        assert_eq!(entries.len(), 2);
        let ev = decode_entry(&entries[0].fields, 1 << 20).unwrap();
        assert_eq!(encode_entry(&ev), entries[0].fields);
    });
}
