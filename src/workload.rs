//! The workload generator, the one producer of `run`, `produce`, `bench` and the chaos
//! scenarios: `set_with_ttl` at a precise pace, recording every created event in the oracle's
//! created ledger. (The simulator's producer paces in virtual time over the model.)

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::store::{RedisStore, StoreError};

/// How long `produce` keeps retrying one call through retryable errors (connection lost,
/// refused or timed out; server loading) before it gives up with [`StoreError::GaveUp`]. Long
/// enough to ride out a Redis restart; well inside `store::BATCH_RECORD_TTL`, so a retry always
/// finds the record of an attempt that was applied.
pub const RETRY_BOUND: Duration = Duration::from_secs(60);
const BACKOFF_FIRST: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(1);

/// Who writes the workload's keys.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Writer {
    /// The library's `set_with_ttl` (tracked keys, `{NS}:k:N`).
    #[default]
    Library,
    /// Plain `SET key value PXAT deadline`, as any other program writes (`plain:{NS}:N`): the
    /// keys reach the pipeline only through adoption (`capture --adopt 'plain:{NS}:*'`).
    Plain,
}

impl Writer {
    pub fn is_library(&self) -> bool {
        *self == Writer::Library
    }
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct WorkloadConfig {
    pub keys: u64,
    pub ttl_ms: u64,
    /// Delay between key creations (the seed's "creation delay"); 0 means as fast as possible.
    pub delay_us: u64,
    pub payload_bytes: usize,
    /// Keys per script call at most.
    pub batch: usize,
    /// Reports and snapshots show it only when it is not the library.
    #[serde(skip_serializing_if = "Writer::is_library")]
    pub writer: Writer,
}

impl Default for WorkloadConfig {
    fn default() -> Self {
        WorkloadConfig {
            keys: 100_000,
            ttl_ms: 100,
            delay_us: 100,
            payload_bytes: 16,
            batch: 256,
            writer: Writer::Library,
        }
    }
}

#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct ProduceReport {
    pub created: u64,
    pub elapsed_s: f64,
    pub offered_rate: f64,
    pub achieved_rate: f64,
}

/// How long each key lives.
#[derive(Clone, Debug)]
pub enum TtlPlan {
    /// `WorkloadConfig::ttl_ms` for every key.
    Fixed,
    /// Drawn per key, uniformly in `min_ms..=max_ms`, from `seed` (a scenario's).
    Uniform { min_ms: u64, max_ms: u64, seed: u64 },
}

/// What a harness adds around each batch (the chaos runner uses all of it).
#[derive(Default)]
pub struct Extras {
    pub ttl: Option<TtlPlan>,
    /// Held shared over each batch's write and its record: a fault that breaks the producer's
    /// connections (a Redis restart) takes it exclusively, so it never falls between them.
    pub gate: Option<Arc<tokio::sync::RwLock<()>>>,
    /// Every acknowledged creation is appended here as `deadline:key`, before its record in the
    /// created ledger: a witness that survives what Redis forgets.
    pub ledger_file: Option<std::path::PathBuf>,
    /// Counts the calls retried.
    pub retries: Option<Arc<AtomicU64>>,
    /// Key `i` is due at `start + i * delay` (a scenario shares its clock with its faults).
    pub start: Option<Instant>,
}

/// The payload of workload key `i`, `bytes` long at least.
pub fn payload_for(i: u64, bytes: usize) -> Vec<u8> {
    let mut v = format!("v{i}:").into_bytes();
    v.resize(bytes.max(v.len()), b'x');
    v
}

/// Workload key `i` of a namespace.
pub fn key_for(store: &RedisStore, i: u64) -> Vec<u8> {
    format!("{}{i}", store.keys.key_prefix()).into_bytes()
}

/// Key `i` of a plain writer ([`Writer::Plain`]): outside the namespace's own keys, which are
/// never adopted.
pub fn plain_key_for(store: &RedisStore, i: u64) -> Vec<u8> {
    format!("{}{i}", plain_prefix(store)).into_bytes()
}

/// The prefix of a plain writer's keys, `plain:{NS}:`; its adoption pattern is this and `*`.
pub fn plain_prefix(store: &RedisStore) -> String {
    format!("plain:{{{}}}:", store.keys.ns)
}

/// Creates `cfg.keys` tracked keys. The pacer is absolute: key `i` is due at
/// `start + i * delay`, and each loop sends every key that is due, so timer granularity
/// (about 1 ms) changes batch sizes, never the rate.
///
/// Survives connection loss: each batch's write and its record in the created ledger are
/// retried (see [`RETRY_BOUND`]) until they succeed. Both are idempotent per batch id
/// ([`RedisStore::write_batch_once`], [`crate::oracle::record_created_once`]), because a call whose
/// reply was lost may have been applied: a blind retry would write the keys again (a second
/// deadline generation) or record them twice.
pub async fn produce(
    store: &RedisStore,
    cfg: &WorkloadConfig,
    created: Arc<AtomicU64>,
) -> crate::store::Result<ProduceReport> {
    produce_with(store, cfg, created, Extras::default()).await
}

/// [`produce`] with a harness's [`Extras`].
pub async fn produce_with(
    store: &RedisStore,
    cfg: &WorkloadConfig,
    created: Arc<AtomicU64>,
    extras: Extras,
) -> crate::store::Result<ProduceReport> {
    let mut file = match &extras.ledger_file {
        Some(p) => Some(std::io::BufWriter::new(std::fs::File::create(p).map_err(StoreError::Io)?)),
        None => None,
    };
    let mut rng = match extras.ttl {
        Some(TtlPlan::Uniform { seed, .. }) => fastrand::Rng::with_seed(seed),
        _ => fastrand::Rng::with_seed(0),
    };
    let ttl_of = |rng: &mut fastrand::Rng| match extras.ttl {
        Some(TtlPlan::Uniform { min_ms, max_ms, .. }) => rng.u64(min_ms..=max_ms.max(min_ms)),
        _ => cfg.ttl_ms,
    };
    let retries = extras.retries.clone().unwrap_or_default();
    // Batch ids: `<run>-<n>`. The run part is random per call, so ids never collide with
    // another producer's (or an earlier run's) records still alive in the same namespace.
    let run = format!("{:016x}{:08x}", fastrand::u64(..), std::process::id());
    let mut batch_no = 0u64;
    let start = extras.start.unwrap_or_else(Instant::now);
    let mut sent = 0u64;
    while sent < cfg.keys {
        // No delay (division by zero): every key is due at once.
        let el = start.elapsed().as_micros() as u64;
        let due = el.checked_div(cfg.delay_us).map_or(cfg.keys, |n| (n + 1).min(cfg.keys));
        if due <= sent {
            let next = start + Duration::from_micros(cfg.delay_us.saturating_mul(sent));
            tokio::time::sleep_until(next.into()).await;
            continue;
        }
        let n = (due - sent).min(cfg.batch as u64);
        let items: Vec<(Vec<u8>, Vec<u8>, Duration)> = (sent..sent + n)
            .map(|i| {
                let ttl = Duration::from_millis(ttl_of(&mut rng));
                let key = match cfg.writer {
                    Writer::Library => key_for(store, i),
                    Writer::Plain => plain_key_for(store, i),
                };
                (key, payload_for(i, cfg.payload_bytes), ttl)
            })
            .collect();
        let id = format!("{run}-{batch_no}");
        batch_no += 1;
        let (id, items) = (id.as_str(), items.as_slice());
        let guard = match &extras.gate {
            Some(g) => Some(g.read().await),
            None => None,
        };
        let deadlines = match cfg.writer {
            Writer::Library => {
                retrying("write batch", RETRY_BOUND, &retries, || store.write_batch_once(id, items)).await?
            }
            Writer::Plain => {
                // Deadlines fixed before the first attempt, so a retry sends the same `PXAT`s
                // (a plain `SET` is then idempotent: same value, same deadline).
                let now = retrying("server time", RETRY_BOUND, &retries, || store.server_time_ms()).await?;
                let dls: Vec<i64> = items.iter().map(|(_, _, ttl)| now + ttl.as_millis() as i64).collect();
                retrying("plain write", RETRY_BOUND, &retries, || store.set_plain(items, &dls)).await?;
                dls
            }
        };
        if let Some(f) = file.as_mut() {
            use std::io::Write;
            for ((k, _, _), d) in items.iter().zip(&deadlines) {
                writeln!(f, "{d}:{}", String::from_utf8_lossy(k)).map_err(StoreError::Io)?;
            }
            f.flush().map_err(StoreError::Io)?;
        }
        let recs: Vec<(&[u8], i64)> = items.iter().zip(&deadlines).map(|((k, _, _), d)| (k.as_slice(), *d)).collect();
        let recs = recs.as_slice();
        retrying("record created", RETRY_BOUND, &retries, || crate::oracle::record_created_once(store, id, recs))
            .await?;
        drop(guard);
        sent += n;
        created.store(sent, Ordering::Relaxed);
    }
    let elapsed = start.elapsed().as_secs_f64();
    Ok(ProduceReport {
        created: sent,
        elapsed_s: elapsed,
        offered_rate: if cfg.delay_us == 0 { 0.0 } else { 1e6 / cfg.delay_us as f64 },
        achieved_rate: sent as f64 / elapsed.max(1e-9),
    })
}

/// Runs `call` until it succeeds. Retryable errors ([`StoreError::is_retryable`]) are retried,
/// with one line on stderr each; after `bound` without success the last error is returned
/// inside [`StoreError::GaveUp`]. Any other error is returned at once. Only for idempotent
/// calls.
///
/// The schedule is pairs: after a pause (50 ms, doubling to 1 s) one attempt, and if that
/// fails, one more at once. A connection that died while nobody used it is noticed only by
/// the next call, which fails and makes the shared connection reconnect; the immediate
/// attempt then runs on the new connection. Without it, connections killed more often than
/// the pause (`CLIENT KILL` every 50 ms) would fail every attempt, each on an already dead
/// connection. A server that is down still gets at most two attempts per pause.
async fn retrying<T, F, Fut>(what: &str, bound: Duration, retries: &AtomicU64, mut call: F) -> crate::store::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = crate::store::Result<T>>,
{
    let mut backoff = BACKOFF_FIRST;
    let mut failing_since: Option<Instant> = None;
    let mut immediate = true;
    loop {
        match call().await {
            Ok(v) => return Ok(v),
            Err(e) if e.is_retryable() => {
                retries.fetch_add(1, Ordering::Relaxed);
                let since = *failing_since.get_or_insert_with(Instant::now);
                if since.elapsed() >= bound {
                    return Err(StoreError::GaveUp {
                        what: format!("produce: {what}"),
                        after: bound,
                        last: Box::new(e),
                    });
                }
                if immediate {
                    eprintln!("produce: {what} failed ({e}); reconnecting, retry now");
                    immediate = false;
                    continue;
                }
                eprintln!("produce: {what} failed ({e}); reconnecting, retry in {} ms", backoff.as_millis());
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(BACKOFF_MAX);
                immediate = true;
            }
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dropped() -> StoreError {
        StoreError::broken_pipe()
    }

    #[tokio::test]
    async fn retrying_retries_connection_loss_and_stops_on_other_errors() {
        // Two dropped connections, then success.
        let mut n = 0;
        let r = retrying("t", Duration::from_secs(5), &AtomicU64::new(0), || {
            n += 1;
            let fail = n <= 2;
            async move {
                if fail {
                    Err(dropped())
                } else {
                    Ok(n)
                }
            }
        })
        .await;
        assert_eq!(r.unwrap(), 3);
        // Not retryable: returned at once.
        let mut n = 0;
        let r: crate::store::Result<()> = retrying("t", Duration::from_secs(5), &AtomicU64::new(0), || {
            n += 1;
            async { Err(StoreError::Reply { what: "x", reply: "y".into() }) }
        })
        .await;
        assert!(matches!(r, Err(StoreError::Reply { .. })));
        assert_eq!(n, 1);
        // Always failing: gives up after the bound, naming the call and the last error.
        let t = Instant::now();
        let r: crate::store::Result<()> =
            retrying("write batch", Duration::from_millis(120), &AtomicU64::new(0), || async { Err(dropped()) }).await;
        let e = r.unwrap_err();
        assert!(t.elapsed() >= Duration::from_millis(120));
        assert!(!e.is_retryable());
        let msg = e.to_string();
        assert!(msg.starts_with("produce: write batch: no success after 120ms of retries"), "{msg}");
        assert!(msg.to_lowercase().contains("broken pipe"), "{msg}");
    }
}
