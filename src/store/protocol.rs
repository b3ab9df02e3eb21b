//! The protocol-level operations as one trait, [`Protocol`], with two implementations: real
//! Redis ([`RedisProtocol`], delegating to [`RedisStore`]'s script calls) and the in-memory model
//! ([`crate::store::ModelStore`]). The differential tests drive both with the same generated
//! sequences and compare replies and [`Dump`]s, which is what keeps the simulator honest.
//!
//! Besides the pipeline's operations, the trait has a small test surface: raw commands (what
//! other programs do to keys: `PEXPIRE`, `PERSIST`, `DEL`, `GET`, stray `XADD`s), time passing,
//! and a dump of the namespace's state.

use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::Value;

use super::{CommitItem, LedgerConfig, RawEntry, RedisStore, Result, StoreError, Sweep};
use crate::core::{CommitOutcome, Via};
use crate::store::model::Reply;
use crate::store::ModelStore;

/// Everything a namespace holds that the protocol reads or writes, in a comparable form.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Dump {
    /// Deadline index, (key, deadline) in score order.
    pub index: Vec<(Vec<u8>, i64)>,
    /// Payloads, sorted by key.
    pub payloads: Vec<(Vec<u8>, Vec<u8>)>,
    pub stream: Vec<RawEntry>,
    /// The group's PEL: (entry id, owner, delivery count). Idle times are left out: they are
    /// wall-clock noise on real Redis.
    pub pending: Vec<(String, String, u64)>,
    pub dead: Vec<RawEntry>,
    /// `{ns}:stats`, sorted.
    pub stats: Vec<(String, i64)>,
    /// Ledger sets: (key, sorted members), sorted by key.
    pub ledger: Vec<(String, Vec<Vec<u8>>)>,
    /// The oracle's effects list (what committed effects wrote).
    pub effects: Vec<Vec<u8>>,
    /// Per asked key: (key, PEXPIRETIME, GET). Reading them applies lazy expiry, on both sides.
    pub keys: Vec<(Vec<u8>, i64, Option<Vec<u8>>)>,
}

/// The operations of the capture and consume protocol, plus the test surface.
#[allow(async_fn_in_trait)]
pub trait Protocol {
    /// `set_with_ttl` for a batch (`write.lua`); the deadlines.
    async fn write_batch(&mut self, items: &[(Vec<u8>, Vec<u8>, Duration)]) -> Result<Vec<i64>>;
    /// `track.lua`.
    async fn track(&mut self, key: &[u8]) -> Result<Option<i64>>;
    /// `capture.lua`: (emitted, moved, dropped).
    async fn capture(&mut self, keys: &[Vec<u8>], via: Via) -> Result<(u64, u64, u64)>;
    /// `sweep.lua`, by the server's clock.
    async fn sweep(&mut self, limit: usize) -> Result<Sweep>;
    /// `XREADGROUP ... >` (no blocking).
    async fn read_new(&mut self, consumer: &str, count: usize) -> Result<Vec<RawEntry>>;
    /// `XAUTOCLAIM` plus the tokens of what was claimed.
    async fn autoclaim(
        &mut self,
        consumer: &str,
        min_idle: Duration,
        cursor: &str,
        count: usize,
    ) -> Result<(String, Vec<(RawEntry, u64)>)>;
    /// `commit.lua`, honouring `ledger.safety`.
    async fn commit(
        &mut self,
        consumer: &str,
        ledger: LedgerConfig,
        items: &[CommitItem<'_>],
    ) -> Result<Vec<CommitOutcome>>;
    /// `dead_letter.lua`; false when fenced.
    async fn dead_letter(&mut self, consumer: &str, entry_id: &str, token: u64, reason: &str) -> Result<bool>;
    /// `retry.lua`; the new token.
    async fn retry(&mut self, consumer: &str, entry_id: &str, token: u64) -> Result<Option<u64>>;
    /// `release.lua`.
    async fn release(&mut self, consumer: &str, ids: &[String], idle: Duration) -> Result<u64>;
    /// A raw command from outside the pipeline.
    async fn raw(&mut self, args: &[Vec<u8>]) -> Result<Reply>;
    /// Lets `d` of time pass (a real sleep on Redis, a clock step on the model).
    async fn advance(&mut self, d: Duration);
    /// The namespace's state, reading `keys` (workload keys) too.
    async fn dump(&mut self, keys: &[Vec<u8>]) -> Result<Dump>;
}

impl Protocol for ModelStore {
    async fn write_batch(&mut self, items: &[(Vec<u8>, Vec<u8>, Duration)]) -> Result<Vec<i64>> {
        Ok(ModelStore::write_batch(self, items))
    }
    async fn track(&mut self, key: &[u8]) -> Result<Option<i64>> {
        Ok(ModelStore::track(self, key))
    }
    async fn capture(&mut self, keys: &[Vec<u8>], via: Via) -> Result<(u64, u64, u64)> {
        Ok(ModelStore::capture(self, keys, via))
    }
    async fn sweep(&mut self, limit: usize) -> Result<Sweep> {
        Ok(ModelStore::sweep(self, limit))
    }
    async fn read_new(&mut self, consumer: &str, count: usize) -> Result<Vec<RawEntry>> {
        ModelStore::read_new(self, consumer, count)
    }
    async fn autoclaim(
        &mut self,
        consumer: &str,
        min_idle: Duration,
        cursor: &str,
        count: usize,
    ) -> Result<(String, Vec<(RawEntry, u64)>)> {
        ModelStore::autoclaim(self, consumer, min_idle, cursor, count)
    }
    async fn commit(
        &mut self,
        consumer: &str,
        ledger: LedgerConfig,
        items: &[CommitItem<'_>],
    ) -> Result<Vec<CommitOutcome>> {
        ModelStore::commit(self, consumer, ledger, items)
    }
    async fn dead_letter(&mut self, consumer: &str, entry_id: &str, token: u64, reason: &str) -> Result<bool> {
        Ok(ModelStore::dead_letter(self, consumer, entry_id, token, reason))
    }
    async fn retry(&mut self, consumer: &str, entry_id: &str, token: u64) -> Result<Option<u64>> {
        Ok(ModelStore::retry(self, consumer, entry_id, token))
    }
    async fn release(&mut self, consumer: &str, ids: &[String], idle: Duration) -> Result<u64> {
        Ok(ModelStore::release(self, consumer, ids, idle))
    }
    async fn raw(&mut self, args: &[Vec<u8>]) -> Result<Reply> {
        self.call(args).map_err(|e| StoreError::Reply { what: "command", reply: e })
    }
    async fn advance(&mut self, d: Duration) {
        self.model.advance(d.as_millis() as i64);
    }
    async fn dump(&mut self, keys: &[Vec<u8>]) -> Result<Dump> {
        let k = self.keys.clone();
        let m_err = |e: String| StoreError::Reply { what: "dump", reply: e };
        let index = self.model.zrange_all(k.idx.as_bytes()).map_err(m_err)?;
        let payloads = self.model.hgetall(k.pay.as_bytes()).map_err(m_err)?;
        let stream = self.range(&k.stream);
        let pending = self.pending_all().into_iter().map(|(id, c, _, n)| (id, c, n)).collect();
        let dead = self.range(&k.dead);
        let stats = self
            .model
            .hgetall(k.stats.as_bytes())
            .map_err(m_err)?
            .into_iter()
            .map(|(f, v)| (String::from_utf8_lossy(&f).into_owned(), String::from_utf8_lossy(&v).parse().unwrap_or(0)))
            .collect();
        let mut ledger = vec![];
        for lk in self.model.keys_with_prefix(k.ledger_prefix.as_bytes()) {
            if self.model.exists(&lk) {
                let members = self.model.smembers(&lk).map_err(m_err)?;
                ledger.push((String::from_utf8_lossy(&lk).into_owned(), members));
            }
        }
        let effects = self.model.lrange_all(k.effects.as_bytes()).map_err(m_err)?;
        let mut kv = vec![];
        for key in keys {
            let pt = self.model.pexpiretime(key);
            let v = self.model.get(key).map_err(m_err)?;
            kv.push((key.clone(), pt, v));
        }
        Ok(Dump { index, payloads, stream, pending, dead, stats, ledger, effects, keys: kv })
    }
}

fn parse<T: redis::FromRedisValue>(v: &Value) -> Result<T> {
    redis::from_redis_value_ref(v).map_err(|e| StoreError::Reply { what: "dump", reply: e.to_string() })
}

/// [`Protocol`] over real Redis: a [`RedisStore`] and one dedicated connection.
pub struct RedisProtocol {
    pub store: RedisStore,
    conn: MultiplexedConnection,
}

impl RedisProtocol {
    pub async fn new(store: RedisStore) -> Result<RedisProtocol> {
        let conn = store.dedicated().await?;
        Ok(RedisProtocol { store, conn })
    }
}

/// A redis reply as a model [`Reply`] (errors stay errors).
pub fn to_reply(v: &Value) -> Reply {
    match v {
        Value::Nil => Reply::Nil,
        Value::Int(i) => Reply::Int(*i),
        Value::BulkString(b) => Reply::Bulk(b.clone()),
        Value::SimpleString(s) => Reply::Status(s.clone()),
        Value::Okay => Reply::Status("OK".into()),
        Value::Array(a) | Value::Set(a) => Reply::Array(a.iter().map(to_reply).collect()),
        Value::Boolean(b) => Reply::Int(*b as i64),
        Value::Double(d) => Reply::Bulk(d.to_string().into_bytes()),
        Value::VerbatimString { text, .. } => Reply::Bulk(text.clone().into_bytes()),
        Value::Map(m) => Reply::Array(m.iter().flat_map(|(k, v)| [to_reply(k), to_reply(v)]).collect()),
        other => Reply::Status(format!("{other:?}")),
    }
}

impl Protocol for RedisProtocol {
    async fn write_batch(&mut self, items: &[(Vec<u8>, Vec<u8>, Duration)]) -> Result<Vec<i64>> {
        self.store.write_batch(items).await
    }
    async fn track(&mut self, key: &[u8]) -> Result<Option<i64>> {
        self.store.track(key).await
    }
    async fn capture(&mut self, keys: &[Vec<u8>], via: Via) -> Result<(u64, u64, u64)> {
        self.store.capture(keys, via).await
    }
    async fn sweep(&mut self, limit: usize) -> Result<Sweep> {
        self.store.sweep(limit).await
    }
    async fn read_new(&mut self, consumer: &str, count: usize) -> Result<Vec<RawEntry>> {
        self.store.read_new(&mut self.conn, consumer, count, Duration::from_millis(1)).await
    }
    async fn autoclaim(
        &mut self,
        consumer: &str,
        min_idle: Duration,
        cursor: &str,
        count: usize,
    ) -> Result<(String, Vec<(RawEntry, u64)>)> {
        self.store.autoclaim(&mut self.conn, consumer, min_idle, cursor, count).await
    }
    async fn commit(
        &mut self,
        consumer: &str,
        ledger: LedgerConfig,
        items: &[CommitItem<'_>],
    ) -> Result<Vec<CommitOutcome>> {
        self.store.commit(&mut self.conn, consumer, ledger, items).await
    }
    async fn dead_letter(&mut self, consumer: &str, entry_id: &str, token: u64, reason: &str) -> Result<bool> {
        self.store.dead_letter(&mut self.conn, consumer, entry_id, token, reason).await
    }
    async fn retry(&mut self, consumer: &str, entry_id: &str, token: u64) -> Result<Option<u64>> {
        self.store.retry(&mut self.conn, consumer, entry_id, token).await
    }
    async fn release(&mut self, consumer: &str, ids: &[String], idle: Duration) -> Result<u64> {
        self.store.release(&mut self.conn, consumer, ids, idle).await
    }
    async fn raw(&mut self, args: &[Vec<u8>]) -> Result<Reply> {
        // An empty command is refused as the model refuses it, not indexed into.
        let Some((name, rest)) = args.split_first() else {
            return Err(StoreError::Reply { what: "command", reply: "ERR empty command".into() });
        };
        let mut cmd = redis::cmd(&String::from_utf8_lossy(name));
        for a in rest {
            cmd.arg(a.as_slice());
        }
        let v: Value = cmd.query_async(&mut self.conn).await?;
        Ok(to_reply(&v))
    }
    async fn advance(&mut self, d: Duration) {
        tokio::time::sleep(d).await;
    }
    async fn dump(&mut self, keys: &[Vec<u8>]) -> Result<Dump> {
        let k = self.store.keys.clone();
        let c = &mut self.conn;
        // Two round trips: everything but the ledger sets, then those (their names are
        // bucket numbers, found with KEYS, which does not expire keys as it lists them).
        let mut p = redis::pipe();
        p.cmd("ZRANGE").arg(&k.idx).arg(0).arg(-1).arg("WITHSCORES");
        p.cmd("HGETALL").arg(&k.pay);
        p.cmd("XRANGE").arg(&k.stream).arg("-").arg("+");
        p.cmd("XPENDING").arg(&k.stream).arg(&self.store.group).arg("-").arg("+").arg(100_000);
        p.cmd("XRANGE").arg(&k.dead).arg("-").arg("+");
        p.cmd("HGETALL").arg(&k.stats);
        p.cmd("LRANGE").arg(&k.effects).arg(0).arg(-1);
        p.cmd("KEYS").arg(format!("{}*", k.ledger_prefix));
        for key in keys {
            p.cmd("PEXPIRETIME").arg(key.as_slice());
            p.cmd("GET").arg(key.as_slice());
        }
        let v: Vec<Value> = p.query_async(c).await?;
        let conv = |i: usize| -> Result<&Value> {
            v.get(i).ok_or_else(|| StoreError::Reply { what: "dump", reply: format!("{} replies", v.len()) })
        };
        let index: Vec<(Vec<u8>, i64)> = parse(conv(0)?)?;
        let mut payloads: Vec<(Vec<u8>, Vec<u8>)> = parse(conv(1)?)?;
        payloads.sort();
        let stream = super::parse_entries(conv(2)?)?;
        let mut pending = vec![];
        if let Reply::Array(rows) = to_reply(conv(3)?) {
            for r in rows {
                if let Reply::Array(f) = r {
                    match (f.first(), f.get(1), f.get(3)) {
                        (Some(Reply::Bulk(id)), Some(Reply::Bulk(cn)), Some(Reply::Int(n))) => pending.push((
                            String::from_utf8_lossy(id).into_owned(),
                            String::from_utf8_lossy(cn).into_owned(),
                            *n as u64,
                        )),
                        _ => return Err(StoreError::Reply { what: "XPENDING", reply: format!("{f:?}") }),
                    }
                }
            }
        }
        let dead = super::parse_entries(conv(4)?)?;
        let mut stats: Vec<(String, i64)> = parse(conv(5)?)?;
        stats.sort();
        let effects: Vec<Vec<u8>> = parse(conv(6)?)?;
        let mut lks: Vec<String> = parse(conv(7)?)?;
        lks.sort();
        let mut kv = vec![];
        for (i, key) in keys.iter().enumerate() {
            let pt: i64 = parse(conv(8 + 2 * i)?)?;
            let val: Option<Vec<u8>> = parse(conv(9 + 2 * i)?)?;
            kv.push((key.clone(), pt, val));
        }
        let mut ledger = vec![];
        if !lks.is_empty() {
            let mut p = redis::pipe();
            for lk in &lks {
                p.cmd("SMEMBERS").arg(lk);
            }
            let sets: Vec<Vec<Vec<u8>>> = p.query_async(c).await?;
            for (lk, mut members) in lks.into_iter().zip(sets) {
                if members.is_empty() {
                    continue;
                }
                members.sort();
                ledger.push((lk, members));
            }
        }
        Ok(Dump { index, payloads, stream, pending, dead, stats, ledger, effects, keys: kv })
    }
}
