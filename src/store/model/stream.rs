//! Streams with consumer groups, following Redis 7.0's `t_stream.c` where the protocol depends
//! on it: ids are `max(now, last)`-based and never reused (XDEL keeps `last_id`);
//! `XREADGROUP >` creates a PEL entry with delivery count 1; `XAUTOCLAIM` scans the PEL from
//! its cursor (at most `count * 10` attempts), drops entries whose stream entry was deleted,
//! and bumps the count of what it claims; `XCLAIM` bumps unless `JUSTID`, and `IDLE` backdates
//! the last delivery; idle is `now - last delivery`. `XREADGROUP >` over an entry that is
//! still pending (after `XGROUP SETID` moved the group back) reassigns it to the reader with
//! delivery count 1 (`streamReplyWithRange`), and `XGROUP SETID` leaves the PEL alone.

use std::collections::BTreeMap;
use std::fmt;

use super::CmdResult;

pub type Fields = Vec<(Vec<u8>, Vec<u8>)>;

/// `XCLAIM`'s options (Redis 7.0): `IDLE`/`TIME` resolved to an absolute delivery time,
/// `RETRYCOUNT`, `FORCE`, `JUSTID`, `LASTID`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClaimOptions {
    pub delivery_time: Option<i64>,
    pub retry_count: Option<u64>,
    pub force: bool,
    pub justid: bool,
    pub last_id: Option<StreamId>,
}

/// `XAUTOCLAIM`'s reply: next cursor, claimed entries, ids dropped because they were deleted.
pub type Claimed = (StreamId, Vec<(StreamId, Fields)>, Vec<StreamId>);

/// A stream entry id `ms-seq`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct StreamId {
    pub ms: u64,
    pub seq: u64,
}

impl StreamId {
    pub const ZERO: StreamId = StreamId { ms: 0, seq: 0 };

    /// Parses `ms-seq` or `ms` (seq 0), as Redis does for range starts.
    pub fn parse(s: &str) -> Option<StreamId> {
        match s.split_once('-') {
            Some((a, b)) => Some(StreamId { ms: a.parse().ok()?, seq: b.parse().ok()? }),
            None => Some(StreamId { ms: s.parse().ok()?, seq: 0 }),
        }
    }
}

impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

/// One pending entry of a group.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Nack {
    pub consumer: String,
    /// Last delivery, Unix ms.
    pub delivery_time: i64,
    pub delivery_count: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Group {
    pub last_delivered: StreamId,
    pub pel: BTreeMap<StreamId, Nack>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stream {
    pub entries: BTreeMap<StreamId, Fields>,
    pub last_id: StreamId,
    pub groups: BTreeMap<String, Group>,
}

fn nogroup(group: &str) -> String {
    format!("NOGROUP No such consumer group '{group}'")
}

impl Stream {
    /// `XADD *`.
    pub fn add(&mut self, now: i64, fields: Fields) -> StreamId {
        let ms = now.max(0) as u64;
        let id = if ms > self.last_id.ms {
            StreamId { ms, seq: 0 }
        } else {
            StreamId { ms: self.last_id.ms, seq: self.last_id.seq + 1 }
        };
        self.last_id = id;
        self.entries.insert(id, fields);
        id
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn group(&mut self, group: &str) -> CmdResult<&mut Group> {
        self.groups.get_mut(group).ok_or_else(|| nogroup(group))
    }

    /// `XREADGROUP GROUP g consumer COUNT n STREAMS key >`.
    pub fn read_group(
        &mut self,
        group: &str,
        consumer: &str,
        count: usize,
        now: i64,
    ) -> CmdResult<Vec<(StreamId, Fields)>> {
        let entries = &self.entries;
        let g = self.groups.get_mut(group).ok_or_else(|| nogroup(group))?;
        let mut out = vec![];
        let start = std::ops::Bound::Excluded(g.last_delivered);
        for (id, f) in entries.range((start, std::ops::Bound::Unbounded)).take(count.max(1)) {
            g.last_delivered = *id;
            g.pel.insert(*id, Nack { consumer: consumer.to_string(), delivery_time: now, delivery_count: 1 });
            out.push((*id, f.clone()));
        }
        Ok(out)
    }

    /// `XAUTOCLAIM key g consumer min_idle start COUNT count`: (next cursor, claimed, deleted).
    pub fn autoclaim(
        &mut self,
        group: &str,
        consumer: &str,
        min_idle: i64,
        start: StreamId,
        count: usize,
        now: i64,
    ) -> CmdResult<Claimed> {
        let entries = &self.entries;
        let g = self.groups.get_mut(group).ok_or_else(|| nogroup(group))?;
        let mut count = count.max(1);
        let mut attempts = count * 10;
        let (mut claimed, mut deleted) = (vec![], vec![]);
        let ids: Vec<StreamId> = g.pel.range(start..).map(|(id, _)| *id).collect();
        let mut it = ids.into_iter().peekable();
        while attempts > 0 && count > 0 {
            attempts -= 1;
            let Some(id) = it.next() else { break };
            let Some(fields) = entries.get(&id) else {
                g.pel.remove(&id);
                deleted.push(id);
                continue;
            };
            let nack = g.pel.get_mut(&id).expect("listed from the PEL");
            if min_idle > 0 && now - nack.delivery_time < min_idle {
                continue;
            }
            nack.consumer = consumer.to_string();
            nack.delivery_time = now;
            nack.delivery_count += 1;
            claimed.push((id, fields.clone()));
            count -= 1;
        }
        let next = it.peek().copied().unwrap_or(StreamId::ZERO);
        Ok((next, claimed, deleted))
    }

    /// `XCLAIM key g consumer 0 id [IDLE ms] [JUSTID]` for one id. Returns whether it was
    /// claimed. A pending entry whose stream entry was deleted is dropped from the PEL.
    pub fn claim(
        &mut self,
        group: &str,
        consumer: &str,
        id: StreamId,
        idle: Option<i64>,
        justid: bool,
        now: i64,
    ) -> CmdResult<bool> {
        let exists = self.entries.contains_key(&id);
        let g = self.group(group)?;
        if !exists {
            g.pel.remove(&id);
            return Ok(false);
        }
        let Some(nack) = g.pel.get_mut(&id) else { return Ok(false) };
        let mut t = idle.map(|i| now - i).unwrap_or(now);
        if t < 0 || t > now {
            t = now;
        }
        nack.consumer = consumer.to_string();
        nack.delivery_time = t;
        if !justid {
            nack.delivery_count += 1;
        }
        Ok(true)
    }

    /// `XCLAIM key g consumer min_idle id... [options]`, as Redis 7.0's `xclaimCommand`: an id
    /// whose stream entry was deleted is dropped from the PEL; an id not pending is skipped
    /// (unless `FORCE`, which creates it with count 1, then counted as any other); an entry
    /// idle less than `min_idle` (when > 0) is skipped; what is claimed gets the new owner,
    /// the delivery time (now unless `IDLE`/`TIME` give a sane one) and its count bumped
    /// unless `JUSTID` (or set by `RETRYCOUNT`). `LASTID` moves the group forward only.
    /// Returns the claimed ids, with their fields unless `JUSTID`.
    pub fn xclaim(
        &mut self,
        group: &str,
        consumer: &str,
        min_idle: i64,
        ids: &[StreamId],
        opts: &ClaimOptions,
        now: i64,
    ) -> CmdResult<Vec<(StreamId, Option<Fields>)>> {
        let entries = &self.entries;
        let g = self.groups.get_mut(group).ok_or_else(|| nogroup(group))?;
        let min_idle = min_idle.max(0);
        if let Some(l) = opts.last_id {
            if l > g.last_delivered {
                g.last_delivered = l;
            }
        }
        let t = match opts.delivery_time {
            Some(t) if t >= 0 && t <= now => t,
            _ => now,
        };
        let mut out = vec![];
        for id in ids {
            let Some(fields) = entries.get(id) else {
                g.pel.remove(id);
                continue;
            };
            let forced = opts.force && !g.pel.contains_key(id);
            if forced {
                g.pel.insert(*id, Nack { consumer: String::new(), delivery_time: now, delivery_count: 1 });
            }
            let Some(nack) = g.pel.get_mut(id) else { continue };
            if !forced && min_idle > 0 && now - nack.delivery_time < min_idle {
                continue;
            }
            nack.delivery_time = t;
            match opts.retry_count {
                Some(n) => nack.delivery_count = n,
                None if !opts.justid => nack.delivery_count += 1,
                None => {}
            }
            nack.consumer = consumer.to_string();
            out.push((*id, (!opts.justid).then(|| fields.clone())));
        }
        Ok(out)
    }

    /// `XGROUP SETID key g id`: the group's last delivered id, PEL untouched.
    pub fn set_id(&mut self, group: &str, id: StreamId) -> CmdResult<()> {
        self.group(group)?.last_delivered = id;
        Ok(())
    }

    /// `XPENDING key g start end count [consumer]`: (id, consumer, idle, deliveries).
    pub fn pending(
        &mut self,
        group: &str,
        start: StreamId,
        end: StreamId,
        count: usize,
        consumer: Option<&str>,
        now: i64,
    ) -> CmdResult<Vec<(StreamId, String, i64, u64)>> {
        let g = self.group(group)?;
        if start > end {
            return Ok(vec![]);
        }
        Ok(g.pel
            .range(start..=end)
            .filter(|(_, n)| consumer.is_none_or(|c| n.consumer == c))
            .take(count)
            .map(|(id, n)| (*id, n.consumer.clone(), now - n.delivery_time, n.delivery_count))
            .collect())
    }

    pub fn ack(&mut self, group: &str, id: StreamId) -> CmdResult<bool> {
        Ok(self.group(group)?.pel.remove(&id).is_some())
    }

    pub fn del(&mut self, id: StreamId) -> bool {
        self.entries.remove(&id).is_some()
    }

    pub fn get(&self, id: StreamId) -> Option<&Fields> {
        self.entries.get(&id)
    }
}
