//! The independent oracle. The workload records every event it creates (key, deadline);
//! the `record` handler records every effect (event id, consumer, entry id) as a Redis-side
//! effect committed with the ack. `check` compares the two as multisets. It never reads the
//! library's counters to decide anything; it only prints them beside its verdict.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::consume::{Delivery, Handler, HandlerFuture};
use crate::core::{event_id, Effect, Event};
use crate::store::Store;

pub fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// Appends created events to the created ledger (`{ns}:oracle:created`), one
/// `"<deadline>:<key>"` record each.
pub async fn record_created(store: &Store, events: &[(&[u8], i64)]) -> crate::store::Result<()> {
    if events.is_empty() {
        return Ok(());
    }
    let mut c = store.conn.clone();
    let mut cmd = redis::cmd("RPUSH");
    cmd.arg(&store.keys.created);
    for (k, d) in events {
        let mut rec = format!("{d}:").into_bytes();
        rec.extend_from_slice(k);
        cmd.arg(rec);
    }
    cmd.query_async::<()>(&mut c).await?;
    Ok(())
}

/// [`record_created`] applied at most once per `batch_id`: the RPUSH runs in a small script
/// guarded by `SET {ns}:oracle:cb:<batch_id> 1 NX PX <store::BATCH_RECORD_TTL>`, so a caller
/// whose reply was lost can repeat the call without doubling the records. Returns false when
/// the batch had already been recorded. The guard lives beside the ledger, in the oracle's
/// own keys, and uses none of the library's scripts: the oracle stays independent of the
/// write path it judges.
pub async fn record_created_once(store: &Store, batch_id: &str, events: &[(&[u8], i64)]) -> crate::store::Result<bool> {
    static SCRIPT: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| {
        redis::Script::new(
            r"
            if not redis.call('SET', KEYS[2], '1', 'NX', 'PX', ARGV[1]) then return 0 end
            -- In slices: unpack() of a very long argument list overflows Lua's C stack.
            for i = 2, #ARGV, 1000 do
              redis.call('RPUSH', KEYS[1], unpack(ARGV, i, math.min(i + 999, #ARGV)))
            end
            return 1",
        )
    });
    if events.is_empty() {
        return Ok(true);
    }
    let mut inv = SCRIPT.prepare_invoke();
    inv.key(&store.keys.created)
        .key(format!("{{{}}}:oracle:cb:{batch_id}", store.keys.ns))
        .arg(crate::store::BATCH_RECORD_TTL.as_millis() as u64);
    for (k, d) in events {
        let mut rec = format!("{d}:").into_bytes();
        rec.extend_from_slice(k);
        inv.arg(rec);
    }
    let appended: i64 = inv.invoke_async(&mut store.conn.clone()).await?;
    Ok(appended == 1)
}

/// The oracle's handler: waits `work` (the simulated cost of the real work), then returns one
/// effect, an `RPUSH` of `"<event id>|<consumer>|<entry id>|<captured ms>|<effect ms>"` to the
/// effects ledger. Being a Redis-side effect, it is committed atomically with the ack.
pub struct RecordHandler {
    pub effects_key: String,
    pub work: Duration,
}

impl RecordHandler {
    pub fn new(store: &Store, work: Duration) -> Arc<RecordHandler> {
        Arc::new(RecordHandler { effects_key: store.keys.effects.clone(), work })
    }
}

impl Handler for RecordHandler {
    fn handle<'a>(&'a self, event: &'a Event, d: &'a Delivery) -> HandlerFuture<'a> {
        Box::pin(async move {
            if !self.work.is_zero() {
                crate::timer::sleep(self.work).await;
            }
            let rec = format!("{}|{}|{}|{}|{}", event.event_id, d.consumer, d.entry_id, event.captured_ms, now_ms());
            Ok(vec![Effect::new("RPUSH", [self.effects_key.as_bytes(), rec.as_bytes()])])
        })
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
    /// The library's own count of suppressed replays (printed beside, not used).
    pub duplicates_suppressed: u64,
}

impl Verdict {
    pub fn ok(&self) -> bool {
        self.lost == 0 && self.duplicate_effects == 0 && self.unexpected_effects == 0
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
}

fn parse_hex_id(s: &str) -> Option<u128> {
    (s.len() == 32).then(|| u128::from_str_radix(s, 16).ok()).flatten()
}

async fn read_list(store: &Store, key: &str) -> crate::store::Result<Vec<Vec<u8>>> {
    let mut c = store.conn.clone();
    let mut out = vec![];
    let step = 50_000isize;
    let mut start = 0isize;
    loop {
        let chunk: Vec<Vec<u8>> =
            redis::cmd("LRANGE").arg(key).arg(start).arg(start + step - 1).query_async(&mut c).await?;
        let n = chunk.len();
        out.extend(chunk);
        if (n as isize) < step {
            return Ok(out);
        }
        start += step;
    }
}

/// Dead-lettered event ids (from entries that still name a key and deadline).
async fn dead_ids(store: &Store) -> crate::store::Result<Vec<u128>> {
    let mut c = store.conn.clone();
    let mut out = vec![];
    let mut from = "-".to_string();
    loop {
        let v: redis::Value = redis::cmd("XRANGE")
            .arg(&store.keys.dead)
            .arg(&from)
            .arg("+")
            .arg("COUNT")
            .arg(10_000)
            .query_async(&mut c)
            .await?;
        let entries = crate::store::parse_entries(&v)?;
        let Some(last) = entries.last() else { return Ok(out) };
        from = format!("({}", last.id);
        for e in &entries {
            let get = |n: &[u8]| e.fields.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
            if let (Some(k), Some(d)) = (get(b"f:k"), get(b"f:d")) {
                if let Some(d) = std::str::from_utf8(&d).ok().and_then(|s| s.parse::<i64>().ok()) {
                    if let Some(id) = parse_hex_id(&event_id(&k, d)) {
                        out.push(id);
                    }
                }
            }
        }
    }
}

/// Compares the created and effects ledgers of `store`'s namespace.
pub async fn check(store: &Store) -> crate::store::Result<Check> {
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
    let mut unexpected = 0u64;
    for rec in &effects_raw {
        let s = String::from_utf8_lossy(rec);
        let parts: Vec<&str> = s.split('|').collect();
        let Some(id) = parts.first().and_then(|p| parse_hex_id(p)) else {
            unexpected += 1;
            continue;
        };
        let n = per_event.entry(id).or_insert(0);
        *n += 1;
        if let Some(c) = parts.get(1) {
            *per_consumer.entry(c.to_string()).or_insert(0) += 1;
        }
        match created.get(&id) {
            None => unexpected += 1,
            Some((d, _)) if *n == 1 => {
                let cap = parts.get(3).and_then(|p| p.parse::<i64>().ok());
                let eff = parts.get(4).and_then(|p| p.parse::<i64>().ok());
                if let Some(c) = cap {
                    to_capture.push(c - d);
                }
                if let Some(e) = eff {
                    to_effect.push(e - d);
                    times.push((*d, e));
                }
            }
            Some(_) => {}
        }
    }
    let dead = dead_ids(store).await?;
    let dead_set: std::collections::HashSet<u128> = dead.iter().copied().collect();
    let mut lost = 0u64;
    let mut lost_sample = vec![];
    let mut dead_lettered = 0u64;
    for (id, (d, key)) in &created {
        if per_event.contains_key(id) {
            continue;
        }
        if dead_set.contains(id) {
            dead_lettered += 1;
            continue;
        }
        lost += 1;
        if lost_sample.len() < 10 {
            lost_sample.push(format!("{}@{d}", String::from_utf8_lossy(key)));
        }
    }
    lost_sample.sort();
    let duplicate_effects = per_event.values().map(|n| u64::from(n.saturating_sub(1))).sum();
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
            lost,
            duplicate_effects,
            unexpected_effects: unexpected,
            dead_lettered,
            duplicates_suppressed: stats.get("duplicates_suppressed").copied().unwrap_or(0).max(0) as u64,
        },
        per_consumer: spread,
        deadline_to_capture_ms: Latency::of(to_capture),
        deadline_to_effect_ms: Latency::of(to_effect),
        lost_sample,
        effect_times: times,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_percentiles() {
        let l = Latency::of((1..=100).collect());
        assert_eq!(l, Latency { p50: 50, p99: 99, max: 100 });
        assert_eq!(Latency::of(vec![]), Latency::default());
        assert_eq!(Latency::of(vec![7]), Latency { p50: 7, p99: 7, max: 7 });
    }
}
