//! The store seam's second implementation: a namespace of the in-memory model
//! ([`super::model::Model`]) with the same operations as [`super::Store`], each running the
//! real script: the call is built by [`super::scripts`], executed by the model's embedded
//! Lua 5.1 ([`super::model::Model::eval`]), and its reply read by the same parser the Redis
//! store uses. Nothing of a script is restated here; `tests/differential` holds the model's
//! commands to real Redis.

use std::time::Duration;

use redis::Value;

use super::model::{Fields, Model, Reply};
use super::scripts::{self, Call};
use super::{parse_commit_reply, parse_xread, Backlog, CommitItem, Keys, LedgerConfig, RawEntry, StoreError, Sweep};
use crate::core::{CommitOutcome, Via};

/// One namespace of the model, with the same operations as [`crate::store::Store`].
#[derive(Clone, Debug)]
pub struct ModelStore {
    pub model: Model,
    pub keys: Keys,
    pub group: String,
}

/// A model reply as redis-rs would have parsed the server's (RESP2).
fn to_value(r: Reply) -> Value {
    match r {
        Reply::Nil => Value::Nil,
        Reply::Int(i) => Value::Int(i),
        Reply::Bulk(b) => Value::BulkString(b),
        Reply::Status(s) if s == "OK" => Value::Okay,
        Reply::Status(s) => Value::SimpleString(s),
        Reply::Array(a) => Value::Array(a.into_iter().map(to_value).collect()),
    }
}

fn model_err(what: &'static str, e: String) -> StoreError {
    StoreError::Reply { what, reply: e }
}

impl ModelStore {
    /// A namespace with its consumer group created (`Store::ensure_group`).
    pub fn new(model: Model, ns: &str, group: &str) -> ModelStore {
        let mut s = ModelStore { model, keys: Keys::new(ns), group: group.to_string() };
        s.ensure_group();
        s
    }

    pub fn ensure_group(&mut self) {
        let (stream, group) = (self.keys.stream.clone(), self.group.clone());
        self.model.xgroup_create(stream.as_bytes(), &group).expect("the stream key holds a stream");
    }

    /// Runs a script call on the model: the same text, `KEYS` and `ARGV` Redis gets.
    fn eval(&mut self, call: Call) -> crate::store::Result<Value> {
        let r = self.model.eval(call.script.source(), &call.keys, &call.args);
        r.map(to_value).map_err(|e| model_err(call.script.name(), e))
    }

    /// A plain command on the model, as the Redis store sends it.
    fn command(&mut self, what: &'static str, args: &[Vec<u8>]) -> crate::store::Result<Value> {
        self.model.call(args).map(to_value).map_err(|e| model_err(what, e))
    }

    /// Scripts the harnesses call without a `Result` fail only when the model's own state is
    /// broken (a key of the namespace holding the wrong type): a harness bug, said loudly.
    fn must<T>(r: crate::store::Result<T>) -> T {
        r.unwrap_or_else(|e| panic!("model script failed on the harness's own state: {e}"))
    }

    /// `write.lua`: set_with_ttl for a batch; returns the deadlines.
    pub fn write_batch(&mut self, items: &[(Vec<u8>, Vec<u8>, Duration)]) -> Vec<i64> {
        if items.is_empty() {
            return vec![];
        }
        let v = self.eval(scripts::write(&self.keys, items, None));
        Self::must(v.and_then(|v| scripts::write_reply(&v)))
    }

    /// `track.lua`: registers an existing key with a TTL; None when it has none or is missing.
    pub fn track(&mut self, key: &[u8]) -> Option<i64> {
        let v = self.eval(scripts::track(&self.keys, key));
        Self::must(v.and_then(|v| scripts::track_reply(&v)))
    }

    /// `capture.lua`: (emitted, moved, dropped).
    pub fn capture(&mut self, keys: &[Vec<u8>], via: Via) -> (u64, u64, u64) {
        let v = self.eval(scripts::capture(&self.keys, keys, via));
        Self::must(v.and_then(|v| scripts::capture_reply(&v)))
    }

    /// `sweep.lua`: captures up to `limit` due index entries by the server's clock.
    pub fn sweep(&mut self, limit: usize) -> Sweep {
        let v = self.eval(scripts::sweep(&self.keys, limit));
        Self::must(v.and_then(|v| scripts::sweep_reply(&v)))
    }

    /// `XREADGROUP ... >` (the model never blocks).
    pub fn read_new(&mut self, consumer: &str, count: usize) -> crate::store::Result<Vec<RawEntry>> {
        let args = scripts::read_command(&self.keys, &self.group, consumer, count, None);
        parse_xread(&self.command("XREADGROUP", &args)?)
    }

    /// `Store::autoclaim`: `claim.lua`, then the tokens of what this consumer now holds
    /// (`XPENDING` filtered by consumer, as the Redis store does in a second call).
    pub fn autoclaim(
        &mut self,
        consumer: &str,
        min_idle: Duration,
        cursor: &str,
        count: usize,
    ) -> crate::store::Result<(String, Vec<(RawEntry, u64)>)> {
        let call = scripts::claim(&self.keys, &self.group, consumer, min_idle, cursor, count);
        let (next, entries, _deleted) = scripts::claim_reply(&self.eval(call)?)?;
        if entries.is_empty() {
            return Ok((next, vec![]));
        }
        let args = scripts::tokens_command(&self.keys, &self.group, consumer, &entries);
        let tokens = scripts::tokens_reply(&self.command("XPENDING", &args)?)?;
        Ok((next, scripts::with_tokens(entries, &tokens)))
    }

    /// `commit.lua`: the fenced, ledgered, all-or-nothing commit of one consumer's batch.
    pub fn commit(
        &mut self,
        consumer: &str,
        ledger: LedgerConfig,
        items: &[CommitItem<'_>],
    ) -> crate::store::Result<Vec<CommitOutcome>> {
        let items: Vec<(&str, &CommitItem<'_>)> = items.iter().map(|i| (consumer, i)).collect();
        self.commit_many(ledger, &items)
    }

    /// `commit.lua` for entries of several consumers (group commit), each fenced on its own.
    pub fn commit_many(
        &mut self,
        ledger: LedgerConfig,
        items: &[(&str, &CommitItem<'_>)],
    ) -> crate::store::Result<Vec<CommitOutcome>> {
        let v = self.eval(scripts::commit(&self.keys, &self.group, ledger, items))?;
        parse_commit_reply(&v, items.len())
    }

    /// `dead_letter.lua`: moves a pending entry this consumer holds to the dead-letter stream.
    pub fn dead_letter(&mut self, consumer: &str, entry_id: &str, token: u64, reason: &str) -> bool {
        let v = self.eval(scripts::dead_letter(&self.keys, &self.group, consumer, entry_id, token, reason));
        Self::must(v.and_then(|v| scripts::dead_letter_reply(&v)))
    }

    /// `retry.lua`: another delivery of an entry this consumer holds; the new token.
    pub fn retry(&mut self, consumer: &str, entry_id: &str, token: u64) -> Option<u64> {
        let v = self.eval(scripts::retry(&self.keys, &self.group, consumer, entry_id, token));
        Self::must(v.and_then(|v| scripts::retry_reply(&v)))
    }

    /// `release.lua`: marks held entries idle for `idle` so any consumer reclaims them at once.
    pub fn release(&mut self, consumer: &str, ids: &[String], idle: Duration) -> u64 {
        if ids.is_empty() {
            return 0;
        }
        let v = self.eval(scripts::release(&self.keys, &self.group, consumer, ids, idle));
        Self::must(v.and_then(|v| scripts::count_reply("release", &v)))
    }

    /// Tracked keys not yet captured, stream length, pending entries (`Store::backlog`).
    pub fn backlog(&mut self) -> Backlog {
        let k = self.keys.clone();
        let int = |r: Reply| r.int().expect("an integer reply") as u64;
        let tracked = int(self.model.call(&[b"ZCARD".to_vec(), k.idx.clone().into_bytes()]).expect("zset"));
        let stream_len = int(self.model.call(&[b"XLEN".to_vec(), k.stream.clone().into_bytes()]).expect("stream"));
        let pending =
            match self.model.call(&[b"XPENDING".to_vec(), k.stream.into_bytes(), self.group.clone().into_bytes()]) {
                Ok(Reply::Array(a)) => a.first().and_then(Reply::int).unwrap_or(0) as u64,
                other => panic!("XPENDING summary on the model: {other:?}"),
            };
        Backlog { tracked, stream_len, pending }
    }

    /// `XADD` of raw fields to the events stream (replays, duplicates, stray writers).
    pub fn xadd_raw(&mut self, fields: Fields) -> String {
        let key = self.keys.stream.clone();
        self.model.xadd(key.as_bytes(), fields).expect("stream").to_string()
    }

    /// Entries of a stream key in order (`XRANGE - +`).
    pub fn range(&mut self, key: &str) -> Vec<RawEntry> {
        let args = [b"XRANGE".to_vec(), key.as_bytes().to_vec(), b"-".to_vec(), b"+".to_vec()];
        Self::must(self.command("XRANGE", &args).and_then(|v| super::parse_entries(&v)))
    }

    /// The whole PEL: (id, consumer, idle, deliveries).
    pub fn pending_all(&mut self) -> Vec<(String, String, i64, u64)> {
        let args: Vec<Vec<u8>> = ["XPENDING", &self.keys.stream, &self.group, "-", "+", &i64::MAX.to_string()]
            .iter()
            .map(|a| a.as_bytes().to_vec())
            .collect();
        match self.model.call(&args) {
            Ok(Reply::Array(rows)) => rows
                .into_iter()
                .map(|row| match row {
                    Reply::Array(r) => match &r[..] {
                        [Reply::Bulk(id), Reply::Bulk(c), Reply::Int(idle), Reply::Int(n)] => (
                            String::from_utf8_lossy(id).into_owned(),
                            String::from_utf8_lossy(c).into_owned(),
                            *idle,
                            *n as u64,
                        ),
                        other => panic!("XPENDING row on the model: {other:?}"),
                    },
                    other => panic!("XPENDING row on the model: {other:?}"),
                })
                .collect(),
            other => panic!("XPENDING on the model: {other:?}"),
        }
    }

    /// Runs a raw command on the model (tests).
    pub fn call(&mut self, args: &[Vec<u8>]) -> Result<Reply, String> {
        self.model.call(args)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::{decode_entry, Effect, Event};
    use crate::store::Safety;

    fn store() -> ModelStore {
        ModelStore::new(Model::new(1_000_000), "t", "g")
    }

    fn ledger(safety: Safety) -> LedgerConfig {
        LedgerConfig { bucket: Duration::from_secs(60), retention: Duration::from_secs(3600), safety }
    }

    #[test]
    fn write_sweep_read_commit() {
        let mut s = store();
        let dl = s.write_batch(&[(b"k".to_vec(), b"v".to_vec(), Duration::from_millis(10))]);
        assert_eq!(dl, vec![1_000_010]);
        assert_eq!(s.sweep(10).emitted, 0, "not due");
        s.model.advance(11);
        let sw = s.sweep(10);
        assert_eq!((sw.emitted, sw.examined, sw.next_deadline_ms), (1, 1, None));
        assert_eq!(s.sweep(10).emitted, 0, "the index removal is the dedup");
        let got = s.read_new("A", 10).unwrap();
        let ev: Event = decode_entry(&got[0].fields, 1024).unwrap();
        assert_eq!((ev.deadline_ms, ev.payload.as_slice(), ev.via), (1_000_010, &b"v"[..], Via::Sweeper));
        let eff = vec![Effect::new("RPUSH", ["fx", "1"])];
        let item = CommitItem { entry_id: &got[0].id, token: 1, event: &ev, effects: &eff };
        assert_eq!(s.commit("A", ledger(Safety::ON), &[item]).unwrap(), vec![CommitOutcome::Committed]);
        let item = CommitItem { entry_id: &got[0].id, token: 1, event: &ev, effects: &eff };
        assert_eq!(s.commit("A", ledger(Safety::ON), &[item]).unwrap(), vec![CommitOutcome::NotOwner]);
        assert_eq!(s.backlog(), crate::store::Backlog::default());
        assert_eq!(s.model.lrange_all(b"fx").unwrap().len(), 1);
    }

    #[test]
    fn a_forbidden_effect_is_refused_by_the_real_pre_flight_and_nothing_is_written() {
        let mut s = store();
        s.write_batch(&[(b"k".to_vec(), b"v".to_vec(), Duration::from_millis(1))]);
        s.model.advance(5);
        s.sweep(10);
        let got = s.read_new("A", 1).unwrap();
        let ev: Event = decode_entry(&got[0].fields, 1024).unwrap();
        let eff = vec![Effect::new("RPUSH", ["fx", "1"]), Effect::new("EVAL", ["return 1", "0"])];
        let item = CommitItem { entry_id: &got[0].id, token: 1, event: &ev, effects: &eff };
        let out = s.commit("A", ledger(Safety::ON), &[item]).unwrap();
        let why = "effects cannot apply, nothing was written: effect 2 of 2 (EVAL return 1): effect command not allowed: EVAL";
        assert_eq!(out, vec![CommitOutcome::EffectsRefused(why.into())]);
        assert_eq!(s.model.lrange_all(b"fx").unwrap(), Vec::<Vec<u8>>::new(), "the first effect was not applied");
        let dead = s.range(&s.keys.dead.clone());
        assert_eq!(dead[0].fields[0], (b"reason".to_vec(), why.as_bytes().to_vec()));
        assert_eq!(s.backlog(), crate::store::Backlog::default());
    }

    #[test]
    fn capture_codes() {
        let mut s = store();
        let items: Vec<_> = ["a", "b", "c", "d"]
            .iter()
            .map(|k| (k.as_bytes().to_vec(), b"v".to_vec(), Duration::from_millis(10)))
            .collect();
        s.write_batch(&items);
        s.model.pexpire(b"a", 1000); // moved
        s.model.persist(b"b"); // persisted
        s.model.del(b"c"); // deleted before deadline
        assert_eq!(s.capture(&[b"a".to_vec(), b"b".to_vec(), b"c".to_vec(), b"d".to_vec()], Via::Sweeper), (0, 1, 2));
        s.model.advance(20);
        assert_eq!(s.capture(&[b"d".to_vec(), b"d".to_vec(), b"zz".to_vec()], Via::Notification), (1, 0, 0));
        // An `expired` notification for a key gone before its indexed deadline (its TTL was
        // shortened elsewhere) is an expiration, not a delete: emitted.
        s.write_batch(&[(b"e".to_vec(), b"v".to_vec(), Duration::from_millis(10_000))]);
        s.model.pexpire(b"e", 1);
        s.model.advance(5);
        assert_eq!(s.capture(&[b"e".to_vec()], Via::Notification), (1, 0, 0));
    }

    #[test]
    fn stale_commit_is_fenced_and_without_fence_only_the_ledger_saves_it() {
        for (safety, expect) in [
            (Safety::ON, CommitOutcome::NotOwner),
            (Safety { fence: false, ledger: true }, CommitOutcome::AlreadyApplied),
        ] {
            let mut s = store();
            s.write_batch(&[(b"k".to_vec(), b"v".to_vec(), Duration::from_millis(1))]);
            s.model.advance(5);
            s.sweep(10);
            let a = s.read_new("A", 1).unwrap();
            s.model.advance(100);
            let (_, b) = s.autoclaim("B", Duration::from_millis(50), "0-0", 10).unwrap();
            assert_eq!(b[0].1, 2);
            let ev = decode_entry(&a[0].fields, 1024).unwrap();
            let item = CommitItem { entry_id: &a[0].id, token: 2, event: &ev, effects: &[] };
            assert_eq!(s.commit("B", ledger(safety), &[item]).unwrap(), vec![CommitOutcome::Committed]);
            let item = CommitItem { entry_id: &a[0].id, token: 1, event: &ev, effects: &[] };
            assert_eq!(s.commit("A", ledger(safety), &[item]).unwrap(), vec![expect]);
        }
    }

    #[test]
    fn retry_release_and_dead_letter() {
        let mut s = store();
        s.write_batch(&[(b"k".to_vec(), b"v".to_vec(), Duration::from_millis(1))]);
        s.model.advance(5);
        s.sweep(10);
        let a = s.read_new("A", 1).unwrap();
        assert_eq!(s.retry("A", &a[0].id, 1), Some(2));
        assert_eq!(s.retry("A", &a[0].id, 1), None, "stale token");
        assert_eq!(s.release("A", std::slice::from_ref(&a[0].id), Duration::from_secs(50)), 1);
        let (_, b) = s.autoclaim("B", Duration::from_secs(10), "0-0", 10).unwrap();
        assert_eq!(b[0].1, 3, "release does not bump, the claim does");
        assert!(!s.dead_letter("A", &a[0].id, 2, "x"));
        assert!(s.dead_letter("B", &a[0].id, 3, "poison"));
        let dead = s.range(&s.keys.dead.clone());
        assert_eq!(dead.len(), 1);
        assert_eq!(dead[0].fields[0], (b"reason".to_vec(), b"poison".to_vec()));
        assert_eq!(s.backlog(), crate::store::Backlog::default());
    }
}
