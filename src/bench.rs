//! Measurements for `just bench`: the Redis server's own expire-and-notify rate, taken on the
//! same server as the pipeline run it is compared with.

use std::time::{Duration, Instant};

use serde::Serialize;

use crate::store::notify::Push;
use crate::store::server::Server;

/// How fast the server itself turns SET-with-TTL keys into `expired` notifications.
#[derive(Clone, Debug, Serialize)]
pub struct NotifyRate {
    pub keys: u64,
    pub received: u64,
    /// From the first write to the last notification received, seconds.
    pub elapsed_s: f64,
    pub rate_keys_per_s: f64,
}

/// Loads `keys` plain keys with `SET k v PX ttl` (pipelined, 1,000 per round trip) and counts
/// their `expired` notifications on one subscriber. Same clock span as the pipeline's rate:
/// first write to last event.
pub async fn redis_expire_notify(url: &str, keys: u64, ttl_ms: u64) -> anyhow::Result<NotifyRate> {
    let server = Server::connect(url).await?;
    server.config_set("notify-keyspace-events", "Ex").await?;
    // Kept alive (not pinged) while the notifications arrive.
    let (_sub, mut pushes) = server.subscribe(&format!("__keyevent@{}__:expired", server.db())).await?;
    let prefix = b"bench:raw:";
    let start = Instant::now();
    let loader = tokio::spawn(async move {
        let mut i = 0u64;
        while i < keys {
            let batch: Vec<String> = (i..(i + 1000).min(keys)).map(|j| format!("bench:raw:{j}")).collect();
            server.set_expiring(&batch, "v", Duration::from_millis(ttl_ms)).await?;
            i += 1000;
        }
        anyhow::Ok(())
    });
    let mut received = 0u64;
    let mut last = start;
    let limit = Duration::from_secs(300);
    while received < keys && start.elapsed() < limit {
        match tokio::time::timeout(Duration::from_secs(10), pushes.recv()).await {
            Ok(Some(Push::Message { payload, .. })) => {
                if payload.starts_with(prefix) {
                    received += 1;
                    last = Instant::now();
                }
            }
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => break,
        }
    }
    loader.await??;
    let elapsed = last.duration_since(start).as_secs_f64();
    Ok(NotifyRate { keys, received, elapsed_s: elapsed, rate_keys_per_s: received as f64 / elapsed.max(1e-9) })
}

/// Loads `n` plain keys with a one-hour TTL under `{bench}:bg:` (Redis's many long-lived keys).
pub async fn load_background(url: &str, n: u64) -> anyhow::Result<()> {
    let server = Server::connect(url).await?;
    let mut i = 0u64;
    while i < n {
        let batch: Vec<String> = (i..(i + 1000).min(n)).map(|j| format!("{{bench}}:bg:{j}")).collect();
        server.set_expiring(&batch, "v", Duration::from_secs(3600)).await?;
        i += 1000;
    }
    Ok(())
}

/// Redis memory per tracked key, per captured (in-flight) event, per pending entry, and per
/// ledger event id, measured on `n` of each.
#[derive(Clone, Debug, Serialize)]
pub struct Memory {
    pub n: u64,
    /// Key + index entry + payload, for a tracked key not yet expired (16-byte payload).
    pub per_tracked_key_bytes: f64,
    /// A captured event waiting in the stream (entry with key, deadline, id, path, time, payload).
    pub per_stream_entry_bytes: f64,
    /// The same entries once delivered and pending (stream entry + PEL records).
    pub per_pending_entry_bytes: f64,
    /// One event id in a ledger set.
    pub per_ledger_id_bytes: f64,
}

/// Measures [`Memory`] on namespace `ns` of a Redis it may flush.
pub async fn memory(url: &str, n: u64) -> anyhow::Result<Memory> {
    use crate::store::Store;
    let server = Server::connect(url).await?;
    server.flushall().await?;
    let store = Store::connect(url, "mem", "g").await?;
    store.ensure_group().await?;
    let m0 = server.memory_info("used_memory").await?;
    let items = |ttl: Duration, from: u64| -> Vec<(Vec<u8>, Vec<u8>, Duration)> {
        (from..from + n).map(|i| (format!("{{mem}}:k:{i}").into_bytes(), vec![b'x'; 16], ttl)).collect()
    };
    for chunk in items(Duration::from_secs(3600), 0).chunks(500) {
        store.write_batch(chunk).await?;
    }
    let m1 = server.memory_info("used_memory").await?;
    server.flushall().await?;
    store.ensure_group().await?;
    for chunk in items(Duration::from_millis(1), 0).chunks(500) {
        store.write_batch(chunk).await?;
    }
    tokio::time::sleep(Duration::from_millis(20)).await;
    while store.sweep(1000).await?.examined > 0 {}
    let stream_bytes = server.memory_usage(&store.keys.stream).await?;
    let mut dc = store.dedicated().await?;
    while !store.read_new(&mut dc, "m", 1000, Duration::from_millis(10)).await?.is_empty() {}
    let pending_bytes = server.memory_usage(&store.keys.stream).await?;
    let ledger = format!("{}bench", store.keys.ledger_prefix);
    for chunk in (0..n).collect::<Vec<_>>().chunks(1000) {
        let ids: Vec<String> =
            chunk.iter().map(|i| crate::core::event_id(format!("k{i}").as_bytes(), *i as i64)).collect();
        server.add_to_set(&ledger, &ids).await?;
    }
    let ledger_bytes = server.memory_usage(&ledger).await?;
    server.flushall().await?;
    let per = |b: i64| b as f64 / n.max(1) as f64;
    Ok(Memory {
        n,
        per_tracked_key_bytes: per(m1 - m0),
        per_stream_entry_bytes: per(stream_bytes),
        per_pending_entry_bytes: per(pending_bytes),
        per_ledger_id_bytes: per(ledger_bytes),
    })
}
