//! What operators, other programs and the chaos harness do to a namespace besides the
//! pipeline's own calls: look at clients, consumers and pending entries; re-add an entry,
//! rewind the group, steal pending entries (the replay faults, on a [`Dedicated`] connection
//! of their own, which a concurrent `CLIENT KILL` may hit like any other program's). All
//! single commands: none of them is part of the protocol, and none needs to be atomic with
//! anything else.

use std::time::Duration;

use redis::Value;

use super::conn::Dedicated;
use super::server::{client_list_on, memory_info_on, set_expiring_on};
use super::{RedisStore, Result};

fn text(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    }
}

impl RedisStore {
    /// The database number this store uses.
    pub fn db(&self) -> i64 {
        self.client.get_connection_info().redis_settings().db()
    }

    /// The `CLIENT ID` of the store's shared connection (to tell it apart in `CLIENT LIST`).
    pub async fn client_id(&self) -> Result<i64> {
        Ok(redis::cmd("CLIENT").arg("ID").query_async(&mut self.conn.clone()).await?)
    }

    /// `CLIENT LIST`: one line per connection (`id=.. addr=.. cmd=..`).
    pub async fn client_list(&self) -> Result<String> {
        client_list_on(&mut self.conn.clone()).await
    }

    /// Subscribers of `channel` (`PUBSUB NUMSUB`; 0 when the reply has no count).
    pub async fn subscribers(&self, channel: &str) -> Result<u64> {
        let v: Vec<Value> = redis::cmd("PUBSUB").arg("NUMSUB").arg(channel).query_async(&mut self.conn.clone()).await?;
        Ok(match v.get(1) {
            Some(Value::Int(n)) => *n as u64,
            _ => 0,
        })
    }

    /// A number from `INFO memory` (`used_memory`, `used_memory_peak`, ...); 0 when absent.
    pub async fn memory_info(&self, field: &str) -> Result<i64> {
        memory_info_on(&mut self.conn.clone(), field).await
    }

    /// `SET key value PX ttl` for each key, pipelined in one round trip: plain keys beside the
    /// pipeline's, as other programs write them.
    pub async fn set_expiring(&self, keys: &[String], value: &str, ttl: Duration) -> Result<()> {
        set_expiring_on(&mut self.conn.clone(), keys, value, ttl).await
    }

    /// Entries pending in the group per consumer (the `XPENDING` summary form); empty when
    /// nothing is pending.
    pub async fn pending_per_consumer(&self) -> Result<Vec<(String, u64)>> {
        let v: Value =
            redis::cmd("XPENDING").arg(&self.keys.stream).arg(&self.group).query_async(&mut self.conn.clone()).await?;
        let Value::Array(a) = v else { return Ok(vec![]) };
        let Some(Value::Array(per)) = a.get(3) else { return Ok(vec![]) };
        let mut out = vec![];
        for row in per {
            if let Value::Array(r) = row {
                let name = match r.first() {
                    Some(Value::BulkString(b)) => String::from_utf8_lossy(b).into_owned(),
                    _ => continue,
                };
                let count = match r.get(1) {
                    Some(Value::BulkString(b)) => String::from_utf8_lossy(b).parse().unwrap_or(0),
                    Some(Value::Int(i)) => *i as u64,
                    _ => 0,
                };
                out.push((name, count));
            }
        }
        Ok(out)
    }

    /// Ids of up to `count` entries pending in the group, oldest first (`XPENDING - + count`).
    pub async fn pending_ids(&self, conn: &mut Dedicated, count: u64) -> Result<Vec<String>> {
        let v: Value = redis::cmd("XPENDING")
            .arg(&self.keys.stream)
            .arg(&self.group)
            .arg("-")
            .arg("+")
            .arg(count)
            .query_async(conn)
            .await?;
        Ok(match v {
            Value::Array(rows) => rows
                .iter()
                .filter_map(|r| match r {
                    Value::Array(x) => x.first().and_then(text),
                    _ => None,
                })
                .collect(),
            _ => vec![],
        })
    }

    /// `XCLAIM ... 0 ids... JUSTID`: moves pending entries to `consumer` whatever their idle
    /// time, without delivering them. Returns the ids claimed.
    pub async fn force_claim(&self, conn: &mut Dedicated, consumer: &str, ids: &[String]) -> Result<Vec<String>> {
        let mut cmd = redis::cmd("XCLAIM");
        cmd.arg(&self.keys.stream).arg(&self.group).arg(consumer).arg(0);
        for id in ids {
            cmd.arg(id);
        }
        cmd.arg("JUSTID");
        Ok(cmd.query_async(conn).await?)
    }

    /// `XADD stream * fields...` as another program would (no capture, no index): the new
    /// entry's id.
    pub async fn add_raw_entry(&self, conn: &mut Dedicated, fields: &[(Vec<u8>, Vec<u8>)]) -> Result<String> {
        let mut cmd = redis::cmd("XADD");
        cmd.arg(&self.keys.stream).arg("*");
        for (k, v) in fields {
            cmd.arg(k.as_slice()).arg(v.as_slice());
        }
        Ok(cmd.query_async(conn).await?)
    }

    /// Entries in the stream (`XLEN`).
    pub async fn stream_len(&self, conn: &mut Dedicated) -> Result<u64> {
        Ok(redis::cmd("XLEN").arg(&self.keys.stream).query_async(conn).await?)
    }

    /// `XGROUP SETID stream group 0`: rewinds the group so every entry still in the stream is
    /// delivered again.
    pub async fn rewind_group(&self, conn: &mut Dedicated) -> Result<()> {
        Ok(redis::cmd("XGROUP").arg("SETID").arg(&self.keys.stream).arg(&self.group).arg("0").query_async(conn).await?)
    }
}
