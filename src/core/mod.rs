//! The pure protocol core: no I/O, no clock, no randomness. It names events, decodes
//! stream entries, and turns store replies into decisions. Everything here is a function
//! of its inputs, which is what lets the property tests and fuzz targets drive it alone.

pub mod consumer;
pub mod glob;
pub mod handler;
pub mod listener;
pub mod sync;

pub use handler::{Delivery, Handler, HandlerError, HandlerFuture};

use std::borrow::Cow;
use std::fmt;
use std::time::Duration;

/// Stable identity of one expiration: the first 32 hex digits of
/// `sha1("<key length>:<key>:<deadline ms>")`. The capture script computes the same
/// value (`store/lua/common.lua`), so every capture path, redelivery and replay of the
/// same expiration carries the same id.
pub fn event_id(key: &[u8], deadline_ms: i64) -> String {
    let mut h = sha1_smol::Sha1::new();
    h.update(key.len().to_string().as_bytes());
    h.update(b":");
    h.update(key);
    h.update(b":");
    h.update(deadline_ms.to_string().as_bytes());
    let mut s = h.digest().to_string();
    s.truncate(32);
    s
}

/// Which capture path produced a stream entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Via {
    /// A keyspace `expired` notification reached a listener.
    Notification,
    /// The sweeper found the deadline due in the index.
    Sweeper,
    /// `set_with_ttl`/`track` found the previous generation already expired.
    Write,
}

impl Via {
    pub fn tag(self) -> &'static str {
        match self {
            Via::Notification => "n",
            Via::Sweeper => "s",
            Via::Write => "w",
        }
    }
    pub fn from_tag(t: &[u8]) -> Option<Via> {
        match t {
            b"n" => Some(Via::Notification),
            b"s" => Some(Via::Sweeper),
            b"w" => Some(Via::Write),
            _ => None,
        }
    }
}

/// A stream entry as read, before decoding.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RawEntry {
    pub id: String,
    pub fields: Vec<(Vec<u8>, Vec<u8>)>,
}

/// One expiration event as delivered to a handler.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    /// The key that expired (Redis keys are bytes; see [`Event::key_lossy`]).
    pub key: Vec<u8>,
    /// Absolute deadline of the TTL that ran out, Unix ms (what `PEXPIRETIME` reported).
    pub deadline_ms: i64,
    /// [`event_id`] of `(key, deadline_ms)`.
    pub event_id: String,
    pub via: Via,
    /// Server time at capture, Unix ms.
    pub captured_ms: i64,
    /// The value given to `set_with_ttl` (or the string value at `track`).
    pub payload: Vec<u8>,
}

impl Event {
    pub fn key_lossy(&self) -> Cow<'_, str> {
        String::from_utf8_lossy(&self.key)
    }
}

/// Why a stream entry could not be decoded. Each becomes a dead-letter reason, verbatim.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("missing field `{0}`")]
    Missing(&'static str),
    #[error("field `{0}` appears twice")]
    Repeated(String),
    #[error("unknown field `{0}`")]
    Unknown(String),
    #[error("field `{field}` is not {expected}: {got:?}")]
    Invalid { field: &'static str, expected: &'static str, got: String },
    #[error("event id {got} does not match key and deadline (expected {expected})")]
    IdMismatch { got: String, expected: String },
    #[error("payload of {len} bytes exceeds the limit of {limit} bytes")]
    Oversized { len: usize, limit: usize },
}

fn show(b: &[u8]) -> String {
    let s = String::from_utf8_lossy(b);
    if s.len() > 64 {
        let mut end = 64;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        format!("{}...", &s[..end])
    } else {
        s.into_owned()
    }
}

fn parse_i64(field: &'static str, v: &[u8]) -> Result<i64, DecodeError> {
    std::str::from_utf8(v)
        .ok()
        .and_then(|s| s.parse::<i64>().ok())
        .filter(|n| *n >= 0)
        .ok_or_else(|| DecodeError::Invalid { field, expected: "a non-negative integer", got: show(v) })
}

/// A keyspace notification, parsed from its pub/sub channel and payload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Notification {
    pub db: u32,
    /// The event name, e.g. `expired`.
    pub event: Vec<u8>,
    pub key: Vec<u8>,
}

/// Parses `__keyevent@<db>__:<event>` (payload: the key) or `__keyspace@<db>__:<key>`
/// (payload: the event). Anything else is `None`: a listener ignores what it cannot read.
pub fn parse_notification(channel: &[u8], payload: &[u8]) -> Option<Notification> {
    let (keyevent, rest) = if let Some(r) = channel.strip_prefix(b"__keyevent@") {
        (true, r)
    } else {
        (false, channel.strip_prefix(b"__keyspace@")?)
    };
    let sep = rest.windows(3).position(|w| w == b"__:")?;
    let db_digits = &rest[..sep];
    if db_digits.is_empty() || db_digits.len() > 9 || !db_digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let db = std::str::from_utf8(db_digits).ok()?.parse().ok()?;
    let tail = &rest[sep + 3..];
    let (event, key) = if keyevent { (tail, payload) } else { (payload, tail) };
    if event.is_empty() {
        return None;
    }
    Some(Notification { db, event: event.to_vec(), key: key.to_vec() })
}

/// Decodes the fields of one stream entry written by the capture script.
/// Strict on purpose: anything the capture script would not write is refused with a
/// reason, so a stray `XADD` by another program lands in the dead-letter stream, never in
/// a handler.
pub fn decode_entry(fields: &[(Vec<u8>, Vec<u8>)], max_payload: usize) -> Result<Event, DecodeError> {
    let (mut k, mut d, mut id, mut via, mut c, mut p) = (None, None, None, None, None, None);
    for (name, value) in fields {
        let slot = match name.as_slice() {
            b"k" => &mut k,
            b"d" => &mut d,
            b"id" => &mut id,
            b"via" => &mut via,
            b"c" => &mut c,
            b"p" => &mut p,
            other => return Err(DecodeError::Unknown(show(other))),
        };
        if slot.replace(value.as_slice()).is_some() {
            return Err(DecodeError::Repeated(show(name)));
        }
    }
    let key = k.ok_or(DecodeError::Missing("k"))?;
    let deadline_ms = parse_i64("d", d.ok_or(DecodeError::Missing("d"))?)?;
    let id = id.ok_or(DecodeError::Missing("id"))?;
    let via_raw = via.ok_or(DecodeError::Missing("via"))?;
    let via = Via::from_tag(via_raw).ok_or_else(|| DecodeError::Invalid {
        field: "via",
        expected: "one of n, s, w",
        got: show(via_raw),
    })?;
    let captured_ms = parse_i64("c", c.ok_or(DecodeError::Missing("c"))?)?;
    let payload = p.ok_or(DecodeError::Missing("p"))?;
    if payload.len() > max_payload {
        return Err(DecodeError::Oversized { len: payload.len(), limit: max_payload });
    }
    let expected = event_id(key, deadline_ms);
    if id != expected.as_bytes() {
        return Err(DecodeError::IdMismatch { got: show(id), expected });
    }
    Ok(Event { key: key.to_vec(), deadline_ms, event_id: expected, via, captured_ms, payload: payload.to_vec() })
}

/// The fields the capture script writes for `ev`, in its order (used by tests and replays).
pub fn encode_entry(ev: &Event) -> Vec<(Vec<u8>, Vec<u8>)> {
    vec![
        (b"k".to_vec(), ev.key.clone()),
        (b"d".to_vec(), ev.deadline_ms.to_string().into_bytes()),
        (b"id".to_vec(), ev.event_id.clone().into_bytes()),
        (b"via".to_vec(), ev.via.tag().as_bytes().to_vec()),
        (b"c".to_vec(), ev.captured_ms.to_string().into_bytes()),
        (b"p".to_vec(), ev.payload.clone()),
    ]
}

/// What the commit script decided for one entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CommitOutcome {
    /// Ledger recorded, effects applied, entry acked and deleted.
    Committed,
    /// The ledger already held the event id: acked and deleted, effects not applied.
    AlreadyApplied,
    /// The fence refused: another consumer owns the entry now, or it was redelivered.
    NotOwner,
    /// Its effects could not all apply (Redis's error is in the reason): nothing of the entry
    /// was written, no ledger id; it was moved to the dead-letter stream with the reason.
    EffectsRefused(String),
    /// An effect failed although the pre-flight passed (a case it does not cover; see ADR 008):
    /// the earlier effects stay written (Redis cannot roll back), the id stays in the ledger so
    /// nothing is applied twice, and it was dead-lettered as partially applied.
    PartiallyApplied(String),
}

impl CommitOutcome {
    /// The script's code for outcomes without a reason (1, 2, 3).
    pub fn from_code(c: i64) -> Option<CommitOutcome> {
        match c {
            1 => Some(CommitOutcome::Committed),
            2 => Some(CommitOutcome::AlreadyApplied),
            3 => Some(CommitOutcome::NotOwner),
            _ => None,
        }
    }
    /// The script's code with a reason (4, 5).
    pub fn from_code_reason(c: i64, reason: String) -> Option<CommitOutcome> {
        match c {
            4 => Some(CommitOutcome::EffectsRefused(reason)),
            5 => Some(CommitOutcome::PartiallyApplied(reason)),
            _ => None,
        }
    }
    /// The entry left the stream for the dead-letter stream.
    pub fn dead_lettered(&self) -> bool {
        matches!(self, CommitOutcome::EffectsRefused(_) | CommitOutcome::PartiallyApplied(_))
    }
}

/// The dead-letter reason of a pending entry that the stream no longer holds (`claim.lua`
/// writes it; the oracle and `check` count by it).
pub const DELETED_WHILE_PENDING: &str =
    "deleted from the stream while pending (XDEL, XTRIM or MAXLEN by another program); its content is gone";

/// Exponential backoff with full jitter: `attempt` 1 waits up to `base`, each further
/// attempt doubles the ceiling up to `max`. `unit` is a uniform draw from [0, 1) supplied by
/// the caller, so this stays pure.
pub fn backoff(attempt: u32, base: Duration, max: Duration, unit: f64) -> Duration {
    let exp = attempt.saturating_sub(1).min(30);
    let ceiling = base.saturating_mul(1u32 << exp).min(max);
    let unit = if unit.is_finite() { unit.clamp(0.0, 1.0) } else { 0.0 };
    // Never zero: half the ceiling is fixed, half is jitter.
    ceiling.mul_f64(0.5 + 0.5 * unit)
}

/// How long a sweeper waits before its next sweep, one decision for `capture::run_sweeper`
/// and the simulator's sweepers: at once when the last sweep was full (`examined` reached
/// `batch`: more may be due); else until 1 ms past the index's next deadline (a key expires
/// once the server clock is past it), kept within `[min, max]`; `max` when the index is empty.
pub fn sweep_pause(
    examined: u64,
    batch: usize,
    next_deadline_ms: Option<i64>,
    now_ms: i64,
    min: Duration,
    max: Duration,
) -> Duration {
    if examined as usize >= batch {
        return Duration::ZERO;
    }
    match next_deadline_ms {
        Some(d) => Duration::from_millis((d - now_ms + 1).max(0) as u64).clamp(min, max.max(min)),
        None => max,
    }
}

/// Ledger bucket of an event: the ledger is a set per bucket of deadlines, expiring
/// `retention` after the bucket ends, so its size is bounded by the events whose deadline
/// falls within one retention window.
pub fn ledger_bucket(deadline_ms: i64, bucket_ms: i64) -> i64 {
    deadline_ms.div_euclid(bucket_ms.max(1))
}

/// A Redis-side effect a handler asks to be committed atomically with the ack: a command and
/// its arguments. Which commands and options are allowed, and what may not apply, is decided
/// in one place, the commit script's pre-flight (`store/lua/effects.lua`, `check_one`): writes
/// to keys, nothing that blocks, runs scripts or changes server state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Effect {
    pub args: Vec<Vec<u8>>,
}

impl Effect {
    pub fn new<I, A>(command: &str, args: I) -> Effect
    where
        I: IntoIterator<Item = A>,
        A: AsRef<[u8]>,
    {
        let mut v = vec![command.as_bytes().to_vec()];
        v.extend(args.into_iter().map(|a| a.as_ref().to_vec()));
        Effect { args: v }
    }
}

impl fmt::Display for Effect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<_> = self.args.iter().map(|a| show(a)).collect();
        write!(f, "{}", parts.join(" "))
    }
}

/// Retry and dead-letter policy of a consumer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Deliveries after which an entry is dead-lettered.
    pub max_deliveries: u64,
    pub backoff_base: Duration,
    pub backoff_max: Duration,
}

/// Decision for a delivered entry, before any handler runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Admit {
    Handle(Event),
    DeadLetter(String),
}

/// Decodes a delivered entry and checks its delivery count (`token`) against the policy.
pub fn admit(fields: &[(Vec<u8>, Vec<u8>)], token: u64, policy: &RetryPolicy, max_payload: usize) -> Admit {
    match decode_entry(fields, max_payload) {
        Err(e) => Admit::DeadLetter(format!("malformed entry: {e}")),
        Ok(_) if token > policy.max_deliveries => {
            Admit::DeadLetter(format!("delivered {token} times, more than max_deliveries {}", policy.max_deliveries))
        }
        Ok(ev) => Admit::Handle(ev),
    }
}

/// Decision after a handler ran on delivery `token`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Next {
    /// Commit these effects with the ack (fenced, ledgered).
    Commit(Vec<Effect>),
    DeadLetter(String),
    /// Wait, take another delivery (bumping the token), and run the handler again.
    Retry {
        after: Duration,
    },
}

/// `unit` is a uniform draw from [0, 1) for the backoff jitter.
pub fn after_handler(result: Result<Vec<Effect>, HandlerError>, token: u64, policy: &RetryPolicy, unit: f64) -> Next {
    match result {
        // Effects are checked once, by the commit script's pre-flight against the server's
        // state (`store/lua/effects.lua`): one that cannot apply is dead-lettered there with
        // Redis's words and nothing of the entry is written.
        Ok(effects) => Next::Commit(effects),
        Err(HandlerError::Permanent(reason)) => Next::DeadLetter(format!("handler refused: {reason}")),
        Err(HandlerError::Transient(reason)) if token >= policy.max_deliveries => {
            Next::DeadLetter(format!("handler failed {token} times, last error: {reason}"))
        }
        Err(HandlerError::Transient(_)) => Next::Retry {
            after: backoff(token.min(u32::MAX as u64) as u32, policy.backoff_base, policy.backoff_max, unit),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sweep_pause_is_zero_when_full_else_to_the_next_deadline_within_bounds() {
        let (min, max) = (Duration::from_millis(2), Duration::from_millis(100));
        assert_eq!(sweep_pause(8, 8, Some(5_000), 1_000, min, max), Duration::ZERO);
        assert_eq!(sweep_pause(3, 8, Some(1_040), 1_000, min, max), Duration::from_millis(41));
        assert_eq!(sweep_pause(3, 8, Some(1_000), 1_000, min, max), min, "1 ms past, raised to min");
        assert_eq!(sweep_pause(3, 8, Some(900), 1_000, min, max), min, "overdue: the next sweep at once");
        assert_eq!(sweep_pause(3, 8, Some(9_000), 1_000, min, max), max);
        assert_eq!(sweep_pause(0, 8, None, 1_000, min, max), max);
        assert_eq!(sweep_pause(0, 8, Some(9_000), 1_000, min, Duration::ZERO), min, "a max below min is min");
    }

    fn ev() -> Event {
        let key = b"es:key:42".to_vec();
        Event {
            event_id: event_id(&key, 1_732_600_000_123),
            key,
            deadline_ms: 1_732_600_000_123,
            via: Via::Sweeper,
            captured_ms: 1_732_600_000_130,
            payload: b"v".to_vec(),
        }
    }

    #[test]
    fn entry_round_trips() {
        let e = ev();
        assert_eq!(decode_entry(&encode_entry(&e), 1024), Ok(e));
    }

    #[test]
    fn event_id_separates_key_and_deadline() {
        // Length prefix: ("a:1", 2) and ("a", 12)-like splits must not collide.
        assert_ne!(event_id(b"a:1", 2), event_id(b"a", 12));
        assert_ne!(event_id(b"k", 1), event_id(b"k", 2));
        assert_eq!(event_id(b"k", 1).len(), 32);
    }

    #[test]
    fn decode_refuses_with_reasons() {
        let mut f = encode_entry(&ev());
        f.push((b"extra".to_vec(), b"1".to_vec()));
        assert_eq!(decode_entry(&f, 1024), Err(DecodeError::Unknown("extra".into())));
        let f: Vec<_> = encode_entry(&ev()).into_iter().filter(|(k, _)| k != b"d").collect();
        assert_eq!(decode_entry(&f, 1024), Err(DecodeError::Missing("d")));
        let mut f = encode_entry(&ev());
        f[1].1 = b"-5".to_vec();
        assert!(matches!(decode_entry(&f, 1024), Err(DecodeError::Invalid { field: "d", .. })));
        let mut f = encode_entry(&ev());
        f[2].1 = b"00000000000000000000000000000000".to_vec();
        assert!(matches!(decode_entry(&f, 1024), Err(DecodeError::IdMismatch { .. })));
        assert!(matches!(decode_entry(&encode_entry(&ev()), 0), Err(DecodeError::Oversized { .. })));
    }

    #[test]
    fn notifications() {
        let n = parse_notification(b"__keyevent@0__:expired", b"k:1").unwrap();
        assert_eq!((n.db, n.event.as_slice(), n.key.as_slice()), (0, b"expired".as_slice(), b"k:1".as_slice()));
        let n = parse_notification(b"__keyspace@12__:a__:b", b"expired").unwrap();
        assert_eq!((n.db, n.key.as_slice()), (12, b"a__:b".as_slice()));
        for bad in
            [&b"__keyevent@__:expired"[..], b"__keyevent@x__:expired", b"other", b"__keyevent@0__:", b"__keyevent@0"]
        {
            assert_eq!(parse_notification(bad, b"k"), None, "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn a_nine_digit_database_number_is_read_and_ten_digits_are_not() {
        // The longest database number read is nine digits (it fits a u32 without overflow).
        let n = parse_notification(b"__keyevent@123456789__:expired", b"k").unwrap();
        assert_eq!((n.db, n.event.as_slice(), n.key.as_slice()), (123456789, b"expired".as_slice(), b"k".as_slice()));
        let n = parse_notification(b"__keyspace@999999999__:k", b"expired").unwrap();
        assert_eq!((n.db, n.key.as_slice()), (999999999, b"k".as_slice()));
        assert_eq!(parse_notification(b"__keyevent@1234567890__:expired", b"k"), None);
        assert_eq!(parse_notification(b"__keyspace@0000000000__:k", b"expired"), None);
    }

    #[test]
    fn ledger_buckets_are_the_floor_of_the_deadline_over_the_bucket() {
        // The same bucket as commit.lua's math.floor(deadline / bucket).
        assert_eq!(ledger_bucket(0, 1000), 0);
        assert_eq!(ledger_bucket(999, 1000), 0);
        assert_eq!(ledger_bucket(1000, 1000), 1);
        assert_eq!(ledger_bucket(1_732_600_000_123, 60_000), 28_876_666);
        assert_eq!(ledger_bucket(-1, 1000), -1, "floor, not truncation");
        assert_eq!(ledger_bucket(7, 0), 7, "a bucket below 1 ms is 1 ms");
        assert_eq!(ledger_bucket(7, -5), 7);
    }

    #[test]
    fn shown_bytes_are_cut_after_sixty_four_bytes_on_a_character_boundary() {
        let a64 = "a".repeat(64);
        assert_eq!(show(a64.as_bytes()), a64, "exactly 64 bytes are shown whole");
        assert_eq!(show(format!("{a64}b").as_bytes()), format!("{a64}..."));
        // "é" is two bytes: byte 64 falls inside the one that starts at byte 63.
        let cut = format!("{}é{}", "a".repeat(63), "z".repeat(10));
        assert_eq!(show(cut.as_bytes()), format!("{}...", "a".repeat(63)));
        assert_eq!(show(b"\xffk"), "\u{fffd}k");
        assert_eq!(
            DecodeError::Unknown(show(format!("{a64}x").as_bytes())).to_string(),
            format!("unknown field `{a64}...`")
        );
    }

    #[test]
    fn keys_and_effects_are_shown_lossily() {
        let mut e = ev();
        assert_eq!(e.key_lossy(), "es:key:42");
        e.key = b"k\xff".to_vec();
        assert_eq!(e.key_lossy(), "k\u{fffd}");
        let long = "v".repeat(70);
        let fx = Effect::new("HSET", [b"h".as_slice(), b"f", long.as_bytes()]);
        assert_eq!(fx.args.len(), 4);
        assert_eq!(fx.to_string(), format!("HSET h f {}...", "v".repeat(64)));
        assert_eq!(Effect::new("PING", Vec::<&[u8]>::new()).to_string(), "PING");
    }

    #[test]
    fn zero_is_a_valid_deadline_and_capture_time_and_a_payload_may_be_exactly_the_limit() {
        let mut e = ev();
        e.deadline_ms = 0;
        e.captured_ms = 0;
        e.event_id = event_id(&e.key, 0);
        e.payload = b"four".to_vec();
        assert_eq!(decode_entry(&encode_entry(&e), 4), Ok(e.clone()));
        assert_eq!(decode_entry(&encode_entry(&e), 3), Err(DecodeError::Oversized { len: 4, limit: 3 }));
    }

    #[test]
    fn every_via_tag_round_trips_and_nothing_else_is_a_tag() {
        for via in [Via::Notification, Via::Sweeper, Via::Write] {
            assert_eq!(Via::from_tag(via.tag().as_bytes()), Some(via));
            let mut e = ev();
            e.via = via;
            assert_eq!(decode_entry(&encode_entry(&e), 1024), Ok(e));
        }
        assert_eq!((Via::Notification.tag(), Via::Sweeper.tag(), Via::Write.tag()), ("n", "s", "w"));
        for bad in [&b""[..], b"x", b"N", b"ns"] {
            assert_eq!(Via::from_tag(bad), None);
        }
    }

    #[test]
    fn commit_codes_name_their_outcomes_and_only_refused_or_partial_entries_are_dead_lettered() {
        assert_eq!(CommitOutcome::from_code(1), Some(CommitOutcome::Committed));
        assert_eq!(CommitOutcome::from_code(2), Some(CommitOutcome::AlreadyApplied));
        assert_eq!(CommitOutcome::from_code(3), Some(CommitOutcome::NotOwner));
        for c in [0, 4, 5, -1] {
            assert_eq!(CommitOutcome::from_code(c), None, "{c}");
        }
        let r = || "ERR why".to_string();
        assert_eq!(CommitOutcome::from_code_reason(4, r()), Some(CommitOutcome::EffectsRefused(r())));
        assert_eq!(CommitOutcome::from_code_reason(5, r()), Some(CommitOutcome::PartiallyApplied(r())));
        for c in [1, 2, 3, 6] {
            assert_eq!(CommitOutcome::from_code_reason(c, r()), None, "{c}");
        }
        let dead: Vec<_> = [
            CommitOutcome::Committed,
            CommitOutcome::AlreadyApplied,
            CommitOutcome::NotOwner,
            CommitOutcome::EffectsRefused(r()),
            CommitOutcome::PartiallyApplied(r()),
        ]
        .iter()
        .map(CommitOutcome::dead_lettered)
        .collect();
        assert_eq!(dead, [false, false, false, true, true]);
    }

    #[test]
    fn decisions() {
        let p = RetryPolicy {
            max_deliveries: 3,
            backoff_base: Duration::from_millis(10),
            backoff_max: Duration::from_secs(1),
        };
        let f = encode_entry(&ev());
        assert_eq!(admit(&f, 3, &p, 1024), Admit::Handle(ev()));
        assert_eq!(admit(&f, 4, &p, 1024), Admit::DeadLetter("delivered 4 times, more than max_deliveries 3".into()));
        assert_eq!(admit(&[], 1, &p, 1024), Admit::DeadLetter("malformed entry: missing field `k`".into()));
        let t = || Err(HandlerError::Transient("down".into()));
        assert_eq!(after_handler(t(), 1, &p, 1.0), Next::Retry { after: Duration::from_millis(10) });
        assert_eq!(after_handler(t(), 3, &p, 1.0), Next::DeadLetter("handler failed 3 times, last error: down".into()));
        assert_eq!(
            after_handler(Err(HandlerError::Permanent("gone".into())), 1, &p, 0.5),
            Next::DeadLetter("handler refused: gone".into())
        );
        assert_eq!(after_handler(Ok(vec![]), 1, &p, 0.5), Next::Commit(vec![]));
        // A forbidden effect goes to the commit, whose pre-flight refuses it (tests/exactly_once).
        let eval = Effect::new("EVAL", ["return 1", "0"]);
        assert_eq!(after_handler(Ok(vec![eval.clone()]), 1, &p, 0.5), Next::Commit(vec![eval]));
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let b = Duration::from_millis(10);
        let m = Duration::from_millis(1000);
        assert_eq!(backoff(1, b, m, 1.0), b);
        assert_eq!(backoff(3, b, m, 1.0), Duration::from_millis(40));
        assert_eq!(backoff(30, b, m, 1.0), m);
        assert_eq!(backoff(1, b, m, 0.0), Duration::from_millis(5));
        assert_eq!(backoff(2, b, m, f64::NAN), Duration::from_millis(10));
    }
}
