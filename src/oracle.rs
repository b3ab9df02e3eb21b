//! The independent oracle. The workload records every event it creates (key, deadline);
//! the `record` handler records every effect (event id, consumer, entry id) as a Redis-side
//! effect committed with the ack. `check` compares the two as multisets. It never reads the
//! library's counters to decide anything; it only prints them beside its verdict.
//!
//! The effects ledger alone has a blind spot: it is written only after the commit's ledger
//! said "new", so a duplicate the ledger hides is never seen there. The [`Witness`] sits
//! outside the commit path, in another database on its own connection: every handler run is
//! recorded there before the handler returns (with its stream entry id, so stream entries
//! beyond one per event show up however the commit treated them), and the handler's external
//! effect goes to a sink keyed by event id and fenced by delivery count.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::core::{
    event_id, Delivery, Effect, Event, Handler, HandlerError, HandlerFuture, Via, DELETED_WHILE_PENDING,
};
use crate::store::ledgers::{OtherDb, SinkKeys};
use crate::store::{RedisStore, StoreError};

pub fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// Appends created events to the created ledger (`{ns}:oracle:created`), one
/// `"<deadline>:<key>"` record each.
pub async fn record_created(store: &RedisStore, events: &[(&[u8], i64)]) -> crate::store::Result<()> {
    store.append_list(&store.keys.created, &created_records(events)).await
}

/// [`record_created`] applied at most once per `batch_id`: the append is guarded by the key
/// `{ns}:oracle:cb:<batch_id>` (kept for [`crate::store::BATCH_RECORD_TTL`]) in the same atomic
/// call ([`RedisStore::append_list_once`]), so a caller whose reply was lost can repeat the call
/// without doubling the records. Returns false when the batch had already been recorded. The
/// guard lives beside the ledger, in the oracle's own keys, and the call uses none of the
/// library's scripts: the oracle stays independent of the write path it judges.
pub async fn record_created_once(
    store: &RedisStore,
    batch_id: &str,
    events: &[(&[u8], i64)],
) -> crate::store::Result<bool> {
    let guard = format!("{{{}}}:oracle:cb:{batch_id}", store.keys.ns);
    store.append_list_once(&store.keys.created, &guard, crate::store::BATCH_RECORD_TTL, &created_records(events)).await
}

fn created_records(events: &[(&[u8], i64)]) -> Vec<Vec<u8>> {
    events
        .iter()
        .map(|(k, d)| {
            let mut rec = format!("{d}:").into_bytes();
            rec.extend_from_slice(k);
            rec
        })
        .collect()
}

/// The oracle's handler: waits `work` (the simulated cost of the real work), records the run
/// and performs its external effect through the [`Witness`] (on the witness's own connection,
/// before returning), then returns one Redis-side effect, an `RPUSH` of
/// `"<event id>|<consumer>/w<worker>|<entry id>|<captured ms>|<effect ms>"` to the effects ledger,
/// committed atomically with the ack.
pub struct RecordHandler {
    pub effects_key: String,
    pub work: Duration,
    pub witness: Witness,
}

impl RecordHandler {
    pub fn new(store: &RedisStore, work: Duration) -> Arc<RecordHandler> {
        Arc::new(RecordHandler { effects_key: store.keys.effects.clone(), work, witness: Witness::new(store) })
    }
}

impl Handler for RecordHandler {
    fn handle<'a>(&'a self, event: &'a Event, d: &'a Delivery) -> HandlerFuture<'a> {
        Box::pin(async move {
            if !self.work.is_zero() {
                crate::timer::sleep(self.work).await;
            }
            // Unrecorded, the run must not count: fail it, and the delivery is retried.
            self.witness.record(event, d).await.map_err(|e| HandlerError::Transient(format!("oracle witness: {e}")))?;
            let rec =
                format!("{}|{}|{}|{}|{}", event.event_id, d.worker_name(), d.entry_id, event.captured_ms, now_ms());
            Ok(vec![Effect::new("RPUSH", [self.effects_key.as_bytes(), rec.as_bytes()])])
        })
    }
}

/// Where the oracle's witnesses live: the database after the pipeline's own (an external
/// system as far as the pipeline is concerned: no script of the pipeline touches it).
pub fn witness_db(store: &RedisStore) -> i64 {
    let db = store.db();
    if db >= 15 {
        db - 1
    } else {
        db + 1
    }
}

/// Keys of the witness database for a namespace.
#[derive(Clone, Debug)]
pub struct WitnessKeys {
    pub runs: String,
    pub tokens: String,
    pub applied: String,
    pub counts: String,
}

impl WitnessKeys {
    pub fn new(ns: &str) -> WitnessKeys {
        WitnessKeys {
            runs: format!("{{{ns}}}:witness:runs"),
            tokens: format!("{{{ns}}}:sink:tokens"),
            applied: format!("{{{ns}}}:sink:applied"),
            counts: format!("{{{ns}}}:sink:counts"),
        }
    }
    fn all(&self) -> [&str; 4] {
        [&self.runs, &self.tokens, &self.applied, &self.counts]
    }
    fn sink(&self) -> SinkKeys<'_> {
        SinkKeys { runs: &self.runs, tokens: &self.tokens, applied: &self.applied, counts: &self.counts }
    }
}

/// The witness: the sink's keys in the witness database ([`witness_db`]), on a connection of
/// its own, opened on first use (handlers are built synchronously) and reconnecting by itself.
pub struct Witness {
    db: OtherDb,
    keys: WitnessKeys,
}

impl Witness {
    pub fn new(store: &RedisStore) -> Witness {
        Witness { db: store.other_db(witness_db(store)), keys: WitnessKeys::new(&store.keys.ns) }
    }

    /// Records one handler run and performs its external write. Returns the sink's answer.
    /// A dropped connection is retried a few times (the manager reconnects): a handler run
    /// must not fail for the witness's sake while Redis is reachable. A retry after a lost
    /// reply may record the run twice; `handler_runs` can then read high, never low.
    pub async fn record(&self, event: &Event, d: &Delivery) -> crate::store::Result<i64> {
        let mut attempt = 0;
        loop {
            match self.db.sink_write(self.keys.sink(), event, d).await {
                Err(StoreError::Connection(_)) if attempt < 5 => {
                    attempt += 1;
                    tokio::time::sleep(Duration::from_millis(20 << attempt)).await;
                }
                r => return r,
            }
        }
    }

    /// Deletes the namespace's witnesses (with the namespace, before a run).
    pub async fn wipe(&self) -> crate::store::Result<()> {
        self.db.delete(&self.keys.all()).await
    }
}

/// Percentiles of a latency sample, in ms.
#[derive(Clone, Copy, Debug, Default, Serialize, PartialEq)]
pub struct Latency {
    pub p50: i64,
    pub p99: i64,
    pub max: i64,
}

impl Latency {
    pub fn of(mut v: Vec<i64>) -> Latency {
        if v.is_empty() {
            return Latency::default();
        }
        v.sort_unstable();
        let at = |q: f64| v[((v.len() as f64 * q).ceil() as usize).clamp(1, v.len()) - 1];
        Latency { p50: at(0.50), p99: at(0.99), max: *v.last().unwrap() }
    }
}

/// Per-consumer effect counts (by the oracle's effects ledger).
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct Spread {
    pub consumers: usize,
    pub min: u64,
    pub max: u64,
    pub mean: f64,
    /// (max - min) / mean, in percent.
    pub spread_pct: f64,
}

/// The oracle's verdict.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct Verdict {
    pub created: u64,
    /// Effects recorded (every one, duplicates included).
    pub effected: u64,
    /// Created events with no effect and no dead-letter entry.
    pub lost: u64,
    /// Effects beyond one per event.
    pub duplicate_effects: u64,
    /// Effects for events the workload never created.
    pub unexpected_effects: u64,
    /// Created events that are in the dead-letter stream instead (with a reason).
    pub dead_lettered: u64,
    /// Created events with an effect and a dead-letter entry both: a contradiction.
    pub effected_and_dead_lettered: u64,
    /// The library's own count of suppressed replays (printed beside, not used).
    pub duplicates_suppressed: u64,
    // ----- witnesses outside the commit path -----
    /// Handler invocations, each recorded on the witness's own connection before returning.
    pub handler_runs: u64,
    /// Runs that led to neither an effect nor a dead letter (retries, fenced or suppressed
    /// commits, crashes): `handler_runs - effected - dead_lettered`, at least 0.
    pub redeliveries: u64,
    /// Stream entries beyond one per event id, whatever the commit did with them, counted from
    /// the entries the witnesses saw (handler runs, dead letters, entries left in the stream).
    pub capture_duplicates: u64,
    /// Entries the stream ever took (`XINFO STREAM` entries-added: the server's count).
    pub stream_entries_added: u64,
    /// Of those, entries no witness saw (deleted before any handler ran, e.g. by an operator):
    /// `capture_duplicates` cannot speak for them.
    pub stream_entries_unseen: u64,
    /// External writes the sink applied (once per event id: the sink honours the key).
    pub external_applied: u64,
    /// External writes repeated for an event id already applied (at least once: redeliveries
    /// reaching the sink; it did not apply them again).
    pub external_repeated: u64,
    /// External writes the sink refused for a stale fencing token.
    pub external_fenced: u64,
    /// External applications beyond one per (key, deadline): the sink honours the event id,
    /// so this is non-zero only if one expiration reached handlers under two ids (an id not a
    /// function of key and deadline). A sanity check of the idempotency key, not of delivery.
    pub external_duplicates: u64,
    /// Effected events with no external write applied (at-least-once broken). The run record
    /// and the write are one call, so this equals `effects_without_run`: a second view of it.
    pub external_missing: u64,
    /// Effects of events no handler run was recorded for (the effects ledger written by
    /// something other than a handler).
    pub effects_without_run: u64,
    /// Pending entries deleted from the stream by another program (dead-lettered by reclaim).
    pub deleted_while_pending: u64,
}

impl Verdict {
    /// A fault-free verdict: nothing lost, doubled, unexplained or dead-lettered.
    pub fn ok(&self) -> bool {
        self.ok_expecting(0)
    }

    /// As [`Verdict::ok`], with `dead_letters` dead-lettered events expected: dead letters are
    /// not success unless the caller says how many its faults legitimately cause.
    pub fn ok_expecting(&self, dead_letters: u64) -> bool {
        self.problems(dead_letters).is_empty()
    }

    /// What is wrong, one phrase each (empty when nothing is).
    pub fn problems(&self, dead_letters: u64) -> Vec<String> {
        let checks = [
            ("lost", self.lost, 0),
            ("duplicate_effects", self.duplicate_effects, 0),
            ("unexpected_effects", self.unexpected_effects, 0),
            ("dead_lettered", self.dead_lettered, dead_letters),
            ("effected_and_dead_lettered", self.effected_and_dead_lettered, 0),
            ("capture_duplicates", self.capture_duplicates, 0),
            ("external_duplicates", self.external_duplicates, 0),
            ("external_missing", self.external_missing, 0),
            ("effects_without_run", self.effects_without_run, 0),
            ("deleted_while_pending", self.deleted_while_pending, 0),
        ];
        checks
            .iter()
            .filter(|(_, v, want)| v != want)
            .map(|(n, v, want)| format!("{n} = {v}, expected {want}"))
            .collect()
    }

    /// One line for people: the verdict, and the witnesses beside it.
    pub fn line(&self) -> String {
        format!(
            "created {} effected {} lost {} duplicate_effects {} unexpected {} dead_lettered {} | witnesses: handler_runs {} redeliveries {} capture_duplicates {} (unseen entries {}) external_duplicates {} (applied {} repeated {} fenced {} missing {}) deleted_while_pending {}",
            self.created,
            self.effected,
            self.lost,
            self.duplicate_effects,
            self.unexpected_effects,
            self.dead_lettered,
            self.handler_runs,
            self.redeliveries,
            self.capture_duplicates,
            self.stream_entries_unseen,
            self.external_duplicates,
            self.external_applied,
            self.external_repeated,
            self.external_fenced,
            self.external_missing,
            self.deleted_while_pending
        )
    }
}

/// Everything `check` reads off the ledgers.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Check {
    pub oracle: Verdict,
    pub per_consumer: Spread,
    /// Deadline to capture (stream entry written), ms.
    pub deadline_to_capture_ms: Latency,
    /// Deadline to effect (handler done), ms.
    pub deadline_to_effect_ms: Latency,
    /// A few lost event keys, for diagnosis.
    pub lost_sample: Vec<String>,
    /// Effect times (ms) of every first effect, for time series.
    #[serde(skip)]
    pub effect_times: Vec<(i64, i64)>,
    /// Handler runs whose commit did not win, by consumer: the run's event was effected from
    /// another consumer or entry, or not at all (fenced, suppressed, crashed or refused work).
    #[serde(skip)]
    pub superseded_runs: BTreeMap<String, u64>,
    /// Each effected created event's capture time (server ms, from its first effect record) and
    /// the capture path of its first handler run.
    #[serde(skip)]
    pub captured_via: Vec<(i64, Via)>,
}

fn parse_hex_id(s: &str) -> Option<u128> {
    (s.len() == 32).then(|| u128::from_str_radix(s, 16).ok()).flatten()
}

/// What the oracle's lists are, in the error when one is not a list.
const LEDGER: &str = "the oracle's ledger";

/// A ledger read; a ledger another program overwrote makes the namespace unjudgeable.
fn unjudgeable(e: StoreError) -> StoreError {
    match e {
        StoreError::Reply { what, reply } if what == LEDGER => {
            StoreError::Reply { what, reply: format!("{reply}; the oracle cannot judge this namespace") }
        }
        e => e,
    }
}

async fn read_list(store: &RedisStore, key: &str) -> crate::store::Result<Vec<Vec<u8>>> {
    store.read_list(key, LEDGER).await.map_err(unjudgeable)
}

/// One dead-letter entry, as far as the oracle can read it.
struct DeadRec {
    /// The stream entry it came from.
    entry: String,
    /// Its event, when the entry still named a key and a deadline.
    event: Option<u128>,
    deleted_while_pending: bool,
}

fn field<'a>(e: &'a crate::store::RawEntry, name: &[u8]) -> Option<&'a [u8]> {
    e.fields.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_slice())
}

fn event_of(k: Option<&[u8]>, d: Option<&[u8]>) -> Option<u128> {
    let d = std::str::from_utf8(d?).ok()?.parse::<i64>().ok()?;
    parse_hex_id(&event_id(k?, d))
}

async fn dead_records(store: &RedisStore) -> crate::store::Result<Vec<DeadRec>> {
    Ok(store
        .range_all(&store.keys.dead)
        .await?
        .iter()
        .map(|e| DeadRec {
            entry: field(e, b"entry").map(|v| String::from_utf8_lossy(v).into_owned()).unwrap_or_default(),
            event: event_of(field(e, b"f:k"), field(e, b"f:d")),
            deleted_while_pending: field(e, b"reason") == Some(DELETED_WHILE_PENDING.as_bytes()),
        })
        .collect())
}

/// The witness database's run records, applied external writes and counts for the namespace.
async fn read_witnesses(
    store: &RedisStore,
) -> crate::store::Result<(Vec<Vec<u8>>, Vec<Vec<u8>>, HashMap<String, i64>)> {
    let w = Witness::new(store);
    let runs = w.db.read_list(&w.keys.runs, LEDGER).await.map_err(unjudgeable)?;
    let applied = w.db.read_list(&w.keys.applied, LEDGER).await.map_err(unjudgeable)?;
    let counts = w.db.counters(&w.keys.counts).await?;
    Ok((runs, applied, counts))
}

/// The oracle's arithmetic, one copy shared by [`check`] (ledgers read from Redis) and the
/// simulator's checker (the same ledgers read from the model): each created event against the
/// effects applied for it and the dead-letter stream.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tally {
    /// Created, never effected, not dead-lettered, not at risk.
    pub lost: u64,
    /// Created after the last state a Redis restart kept (the persistence may have lost it).
    pub lost_by_restart: u64,
    pub dead_lettered: u64,
    pub effected_and_dead_lettered: u64,
    /// Effects beyond one per event id.
    pub duplicate_effects: u64,
    /// Effects of event ids nobody created.
    pub unexpected_effects: u64,
}

/// Tallies `created` events (`(id, at_risk)`, each id once) against `effects` (`(id, times
/// applied)`, each id once) and the dead-lettered ids. `lost` is called for each lost event.
pub fn tally<'a, Id: 'a>(
    created: impl IntoIterator<Item = (&'a Id, bool)>,
    effects: impl IntoIterator<Item = (&'a Id, u64)>,
    times_effected: impl Fn(&Id) -> u64,
    was_created: impl Fn(&Id) -> bool,
    dead_lettered: impl Fn(&Id) -> bool,
    mut lost: impl FnMut(&Id),
) -> Tally {
    let mut t = Tally::default();
    for (id, at_risk) in created {
        if times_effected(id) > 0 {
            t.effected_and_dead_lettered += u64::from(dead_lettered(id));
        } else if dead_lettered(id) {
            t.dead_lettered += 1;
        } else if at_risk {
            t.lost_by_restart += 1;
        } else {
            t.lost += 1;
            lost(id);
        }
    }
    for (id, n) in effects {
        t.duplicate_effects += n.saturating_sub(1);
        if !was_created(id) {
            t.unexpected_effects += n;
        }
    }
    t
}

/// Compares the created and effects ledgers of `store`'s namespace.
pub async fn check(store: &RedisStore) -> crate::store::Result<Check> {
    let created_raw = read_list(store, &store.keys.created).await?;
    let mut created: HashMap<u128, (i64, Vec<u8>)> = HashMap::with_capacity(created_raw.len());
    let mut created_n = 0u64;
    for rec in &created_raw {
        let Some(colon) = rec.iter().position(|b| *b == b':') else { continue };
        let Some(d) = std::str::from_utf8(&rec[..colon]).ok().and_then(|s| s.parse::<i64>().ok()) else {
            continue;
        };
        let key = &rec[colon + 1..];
        if let Some(id) = parse_hex_id(&event_id(key, d)) {
            created_n += 1;
            created.insert(id, (d, key.to_vec()));
        }
    }
    drop(created_raw);
    let effects_raw = read_list(store, &store.keys.effects).await?;
    let mut per_event: HashMap<u128, u32> = HashMap::with_capacity(effects_raw.len());
    let mut per_consumer: BTreeMap<String, u64> = BTreeMap::new();
    let (mut to_capture, mut to_effect, mut times) = (vec![], vec![], vec![]);
    // Effect records that name no event id at all (another program wrote the list).
    let mut unparseable = 0u64;
    let mut winners: std::collections::HashSet<(u128, String, String)> = std::collections::HashSet::new();
    // Server time at capture of each effected event (from its first effect record).
    let mut captured_at: HashMap<u128, i64> = HashMap::new();
    for rec in &effects_raw {
        let s = String::from_utf8_lossy(rec);
        let parts: Vec<&str> = s.split('|').collect();
        let Some(id) = parts.first().and_then(|p| parse_hex_id(p)) else {
            unparseable += 1;
            continue;
        };
        if let (Some(c), Some(e)) = (parts.get(1), parts.get(2)) {
            winners.insert((id, c.to_string(), e.to_string()));
        }
        let n = per_event.entry(id).or_insert(0);
        *n += 1;
        if let Some(c) = parts.get(1) {
            *per_consumer.entry(c.to_string()).or_insert(0) += 1;
        }
        // Latencies from each created event's first effect (unexpected ones are tallied below).
        if let (Some((d, _)), 1) = (created.get(&id), *n) {
            let cap = parts.get(3).and_then(|p| p.parse::<i64>().ok());
            let eff = parts.get(4).and_then(|p| p.parse::<i64>().ok());
            if let Some(c) = cap {
                to_capture.push(c - d);
                captured_at.insert(id, c);
            }
            if let Some(e) = eff {
                to_effect.push(e - d);
                times.push((*d, e));
            }
        }
    }
    // The witnesses: handler runs (event id, stream entry) and the external sink.
    let (runs_raw, applied_raw, sink_counts) = read_witnesses(store).await?;
    let mut entry_event: HashMap<String, u128> = HashMap::with_capacity(runs_raw.len());
    let mut ran: std::collections::HashSet<u128> = std::collections::HashSet::with_capacity(runs_raw.len());
    let mut superseded_runs: BTreeMap<String, u64> = BTreeMap::new();
    let mut first_via: HashMap<u128, Via> = HashMap::new();
    for rec in &runs_raw {
        let s = String::from_utf8_lossy(rec);
        let parts: Vec<&str> = s.split('|').collect();
        let (Some(id), Some(entry)) = (parts.first().and_then(|p| parse_hex_id(p)), parts.get(1)) else { continue };
        ran.insert(id);
        entry_event.insert(entry.to_string(), id);
        if let Some(consumer) = parts.get(3) {
            if !winners.contains(&(id, consumer.to_string(), entry.to_string())) {
                *superseded_runs.entry(consumer.to_string()).or_insert(0) += 1;
            }
        }
        if let Some(v) = parts.get(4).and_then(|v| Via::from_tag(v.as_bytes())) {
            first_via.entry(id).or_insert(v);
        }
    }
    let captured_via: Vec<(i64, Via)> =
        created.keys().filter_map(|id| Some((*captured_at.get(id)?, *first_via.get(id)?))).collect();
    let dead = dead_records(store).await?;
    let mut dead_set: std::collections::HashSet<u128> = std::collections::HashSet::new();
    let mut deleted_while_pending = 0u64;
    for d in &dead {
        if d.deleted_while_pending {
            deleted_while_pending += 1;
            // What is still known of it: the event, if a handler ever ran for the entry.
            if let Some(id) = entry_event.get(&d.entry) {
                dead_set.insert(*id);
            }
        } else if let Some(id) = d.event {
            dead_set.insert(id);
            entry_event.entry(d.entry.clone()).or_insert(id);
        }
    }
    for e in store.range_all(&store.keys.stream).await? {
        if let Some(id) = event_of(field(&e, b"k"), field(&e, b"d")) {
            entry_event.entry(e.id.clone()).or_insert(id);
        }
    }
    // Stream entries per event id: the tap, whatever the ledger decided about them.
    let mut entries_per_event: HashMap<u128, u64> = HashMap::with_capacity(entry_event.len());
    for id in entry_event.values() {
        *entries_per_event.entry(*id).or_insert(0) += 1;
    }
    let capture_duplicates = entries_per_event.values().map(|n| n.saturating_sub(1)).sum();
    let seen_entries = entry_event.len() as u64
        + dead.iter().filter(|d| d.event.is_none() && !entry_event.contains_key(&d.entry)).count() as u64;
    let added = store.entries_added().await;
    // Grouped by the key's bytes (keys are binary: a lossy text form would merge two keys).
    let mut applied_per_key: HashMap<(Vec<u8>, Vec<u8>), u64> = HashMap::with_capacity(applied_raw.len());
    let mut applied_events: std::collections::HashSet<u128> =
        std::collections::HashSet::with_capacity(applied_raw.len());
    for rec in &applied_raw {
        let mut parts = rec.splitn(3, |b| *b == b'|');
        let (Some(id), Some(d), Some(k)) = (parts.next(), parts.next(), parts.next()) else { continue };
        if let Some(id) = std::str::from_utf8(id).ok().and_then(parse_hex_id) {
            applied_events.insert(id);
        }
        *applied_per_key.entry((d.to_vec(), k.to_vec())).or_insert(0) += 1;
    }
    let external_duplicates = applied_per_key.values().map(|n| n.saturating_sub(1)).sum();
    let external_missing = per_event.keys().filter(|id| !applied_events.contains(id)).count() as u64;
    let effects_without_run = per_event.keys().filter(|id| !ran.contains(id)).count() as u64;
    let mut lost_sample = vec![];
    let t = tally(
        created.keys().map(|id| (id, false)),
        per_event.iter().map(|(id, n)| (id, u64::from(*n))),
        |id| per_event.get(id).map_or(0, |n| u64::from(*n)),
        |id| created.contains_key(id),
        |id| dead_set.contains(id),
        |id| {
            if lost_sample.len() < 10 {
                let (d, key) = &created[id];
                lost_sample.push(format!("{}@{d}", String::from_utf8_lossy(key)));
            }
        },
    );
    lost_sample.sort();
    let counts: Vec<u64> = per_consumer.values().copied().collect();
    let spread = if counts.is_empty() {
        Spread::default()
    } else {
        let min = *counts.iter().min().unwrap();
        let max = *counts.iter().max().unwrap();
        let mean = counts.iter().sum::<u64>() as f64 / counts.len() as f64;
        Spread { consumers: counts.len(), min, max, mean, spread_pct: (max - min) as f64 * 100.0 / mean }
    };
    let stats = store.stats().await?;
    Ok(Check {
        oracle: Verdict {
            created: created_n,
            effected: effects_raw.len() as u64,
            lost: t.lost,
            duplicate_effects: t.duplicate_effects,
            unexpected_effects: t.unexpected_effects + unparseable,
            dead_lettered: t.dead_lettered,
            effected_and_dead_lettered: t.effected_and_dead_lettered,
            duplicates_suppressed: stats.get("duplicates_suppressed").copied().unwrap_or(0).max(0) as u64,
            handler_runs: runs_raw.len() as u64,
            redeliveries: (runs_raw.len() as u64).saturating_sub(effects_raw.len() as u64 + t.dead_lettered),
            capture_duplicates,
            stream_entries_added: added,
            stream_entries_unseen: added.saturating_sub(seen_entries),
            external_applied: applied_raw.len() as u64,
            external_repeated: sink_counts.get("repeated").copied().unwrap_or(0).max(0) as u64,
            external_fenced: sink_counts.get("fenced").copied().unwrap_or(0).max(0) as u64,
            external_duplicates,
            external_missing,
            effects_without_run,
            deleted_while_pending,
        },
        per_consumer: spread,
        deadline_to_capture_ms: Latency::of(to_capture),
        deadline_to_effect_ms: Latency::of(to_effect),
        lost_sample,
        effect_times: times,
        superseded_runs,
        captured_via,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tally_classifies_every_created_event_once() {
        use std::collections::{BTreeMap, BTreeSet};
        // a: effected once; b: effected twice; c: dead-lettered; d: lost; e: lost but at risk;
        // f: effected and dead-lettered; z: effected, never created.
        let created = [("a", false), ("b", false), ("c", false), ("d", false), ("e", true), ("f", false)];
        let effects: BTreeMap<&str, u64> = [("a", 1), ("b", 2), ("f", 1), ("z", 3)].into();
        let dead: BTreeSet<&str> = ["c", "f"].into();
        let mut lost = vec![];
        let t = tally(
            created.iter().map(|(id, r)| (id, *r)),
            effects.iter().map(|(id, n)| (id, *n)),
            |id| effects.get(id).copied().unwrap_or(0),
            |id| created.iter().any(|(c, _)| c == id),
            |id| dead.contains(id),
            |id| lost.push(*id),
        );
        assert_eq!(
            t,
            Tally {
                lost: 1,
                lost_by_restart: 1,
                dead_lettered: 1,
                effected_and_dead_lettered: 1,
                duplicate_effects: 1 + 2,
                unexpected_effects: 3,
            }
        );
        assert_eq!(lost, vec!["d"]);
    }

    #[test]
    fn latency_percentiles() {
        let l = Latency::of((1..=100).collect());
        assert_eq!(l, Latency { p50: 50, p99: 99, max: 100 });
        assert_eq!(Latency::of(vec![]), Latency::default());
        assert_eq!(Latency::of(vec![7]), Latency { p50: 7, p99: 7, max: 7 });
    }
}
