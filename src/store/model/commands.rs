//! The commands the scripts and the protocol's plain calls send, beyond the generic ones in
//! [`Model::call`]: `TIME`, the counting commands, `ZRANGE` (by index and `BYSCORE`), and the
//! stream commands (`XRANGE`, `XLEN`, `XACK`, `XDEL`, `XPENDING`, `XAUTOCLAIM`,
//! `XREADGROUP`). Replies have Redis 7's RESP2 shapes; `tests/differential` compares them.

use std::ops::Bound;

use super::stream::{Fields, StreamId};
use super::{CmdResult, Model, Reply};

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn int(b: &[u8]) -> CmdResult<i64> {
    text(b).parse().map_err(|_| "ERR value is not an integer or out of range".to_string())
}

fn bulk(s: impl ToString) -> Reply {
    Reply::Bulk(s.to_string().into_bytes())
}

fn entry(id: StreamId, f: &Fields) -> Reply {
    Reply::Array(vec![
        bulk(id),
        Reply::Array(f.iter().flat_map(|(k, v)| [Reply::Bulk(k.clone()), Reply::Bulk(v.clone())]).collect()),
    ])
}

const BAD_ID: &str = "ERR Invalid stream ID specified as stream command argument";
const MAX_ID: StreamId = StreamId { ms: u64::MAX, seq: u64::MAX };

/// A range bound of `XRANGE`/`XPENDING`: `-`, `+`, `ms`, `ms-seq`, or `(` for exclusive.
/// `start` says which end it is (`ms` alone means `ms-0` as a start, `ms-max` as an end).
fn id_bound(b: &[u8], start: bool) -> CmdResult<Bound<StreamId>> {
    let t = text(b);
    match t.as_str() {
        "-" => return Ok(Bound::Included(StreamId::ZERO)),
        "+" => return Ok(Bound::Included(MAX_ID)),
        _ => {}
    }
    let (exclusive, t) = match t.strip_prefix('(') {
        Some(rest) => (true, rest),
        None => (false, t.as_str()),
    };
    let mut id = StreamId::parse(t).ok_or(BAD_ID)?;
    if !t.contains('-') && !start {
        id.seq = u64::MAX;
    }
    Ok(if exclusive { Bound::Excluded(id) } else { Bound::Included(id) })
}

/// Inclusive `[lo, hi]` of two bounds; None when empty.
fn inclusive(lo: Bound<StreamId>, hi: Bound<StreamId>) -> Option<(StreamId, StreamId)> {
    let lo = match lo {
        Bound::Included(i) => i,
        Bound::Excluded(i) if i == MAX_ID => return None,
        Bound::Excluded(i) if i.seq == u64::MAX => StreamId { ms: i.ms + 1, seq: 0 },
        Bound::Excluded(i) => StreamId { ms: i.ms, seq: i.seq + 1 },
        Bound::Unbounded => StreamId::ZERO,
    };
    let hi = match hi {
        Bound::Included(i) => i,
        Bound::Excluded(i) if i == StreamId::ZERO => return None,
        Bound::Excluded(i) if i.seq == 0 => StreamId { ms: i.ms - 1, seq: u64::MAX },
        Bound::Excluded(i) => StreamId { ms: i.ms, seq: i.seq - 1 },
        Bound::Unbounded => MAX_ID,
    };
    (lo <= hi).then_some((lo, hi))
}

/// A score bound of `ZRANGE ... BYSCORE`: `-inf`, `+inf`, an integer, `(` for exclusive
/// (the model's scores are integers, so an exclusive bound is the next integer).
fn score_bound(b: &[u8], low: bool) -> CmdResult<i64> {
    let t = text(b).to_ascii_lowercase();
    let bad = || "ERR min or max is not a float".to_string();
    Ok(match t.as_str() {
        "-inf" => i64::MIN,
        "+inf" | "inf" => i64::MAX,
        _ => match t.strip_prefix('(') {
            Some(rest) => {
                let v: i64 = rest.parse().map_err(|_| bad())?;
                if low {
                    v.saturating_add(1)
                } else {
                    v.saturating_sub(1)
                }
            }
            None => t.parse().map_err(|_| bad())?,
        },
    })
}

impl Model {
    /// The commands of this file; an unknown one is an error, never silently ignored.
    pub(super) fn call_more(&mut self, name: &str, a: &[Vec<u8>]) -> CmdResult<Reply> {
        let arity = |n: usize| {
            if a.len() < n {
                Err(format!("ERR wrong number of arguments for '{}' command", name.to_ascii_lowercase()))
            } else {
                Ok(())
            }
        };
        let now = self.now;
        Ok(match name {
            "TIME" => Reply::Array(vec![bulk(now.div_euclid(1000)), bulk(now.rem_euclid(1000) * 1000)]),
            "ZCARD" => {
                arity(1)?;
                Reply::Int(self.zcard(&a[0])? as i64)
            }
            "SCARD" => {
                arity(1)?;
                Reply::Int(self.smembers(&a[0])?.len() as i64)
            }
            "HLEN" => {
                arity(1)?;
                Reply::Int(self.hgetall(&a[0])?.len() as i64)
            }
            "HGETALL" => {
                arity(1)?;
                Reply::Array(
                    self.hgetall(&a[0])?.into_iter().flat_map(|(k, v)| [Reply::Bulk(k), Reply::Bulk(v)]).collect(),
                )
            }
            "ZRANGE" => {
                arity(3)?;
                return self.zrange_cmd(a);
            }
            "XLEN" => {
                arity(1)?;
                Reply::Int(self.stream(&a[0])?.map(|s| s.len()).unwrap_or(0) as i64)
            }
            "XRANGE" => {
                arity(3)?;
                let (lo, hi) = (id_bound(&a[1], true)?, id_bound(&a[2], false)?);
                let count = match a.get(3) {
                    Some(c) if c.eq_ignore_ascii_case(b"COUNT") && a.len() == 5 => int(&a[4])?.max(0) as usize,
                    None => usize::MAX,
                    _ => return Err("ERR syntax error".into()),
                };
                let Some((lo, hi)) = inclusive(lo, hi) else { return Ok(Reply::Array(vec![])) };
                let Some(s) = self.stream(&a[0])? else { return Ok(Reply::Array(vec![])) };
                Reply::Array(s.entries.range(lo..=hi).take(count).map(|(id, f)| entry(*id, f)).collect())
            }
            "XACK" => {
                arity(3)?;
                let ids =
                    a[2..].iter().map(|i| StreamId::parse(&text(i)).ok_or(BAD_ID)).collect::<Result<Vec<_>, _>>()?;
                let group = text(&a[1]);
                let Some(s) = self.stream(&a[0])? else { return Ok(Reply::Int(0)) };
                let mut n = 0;
                for id in ids {
                    // XACK on a group that does not exist acknowledges nothing.
                    n += s.groups.contains_key(&group).then(|| s.ack(&group, id)).transpose()?.unwrap_or(false) as i64;
                }
                Reply::Int(n)
            }
            "XDEL" => {
                arity(2)?;
                let ids =
                    a[1..].iter().map(|i| StreamId::parse(&text(i)).ok_or(BAD_ID)).collect::<Result<Vec<_>, _>>()?;
                let Some(s) = self.stream(&a[0])? else { return Ok(Reply::Int(0)) };
                Reply::Int(ids.into_iter().filter(|id| s.del(*id)).count() as i64)
            }
            "XPENDING" => {
                arity(2)?;
                return self.xpending_cmd(a);
            }
            "XAUTOCLAIM" => {
                arity(5)?;
                return self.xautoclaim_cmd(a);
            }
            "XREADGROUP" => return self.xreadgroup_cmd(a),
            other => return Err(format!("ERR unknown command '{other}' (not in the model)")),
        })
    }

    /// `ZRANGE key start stop [BYSCORE] [LIMIT offset count] [WITHSCORES]`.
    fn zrange_cmd(&mut self, a: &[Vec<u8>]) -> CmdResult<Reply> {
        let (mut byscore, mut withscores, mut limit) = (false, false, None);
        let mut i = 3;
        while i < a.len() {
            match text(&a[i]).to_ascii_uppercase().as_str() {
                "BYSCORE" => byscore = true,
                "WITHSCORES" => withscores = true,
                "LIMIT" if i + 2 < a.len() => {
                    limit = Some((int(&a[i + 1])?, int(&a[i + 2])?));
                    i += 2;
                }
                _ => return Err("ERR syntax error".into()),
            }
            i += 1;
        }
        if limit.is_some() && !byscore {
            return Err("ERR syntax error, LIMIT is only supported in combination with either BYSCORE or BYLEX".into());
        }
        let all = self.zrange_all(&a[0])?;
        let picked: Vec<(Vec<u8>, i64)> = if byscore {
            let (lo, hi) = (score_bound(&a[1], true)?, score_bound(&a[2], false)?);
            let (offset, count) = limit.unwrap_or((0, -1));
            let in_range = all.into_iter().filter(|(_, s)| lo <= *s && *s <= hi).skip(offset.max(0) as usize);
            if count < 0 {
                in_range.collect()
            } else {
                in_range.take(count as usize).collect()
            }
        } else {
            let n = all.len() as i64;
            let norm = |i: i64| if i < 0 { (n + i).max(0) } else { i };
            let (lo, hi) = (norm(int(&a[1])?), norm(int(&a[2])?).min(n - 1));
            if lo > hi {
                vec![]
            } else {
                all.into_iter().skip(lo as usize).take((hi - lo + 1) as usize).collect()
            }
        };
        Ok(Reply::Array(
            picked
                .into_iter()
                .flat_map(|(m, s)| {
                    let mut out = vec![Reply::Bulk(m)];
                    if withscores {
                        out.push(bulk(s));
                    }
                    out
                })
                .collect(),
        ))
    }

    /// `XPENDING key group` (summary) and `XPENDING key group [IDLE ms] start end count
    /// [consumer]` (one row per entry: id, owner, idle ms, deliveries).
    fn xpending_cmd(&mut self, a: &[Vec<u8>]) -> CmdResult<Reply> {
        let now = self.now;
        let (key, group) = (&a[0], text(&a[1]));
        let nogroup = || format!("NOGROUP No such key '{}' or consumer group '{group}'", text(key));
        let Some(s) = self.stream(key)? else { return Err(nogroup()) };
        if !s.groups.contains_key(&group) {
            return Err(nogroup());
        }
        if a.len() == 2 {
            let all = s.pending(&group, StreamId::ZERO, MAX_ID, usize::MAX, None, now)?;
            let (Some(first), Some(last)) = (all.first(), all.last()) else {
                return Ok(Reply::Array(vec![Reply::Int(0), Reply::Nil, Reply::Nil, Reply::Nil]));
            };
            let mut per: std::collections::BTreeMap<&str, i64> = Default::default();
            for (_, c, _, _) in &all {
                *per.entry(c).or_insert(0) += 1;
            }
            let per = per.into_iter().map(|(c, n)| Reply::Array(vec![bulk(c), bulk(n)])).collect();
            return Ok(Reply::Array(vec![
                Reply::Int(all.len() as i64),
                bulk(first.0),
                bulk(last.0),
                Reply::Array(per),
            ]));
        }
        let mut i = 2;
        let mut min_idle = 0;
        if a[i].eq_ignore_ascii_case(b"IDLE") {
            min_idle = int(a.get(i + 1).ok_or("ERR syntax error")?)?;
            i += 2;
        }
        let rest = &a[i..];
        if rest.len() < 3 || rest.len() > 4 {
            return Err("ERR syntax error".into());
        }
        let (lo, hi) = (id_bound(&rest[0], true)?, id_bound(&rest[1], false)?);
        let count = int(&rest[2])?;
        let consumer = rest.get(3).map(|c| text(c));
        let Some((lo, hi)) = inclusive(lo, hi) else { return Ok(Reply::Array(vec![])) };
        let rows = s.pending(&group, lo, hi, usize::MAX, consumer.as_deref(), now)?;
        Ok(Reply::Array(
            rows.into_iter()
                .filter(|(_, _, idle, _)| *idle >= min_idle)
                .take(count.max(0) as usize)
                .map(|(id, c, idle, n)| Reply::Array(vec![bulk(id), bulk(c), Reply::Int(idle), Reply::Int(n as i64)]))
                .collect(),
        ))
    }

    /// `XAUTOCLAIM key group consumer min-idle start [COUNT n] [JUSTID]`: [cursor, entries,
    /// deleted ids].
    fn xautoclaim_cmd(&mut self, a: &[Vec<u8>]) -> CmdResult<Reply> {
        let now = self.now;
        let (key, group, consumer) = (&a[0], text(&a[1]), text(&a[2]));
        let min_idle = int(&a[3]).map_err(|_| "ERR Invalid min-idle-time argument for XAUTOCLAIM".to_string())?;
        let start = match id_bound(&a[4], true)? {
            Bound::Included(i) => i,
            _ => return Err(BAD_ID.into()),
        };
        let (mut count, mut justid) = (100usize, false);
        let mut i = 5;
        while i < a.len() {
            match text(&a[i]).to_ascii_uppercase().as_str() {
                "COUNT" if i + 1 < a.len() => {
                    count = int(&a[i + 1])?.max(1) as usize;
                    i += 1;
                }
                "JUSTID" => justid = true,
                _ => return Err("ERR syntax error".into()),
            }
            i += 1;
        }
        let nogroup = || format!("NOGROUP No such key '{}' or consumer group '{group}'", text(key));
        let Some(s) = self.stream(key)? else { return Err(nogroup()) };
        if !s.groups.contains_key(&group) {
            return Err(nogroup());
        }
        if justid {
            return Err("ERR XAUTOCLAIM JUSTID is not in the model".into());
        }
        let (next, claimed, deleted) = s.autoclaim(&group, &consumer, min_idle, start, count, now)?;
        Ok(Reply::Array(vec![
            bulk(next),
            Reply::Array(claimed.iter().map(|(id, f)| entry(*id, f)).collect()),
            Reply::Array(deleted.into_iter().map(bulk).collect()),
        ]))
    }

    /// `XREADGROUP GROUP group consumer [COUNT n] [BLOCK ms] STREAMS key >`, one stream, new
    /// entries only. The model never blocks: with nothing new it answers nil at once, as
    /// Redis does when the block times out.
    fn xreadgroup_cmd(&mut self, a: &[Vec<u8>]) -> CmdResult<Reply> {
        let now = self.now;
        let syntax = || "ERR syntax error".to_string();
        if a.len() < 6 || !a[0].eq_ignore_ascii_case(b"GROUP") {
            return Err(syntax());
        }
        let (group, consumer) = (text(&a[1]), text(&a[2]));
        let mut count = usize::MAX;
        let mut i = 3;
        while i < a.len() && !a[i].eq_ignore_ascii_case(b"STREAMS") {
            match text(&a[i]).to_ascii_uppercase().as_str() {
                "COUNT" if i + 1 < a.len() => {
                    count = int(&a[i + 1])?.max(1) as usize;
                    i += 1;
                }
                "BLOCK" if i + 1 < a.len() => i += 1,
                _ => return Err(syntax()),
            }
            i += 1;
        }
        let streams = &a[(i + 1).min(a.len())..];
        let [key, id] = streams else {
            return Err("ERR the model's XREADGROUP reads one stream".into());
        };
        if id.as_slice() != b">" {
            return Err("ERR the model's XREADGROUP reads new entries ('>') only".into());
        }
        let nogroup = || {
            format!("NOGROUP No such key '{}' or consumer group '{group}' in XREADGROUP with GROUP option", text(key))
        };
        let Some(s) = self.stream(key)? else { return Err(nogroup()) };
        if !s.groups.contains_key(&group) {
            return Err(nogroup());
        }
        let got = s.read_group(&group, &consumer, count, now)?;
        if got.is_empty() {
            return Ok(Reply::Nil);
        }
        Ok(Reply::Array(vec![Reply::Array(vec![
            Reply::Bulk(key.clone()),
            Reply::Array(got.iter().map(|(id, f)| entry(*id, f)).collect()),
        ])]))
    }
}
