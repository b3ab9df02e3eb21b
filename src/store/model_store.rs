//! The store seam's second implementation: a namespace of the in-memory model
//! ([`super::model::Model`]) with the same operations as [`super::RedisStore`], each running the
//! real script: the call is built by [`super::scripts`], executed by the model's embedded
//! Lua 5.1 ([`super::model::Model::eval`]), and its reply read by the same parser the Redis
//! store uses. Nothing of a script is restated here; `tests/differential` holds the model's
//! commands to real Redis.

use std::time::Duration;

use redis::Value;

use super::model::{Fields, Model, Reply};
use super::scripts::{self, Call};
use super::{
    parse_commit_reply, parse_xread, Backlog, Claimed, CommitItem, Keys, LedgerConfig, RawEntry, StoreError, Sweep,
};
use crate::core::{CommitOutcome, Via};

/// One namespace of the model, with the same operations as [`crate::store::RedisStore`].
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
    /// A namespace with its consumer group created (`RedisStore::ensure_group`).
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

    /// `adopt.lua`: the named keys that have a TTL go into the deadline index. (adopted, moved).
    pub fn adopt(&mut self, keys: &[Vec<u8>], copy_max: usize) -> (u64, u64) {
        let v = self.eval(scripts::adopt(&self.keys, keys, copy_max));
        Self::must(v.and_then(|v| scripts::adopt_reply(&v)))
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

    /// `RedisStore::reclaim`: `claim.lua`, then the tokens of what this consumer now holds
    /// (`XPENDING` filtered by consumer, as the Redis store does in a second call).
    pub fn reclaim(
        &mut self,
        consumer: &str,
        min_idle: Duration,
        cursor: &str,
        count: usize,
    ) -> crate::store::Result<Claimed> {
        let call = scripts::claim(&self.keys, &self.group, consumer, min_idle, cursor, count);
        let (next, entries, deleted) = scripts::claim_reply(&self.eval(call)?)?;
        if entries.is_empty() {
            return Ok(Claimed { next, entries: vec![], deleted });
        }
        let args = scripts::tokens_command(&self.keys, &self.group, consumer, &entries);
        let tokens = scripts::tokens_reply(&self.command("XPENDING", &args)?)?;
        Ok(Claimed { next, entries: scripts::with_tokens(entries, &tokens), deleted })
    }

    /// [`ModelStore::reclaim`] without the deleted ids.
    pub fn autoclaim(
        &mut self,
        consumer: &str,
        min_idle: Duration,
        cursor: &str,
        count: usize,
    ) -> crate::store::Result<(String, Vec<(RawEntry, u64)>)> {
        self.reclaim(consumer, min_idle, cursor, count).map(|c| (c.next, c.entries))
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

    /// Tracked keys not yet captured, stream length, pending entries (`RedisStore::backlog`).
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

/// The model behind the async store seam ([`super::Store`]), so the production tokio driver
/// (`consume::run_consumer`, the group committer) runs on it unchanged. One namespace shared
/// by every clone; each call takes the lock, moves the virtual clock to the tokio clock's
/// reading (`base_ms` plus the time since creation) and runs the real script. A blocking read
/// polls every few milliseconds until an entry arrives or `block` ends, as a blocked
/// `XREADGROUP` would answer.
#[derive(Clone)]
pub struct SharedModel {
    inner: std::sync::Arc<std::sync::Mutex<ModelStore>>,
    start: tokio::time::Instant,
    base_ms: i64,
}

impl SharedModel {
    pub fn new(store: ModelStore) -> SharedModel {
        let base_ms = store.model.now();
        let inner = std::sync::Arc::new(std::sync::Mutex::new(store));
        SharedModel { inner, start: tokio::time::Instant::now(), base_ms }
    }

    /// Runs `f` on the namespace with the clock brought up to now.
    pub fn with<R>(&self, f: impl FnOnce(&mut ModelStore) -> R) -> R {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        g.model.set_now(self.base_ms + self.start.elapsed().as_millis() as i64);
        f(&mut g)
    }
}

impl super::Store for SharedModel {
    /// The model has no connections: every call goes straight to the shared namespace.
    type Conn = ();

    async fn dedicated(&self) -> crate::store::Result<()> {
        Ok(())
    }

    async fn ensure_group(&self) -> crate::store::Result<()> {
        self.with(|m| m.ensure_group());
        Ok(())
    }

    async fn read_new(
        &self,
        _: &mut (),
        consumer: &str,
        count: usize,
        block: Duration,
    ) -> crate::store::Result<Vec<RawEntry>> {
        let until = tokio::time::Instant::now() + block;
        loop {
            let got = self.with(|m| m.read_new(consumer, count))?;
            if !got.is_empty() || tokio::time::Instant::now() >= until {
                return Ok(got);
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    async fn reclaim(
        &self,
        _: &mut (),
        consumer: &str,
        min_idle: Duration,
        cursor: &str,
        count: usize,
    ) -> crate::store::Result<Claimed> {
        self.with(|m| m.reclaim(consumer, min_idle, cursor, count))
    }

    async fn commit_group(
        &self,
        ledger: LedgerConfig,
        items: &[(&str, &CommitItem<'_>)],
    ) -> crate::store::Result<Vec<CommitOutcome>> {
        self.with(|m| m.commit_many(ledger, items))
    }

    async fn dead_letter(
        &self,
        _: &mut (),
        consumer: &str,
        entry_id: &str,
        token: u64,
        reason: &str,
    ) -> crate::store::Result<bool> {
        self.with(|m| {
            let v = m.eval(scripts::dead_letter(&m.keys, &m.group, consumer, entry_id, token, reason))?;
            scripts::dead_letter_reply(&v)
        })
    }

    async fn retry(&self, _: &mut (), consumer: &str, entry_id: &str, token: u64) -> crate::store::Result<Option<u64>> {
        self.with(|m| {
            let v = m.eval(scripts::retry(&m.keys, &m.group, consumer, entry_id, token))?;
            scripts::retry_reply(&v)
        })
    }

    async fn release(&self, _: &mut (), consumer: &str, ids: &[String], idle: Duration) -> crate::store::Result<u64> {
        if ids.is_empty() {
            return Ok(0);
        }
        self.with(|m| {
            let v = m.eval(scripts::release(&m.keys, &m.group, consumer, ids, idle))?;
            scripts::count_reply("release", &v)
        })
    }

    async fn prune_consumers(&self, idle: Duration) -> crate::store::Result<u64> {
        self.with(|m| {
            let v = m.eval(scripts::prune(&m.keys, &m.group, idle))?;
            scripts::count_reply("prune", &v)
        })
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

    /// A counter of `{t}:stats` (0 when absent).
    fn stat(s: &mut ModelStore, field: &str) -> i64 {
        let stats = s.keys.stats.clone();
        let v = s.model.hget(stats.as_bytes(), field.as_bytes()).expect("stats is a hash");
        v.map(|v| String::from_utf8(v).unwrap().parse().unwrap()).unwrap_or(0)
    }

    /// HLEN of one of the namespace's keys (`pay`, `idx` is a zset: see `backlog`).
    fn hlen(s: &mut ModelStore, which: &str) -> i64 {
        let key = format!("{{t}}:{which}");
        s.call(&[b"HLEN".to_vec(), key.into_bytes()]).unwrap().int().unwrap()
    }

    /// The index score of `key` (None when it is not tracked).
    fn indexed(s: &mut ModelStore, key: &[u8]) -> Option<i64> {
        let idx = s.keys.idx.clone();
        s.model.zscore(idx.as_bytes(), key).unwrap()
    }

    /// One due event for `key`, captured by the sweeper and read by `consumer` (token 1).
    fn one_event(s: &mut ModelStore, key: &str, consumer: &str) -> (RawEntry, Event) {
        s.write_batch(&[(key.as_bytes().to_vec(), b"v".to_vec(), Duration::from_millis(1))]);
        s.model.advance(5);
        assert_eq!(s.sweep(10).emitted, 1);
        let mut got = s.read_new(consumer, 1).unwrap();
        let e = got.remove(0);
        let ev = decode_entry(&e.fields, 1024).unwrap();
        (e, ev)
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
        assert_eq!(hlen(&mut s, "pay"), 0, "the captured key's payload leaves the payload hash");
        assert_eq!(stat(&mut s, "captured_s"), 1);
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
        assert_eq!((stat(&mut s, "effects_refused"), stat(&mut s, "dead_lettered")), (1, 1));
        assert_eq!(stat(&mut s, "committed"), 0);
    }

    #[test]
    fn the_fence_checks_each_entry_of_a_consumer_holding_many() {
        // A consumer holding 200 pending entries commits a few of them, out of order: each is
        // fenced against its own pending entry (owner and delivery count), wherever it lies.
        let mut s = store();
        let items: Vec<_> =
            (0..200).map(|i| (format!("k{i}").into_bytes(), b"v".to_vec(), Duration::from_millis(1))).collect();
        s.write_batch(&items);
        s.model.advance(5);
        assert_eq!(s.sweep(1000).emitted, 200);
        let got = s.read_new("A", 200).unwrap();
        assert_eq!(got.len(), 200);
        let evs: Vec<Event> = got.iter().map(|e| decode_entry(&e.fields, 1024).unwrap()).collect();
        let item = |i: usize, token| CommitItem { entry_id: &got[i].id, token, event: &evs[i], effects: &[] };
        let out = s.commit("A", ledger(Safety::ON), &[item(0, 1), item(199, 1), item(100, 2)]).unwrap();
        assert_eq!(out, vec![CommitOutcome::Committed, CommitOutcome::Committed, CommitOutcome::NotOwner]);
        assert_eq!(s.commit("B", ledger(Safety::ON), &[item(150, 1)]).unwrap(), vec![CommitOutcome::NotOwner]);
        // The delivery count is compared too.
        assert_eq!(
            s.commit("A", ledger(Safety::ON), &[item(5, 2), item(6, 1)]).unwrap(),
            vec![CommitOutcome::NotOwner, CommitOutcome::Committed]
        );
    }

    #[test]
    fn a_refused_entry_leaves_no_ledger_record_so_its_replay_is_not_suppressed() {
        let mut s = store();
        let (e, ev) = one_event(&mut s, "k", "A");
        let bad = vec![Effect::new("EVAL", ["return 1", "0"])];
        let item = CommitItem { entry_id: &e.id, token: 1, event: &ev, effects: &bad };
        assert!(matches!(s.commit("A", ledger(Safety::ON), &[item]).unwrap()[..], [CommitOutcome::EffectsRefused(_)]));
        // The same event again (a replay): its effects can apply now and are committed once.
        let mut add = vec![b"XADD".to_vec(), s.keys.stream.clone().into_bytes(), b"*".to_vec()];
        for (f, v) in &e.fields {
            add.extend([f.clone(), v.clone()]);
        }
        s.call(&add).unwrap();
        let again = s.read_new("A", 1).unwrap();
        let good = vec![Effect::new("RPUSH", ["fx", "1"])];
        let item = CommitItem { entry_id: &again[0].id, token: 1, event: &ev, effects: &good };
        assert_eq!(s.commit("A", ledger(Safety::ON), &[item]).unwrap(), vec![CommitOutcome::Committed]);
        let item = CommitItem { entry_id: &again[0].id, token: 1, event: &ev, effects: &good };
        assert_eq!(s.commit("A", ledger(Safety::ON), &[item]).unwrap(), vec![CommitOutcome::NotOwner]);
        assert_eq!(s.model.lrange_all(b"fx").unwrap().len(), 1);
    }

    #[test]
    fn a_batch_naming_an_expired_key_twice_captures_its_old_generation_once_and_keeps_the_last_write() {
        let mut s = store();
        s.write_batch(&[(b"k".to_vec(), b"old".to_vec(), Duration::from_millis(1))]);
        s.model.advance(5);
        let ms = |n| Duration::from_millis(n);
        let dl = s.write_batch(&[
            (b"k".to_vec(), b"first".to_vec(), ms(100)),
            (b"j".to_vec(), b"other".to_vec(), ms(50)),
            (b"k".to_vec(), b"second".to_vec(), ms(200)),
        ]);
        assert_eq!(dl, vec![1_000_105, 1_000_055, 1_000_205]);
        let stream = s.keys.stream.clone();
        let emitted = s.range(&stream);
        assert_eq!(emitted.len(), 1, "the expired generation, once");
        let ev = decode_entry(&emitted[0].fields, 1024).unwrap();
        assert_eq!((ev.key.as_slice(), ev.deadline_ms, ev.payload.as_slice()), (&b"k"[..], 1_000_001, &b"old"[..]));
        assert_eq!(indexed(&mut s, b"k"), Some(1_000_205));
        assert_eq!(indexed(&mut s, b"j"), Some(1_000_055));
        assert_eq!(s.model.get(b"k").unwrap(), Some(b"second".to_vec()));
        let pay = s.keys.pay.clone();
        assert_eq!(s.model.hget(pay.as_bytes(), b"k").unwrap(), Some(b"second".to_vec()));
        assert_eq!(s.model.hget(pay.as_bytes(), b"j").unwrap(), Some(b"other".to_vec()));
        assert_eq!(stat(&mut s, "captured_w"), 1);
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

    /// A deadline moved earlier by another program is followed, as one moved later is (the
    /// key's own expiry then emits it on time, with the deadline it really has).
    #[test]
    fn a_ttl_shortened_elsewhere_moves_the_indexed_deadline_earlier() {
        let mut s = store();
        s.write_batch(&[(b"x".to_vec(), b"v".to_vec(), Duration::from_millis(10_000))]);
        assert_eq!(indexed(&mut s, b"x"), Some(1_010_000));
        s.model.pexpire(b"x", 5);
        assert_eq!(s.capture(&[b"x".to_vec()], Via::Sweeper), (0, 1, 0));
        assert_eq!(indexed(&mut s, b"x"), Some(1_000_005));
    }

    /// A due index entry whose key's TTL was extended is examined and moved, not emitted.
    #[test]
    fn the_sweep_counts_only_what_it_emits() {
        let mut s = store();
        s.write_batch(&[(b"k".to_vec(), b"v".to_vec(), Duration::from_millis(10))]);
        s.model.pexpire(b"k", 1000);
        s.model.advance(20);
        let sw = s.sweep(10);
        assert_eq!((sw.emitted, sw.examined, sw.next_deadline_ms), (0, 1, Some(1_001_000)));
        assert_eq!(s.backlog().stream_len, 0);
        assert_eq!(stat(&mut s, "captured_s"), 0);
    }

    /// The boundaries at exactly the deadline. A key gone when the clock reads exactly its
    /// deadline is emitted as expired, not counted as deleted: by Redis's rule it expires only
    /// once the clock is past the deadline, but a clock that disagrees by a millisecond (a
    /// replica promoted with a slower clock) must not turn an expiration into a silent
    /// "deleted"; emitting is the safe side (the sweep never sees this case: it takes only
    /// deadlines below now). Likewise an `expired` notification heard at exactly the old
    /// deadline for a key already written again emits the old generation before following the
    /// new one.
    #[test]
    fn at_exactly_the_deadline_a_gone_or_rewritten_key_is_emitted() {
        let mut s = store();
        s.write_batch(&[
            (b"gone".to_vec(), b"v1".to_vec(), Duration::from_millis(10)),
            (b"again".to_vec(), b"v2".to_vec(), Duration::from_millis(10)),
        ]);
        s.model.advance(10);
        assert_eq!(s.model.now(), 1_000_010, "the clock reads exactly the deadline");
        s.model.del(b"gone");
        assert_eq!(s.capture(&[b"gone".to_vec()], Via::Sweeper), (1, 0, 0));
        assert_eq!(stat(&mut s, "deleted"), 0);
        s.model.set(b"again", b"new", false, Some(5_000));
        assert_eq!(s.capture(&[b"again".to_vec()], Via::Notification), (1, 0, 0));
        assert_eq!(indexed(&mut s, b"again"), Some(1_005_010), "the new generation is followed");
        let events: Vec<Event> =
            s.range(&s.keys.stream.clone()).iter().map(|e| decode_entry(&e.fields, 1024).unwrap()).collect();
        let got: Vec<_> = events.iter().map(|e| (e.key.as_slice(), e.deadline_ms, e.payload.as_slice())).collect();
        assert_eq!(got, vec![(&b"gone"[..], 1_000_010, &b"v1"[..]), (&b"again"[..], 1_000_010, &b"v2"[..])]);
        assert_eq!((stat(&mut s, "captured_s"), stat(&mut s, "captured_n")), (1, 1));
    }

    /// `track.lua`: a key without a TTL, or missing, is not indexed; a tracked key that expired
    /// is captured (emitted, via the writer path) by the next track of it, before anything else.
    #[test]
    fn track_indexes_only_keys_with_a_ttl_and_captures_an_expired_generation_first() {
        let mut s = store();
        s.model.set(b"plain", b"v", false, None);
        assert_eq!(s.track(b"plain"), None);
        assert_eq!(s.track(b"missing"), None);
        assert_eq!(s.backlog().tracked, 0, "neither is indexed");
        assert_eq!(hlen(&mut s, "pay"), 0);
        s.model.set(b"t", b"tv", false, Some(100));
        assert_eq!(s.track(b"t"), Some(1_000_100));
        assert_eq!(indexed(&mut s, b"t"), Some(1_000_100));
        s.model.advance(200);
        assert_eq!(s.track(b"t"), None, "expired: gone");
        let stream = s.range(&s.keys.stream.clone());
        assert_eq!(stream.len(), 1, "the expired generation is emitted by track itself");
        let ev = decode_entry(&stream[0].fields, 1024).unwrap();
        assert_eq!(
            (ev.key.as_slice(), ev.deadline_ms, ev.payload.as_slice(), ev.via),
            (&b"t"[..], 1_000_100, &b"tv"[..], Via::Write)
        );
        assert_eq!(s.backlog().tracked, 0);
        assert_eq!(stat(&mut s, "captured_w"), 1);
    }

    /// After an `XGROUP SETID` replay the old and the new holder both have delivery count 1:
    /// only the consumer's name fences the old one.
    #[test]
    fn after_a_replay_the_fence_names_the_holder_not_only_the_token() {
        let mut s = store();
        let (a, ev) = one_event(&mut s, "k", "A");
        let (stream, group) = (s.keys.stream.clone(), s.group.clone());
        let setid: Vec<Vec<u8>> =
            ["XGROUP", "SETID", &stream, &group, "0"].iter().map(|x| x.as_bytes().to_vec()).collect();
        s.call(&setid).unwrap();
        let b = s.read_new("B", 1).unwrap();
        assert_eq!(b[0].id, a.id, "the same entry, delivered again");
        assert_eq!(s.pending_all(), vec![(a.id.clone(), "B".to_string(), 0, 1)]);
        let item = CommitItem { entry_id: &a.id, token: 1, event: &ev, effects: &[] };
        assert_eq!(s.commit("A", ledger(Safety::ON), &[item]).unwrap(), vec![CommitOutcome::NotOwner]);
        let item = CommitItem { entry_id: &a.id, token: 1, event: &ev, effects: &[] };
        assert_eq!(s.commit("B", ledger(Safety::ON), &[item]).unwrap(), vec![CommitOutcome::Committed]);
    }

    /// A commit early in its bucket: the ledger set lives `retention` after the bucket
    /// ends (not after the commit, not after the bucket starts), so any replay of an event of
    /// the bucket within the retention of its deadline is suppressed.
    #[test]
    fn the_ledger_expires_retention_after_its_bucket_ends() {
        let mut s = store();
        let (e, ev) = one_event(&mut s, "k", "A");
        assert_eq!((ev.deadline_ms, s.model.now()), (1_000_001, 1_000_005));
        let item = CommitItem { entry_id: &e.id, token: 1, event: &ev, effects: &[] };
        assert_eq!(s.commit("A", ledger(Safety::ON), &[item]).unwrap(), vec![CommitOutcome::Committed]);
        // Bucket 16 of 60 s ends at 1,020,000; the retention is 3,600,000.
        let lk = format!("{}16", s.keys.ledger_prefix);
        assert_eq!(s.model.pexpiretime(lk.as_bytes()), 17 * 60_000 + 3_600_000);
    }

    /// One group commit of more than 1,000 entries (the XACK/XDEL chunk) settles every one.
    #[test]
    fn a_commit_of_more_than_a_thousand_entries_acks_and_deletes_them_all() {
        let mut s = store();
        let n = 2_001;
        for i in 0..n {
            let key = format!("k{i}");
            let ev = Event {
                key: key.clone().into_bytes(),
                deadline_ms: 1_000_000 + i,
                event_id: crate::core::event_id(key.as_bytes(), 1_000_000 + i),
                via: Via::Sweeper,
                captured_ms: 1_000_000 + i,
                payload: vec![],
            };
            s.xadd_raw(crate::core::encode_entry(&ev));
        }
        let got = s.read_new("A", n as usize).unwrap();
        assert_eq!(got.len(), n as usize);
        let events: Vec<Event> = got.iter().map(|e| decode_entry(&e.fields, 1024).unwrap()).collect();
        let items: Vec<CommitItem<'_>> = got
            .iter()
            .zip(&events)
            .map(|(e, ev)| CommitItem { entry_id: &e.id, token: 1, event: ev, effects: &[] })
            .collect();
        let out = s.commit("A", ledger(Safety::ON), &items).unwrap();
        assert!(out.iter().all(|o| *o == CommitOutcome::Committed), "{out:?}");
        assert_eq!(s.backlog(), crate::store::Backlog::default(), "every entry acked and deleted");
        assert_eq!(stat(&mut s, "committed"), n);
    }

    /// Effects may not name the pipeline's own keys: the namespace's fixed keys, ledger sets
    /// and batch records, in any key position of DEL. Refused, and nothing is written.
    #[test]
    fn effects_naming_the_pipelines_own_keys_are_refused() {
        let mut s = store();
        s.model.set(b"fx", b"kept", false, None);
        let cases: [(&str, Vec<&str>, &str); 4] = [
            ("HSET", vec!["{t}:stats", "f", "v"], "{t}:stats"),
            ("DEL", vec!["fx", "{t}:idx"], "{t}:idx"),
            ("SET", vec!["{t}:wb:b1", "x"], "{t}:wb:b1"),
            ("SADD", vec!["{t}:ledger:7", "x"], "{t}:ledger:7"),
        ];
        for (i, (cmd, args, owned)) in cases.iter().enumerate() {
            let (e, ev) = one_event(&mut s, &format!("k{i}"), "A");
            let eff = vec![Effect::new("RPUSH", ["fl", "1"]), Effect::new(cmd, args)];
            let item = CommitItem { entry_id: &e.id, token: 1, event: &ev, effects: &eff };
            let out = s.commit("A", ledger(Safety::ON), &[item]).unwrap();
            let want = format!("ERR effect names a key the pipeline owns: {owned}");
            match &out[..] {
                [CommitOutcome::EffectsRefused(r)] if r.contains(&want) && r.contains("effect 2 of 2") => {}
                other => panic!("{cmd} {args:?}: {other:?}"),
            }
        }
        assert_eq!(s.model.get(b"fx").unwrap(), Some(b"kept".to_vec()));
        assert_eq!(s.model.lrange_all(b"fl").unwrap(), Vec::<Vec<u8>>::new());
        assert!(!s.model.exists(b"{t}:wb:b1"));
        assert!(!s.model.exists(b"{t}:ledger:7"));
        let stats = s.keys.stats.clone();
        assert_eq!(s.model.hget(stats.as_bytes(), b"f").unwrap(), None);
        assert_eq!(s.backlog(), crate::store::Backlog::default());
        assert_eq!(stat(&mut s, "effects_refused"), 4);
    }

    /// An effect of exactly 7,000 arguments (core's MAX_EFFECT_ARGS) applies; 7,001 is refused.
    #[test]
    fn an_effect_of_exactly_the_maximum_arguments_applies() {
        let mut s = store();
        for (i, n) in [7_000usize, 7_001].into_iter().enumerate() {
            let (e, ev) = one_event(&mut s, &format!("k{i}"), "A");
            let key = format!("big{n}");
            let args: Vec<String> = std::iter::once(key.clone()).chain((2..n).map(|j| j.to_string())).collect();
            let eff = vec![Effect::new("RPUSH", &args)];
            assert_eq!(eff[0].args.len(), n);
            let item = CommitItem { entry_id: &e.id, token: 1, event: &ev, effects: &eff };
            let out = s.commit("A", ledger(Safety::ON), &[item]).unwrap();
            if n == 7_000 {
                assert_eq!(out, vec![CommitOutcome::Committed]);
                assert_eq!(s.model.llen(key.as_bytes()).unwrap(), n - 2);
            } else {
                let why = "effects cannot apply, nothing was written: effect 1 of 1 (RPUSH big7001): ERR effect option not supported: 7001 arguments (at most 7000)";
                assert_eq!(out, vec![CommitOutcome::EffectsRefused(why.into())]);
                assert!(!s.model.exists(key.as_bytes()));
            }
        }
    }

    /// A foreign entry with more than 3,000 field pairs is dead-lettered with the first 3,000
    /// and the count of the rest.
    #[test]
    fn a_dead_letter_keeps_at_most_three_thousand_fields() {
        let mut s = store();
        let fields: Fields = (0..3_001).map(|i| (format!("x{i}").into_bytes(), b"v".to_vec())).collect();
        let id = s.xadd_raw(fields);
        let got = s.read_new("A", 1).unwrap();
        assert_eq!(got[0].id, id);
        assert!(s.dead_letter("A", &id, 1, "poison"));
        let dead = s.range(&s.keys.dead.clone());
        let kept: Vec<_> = dead[0].fields.iter().filter(|(k, _)| k.starts_with(b"f:")).collect();
        assert_eq!(kept.len(), 3_000);
        assert_eq!(kept[2_999].0, b"f:x2999".to_vec());
        let not_kept = dead[0].fields.iter().find(|(k, _)| k == b"fields_not_kept").map(|(_, v)| v.clone());
        assert_eq!(not_kept, Some(b"1".to_vec()));
        assert_eq!(s.backlog(), crate::store::Backlog::default());
    }

    /// An entry deleted from the stream (by another program) while pending is still
    /// dead-lettered: the reason, no fields, and it leaves the pending list.
    #[test]
    fn an_entry_deleted_while_pending_is_still_dead_lettered() {
        let mut s = store();
        let (e, _) = one_event(&mut s, "k", "A");
        let xdel = [b"XDEL".to_vec(), s.keys.stream.clone().into_bytes(), e.id.clone().into_bytes()];
        assert_eq!(s.call(&xdel).unwrap().int(), Some(1));
        assert!(s.dead_letter("A", &e.id, 1, "poison"));
        let dead = s.range(&s.keys.dead.clone());
        assert_eq!(dead.len(), 1);
        assert_eq!(dead[0].fields[0], (b"reason".to_vec(), b"poison".to_vec()));
        assert_eq!(dead[0].fields[1], (b"entry".to_vec(), e.id.clone().into_bytes()));
        assert!(!dead[0].fields.iter().any(|(k, _)| k.starts_with(b"f:")), "{:?}", dead[0].fields);
        assert_eq!(s.backlog(), crate::store::Backlog::default());
        assert_eq!(stat(&mut s, "dead_lettered"), 1);
    }
}
