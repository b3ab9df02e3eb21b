//! Measurements for `just bench`: the Redis server's own expire-and-notify rate, taken on the
//! same server as the pipeline run it is compared with.

use std::time::{Duration, Instant};

use serde::Serialize;

use crate::store::notify::Push;
use crate::store::server::{Server, ServerCpu};

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
    use crate::store::RedisStore;
    let server = Server::connect(url).await?;
    server.flushall().await?;
    let store = RedisStore::connect(url, "mem", "g").await?;
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

/// This process's CPU time so far (user + system), µs, from `/proc/self/stat` (Linux; clock
/// ticks of 10 ms, fine over runs of seconds). None elsewhere.
pub fn process_cpu_us() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which is in parentheses and may hold spaces).
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name and state.
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    Some(ticks * 1e6 / 100.0)
}

/// What a stretch of work cost, per event.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Cost {
    pub events: u64,
    /// The server's `used_cpu_user` + `used_cpu_sys` over the stretch, per event.
    pub redis_cpu_us_per_event: f64,
    /// This process's CPU (every task of the pipeline: producer, capture, consumers, oracle
    /// handler), per event.
    pub client_cpu_us_per_event: Option<f64>,
    /// Per command class (`INFO commandstats` deltas): calls and server µs per event, the
    /// busiest first.
    pub commands: Vec<CommandCost>,
}

#[derive(Clone, Debug, Serialize)]
pub struct CommandCost {
    pub command: String,
    pub calls_per_event: f64,
    pub us_per_event: f64,
}

impl Cost {
    pub fn between(before: &ServerCpu, after: &ServerCpu, client: (Option<f64>, Option<f64>), events: u64) -> Cost {
        let n = events.max(1) as f64;
        let mut commands: Vec<CommandCost> = after
            .commands
            .iter()
            .filter_map(|(name, (calls, usec))| {
                let (c0, u0) = before.commands.get(name).copied().unwrap_or((0, 0));
                let calls = calls.saturating_sub(c0);
                (calls > 0).then(|| CommandCost {
                    command: name.clone(),
                    calls_per_event: calls as f64 / n,
                    us_per_event: usec.saturating_sub(u0) as f64 / n,
                })
            })
            .collect();
        commands.sort_by(|a, b| b.us_per_event.total_cmp(&a.us_per_event));
        Cost {
            events,
            redis_cpu_us_per_event: (after.used_cpu_us - before.used_cpu_us).max(0.0) / n,
            client_cpu_us_per_event: match client {
                (Some(a), Some(b)) => Some((b - a).max(0.0) / n),
                _ => None,
            },
            commands,
        }
    }

    /// One line: the totals and the three busiest command classes.
    pub fn line(&self) -> String {
        let top: Vec<String> = self
            .commands
            .iter()
            .take(3)
            .map(|c| format!("{} {:.2} calls {:.1} us", c.command, c.calls_per_event, c.us_per_event))
            .collect();
        let client = self.client_cpu_us_per_event.map_or("n/a".into(), |c| format!("{c:.1} us"));
        format!(
            "redis CPU {:.1} us/event, client CPU {client}/event; busiest per event: {}",
            self.redis_cpu_us_per_event,
            top.join(", ")
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cost_is_the_difference_per_event_busiest_first() {
        let before = ServerCpu { used_cpu_us: 1_000.0, commands: [("evalsha".to_string(), (10, 100))].into() };
        let after = ServerCpu {
            used_cpu_us: 3_000.0,
            commands: [("evalsha".to_string(), (30, 500)), ("xreadgroup".to_string(), (40, 800))].into(),
        };
        let c = Cost::between(&before, &after, (Some(100.0), Some(300.0)), 20);
        assert_eq!(c.redis_cpu_us_per_event, 100.0);
        assert_eq!(c.client_cpu_us_per_event, Some(10.0));
        assert_eq!(c.commands[0].command, "xreadgroup");
        assert_eq!((c.commands[1].calls_per_event, c.commands[1].us_per_event), (1.0, 20.0));
    }

    #[test]
    fn process_cpu_reads_this_process() {
        if cfg!(target_os = "linux") {
            assert!(process_cpu_us().is_some());
        }
    }
}

/// The seed's own protocol ([`crate::store::seed_peer`]) on the same server, with the same
/// keys, pace, consumers and work as a pipeline run: its rate and what it costs Redis.
#[derive(Clone, Debug, Serialize)]
pub struct SeedPeerRun {
    pub keys: u64,
    /// Keys whose work was done (the processed set); fewer than `keys` when notifications were lost.
    pub processed: u64,
    pub consumers: usize,
    pub work_ms: u64,
    pub elapsed_s: f64,
    pub rate_keys_per_s: f64,
    pub redis_cpu_us_per_event: f64,
}

/// Runs the seed's protocol: `keys` keys `SET ... PX ttl` at one per `delay_us`, a pub/sub
/// bridge, `consumers` consumers reading one entry at a time, `work` per key. Ends when every
/// key is processed or nothing has been processed for 10 s.
pub async fn seed_peer(
    url: &str,
    keys: u64,
    ttl: Duration,
    delay_us: u64,
    consumers: usize,
    work: Duration,
) -> anyhow::Result<SeedPeerRun> {
    use crate::store::seed_peer::SeedPeer;
    let server = Server::connect(url).await?;
    server.config_set("notify-keyspace-events", "Ex").await?;
    let peer = SeedPeer::connect(url, "seedpeer").await?;
    let cpu0 = server.cpu().await?;
    let (_sub, mut pushes) = server.subscribe(&format!("__keyevent@{}__:expired", server.db())).await?;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let prefix = peer.key_prefix.clone().into_bytes();
    let bridge = {
        let (peer, stop) = (peer.clone(), stop.clone());
        tokio::spawn(async move {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                match tokio::time::timeout(Duration::from_millis(200), pushes.recv()).await {
                    Ok(Some(Push::Message { payload, .. })) if payload.starts_with(&prefix) => {
                        let _ = peer.bridge(&payload).await;
                    }
                    Ok(None) => break,
                    _ => {}
                }
            }
        })
    };
    let mut tasks = vec![];
    for i in 0..consumers {
        let (peer, stop) = (peer.clone(), stop.clone());
        let mut conn = peer.dedicated().await?;
        tasks.push(tokio::spawn(async move {
            let name = format!("seed-{i}");
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let Ok(Some((id, key))) = peer.read_one(&mut conn, &name, Duration::from_millis(100)).await else {
                    continue;
                };
                let worked = peer.claim(&mut conn, &key).await.unwrap_or(false);
                if worked && !work.is_zero() {
                    crate::timer::sleep(work).await;
                }
                let _ = peer.finish(&mut conn, &id, &key, worked).await;
            }
        }));
    }
    let start = Instant::now();
    let mut i = 0u64;
    while i < keys {
        let n = 100.min(keys - i);
        let batch: Vec<String> = (i..i + n).map(|j| format!("{}{j}", peer.key_prefix)).collect();
        peer.write(&batch, ttl).await?;
        i += n;
        let due = start + Duration::from_micros(i * delay_us);
        tokio::time::sleep_until(due.into()).await;
    }
    let (mut last, mut done, mut changed) = (0u64, start.elapsed(), Instant::now());
    while last < keys && changed.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let n = peer.processed().await?;
        if n != last {
            (last, done, changed) = (n, start.elapsed(), Instant::now());
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    let _ = bridge.await;
    let cpu1 = server.cpu().await?;
    let elapsed = done.as_secs_f64().max(1e-9);
    Ok(SeedPeerRun {
        keys,
        processed: last,
        consumers,
        work_ms: work.as_millis() as u64,
        elapsed_s: elapsed,
        rate_keys_per_s: last as f64 / elapsed,
        redis_cpu_us_per_event: (cpu1.used_cpu_us - cpu0.used_cpu_us).max(0.0) / last.max(1) as f64,
    })
}
