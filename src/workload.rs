//! The workload generator: `set_with_ttl` at a precise pace, recording every created event
//! in the oracle's created ledger.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::store::Store;

#[derive(Clone, Debug, serde::Serialize)]
pub struct WorkloadConfig {
    pub keys: u64,
    pub ttl_ms: u64,
    /// Delay between key creations (the seed's "creation delay"); 0 means as fast as possible.
    pub delay_us: u64,
    pub payload_bytes: usize,
    /// Keys per script call at most.
    pub batch: usize,
}

impl Default for WorkloadConfig {
    fn default() -> Self {
        WorkloadConfig { keys: 100_000, ttl_ms: 100, delay_us: 100, payload_bytes: 16, batch: 256 }
    }
}

#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct ProduceReport {
    pub created: u64,
    pub elapsed_s: f64,
    pub offered_rate: f64,
    pub achieved_rate: f64,
}

/// Workload key `i` of a namespace.
pub fn key_for(store: &Store, i: u64) -> Vec<u8> {
    format!("{}{i}", store.keys.key_prefix()).into_bytes()
}

/// Creates `cfg.keys` tracked keys. The pacer is absolute: key `i` is due at
/// `start + i * delay`, and each loop sends every key that is due, so timer granularity
/// (about 1 ms) changes batch sizes, never the rate.
pub async fn produce(
    store: &Store,
    cfg: &WorkloadConfig,
    created: Arc<AtomicU64>,
) -> crate::store::Result<ProduceReport> {
    let start = Instant::now();
    let ttl = Duration::from_millis(cfg.ttl_ms);
    let mut sent = 0u64;
    while sent < cfg.keys {
        let due = if cfg.delay_us == 0 {
            cfg.keys
        } else {
            let el = start.elapsed().as_micros() as u64;
            (el / cfg.delay_us + 1).min(cfg.keys)
        };
        if due <= sent {
            let next = start + Duration::from_micros(cfg.delay_us.saturating_mul(sent));
            tokio::time::sleep_until(next.into()).await;
            continue;
        }
        let n = (due - sent).min(cfg.batch as u64);
        let items: Vec<(Vec<u8>, Vec<u8>, Duration)> = (sent..sent + n)
            .map(|i| {
                let mut v = format!("v{i}:").into_bytes();
                v.resize(cfg.payload_bytes.max(v.len()), b'x');
                (key_for(store, i), v, ttl)
            })
            .collect();
        let deadlines = store.write_batch(&items).await?;
        let recs: Vec<(&[u8], i64)> = items.iter().zip(&deadlines).map(|((k, _, _), d)| (k.as_slice(), *d)).collect();
        crate::oracle::record_created(store, &recs).await?;
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
