//! Measurements for `just bench`: the Redis server's own expire-and-notify rate, taken on the
//! same server as the pipeline run it is compared with.

use std::time::{Duration, Instant};

use redis::aio::ConnectionManagerConfig;
use redis::{PushKind, Value};
use serde::Serialize;

/// A connection with no response timeout: FLUSHALL of a million keys and big pipelines take
/// longer than redis-rs's 500 ms default.
pub async fn conn(url: &str) -> anyhow::Result<redis::aio::MultiplexedConnection> {
    let cfg = redis::AsyncConnectionConfig::new().set_response_timeout(None);
    Ok(redis::Client::open(url)?.get_multiplexed_async_connection_with_config(&cfg).await?)
}

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
    let client = redis::Client::open(url)?;
    let mut c = conn(url).await?;
    let _: () = redis::cmd("CONFIG").arg("SET").arg("notify-keyspace-events").arg("Ex").query_async(&mut c).await?;
    let info = client.get_connection_info().clone();
    let settings = info.redis_settings().clone().set_protocol(redis::ProtocolVersion::RESP3);
    let sub_client = redis::Client::open(info.set_redis_settings(settings))?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let mut sub =
        redis::aio::ConnectionManager::new_with_config(sub_client, ConnectionManagerConfig::new().set_push_sender(tx))
            .await?;
    let db = client.get_connection_info().redis_settings().db();
    sub.subscribe(format!("__keyevent@{db}__:expired")).await?;
    let prefix = b"bench:raw:";
    let start = Instant::now();
    let loader = tokio::spawn(async move {
        let mut i = 0u64;
        while i < keys {
            let mut p = redis::pipe();
            for j in i..(i + 1000).min(keys) {
                p.cmd("SET").arg(format!("bench:raw:{j}")).arg("v").arg("PX").arg(ttl_ms).ignore();
            }
            p.query_async::<()>(&mut c).await?;
            i += 1000;
        }
        anyhow::Ok(())
    });
    let mut received = 0u64;
    let mut last = start;
    let limit = Duration::from_secs(300);
    while received < keys && start.elapsed() < limit {
        match tokio::time::timeout(Duration::from_secs(10), rx.recv()).await {
            Ok(Some(p)) if p.kind == PushKind::Message => {
                if let Some(Value::BulkString(k)) = p.data.get(1) {
                    if k.starts_with(prefix) {
                        received += 1;
                        last = Instant::now();
                    }
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

async fn used_memory(c: &mut redis::aio::MultiplexedConnection) -> anyhow::Result<i64> {
    let info: String = redis::cmd("INFO").arg("memory").query_async(c).await?;
    Ok(info.lines().find_map(|l| l.strip_prefix("used_memory:")).and_then(|v| v.trim().parse().ok()).unwrap_or(0))
}

async fn memory_usage(c: &mut redis::aio::MultiplexedConnection, key: &str) -> anyhow::Result<i64> {
    let v: Option<i64> = redis::cmd("MEMORY").arg("USAGE").arg(key).arg("SAMPLES").arg(0).query_async(c).await?;
    Ok(v.unwrap_or(0))
}

/// Loads `n` plain keys with a one-hour TTL under `{bench}:bg:` (Redis's many long-lived keys).
pub async fn load_background(url: &str, n: u64) -> anyhow::Result<()> {
    let mut c = conn(url).await?;
    let mut i = 0u64;
    while i < n {
        let mut p = redis::pipe();
        for j in i..(i + 1000).min(n) {
            p.cmd("SET").arg(format!("{{bench}}:bg:{j}")).arg("v").arg("EX").arg(3600).ignore();
        }
        p.query_async::<()>(&mut c).await?;
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
    let mut c = conn(url).await?;
    let _: () = redis::cmd("FLUSHALL").query_async(&mut c).await?;
    let store = Store::connect(url, "mem", "g").await?;
    store.ensure_group().await?;
    let m0 = used_memory(&mut c).await?;
    let items = |ttl: Duration, from: u64| -> Vec<(Vec<u8>, Vec<u8>, Duration)> {
        (from..from + n).map(|i| (format!("{{mem}}:k:{i}").into_bytes(), vec![b'x'; 16], ttl)).collect()
    };
    for chunk in items(Duration::from_secs(3600), 0).chunks(500) {
        store.write_batch(chunk).await?;
    }
    let m1 = used_memory(&mut c).await?;
    let _: () = redis::cmd("FLUSHALL").query_async(&mut c).await?;
    store.ensure_group().await?;
    for chunk in items(Duration::from_millis(1), 0).chunks(500) {
        store.write_batch(chunk).await?;
    }
    tokio::time::sleep(Duration::from_millis(20)).await;
    while store.sweep(1000).await?.examined > 0 {}
    let stream_bytes = memory_usage(&mut c, &store.keys.stream).await?;
    let mut dc = store.dedicated().await?;
    while !store.read_new(&mut dc, "m", 1000, Duration::from_millis(10)).await?.is_empty() {}
    let pending_bytes = memory_usage(&mut c, &store.keys.stream).await?;
    let ledger = format!("{}bench", store.keys.ledger_prefix);
    for chunk in (0..n).collect::<Vec<_>>().chunks(1000) {
        let mut cmd = redis::cmd("SADD");
        cmd.arg(&ledger);
        for i in chunk {
            cmd.arg(crate::core::event_id(format!("k{i}").as_bytes(), *i as i64));
        }
        cmd.query_async::<()>(&mut c).await?;
    }
    let ledger_bytes = memory_usage(&mut c, &ledger).await?;
    let _: () = redis::cmd("FLUSHALL").query_async(&mut c).await?;
    let per = |b: i64| b as f64 / n.max(1) as f64;
    Ok(Memory {
        n,
        per_tracked_key_bytes: per(m1 - m0),
        per_stream_entry_bytes: per(stream_bytes),
        per_pending_entry_bytes: per(pending_bytes),
        per_ledger_id_bytes: per(ledger_bytes),
    })
}
