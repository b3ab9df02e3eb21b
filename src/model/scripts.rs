//! The project's Lua scripts (`src/store/lua/*.lua`) as Rust functions over the [`Model`],
//! line for line, so the simulator runs the real protocol. Each method is one script call:
//! atomic because it holds `&mut` for its whole run, with `now` read once like `now_ms()`.
//! A change to a script must be mirrored here; `tests/differential` fails until it is.

use std::time::Duration;

use super::stream::{Fields, StreamId};
use super::{Model, Reply};
use crate::core::{event_id, CommitOutcome, Via};
use crate::store::{CommitItem, Keys, LedgerConfig, RawEntry, StoreError, Sweep};

/// Outcome codes of the capture step (`common.lua`).
pub mod capture_code {
    pub const NOTHING: u8 = 0;
    pub const EMITTED: u8 = 1;
    pub const MOVED: u8 = 2;
    pub const PERSISTED: u8 = 3;
    pub const DELETED: u8 = 4;
}

/// One namespace of the model, with the same operations as [`crate::store::Store`].
#[derive(Clone, Debug)]
pub struct ModelStore {
    pub model: Model,
    pub keys: Keys,
    pub group: String,
}

/// The pre-flight's words for a failing effect (as `effects.lua`'s `preflight`).
fn describe(i: usize, n: usize, e: &crate::core::Effect, err: &str) -> String {
    let name = String::from_utf8_lossy(e.args.first().map(|a| a.as_slice()).unwrap_or(b"")).to_ascii_uppercase();
    let key = e.args.get(1).map(|k| String::from_utf8_lossy(k).into_owned()).unwrap_or_default();
    format!("effect {} of {n} ({name} {key}): {err}", i + 1)
}

fn script_err(what: &'static str, e: String) -> StoreError {
    StoreError::Reply { what, reply: e }
}

fn raw(id: StreamId, fields: &Fields) -> RawEntry {
    RawEntry { id: id.to_string(), fields: fields.clone() }
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

    fn hincr(&mut self, field: &str) {
        let stats = self.keys.stats.clone();
        self.model.hincrby(stats.as_bytes(), field.as_bytes(), 1).expect("stats is a hash");
    }

    /// The capture step of `common.lua`; returns a [`capture_code`].
    fn emit(&mut self, key: &[u8], dl: i64, via: &str, now: i64, p: Option<Vec<u8>>) {
        let k = self.keys.clone();
        let fields: Fields = vec![
            (b"k".to_vec(), key.to_vec()),
            (b"d".to_vec(), dl.to_string().into_bytes()),
            (b"id".to_vec(), event_id(key, dl).into_bytes()),
            (b"via".to_vec(), via.as_bytes().to_vec()),
            (b"c".to_vec(), now.to_string().into_bytes()),
            (b"p".to_vec(), p.unwrap_or_default()),
        ];
        self.model.xadd(k.stream.as_bytes(), fields).expect("stream");
        self.hincr(&format!("captured_{via}"));
    }

    fn capture_one(&mut self, key: &[u8], via: &str, now: i64) -> u8 {
        let k = self.keys.clone();
        let Some(dl) = self.model.zscore(k.idx.as_bytes(), key).expect("idx is a zset") else {
            return capture_code::NOTHING;
        };
        // An `expired` notification names a key that did expire, whatever its state is now.
        let heard = via == "n";
        // Touching the key applies lazy expiry, as PEXPIRETIME does in the script.
        let pt = self.model.pexpiretime(key);
        let m = &mut self.model;
        if pt == -2 {
            m.zrem(k.idx.as_bytes(), key).expect("zset");
            let p = m.hget(k.pay.as_bytes(), key).expect("hash");
            m.hdel(k.pay.as_bytes(), key).expect("hash");
            let mut d = dl;
            if now < dl {
                if !heard {
                    self.hincr("deleted");
                    return capture_code::DELETED;
                }
                // Expired before its indexed deadline (TTL shortened elsewhere).
                d = now;
            }
            self.emit(key, d, via, now, p);
            return capture_code::EMITTED;
        }
        if heard && dl <= now && pt != dl {
            // Expired, then written again elsewhere before this capture.
            let p = m.hget(k.pay.as_bytes(), key).expect("hash");
            self.emit(key, dl, via, now, p);
            let m = &mut self.model;
            if pt == -1 {
                m.zrem(k.idx.as_bytes(), key).expect("zset");
                m.hdel(k.pay.as_bytes(), key).expect("hash");
            } else {
                m.zadd(k.idx.as_bytes(), pt, key).expect("zset");
                m.hset(k.pay.as_bytes(), key, b"").expect("hash");
            }
            return capture_code::EMITTED;
        }
        if pt == -1 {
            m.zrem(k.idx.as_bytes(), key).expect("zset");
            m.hdel(k.pay.as_bytes(), key).expect("hash");
            self.hincr("persisted");
            capture_code::PERSISTED
        } else if pt != dl {
            m.zadd(k.idx.as_bytes(), pt, key).expect("zset");
            capture_code::MOVED
        } else {
            capture_code::NOTHING
        }
    }

    /// `write.lua`: set_with_ttl for a batch; returns the deadlines.
    pub fn write_batch(&mut self, items: &[(Vec<u8>, Vec<u8>, Duration)]) -> Vec<i64> {
        let now = self.model.now();
        let k = self.keys.clone();
        let mut out = vec![];
        for (key, value, ttl) in items {
            self.capture_one(key, "w", now);
            self.model.set(key, value, false, Some(ttl.as_millis().max(1) as i64));
            let dl = self.model.pexpiretime(key);
            self.model.zadd(k.idx.as_bytes(), dl, key).expect("zset");
            self.model.hset(k.pay.as_bytes(), key, value).expect("hash");
            out.push(dl);
        }
        out
    }

    /// `track.lua`: registers an existing key with a TTL; None when it has none or is missing.
    pub fn track(&mut self, key: &[u8]) -> Option<i64> {
        let now = self.model.now();
        self.capture_one(key, "w", now);
        let dl = self.model.pexpiretime(key);
        if dl < 0 {
            return None;
        }
        let value = if self.model.type_of(key) == "string" {
            self.model.get(key).expect("string").unwrap_or_default()
        } else {
            vec![]
        };
        let k = self.keys.clone();
        self.model.zadd(k.idx.as_bytes(), dl, key).expect("zset");
        self.model.hset(k.pay.as_bytes(), key, &value).expect("hash");
        Some(dl)
    }

    /// `capture.lua`: (emitted, moved, dropped).
    pub fn capture(&mut self, keys: &[Vec<u8>], via: Via) -> (u64, u64, u64) {
        let now = self.model.now();
        let (mut e, mut mv, mut d) = (0, 0, 0);
        for key in keys {
            match self.capture_one(key, via.tag(), now) {
                capture_code::EMITTED => e += 1,
                capture_code::MOVED => mv += 1,
                c if c >= capture_code::PERSISTED => d += 1,
                _ => {}
            }
        }
        (e, mv, d)
    }

    /// `sweep.lua`: captures up to `limit` due index entries by the server's clock.
    pub fn sweep(&mut self, limit: usize) -> Sweep {
        let now = self.model.now();
        let idx = self.keys.idx.clone();
        let due = self.model.zrange_below(idx.as_bytes(), now, limit).expect("zset");
        let mut emitted = 0;
        for key in &due {
            if self.capture_one(key, "s", now) == capture_code::EMITTED {
                emitted += 1;
            }
        }
        let next = self.model.zrange_all(idx.as_bytes()).expect("zset").first().map(|(_, s)| *s);
        Sweep { emitted, examined: due.len() as u64, next_deadline_ms: next, now_ms: now }
    }

    fn stream_mut(&mut self) -> &mut super::Stream {
        let key = self.keys.stream.clone();
        self.model.stream(key.as_bytes()).expect("stream type").expect("the group was created")
    }

    /// `XREADGROUP ... >`.
    pub fn read_new(&mut self, consumer: &str, count: usize) -> crate::store::Result<Vec<RawEntry>> {
        let (now, group) = (self.model.now(), self.group.clone());
        let got =
            self.stream_mut().read_group(&group, consumer, count, now).map_err(|e| script_err("XREADGROUP", e))?;
        Ok(got.iter().map(|(id, f)| raw(*id, f)).collect())
    }

    /// `Store::autoclaim`: `XAUTOCLAIM`, then the tokens of what this consumer now holds
    /// (`XPENDING` filtered by consumer, as the real adapter does in a second call).
    pub fn autoclaim(
        &mut self,
        consumer: &str,
        min_idle: Duration,
        cursor: &str,
        count: usize,
    ) -> crate::store::Result<(String, Vec<(RawEntry, u64)>)> {
        let (now, group) = (self.model.now(), self.group.clone());
        let start = StreamId::parse(cursor).ok_or_else(|| script_err("XAUTOCLAIM", format!("bad cursor {cursor}")))?;
        let s = self.stream_mut();
        let (next, claimed, deleted) = s
            .autoclaim(&group, consumer, min_idle.as_millis() as i64, start, count, now)
            .map_err(|e| script_err("XAUTOCLAIM", e))?;
        // As claim.lua: every pending entry the stream lost is dead-lettered and counted.
        for id in &deleted {
            let rec: Fields = vec![
                (b"reason".to_vec(), crate::core::DELETED_WHILE_PENDING.as_bytes().to_vec()),
                (b"entry".to_vec(), id.to_string().into_bytes()),
                (b"claimer".to_vec(), consumer.as_bytes().to_vec()),
            ];
            let dead = self.keys.dead.clone();
            self.model.xadd(dead.as_bytes(), rec).expect("dead-letter stream is a stream");
            self.hincr("deleted_while_pending");
        }
        let s = self.stream_mut();
        if claimed.is_empty() {
            return Ok((next.to_string(), vec![]));
        }
        let (first, last) = (claimed[0].0, claimed[claimed.len() - 1].0);
        let pend = s
            .pending(&group, first, last, claimed.len() * 2 + 16, Some(consumer), now)
            .map_err(|e| script_err("XPENDING", e))?;
        let out =
            claimed.iter().filter_map(|(id, f)| pend.iter().find(|p| p.0 == *id).map(|p| (raw(*id, f), p.3))).collect();
        Ok((next.to_string(), out))
    }

    /// The fence of `common.lua`: `consumer` holds pending entry `id` with count `token`.
    fn owns(&mut self, id: &str, consumer: &str, token: &str) -> bool {
        let (now, group) = (self.model.now(), self.group.clone());
        let Some(sid) = StreamId::parse(id) else { return false };
        let p = self.stream_mut().pending(&group, sid, sid, 1, None, now).expect("group exists");
        p.first().is_some_and(|(_, c, _, n)| c == consumer && n.to_string() == token)
    }

    fn ack_and_delete(&mut self, id: &str) {
        let group = self.group.clone();
        if let Some(sid) = StreamId::parse(id) {
            let s = self.stream_mut();
            s.ack(&group, sid).expect("group exists");
            s.del(sid);
        }
    }

    /// `commit.lua`: the fenced, ledgered, atomic commit of a batch, honouring
    /// `ledger.safety` exactly as the script honours its `safety` argument. An entry whose
    /// effects cannot all apply writes nothing and is dead-lettered with the error (the model
    /// applies and rolls back; the script checks before writing); the others still commit.
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
        let bucket_ms = (ledger.bucket.as_millis() as i64).max(1);
        let retention = ledger.retention.as_millis() as i64;
        let now = self.model.now();
        let mut out = vec![];
        let mut extended = std::collections::BTreeSet::new();
        let mut done = vec![];
        for (consumer, it) in items {
            let token = it.token.to_string();
            if ledger.safety.fence && !self.owns(it.entry_id, consumer, &token) {
                out.push(CommitOutcome::NotOwner);
                self.hincr("fenced");
                continue;
            }
            let bucket = it.event.deadline_ms.div_euclid(bucket_ms);
            let lk = format!("{}{}", self.keys.ledger_prefix, bucket).into_bytes();
            let eid = it.event.event_id.as_bytes();
            if ledger.safety.ledger && self.model.sismember(&lk, eid).map_err(|e| script_err("commit", e))? {
                out.push(CommitOutcome::AlreadyApplied);
                self.hincr("duplicates_suppressed");
                done.push(it.entry_id.to_string());
                continue;
            }
            if let Some(err) = self.apply_all_or_nothing(it.effects) {
                let reason = format!("effects cannot apply, nothing was written: {err}");
                self.to_dead(it.entry_id, it.token, consumer, &reason);
                out.push(CommitOutcome::EffectsRefused(reason));
                self.hincr("effects_refused");
                self.hincr("dead_lettered");
                done.push(it.entry_id.to_string());
                continue;
            }
            if ledger.safety.ledger {
                // The effects went first here (the model can roll back); the script adds the id
                // first. Nothing else runs in between, so the state after the call is the same.
                self.model.sadd(&lk, eid).map_err(|e| script_err("commit", e))?;
                if extended.insert(lk.clone()) {
                    let want = ((bucket + 1) * bucket_ms + retention).max(now + retention);
                    if self.model.pexpiretime(&lk) < want {
                        self.model.pexpireat(&lk, want);
                    }
                }
            }
            out.push(CommitOutcome::Committed);
            self.hincr("committed");
            done.push(it.entry_id.to_string());
        }
        for id in done {
            self.ack_and_delete(&id);
        }
        Ok(out)
    }

    /// Applies `effects` in order; on the first error puts every key they name back as it was
    /// and returns `effect i of n (CMD key): <error>`, the words `effects.lua` uses.
    fn apply_all_or_nothing(&mut self, effects: &[crate::core::Effect]) -> Option<String> {
        for (i, e) in effects.iter().enumerate() {
            if let Err(err) = e.check() {
                return Some(describe(i, effects.len(), e, &err));
            }
        }
        // As effects.lua: keys the pipeline's own scripts write are not for effects.
        let tag = format!("{{{}}}:", self.keys.ns);
        let owned = |k: &[u8]| {
            let k = String::from_utf8_lossy(k);
            ["idx", "pay", "events", "dead", "stats"].iter().any(|n| k == format!("{tag}{n}"))
                || k.starts_with(&self.keys.ledger_prefix)
                || k.starts_with(&format!("{tag}wb:"))
        };
        for (i, e) in effects.iter().enumerate() {
            let name = String::from_utf8_lossy(&e.args[0]).to_ascii_uppercase();
            let last = if name == "DEL" { e.args.len() } else { 2 };
            if let Some(k) = e.args[1..last].iter().find(|k| owned(k)) {
                let err = format!("ERR effect names a key the pipeline owns: {}", String::from_utf8_lossy(k));
                return Some(describe(i, effects.len(), e, &err));
            }
        }
        let mut keys: Vec<Vec<u8>> = vec![];
        for e in effects {
            let name = String::from_utf8_lossy(&e.args[0]).to_ascii_uppercase();
            let named: &[Vec<u8>] = if name == "DEL" { &e.args[1..] } else { &e.args[1..2] };
            keys.extend(named.iter().cloned());
        }
        let snap = self.model.snapshot(&keys);
        for (i, e) in effects.iter().enumerate() {
            if let Err(err) = self.model.call(&e.args) {
                self.model.restore(snap);
                return Some(describe(i, effects.len(), e, &err));
            }
        }
        None
    }

    /// `common.lua`'s `to_dead`: the entry, its fields prefixed `f:`, and why.
    fn to_dead(&mut self, entry_id: &str, token: u64, consumer: &str, reason: &str) {
        let Some(sid) = StreamId::parse(entry_id) else { return };
        let fields = self.stream_mut().get(sid).cloned().unwrap_or_default();
        let mut rec: Fields = vec![
            (b"reason".to_vec(), reason.as_bytes().to_vec()),
            (b"entry".to_vec(), entry_id.as_bytes().to_vec()),
            (b"deliveries".to_vec(), token.to_string().into_bytes()),
            (b"consumer".to_vec(), consumer.as_bytes().to_vec()),
        ];
        rec.extend(fields.into_iter().map(|(k, v)| ([b"f:".as_slice(), &k].concat(), v)));
        let dead = self.keys.dead.clone();
        self.model.xadd(dead.as_bytes(), rec).expect("dead-letter stream is a stream");
    }

    /// `dead_letter.lua`: moves a pending entry this consumer holds to the dead-letter stream.
    pub fn dead_letter(&mut self, consumer: &str, entry_id: &str, token: u64, reason: &str) -> bool {
        if !self.owns(entry_id, consumer, &token.to_string()) {
            self.hincr("fenced");
            return false;
        }
        let sid = StreamId::parse(entry_id).expect("owned ids parse");
        let fields = self.stream_mut().get(sid).cloned().unwrap_or_default();
        let mut dead: Fields = vec![
            (b"reason".to_vec(), reason.as_bytes().to_vec()),
            (b"entry".to_vec(), entry_id.as_bytes().to_vec()),
            (b"deliveries".to_vec(), token.to_string().into_bytes()),
            (b"consumer".to_vec(), consumer.as_bytes().to_vec()),
        ];
        for (f, v) in fields {
            let mut name = b"f:".to_vec();
            name.extend_from_slice(&f);
            dead.push((name, v));
        }
        let dk = self.keys.dead.clone();
        self.model.xadd(dk.as_bytes(), dead).expect("dead is a stream");
        self.ack_and_delete(entry_id);
        self.hincr("dead_lettered");
        true
    }

    /// `retry.lua`: another delivery of an entry this consumer holds; the new token.
    pub fn retry(&mut self, consumer: &str, entry_id: &str, token: u64) -> Option<u64> {
        if !self.owns(entry_id, consumer, &token.to_string()) {
            return None;
        }
        let (now, group) = (self.model.now(), self.group.clone());
        let sid = StreamId::parse(entry_id).expect("owned ids parse");
        self.stream_mut().claim(&group, consumer, sid, None, false, now).expect("group exists");
        Some(token + 1)
    }

    /// `release.lua`: marks held entries idle for `idle` so any consumer reclaims them at once.
    pub fn release(&mut self, consumer: &str, ids: &[String], idle: Duration) -> u64 {
        let (now, group) = (self.model.now(), self.group.clone());
        let mut n = 0;
        for id in ids {
            let Some(sid) = StreamId::parse(id) else { continue };
            let s = self.stream_mut();
            let p = s.pending(&group, sid, sid, 1, None, now).expect("group exists");
            if p.first().is_some_and(|(_, c, _, _)| c == consumer) {
                s.claim(&group, consumer, sid, Some(idle.as_millis() as i64), true, now).expect("group exists");
                n += 1;
            }
        }
        n
    }

    /// Tracked keys not yet captured, stream length, pending entries (`Store::backlog`).
    pub fn backlog(&mut self) -> crate::store::Backlog {
        let idx = self.keys.idx.clone();
        let tracked = self.model.zcard(idx.as_bytes()).expect("zset") as u64;
        let group = self.group.clone();
        let s = self.stream_mut();
        let pending = s.groups.get(&group).map(|g| g.pel.len()).unwrap_or(0) as u64;
        crate::store::Backlog { tracked, stream_len: s.len() as u64, pending }
    }

    /// `XADD` of raw fields to the events stream (replays, duplicates, stray writers).
    pub fn xadd_raw(&mut self, fields: Fields) -> String {
        let key = self.keys.stream.clone();
        self.model.xadd(key.as_bytes(), fields).expect("stream").to_string()
    }

    /// Entries of a stream key in order (`XRANGE - +`).
    pub fn range(&mut self, key: &str) -> Vec<RawEntry> {
        match self.model.stream(key.as_bytes()).expect("stream type") {
            Some(s) => s.entries.iter().map(|(id, f)| raw(*id, f)).collect(),
            None => vec![],
        }
    }

    /// The whole PEL: (id, consumer, idle, deliveries).
    pub fn pending_all(&mut self) -> Vec<(String, String, i64, u64)> {
        let (now, group) = (self.model.now(), self.group.clone());
        self.stream_mut()
            .pending(&group, StreamId::ZERO, StreamId { ms: u64::MAX, seq: u64::MAX }, usize::MAX, None, now)
            .expect("group")
            .into_iter()
            .map(|(id, c, idle, n)| (id.to_string(), c, idle, n))
            .collect()
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
