//! Test harness shared by the integration test binaries: one Redis per test (backend chosen
//! once by `EXPIRY_STREAM_REDIS`, reported on stderr), its own namespace, cleaned up on drop.
#![allow(dead_code)]

use std::time::{Duration, Instant};

use expiry_stream::consume::ConsumerConfig;
use expiry_stream::provision::{Choice, RedisServer};
use expiry_stream::store::{RawEntry, RedisStore};

pub struct Ctx {
    pub server: RedisServer,
    pub store: RedisStore,
}

impl Ctx {
    pub async fn new(test: &str) -> Ctx {
        let choice = Choice::from_env().expect("EXPIRY_STREAM_REDIS");
        let server = RedisServer::start(choice, &[]).await.expect("provision redis");
        eprintln!("[{test}] redis backend: {} at {}", server.backend, server.url);
        let store = RedisStore::connect(&server.url, test, "g").await.expect("connect");
        store.ensure_group().await.expect("group");
        let _ = expiry_stream::capture::ensure_notifications(&store).await;
        Ctx { server, store }
    }

    pub async fn conn(&self) -> redis::aio::MultiplexedConnection {
        self.store.dedicated().await.expect("dedicated connection")
    }

    /// Creates tracked keys and records them in the oracle's created ledger.
    pub async fn create(&self, keys: &[(&str, &str, u64)]) -> Vec<i64> {
        let items: Vec<_> = keys
            .iter()
            .map(|(k, v, ttl)| (k.as_bytes().to_vec(), v.as_bytes().to_vec(), Duration::from_millis(*ttl)))
            .collect();
        let dls = self.store.write_batch(&items).await.expect("write");
        let recs: Vec<(&[u8], i64)> = items.iter().zip(&dls).map(|((k, _, _), d)| (k.as_slice(), *d)).collect();
        expiry_stream::oracle::record_created(&self.store, &recs).await.expect("record");
        dls
    }

    /// Every entry in the events stream.
    pub async fn stream(&self) -> Vec<RawEntry> {
        self.range(&self.store.keys.stream).await
    }

    pub async fn dead(&self) -> Vec<RawEntry> {
        self.range(&self.store.keys.dead).await
    }

    async fn range(&self, key: &str) -> Vec<RawEntry> {
        let mut c = self.store.conn.clone();
        let v: redis::Value = redis::cmd("XRANGE").arg(key).arg("-").arg("+").query_async(&mut c).await.unwrap();
        expiry_stream::store::parse_entries(&v).unwrap()
    }

    /// Waits until `f` holds, or panics after `limit`.
    pub async fn until<F, Fut>(&self, what: &str, limit: Duration, mut f: F)
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let start = Instant::now();
        while !f().await {
            assert!(start.elapsed() < limit, "timed out after {limit:?} waiting for: {what}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn drained(&self) -> bool {
        self.store.backlog().await.map(|b| b.is_empty()).unwrap_or(false)
    }
}

pub fn field<'a>(e: &'a RawEntry, name: &str) -> Option<&'a [u8]> {
    e.fields.iter().find(|(k, _)| k == name.as_bytes()).map(|(_, v)| v.as_slice())
}

pub fn field_str(e: &RawEntry, name: &str) -> String {
    String::from_utf8_lossy(field(e, name).unwrap_or_default()).into_owned()
}

/// Consumers that reclaim and retry quickly, so tests of faults finish in seconds.
pub fn fast_consumers() -> ConsumerConfig {
    ConsumerConfig {
        batch: 4,
        claim_idle: Duration::from_millis(300),
        claim_interval: Duration::from_millis(50),
        block: Duration::from_millis(100),
        max_deliveries: 3,
        backoff_base: Duration::from_millis(5),
        backoff_max: Duration::from_millis(20),
        ..ConsumerConfig::default()
    }
}
