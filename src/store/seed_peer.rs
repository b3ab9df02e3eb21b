//! The seed's own protocol, for `bench` to measure beside the pipeline on the same server: a
//! pub/sub bridge turns each `expired` notification into an `XADD`, consumers read one entry at
//! a time, take a `SET lock:<key> 1 NX PX 500` lock, skip keys already in a processed set, do
//! the work, add the key to the set and `XACK`. At most once where it loses a notification (no
//! deadline index, no sweeper) and with no fence: a peer for cost and rate, not for correctness.

use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Client};

use super::server::set_expiring_on;
use super::Result;

/// The peer's keys, under its own hash tag.
#[derive(Clone)]
pub struct SeedPeer {
    client: Client,
    conn: MultiplexedConnection,
    pub key_prefix: String,
    stream: String,
    group: String,
    processed: String,
    lock_prefix: String,
}

impl SeedPeer {
    /// Connects to `url` and creates the peer's stream and group (at the start of the stream).
    pub async fn connect(url: &str, ns: &str) -> Result<SeedPeer> {
        let client = Client::open(url)?;
        let conn = client.get_multiplexed_async_connection().await?;
        let tag = format!("{{{ns}}}");
        let p = SeedPeer {
            client,
            conn,
            key_prefix: format!("{tag}:k:"),
            stream: format!("{tag}:events"),
            group: "seed".into(),
            processed: format!("{tag}:processed"),
            lock_prefix: format!("{tag}:lock:"),
        };
        let r: redis::RedisResult<()> = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(&p.stream)
            .arg(&p.group)
            .arg("0")
            .arg("MKSTREAM")
            .query_async(&mut p.conn.clone())
            .await;
        match r {
            Err(e) if e.code() != Some("BUSYGROUP") => Err(e.into()),
            _ => Ok(p),
        }
    }

    /// `SET key v PX ttl` for each key, pipelined (the seed's producer).
    pub async fn write(&self, keys: &[String], ttl: Duration) -> Result<()> {
        set_expiring_on(&mut self.conn.clone(), keys, "v", ttl).await
    }

    /// The bridge: one `XADD` of an expired key's name.
    pub async fn bridge(&self, key: &[u8]) -> Result<()> {
        let _: String =
            redis::cmd("XADD").arg(&self.stream).arg("*").arg("k").arg(key).query_async(&mut self.conn.clone()).await?;
        Ok(())
    }

    /// A connection of the caller's own (a blocking read must not stall anyone else's calls).
    pub async fn dedicated(&self) -> Result<MultiplexedConnection> {
        let cfg = AsyncConnectionConfig::new().set_response_timeout(None);
        Ok(self.client.get_multiplexed_async_connection_with_config(&cfg).await?)
    }

    /// `XREADGROUP ... COUNT 1 BLOCK block`: the next entry's id and key, if one came.
    pub async fn read_one(
        &self,
        conn: &mut MultiplexedConnection,
        consumer: &str,
        block: Duration,
    ) -> Result<Option<(String, Vec<u8>)>> {
        let v: redis::Value = redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg(&self.group)
            .arg(consumer)
            .arg("COUNT")
            .arg(1)
            .arg("BLOCK")
            .arg(block.as_millis() as u64)
            .arg("STREAMS")
            .arg(&self.stream)
            .arg(">")
            .query_async(conn)
            .await?;
        let entries = super::parse_xread(&v)?;
        Ok(entries.into_iter().next().map(|e| {
            let key = e.fields.into_iter().find(|(f, _)| f == b"k").map(|(_, v)| v).unwrap_or_default();
            (e.id, key)
        }))
    }

    /// The seed's check before the work: the lock (`SET lock:<key> 1 NX PX 500`), then the
    /// processed set. True when the caller is to do the work.
    pub async fn claim(&self, conn: &mut MultiplexedConnection, key: &[u8]) -> Result<bool> {
        let mut lock = self.lock_prefix.clone().into_bytes();
        lock.extend_from_slice(key);
        let got: Option<String> =
            redis::cmd("SET").arg(&lock).arg(1).arg("NX").arg("PX").arg(500).query_async(conn).await?;
        if got.is_none() {
            return Ok(false);
        }
        let seen: bool = redis::cmd("SISMEMBER").arg(&self.processed).arg(key).query_async(conn).await?;
        Ok(!seen)
    }

    /// After the work (when `worked`): the key into the processed set; then the ack.
    pub async fn finish(&self, conn: &mut MultiplexedConnection, id: &str, key: &[u8], worked: bool) -> Result<()> {
        if worked {
            let _: i64 = redis::cmd("SADD").arg(&self.processed).arg(key).query_async(conn).await?;
        }
        let _: i64 = redis::cmd("XACK").arg(&self.stream).arg(&self.group).arg(id).query_async(conn).await?;
        Ok(())
    }

    /// Keys processed so far (`SCARD` of the processed set).
    pub async fn processed(&self) -> Result<u64> {
        Ok(redis::cmd("SCARD").arg(&self.processed).query_async(&mut self.conn.clone()).await?)
    }
}
