//! Measurements for `just bench`: the Redis server's own expire-and-notify rate, taken on the
//! same server as the pipeline run it is compared with.

use std::time::{Duration, Instant};

use redis::aio::ConnectionManagerConfig;
use redis::{PushKind, Value};
use serde::Serialize;

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
    let mut c = client.get_multiplexed_async_connection().await?;
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
