//! Differential tests (`just differential`): generated sequences of the protocol's operations
//! (the [`Protocol`] trait), of what other programs do to keys (`PEXPIRE`, `PERSIST`, `DEL`,
//! `GET`, `SET PX`, stray and replayed `XADD`s) and of time passing, run on the in-memory
//! model and on real Redis (`EXPIRY_STREAM_REDIS`, e.g. `process`). After every operation the
//! replies and the namespace's whole state must agree, so the simulator cannot drift from the
//! server.
//!
//! Real time cannot be frozen, so time is made coarse: active expiry is off on the server
//! (`DEBUG SET-ACTIVE-EXPIRE 0`, the model's is off too) and keys expire only when touched;
//! TTLs come in two classes, short (100-415 ms, 100 ms apart per key so no two deadlines tie
//! or swap) and long (an hour); every operation lets 2 ms pass on both sides and an `Advance`
//! lets 550 ms pass, at least every 7 operations. A case whose epoch (the real time between
//! two advances) took longer than 90 ms proves nothing and is counted as inconclusive. So "has this key expired", "is this entry idle past
//! the claim timeout" have the same answer on both sides. Values that name absolute times or
//! stream ids are normalised: deadlines become `key@n` (the n-th deadline seen for that key),
//! event ids the label of their deadline, stream ids their rank, capture times whether they
//! follow the deadline.

#[path = "../support/mod.rs"]
mod support;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use proptest::prelude::*;
use proptest::test_runner::{Config, FileFailurePersistence, TestCaseError, TestRunner};

use expiry_stream::core::{decode_entry, encode_entry, event_id, Effect, Event};
use expiry_stream::model::{Model, ModelStore, Reply};
use expiry_stream::store::protocol::{Dump, Protocol, RedisProtocol};
use expiry_stream::store::{CommitItem, LedgerConfig, RawEntry, Safety, Store};

const KEYS: usize = 4;
const CONSUMERS: usize = 2;
const STEP: Duration = Duration::from_millis(2);
const ADVANCE: Duration = Duration::from_millis(550);
const CLAIM: Duration = Duration::from_millis(200);
const MAX_BETWEEN_ADVANCES: usize = 7;

#[derive(Clone, Debug)]
enum Op {
    /// set_with_ttl of (key, long ttl?, value) items.
    Write(Vec<(usize, bool, u8)>),
    /// Another program sets a key with a TTL, untracked.
    SetRaw(usize, bool),
    Track(usize),
    Capture(Vec<usize>),
    Sweep(usize),
    Read(usize, usize),
    /// (consumer, min idle is the claim timeout (else 0), count)
    Claim(usize, bool, usize),
    /// (consumer, pick, n, safety 0..4, add a refused effect)
    Commit(usize, usize, usize, u8, bool),
    DeadLetter(usize, usize),
    Retry(usize, usize),
    Release(usize),
    Pexpire(usize, bool),
    Persist(usize),
    Del(usize),
    Get(usize),
    /// Re-add the entry of an event seen earlier (a replay), by pick.
    Replay(usize),
    Garbage,
    Advance,
    /// Composite (expanded by `paced`): sweep, read, commit what was read, as a consumer does.
    Flow(usize, u8),
    /// Composite: replay an event seen earlier, read it, commit it (the ledger's case).
    ReplayFlow(usize, usize),
    /// Composite: A reads, pauses past the claim timeout, B reclaims, A commits late, then B
    /// (the fence's case), with safety switches from the u8.
    StaleFlow(usize, u8),
}

fn op() -> impl Strategy<Value = Op> {
    let k = 0..KEYS;
    let c = 0..CONSUMERS;
    prop_oneof![
        4 => proptest::collection::vec((k.clone(), proptest::bool::weighted(0.3), any::<u8>()), 1..3).prop_map(Op::Write),
        1 => (k.clone(), any::<bool>()).prop_map(|(k, l)| Op::SetRaw(k, l)),
        1 => k.clone().prop_map(Op::Track),
        2 => proptest::collection::vec(k.clone(), 1..4).prop_map(Op::Capture),
        4 => (1..4usize).prop_map(Op::Sweep),
        4 => (c.clone(), 1..4usize).prop_map(|(c, n)| Op::Read(c, n)),
        4 => (c.clone(), any::<bool>(), 1..4usize).prop_map(|(c, i, n)| Op::Claim(c, i, n)),
        4 => (c.clone(), any::<usize>(), 1..3usize, 0..4u8, proptest::bool::weighted(0.1))
            .prop_map(|(c, p, n, s, bad)| Op::Commit(c, p, n, s, bad)),
        1 => (c.clone(), any::<usize>()).prop_map(|(c, p)| Op::DeadLetter(c, p)),
        1 => (c.clone(), any::<usize>()).prop_map(|(c, p)| Op::Retry(c, p)),
        1 => c.clone().prop_map(Op::Release),
        1 => (k.clone(), any::<bool>()).prop_map(|(k, l)| Op::Pexpire(k, l)),
        1 => k.clone().prop_map(Op::Persist),
        1 => k.clone().prop_map(Op::Del),
        1 => k.clone().prop_map(Op::Get),
        1 => any::<usize>().prop_map(Op::Replay),
        1 => Just(Op::Garbage),
        3 => Just(Op::Advance),
        3 => (c.clone(), 0..4u8).prop_map(|(c, s)| Op::Flow(c, s)),
        2 => (c.clone(), any::<usize>()).prop_map(|(c, p)| Op::ReplayFlow(c, p)),
        2 => (c.clone(), 0..4u8).prop_map(|(c, s)| Op::StaleFlow(c, s)),
    ]
}

/// Per-key TTLs, 100 ms apart (more than an epoch may last) so that deadlines of different
/// keys never tie or swap order between the two sides.
fn ttl(key: usize, long: bool, base: u64) -> u64 {
    if long {
        3_600_000 + 100 * key as u64 + base
    } else {
        base + 100 * key as u64
    }
}

/// An entry a consumer holds: id, token, fields.
type HeldEntry = (String, u64, Vec<(Vec<u8>, Vec<u8>)>);

/// One side's view: what its consumers hold, and its normalisation tables.
#[derive(Default)]
struct Side {
    held: [Vec<HeldEntry>; CONSUMERS],
    seen: Vec<Event>,
    ids: BTreeMap<String, usize>,
    dead_ids: BTreeMap<String, usize>,
    deadlines: BTreeMap<(Vec<u8>, i64), String>,
    per_key: BTreeMap<Vec<u8>, usize>,
}

impl Side {
    fn id(&mut self, id: &str) -> String {
        let n = self.ids.len();
        format!("#{}", self.ids.entry(id.to_string()).or_insert(n))
    }
    fn dead_id(&mut self, id: &str) -> String {
        let n = self.dead_ids.len();
        format!("D{}", self.dead_ids.entry(id.to_string()).or_insert(n))
    }
    fn deadline(&mut self, key: &[u8], v: i64) -> String {
        if v < 0 {
            return v.to_string();
        }
        if let Some(l) = self.deadlines.get(&(key.to_vec(), v)) {
            return l.clone();
        }
        let n = self.per_key.entry(key.to_vec()).or_insert(0);
        let label = format!("{}@{n}", String::from_utf8_lossy(key));
        *n += 1;
        self.deadlines.insert((key.to_vec(), v), label.clone());
        label
    }
    /// An event id as the label of the deadline it names (or `?id` if it names none seen).
    fn event(&mut self, eid: &[u8]) -> String {
        let eid = String::from_utf8_lossy(eid);
        for ((k, d), l) in &self.deadlines {
            if event_id(k, *d) == eid {
                return format!("ev({l})");
            }
        }
        format!("?{eid}")
    }
    fn fields(&mut self, f: &[(Vec<u8>, Vec<u8>)], prefix: &str) -> String {
        let get = |n: &str| {
            let name = format!("{prefix}{n}");
            f.iter().find(|(k, _)| k == name.as_bytes()).map(|(_, v)| v.clone())
        };
        let key = get("k");
        let dl = get("d").and_then(|d| String::from_utf8(d).ok()).and_then(|d| d.parse::<i64>().ok());
        if let (Some(k), Some(d)) = (&key, dl) {
            self.deadline(k, d);
        }
        let mut out = String::new();
        for (name, v) in f {
            let n = String::from_utf8_lossy(name).into_owned();
            let bare = if n == "entry" { "entry" } else { n.strip_prefix(prefix).unwrap_or("") };
            let shown = match bare {
                "d" if key.is_some() && dl.is_some() => self.deadline(key.as_ref().unwrap(), dl.unwrap()),
                "id" => self.event(v),
                "c" => match (String::from_utf8_lossy(v).parse::<i64>(), dl) {
                    (Ok(c), Some(d)) if c >= d => "after-deadline".into(),
                    _ => format!("raw:{}", String::from_utf8_lossy(v)),
                },
                "entry" => self.id(&String::from_utf8_lossy(v)),
                _ => String::from_utf8_lossy(v).into_owned(),
            };
            let _ = write!(out, "{n}={shown} ");
        }
        out
    }
    fn entries(&mut self, es: &[RawEntry]) -> String {
        let mut out = String::new();
        for e in es {
            let id = self.id(&e.id);
            let f = self.fields(&e.fields, "");
            let _ = write!(out, "[{id} {f}]");
        }
        out
    }
    fn reply(&mut self, r: &Reply, xadd: bool) -> String {
        match r {
            Reply::Bulk(b) if xadd => self.id(&String::from_utf8_lossy(b)),
            other => format!("{other:?}"),
        }
    }
    fn dump(&mut self, d: &Dump) -> String {
        let mut s = String::new();
        let mut index: Vec<(Vec<u8>, String)> =
            d.index.iter().map(|(k, v)| (k.clone(), self.deadline(k, *v))).collect();
        index.sort();
        let _ = writeln!(s, "index {index:?}");
        let _ = writeln!(s, "payloads {:?}", d.payloads);
        let stream = self.entries(&d.stream);
        let _ = writeln!(s, "stream {stream}");
        let pel: Vec<(String, String, u64)> = d.pending.iter().map(|(id, c, n)| (self.id(id), c.clone(), *n)).collect();
        let _ = writeln!(s, "pending {pel:?}");
        let mut dead = String::new();
        for e in &d.dead {
            let id = self.dead_id(&e.id);
            let f = self.fields(&e.fields, "f:");
            let _ = write!(dead, "[{id} {f}]");
        }
        let _ = writeln!(s, "dead {dead}");
        let _ = writeln!(s, "stats {:?}", d.stats);
        let mut ledger: Vec<String> = d.ledger.iter().flat_map(|(_, m)| m.clone()).map(|e| self.event(&e)).collect();
        ledger.sort();
        let _ = writeln!(s, "ledger {ledger:?}");
        let effects: Vec<String> = d
            .effects
            .iter()
            .map(|r| {
                let r = String::from_utf8_lossy(r).into_owned();
                let p: Vec<&str> = r.split('|').collect();
                format!(
                    "{}|{}|{}",
                    self.event(p[0].as_bytes()),
                    p.get(1).unwrap_or(&""),
                    self.id(p.get(2).unwrap_or(&""))
                )
            })
            .collect();
        let _ = writeln!(s, "effects {effects:?}");
        for (k, pt, v) in &d.keys {
            let l = self.deadline(k, *pt);
            let _ = writeln!(
                s,
                "key {} {l} {:?}",
                String::from_utf8_lossy(k),
                v.as_ref().map(|v| String::from_utf8_lossy(v).into_owned())
            );
        }
        s
    }
}

fn safety(n: u8) -> Safety {
    Safety { fence: n & 1 == 0, ledger: n & 2 == 0 }
}

fn take(held: &mut Vec<HeldEntry>, pick: usize, n: usize) -> Vec<HeldEntry> {
    if held.is_empty() {
        return vec![];
    }
    let start = pick % held.len();
    let n = n.min(held.len() - start);
    held.drain(start..start + n).collect()
}

/// Applies `op` on one side; the reply, normalised.
async fn apply<P: Protocol>(p: &mut P, side: &mut Side, keys: &[Vec<u8>], effects_key: &str, op: &Op) -> String {
    p.advance(STEP).await;
    let name = |c: usize| format!("c{c}");
    match op {
        Op::Write(items) => {
            let items: Vec<(Vec<u8>, Vec<u8>, Duration)> = items
                .iter()
                .map(|(k, long, v)| (keys[*k].clone(), vec![b'a' + v % 26], Duration::from_millis(ttl(*k, *long, 100))))
                .collect();
            match p.write_batch(&items).await {
                Ok(dls) => {
                    let l: Vec<String> = items.iter().zip(&dls).map(|((k, _, _), d)| side.deadline(k, *d)).collect();
                    format!("{l:?}")
                }
                Err(_) => "Err".into(),
            }
        }
        Op::SetRaw(k, long) => {
            let t = ttl(*k, *long, 105).to_string();
            let args = vec![b"SET".to_vec(), keys[*k].clone(), b"raw".to_vec(), b"PX".to_vec(), t.into_bytes()];
            format!("{:?}", p.raw(&args).await.ok())
        }
        Op::Track(k) => match p.track(&keys[*k]).await {
            Ok(d) => format!("{:?}", d.map(|d| side.deadline(&keys[*k], d))),
            Err(_) => "Err".into(),
        },
        Op::Capture(ks) => {
            let ks: Vec<Vec<u8>> = ks.iter().map(|k| keys[*k].clone()).collect();
            format!("{:?}", p.capture(&ks, expiry_stream::core::Via::Notification).await.ok())
        }
        Op::Sweep(n) => match p.sweep(*n).await {
            Ok(s) => format!("{} of {} next={}", s.emitted, s.examined, s.next_deadline_ms.is_some()),
            Err(_) => "Err".into(),
        },
        Op::Read(c, n) => match p.read_new(&name(*c), *n).await {
            Ok(es) => {
                for e in &es {
                    side.held[*c].push((e.id.clone(), 1, e.fields.clone()));
                    if let Ok(ev) = decode_entry(&e.fields, 1 << 20) {
                        side.seen.push(ev);
                    }
                }
                side.entries(&es)
            }
            Err(_) => "Err".into(),
        },
        Op::Claim(c, idle, n) => {
            let min = if *idle { CLAIM } else { Duration::ZERO };
            match p.autoclaim(&name(*c), min, "0-0", *n).await {
                Ok((cursor, got)) => {
                    let cur = if cursor == "0-0" { cursor } else { side.id(&cursor) };
                    let mut out = format!("cursor {cur} ");
                    for (e, t) in &got {
                        side.held[*c].push((e.id.clone(), *t, e.fields.clone()));
                        let es = side.entries(std::slice::from_ref(e));
                        let _ = write!(out, "{es}#{t} ");
                    }
                    out
                }
                Err(_) => "Err".into(),
            }
        }
        Op::Commit(c, pick, n, s, bad) => {
            let batch = take(&mut side.held[*c], *pick, *n);
            let evs: Vec<Option<Event>> = batch.iter().map(|(_, _, f)| decode_entry(f, 1 << 20).ok()).collect();
            let mut effects: Vec<Vec<Effect>> = vec![];
            for ((id, _, _), ev) in batch.iter().zip(&evs) {
                let Some(ev) = ev else {
                    effects.push(vec![]);
                    continue;
                };
                let rec = format!("{}|{}|{id}", ev.event_id, name(*c));
                let mut e = vec![Effect::new("RPUSH", [effects_key.as_bytes(), rec.as_bytes()])];
                if *bad {
                    e.push(Effect::new("FLUSHALL", Vec::<&[u8]>::new()));
                }
                effects.push(e);
            }
            let items: Vec<CommitItem<'_>> = batch
                .iter()
                .zip(&evs)
                .zip(&effects)
                .filter_map(|(((id, t, _), ev), eff)| {
                    ev.as_ref().map(|ev| CommitItem { entry_id: id, token: *t, event: ev, effects: eff })
                })
                .collect();
            if items.is_empty() {
                return "nothing".into();
            }
            let ledger = LedgerConfig {
                bucket: Duration::from_secs(60),
                retention: Duration::from_secs(3600),
                safety: safety(*s),
            };
            match p.commit(&name(*c), ledger, &items).await {
                Ok(o) => format!("{o:?}"),
                Err(_) => "Err".into(),
            }
        }
        Op::DeadLetter(c, pick) => {
            let Some((id, t, _)) = take(&mut side.held[*c], *pick, 1).pop() else { return "nothing".into() };
            format!("{:?}", p.dead_letter(&name(*c), &id, t, "poison").await.ok())
        }
        Op::Retry(c, pick) => {
            let Some((id, t, f)) = take(&mut side.held[*c], *pick, 1).pop() else { return "nothing".into() };
            let r = p.retry(&name(*c), &id, t).await.ok().flatten();
            if let Some(nt) = r {
                side.held[*c].push((id, nt, f));
            }
            format!("{r:?}")
        }
        Op::Release(c) => {
            let ids: Vec<String> = side.held[*c].drain(..).map(|(id, _, _)| id).collect();
            format!("{:?}", p.release(&name(*c), &ids, CLAIM * 10).await.ok())
        }
        Op::Pexpire(k, long) => {
            let t = ttl(*k, *long, 115).to_string();
            let r = p.raw(&[b"PEXPIRE".to_vec(), keys[*k].clone(), t.into_bytes()]).await;
            format!("{:?}", r.ok())
        }
        Op::Persist(k) => format!("{:?}", p.raw(&[b"PERSIST".to_vec(), keys[*k].clone()]).await.ok()),
        Op::Del(k) => format!("{:?}", p.raw(&[b"DEL".to_vec(), keys[*k].clone()]).await.ok()),
        Op::Get(k) => format!("{:?}", p.raw(&[b"GET".to_vec(), keys[*k].clone()]).await.ok()),
        Op::Replay(pick) => {
            if side.seen.is_empty() {
                return "nothing".into();
            }
            let ev = side.seen[pick % side.seen.len()].clone();
            let stream = stream_key(effects_key);
            let mut args = vec![b"XADD".to_vec(), stream.into_bytes(), b"*".to_vec()];
            for (f, v) in encode_entry(&ev) {
                args.push(f);
                args.push(v);
            }
            match p.raw(&args).await {
                Ok(r) => side.reply(&r, true),
                Err(_) => "Err".into(),
            }
        }
        Op::Garbage => {
            let args = vec![
                b"XADD".to_vec(),
                stream_key(effects_key).into_bytes(),
                b"*".to_vec(),
                b"foo".to_vec(),
                b"bar".to_vec(),
            ];
            match p.raw(&args).await {
                Ok(r) => side.reply(&r, true),
                Err(_) => "Err".into(),
            }
        }
        Op::Advance => {
            p.advance(ADVANCE).await;
            "advanced".into()
        }
        Op::Flow(..) | Op::ReplayFlow(..) | Op::StaleFlow(..) => unreachable!("expanded by `paced`"),
    }
}

/// `{ns}:oracle:effects` -> `{ns}:events`.
fn stream_key(effects_key: &str) -> String {
    effects_key.replace(":oracle:effects", ":events")
}

/// Inserts an `Advance` wherever more than [`MAX_BETWEEN_ADVANCES`] operations would run
/// without one (keeps each epoch short in real time; see the module docs).
fn paced(ops: &[Op]) -> Vec<Op> {
    let mut out = vec![];
    let mut since = 0;
    let expanded = ops.iter().flat_map(|op| match op {
        Op::Flow(c, s) => vec![Op::Sweep(4), Op::Read(*c, 3), Op::Commit(*c, 0, 3, *s, false)],
        Op::ReplayFlow(c, p) => vec![Op::Replay(*p), Op::Read(*c, 3), Op::Commit(*c, 0, 3, 0, false)],
        Op::StaleFlow(a, s) => {
            let b = 1 - *a;
            vec![
                Op::Sweep(4),
                Op::Read(*a, 2),
                Op::Advance,
                Op::Claim(b, true, 2),
                Op::Commit(*a, 0, 2, *s, false),
                Op::Commit(b, 0, 2, *s, false),
            ]
        }
        other => vec![other.clone()],
    });
    for op in expanded {
        if matches!(op, Op::Advance) {
            since = 0;
        } else {
            since += 1;
            if since > MAX_BETWEEN_ADVANCES {
                out.push(Op::Advance);
                since = 1;
            }
        }
        out.push(op);
    }
    out
}

/// What the generated sequences exercised (replies that did something), so the test cannot
/// pass by never reaching the interesting states.
static COVERAGE: [std::sync::atomic::AtomicU64; 6] = [const { std::sync::atomic::AtomicU64::new(0) }; 6];
const COVERAGE_NAMES: [&str; 6] = ["emitted", "read", "reclaimed", "committed", "fenced", "suppressed"];

fn cover(op: &Op, reply: &str) {
    let hit = |i: usize| {
        COVERAGE[i].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    };
    match op {
        Op::Sweep(_) if !reply.starts_with("0 ") => hit(0),
        Op::Read(..) if reply.contains('[') => hit(1),
        Op::Claim(..) if reply.contains('[') => hit(2),
        Op::Commit(..) => {
            for (i, w) in [(3, "Committed"), (4, "NotOwner"), (5, "AlreadyApplied")] {
                if reply.contains(w) {
                    hit(i);
                }
            }
        }
        _ => {}
    }
}

/// Why a case did not pass.
enum CaseError {
    /// A real disagreement (or a Redis error).
    Mismatch(String),
    /// A disagreement in an epoch that took longer in real time than the TTL classes allow:
    /// the machine was too slow for the timing assumptions, so the case proves nothing.
    Slow(String),
}

/// Real time an epoch may take before "short TTLs have not expired yet" and "entries are not
/// idle past the claim timeout yet" stop being certain on the server.
const SAFE_EPOCH: Duration = Duration::from_millis(90);

async fn run_case(url: &str, case: u64, ops: &[Op]) -> Result<(), CaseError> {
    let err = |e: String| CaseError::Mismatch(e);
    match run_case_inner(url, case, ops).await {
        Ok(()) => Ok(()),
        Err((msg, epoch)) if epoch > SAFE_EPOCH => {
            Err(CaseError::Slow(format!("epoch took {epoch:?} of real time: {}", msg.lines().next().unwrap_or(""))))
        }
        Err((msg, _)) => Err(err(msg)),
    }
}

async fn run_case_inner(url: &str, case: u64, ops: &[Op]) -> Result<(), (String, Duration)> {
    let mut epoch = std::time::Instant::now();
    // The longest epoch so far: a slow one can cause a disagreement that only shows later.
    let mut slowest = Duration::ZERO;
    let fail = |e: String, epoch: std::time::Instant, slowest: Duration| (e, epoch.elapsed().max(slowest));
    let ns = format!("diff{case}");
    let store = Store::connect(url, &ns, "g").await.map_err(|e| fail(e.to_string(), epoch, slowest))?;
    store.wipe().await.map_err(|e| fail(e.to_string(), epoch, slowest))?;
    store.ensure_group().await.map_err(|e| fail(e.to_string(), epoch, slowest))?;
    let mut c = store.conn.clone();
    let (secs, micros): (i64, i64) =
        redis::cmd("TIME").query_async(&mut c).await.map_err(|e| fail(e.to_string(), epoch, slowest))?;
    let mut real = RedisProtocol::new(store.clone()).await.map_err(|e| fail(e.to_string(), epoch, slowest))?;
    let mut model = ModelStore::new(Model::new(secs * 1000 + micros / 1000), &ns, "g");
    let keys: Vec<Vec<u8>> =
        (0..KEYS).map(|i| format!("{}{}", store.keys.key_prefix(), (b'a' + i as u8) as char).into_bytes()).collect();
    let (mut rs, mut ms) = (Side::default(), Side::default());
    let effects_key = store.keys.effects.clone();
    let ops = paced(ops);
    for (i, op) in ops.iter().enumerate() {
        let r = apply(&mut real, &mut rs, &keys, &effects_key, op).await;
        let m = apply(&mut model, &mut ms, &keys, &effects_key, op).await;
        cover(op, &r);
        if std::env::var_os("DIFFERENTIAL_TRACE").is_some() {
            eprintln!("case {case} step {i} {op:?} -> {r}");
        }
        if matches!(op, Op::Advance) {
            epoch = std::time::Instant::now();
        } else {
            slowest = slowest.max(epoch.elapsed());
        }
        if r != m {
            return Err(fail(
                format!("step {i} {op:?}: replies differ\n  redis: {r}\n  model: {m}\nops: {ops:?}"),
                epoch,
                slowest,
            ));
        }
        let rd = real.dump(&keys).await.map_err(|e| fail(e.to_string(), epoch, slowest))?;
        let md = Protocol::dump(&mut model, &keys).await.map_err(|e| fail(e.to_string(), epoch, slowest))?;
        let (r, m) = (rs.dump(&rd), ms.dump(&md));
        if r != m {
            let diff: Vec<String> = r
                .lines()
                .zip(m.lines())
                .filter(|(a, b)| a != b)
                .map(|(a, b)| format!("  redis: {a}\n  model: {b}"))
                .collect();
            return Err(fail(
                format!("step {i} {op:?}: states differ\n{}\nops: {ops:?}", diff.join("\n")),
                epoch,
                slowest,
            ));
        }
    }
    store.wipe().await.map_err(|e| fail(e.to_string(), epoch, slowest))?;
    Ok(())
}

#[test]
fn model_and_redis_agree_on_generated_sequences() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let ctx = rt.block_on(support::Ctx::new("differential"));
    let url = ctx.server.url.clone();
    rt.block_on(async {
        let mut c = ctx.store.conn.clone();
        // Keys expire only when touched, on both sides (the model's active expiry is off).
        let _: () = redis::cmd("DEBUG").arg("SET-ACTIVE-EXPIRE").arg(0).query_async(&mut c).await.unwrap();
    });
    let cases: u32 = std::env::var("DIFFERENTIAL_CASES").ok().and_then(|s| s.parse().ok()).unwrap_or(20);
    // A fixed generation seed by default, so CI runs the same sequences every time (coverage
    // included); DIFFERENTIAL_SEED explores others.
    let seed: u64 = std::env::var("DIFFERENTIAL_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(20_251_126);
    eprintln!("differential: {cases} cases, DIFFERENTIAL_SEED={seed}");
    let mut seed_bytes = [0u8; 32];
    seed_bytes[..8].copy_from_slice(&seed.to_le_bytes());
    let config = Config {
        cases,
        max_shrink_iters: 200,
        max_shrink_time: 120_000,
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct("proptest-regressions/differential.txt"))),
        ..Config::default()
    };
    let rng = proptest::test_runner::TestRng::from_seed(proptest::test_runner::RngAlgorithm::ChaCha, &seed_bytes);
    let mut runner = TestRunner::new_with_rng(config, rng);
    let counter = std::sync::atomic::AtomicU64::new(0);
    let ops_run = std::sync::atomic::AtomicU64::new(0);
    let slow = std::sync::atomic::AtomicU64::new(0);
    let result = runner.run(&proptest::collection::vec(op(), 12..36), |ops| {
        let case = counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        ops_run.fetch_add(paced(&ops).len() as u64, std::sync::atomic::Ordering::Relaxed);
        match rt.block_on(run_case(&url, case, &ops)) {
            Ok(()) => Ok(()),
            Err(CaseError::Mismatch(m)) => Err(TestCaseError::fail(m)),
            Err(CaseError::Slow(m)) => {
                eprintln!("differential: case {case} inconclusive ({m})");
                slow.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                Err(TestCaseError::reject(m))
            }
        }
    });
    eprintln!(
        "differential: {} sequences ({} operations incl. shrinking), each compared op by op; {} inconclusive (slow epoch)",
        counter.load(std::sync::atomic::Ordering::Relaxed),
        ops_run.load(std::sync::atomic::Ordering::Relaxed),
        slow.load(std::sync::atomic::Ordering::Relaxed)
    );
    if let Err(e) = result {
        panic!("{e}");
    }
    let cov: Vec<String> = COVERAGE
        .iter()
        .zip(COVERAGE_NAMES)
        .map(|(c, n)| format!("{n} {}", c.load(std::sync::atomic::Ordering::Relaxed)))
        .collect();
    eprintln!("differential coverage (operations that did something): {}", cov.join(", "));
    for (c, n) in COVERAGE.iter().zip(COVERAGE_NAMES) {
        assert!(c.load(std::sync::atomic::Ordering::Relaxed) > 0, "no generated sequence reached `{n}`");
    }
    let slow = slow.load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        slow * 2 <= u64::from(cases),
        "{slow} cases inconclusive: the machine was too slow for the real-time assumptions"
    );
}
