//! The reads and writes the oracle's ledgers need, as store methods that take the oracle's key
//! names: the oracle decides what is recorded where and judges it; the store knows the
//! commands. None of these uses the pipeline's scripts, so the oracle stays independent of the
//! write path it judges.

use std::collections::HashMap;
use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::{Client, Script, Value};

use super::{RedisStore, Result, StoreError};
use crate::core::{Delivery, Event};

/// `append_once`: the RPUSH runs only if the guard `SET ... NX PX` wins, in one script call.
/// In slices: unpack() of a very long argument list overflows Lua's C stack.
const APPEND_ONCE_SCRIPT: &str = r"
if not redis.call('SET', KEYS[2], '1', 'NX', 'PX', ARGV[1]) then return 0 end
for i = 2, #ARGV, 1000 do
  redis.call('RPUSH', KEYS[1], unpack(ARGV, i, math.min(i + 999, #ARGV)))
end
return 1";

/// The witness sink's write: the run is recorded whatever happens; then the write is refused
/// when a higher delivery count was seen for the event (fenced: a stale writer), applied once
/// per event id (the idempotency key), and a repeated key is only counted.
/// KEYS: runs, tokens, applied, counts. ARGV: event id, deadline, key, entry id, token, consumer,
/// capture path (a run is recorded as `<event id>|<entry id>|<token>|<consumer>|<via>`).
/// Returns 1 applied, 2 repeated key (not applied again), 0 fenced.
const SINK_SCRIPT: &str = r"
redis.call('RPUSH', KEYS[1], ARGV[1] .. '|' .. ARGV[4] .. '|' .. ARGV[5] .. '|' .. ARGV[6] .. '|' .. ARGV[7])
local seen = redis.call('HGET', KEYS[2], ARGV[1])
if seen and tonumber(seen) > tonumber(ARGV[5]) then
  redis.call('HINCRBY', KEYS[4], 'fenced', 1)
  return 0
end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[5])
if seen then
  redis.call('HINCRBY', KEYS[4], 'repeated', 1)
  return 2
end
redis.call('RPUSH', KEYS[3], ARGV[1] .. '|' .. ARGV[2] .. '|' .. ARGV[3])
return 1
";

/// Elements per `LRANGE` page: big lists are read in pages, so no single reply is huge.
const LIST_PAGE: isize = 50_000;

impl RedisStore {
    /// Appends `records` to list `key`, one `RPUSH`.
    pub async fn append_list(&self, key: &str, records: &[Vec<u8>]) -> Result<()> {
        if records.is_empty() {
            return Ok(());
        }
        let mut cmd = redis::cmd("RPUSH");
        cmd.arg(key);
        for r in records {
            cmd.arg(r.as_slice());
        }
        cmd.query_async::<()>(&mut self.conn.clone()).await?;
        Ok(())
    }

    /// [`RedisStore::append_list`] applied at most once per `guard` key: the RPUSH runs in one script
    /// call guarded by `SET <guard> 1 NX PX <guard_ttl>`, so a caller whose reply was lost can
    /// repeat the call without doubling the records. Returns false when the guard was already
    /// set (the records had been appended).
    pub async fn append_list_once(
        &self,
        key: &str,
        guard: &str,
        guard_ttl: Duration,
        records: &[Vec<u8>],
    ) -> Result<bool> {
        static SCRIPT: std::sync::LazyLock<Script> = std::sync::LazyLock::new(|| Script::new(APPEND_ONCE_SCRIPT));
        if records.is_empty() {
            return Ok(true);
        }
        let mut inv = SCRIPT.prepare_invoke();
        inv.key(key).key(guard).arg(guard_ttl.as_millis() as u64);
        for r in records {
            inv.arg(r.as_slice());
        }
        let appended: i64 = inv.invoke_async(&mut self.conn.clone()).await?;
        Ok(appended == 1)
    }

    /// Every element of list `key`, in pages. A key of another type (another program wrote it)
    /// is a [`StoreError::Reply`] saying so, with `what` naming the list's role.
    pub async fn read_list(&self, key: &str, what: &'static str) -> Result<Vec<Vec<u8>>> {
        read_list_on(&mut self.conn.clone(), key, what).await
    }

    /// [`RedisStore::read_list`] on a connection of the caller's.
    pub async fn read_list_with(
        &self,
        conn: &mut super::conn::Dedicated,
        key: &str,
        what: &'static str,
    ) -> Result<Vec<Vec<u8>>> {
        read_list_on(conn, key, what).await
    }

    /// Length of list `key` (`LLEN`; 0 when it does not exist).
    pub async fn list_len(&self, key: &str) -> Result<u64> {
        Ok(redis::cmd("LLEN").arg(key).query_async(&mut self.conn.clone()).await?)
    }

    /// Entries the stream ever took (`XINFO STREAM` entries-added: the server's own count; 0
    /// when the stream does not exist or the reply has no such field).
    pub async fn entries_added(&self) -> u64 {
        let mut c = self.conn.clone();
        let v: redis::RedisResult<Value> =
            redis::cmd("XINFO").arg("STREAM").arg(&self.keys.stream).query_async(&mut c).await;
        let Ok(v) = v else { return 0 };
        let pairs: Vec<(Value, Value)> = match v {
            Value::Map(m) => m,
            Value::Array(a) => a.chunks(2).filter(|p| p.len() == 2).map(|p| (p[0].clone(), p[1].clone())).collect(),
            _ => return 0,
        };
        for (k, v) in pairs {
            if let (Ok(k), Ok(n)) = (redis::from_redis_value::<String>(k), redis::from_redis_value::<u64>(v)) {
                if k == "entries-added" {
                    return n;
                }
            }
        }
        0
    }

    /// A handle on database `db` of this store's server, connected on first use. Synchronous,
    /// so it can be built where handlers are (synchronously).
    pub fn other_db(&self, db: i64) -> OtherDb {
        let info = self.client.get_connection_info().clone();
        let settings = info.redis_settings().clone().set_db(db);
        OtherDb { client: Client::open(info.set_redis_settings(settings)).ok(), conn: tokio::sync::OnceCell::new() }
    }
}

async fn read_list_on(c: &mut impl ConnectionLike, key: &str, what: &'static str) -> Result<Vec<Vec<u8>>> {
    let mut out = vec![];
    let mut start = 0isize;
    loop {
        let chunk: Vec<Vec<u8>> =
            match redis::cmd("LRANGE").arg(key).arg(start).arg(start + LIST_PAGE - 1).query_async(c).await {
                Ok(v) => v,
                Err(e) if e.code() == Some("WRONGTYPE") => {
                    return Err(StoreError::Reply {
                        what,
                        reply: format!("{key} is not a list (another program wrote it)"),
                    })
                }
                Err(e) => return Err(e.into()),
            };
        let n = chunk.len();
        out.extend(chunk);
        if (n as isize) < LIST_PAGE {
            return Ok(out);
        }
        start += LIST_PAGE;
    }
}

/// Keys of the witness sink (in its own database, see [`RedisStore::other_db`]).
#[derive(Clone, Copy, Debug)]
pub struct SinkKeys<'a> {
    pub runs: &'a str,
    pub tokens: &'a str,
    pub applied: &'a str,
    pub counts: &'a str,
}

/// Another database of the store's server, on a connection of its own that is opened on first
/// use and reconnects by itself: an external system as far as the pipeline is concerned (no
/// script of the pipeline touches it). The oracle keeps its witnesses there.
pub struct OtherDb {
    client: Option<Client>,
    conn: tokio::sync::OnceCell<ConnectionManager>,
}

impl OtherDb {
    async fn conn(&self) -> Result<ConnectionManager> {
        let client = self.client.clone().ok_or_else(|| {
            StoreError::from(redis::RedisError::from((redis::ErrorKind::InvalidClientConfig, "no witness database")))
        })?;
        let cfg = ConnectionManagerConfig::new()
            .set_response_timeout(Some(Duration::from_secs(30)))
            .set_connection_timeout(Some(Duration::from_secs(5)));
        let c = self.conn.get_or_try_init(|| ConnectionManager::new_with_config(client, cfg)).await?;
        Ok(c.clone())
    }

    /// The witness sink's write for one handler run, one script call (`SINK_SCRIPT`): the
    /// run is recorded, then the external write is applied once per event id and fenced by
    /// delivery count. Returns 1 applied, 2 repeated (not applied again), 0 fenced.
    pub async fn sink_write(&self, keys: SinkKeys<'_>, event: &Event, d: &Delivery) -> Result<i64> {
        static SCRIPT: std::sync::LazyLock<Script> = std::sync::LazyLock::new(|| Script::new(SINK_SCRIPT));
        let mut c = self.conn().await?;
        let mut inv = SCRIPT.prepare_invoke();
        inv.key(keys.runs).key(keys.tokens).key(keys.applied).key(keys.counts);
        inv.arg(&event.event_id)
            .arg(event.deadline_ms)
            .arg(event.key.as_slice())
            .arg(&d.entry_id)
            .arg(d.token)
            .arg(d.worker_name())
            .arg(event.via.tag());
        Ok(inv.invoke_async(&mut c).await?)
    }

    /// Every element of list `key` in this database, in pages (as [`RedisStore::read_list`]).
    pub async fn read_list(&self, key: &str, what: &'static str) -> Result<Vec<Vec<u8>>> {
        read_list_on(&mut self.conn().await?, key, what).await
    }

    /// Hash `key` of counters (`HGETALL`).
    pub async fn counters(&self, key: &str) -> Result<HashMap<String, i64>> {
        Ok(redis::cmd("HGETALL").arg(key).query_async(&mut self.conn().await?).await?)
    }

    /// Deletes `keys` (one `DEL`).
    pub async fn delete(&self, keys: &[&str]) -> Result<()> {
        Ok(redis::cmd("DEL").arg(keys).query_async(&mut self.conn().await?).await?)
    }
}
