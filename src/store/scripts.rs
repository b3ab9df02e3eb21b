//! The scripts, and for each the one place that builds its `KEYS` and `ARGV` and reads its
//! reply. The Redis store sends a [`Call`] with `EVALSHA`; the in-memory model
//! ([`super::ModelStore`]) runs the same source in an embedded Lua 5.1 with the same `KEYS`
//! and `ARGV` and hands its reply to the same parser. No script logic exists anywhere else
//! (docs/adr/010-lua-in-the-model.md).
//!
//! The few plain commands the protocol sends outside scripts (`XREADGROUP`, the `XPENDING`
//! that reads tokens) are built and parsed here too, for the same reason.

use std::collections::HashMap;
use std::time::Duration;

use redis::Value;

use super::{as_array, as_int, as_string, bad, parse_entries, CommitItem, Keys, LedgerConfig, RawEntry, Result, Sweep};
use crate::core::Via;

/// `common.lua` and then the script's own files: what both Redis and the model run.
macro_rules! source {
    ($($file:literal),+) => {
        concat!(include_str!("lua/common.lua") $(, "\n", include_str!(concat!("lua/", $file)))+)
    };
}

/// The project's scripts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ScriptId {
    Write,
    Track,
    Adopt,
    Capture,
    Sweep,
    Commit,
    DeadLetter,
    Release,
    Prune,
    Retry,
    Claim,
}

impl ScriptId {
    pub const ALL: [ScriptId; 11] = [
        ScriptId::Write,
        ScriptId::Track,
        ScriptId::Adopt,
        ScriptId::Capture,
        ScriptId::Sweep,
        ScriptId::Commit,
        ScriptId::DeadLetter,
        ScriptId::Release,
        ScriptId::Prune,
        ScriptId::Retry,
        ScriptId::Claim,
    ];

    /// The script's name in errors and reports (its file name without `.lua`).
    pub fn name(self) -> &'static str {
        match self {
            ScriptId::Write => "write",
            ScriptId::Track => "track",
            ScriptId::Adopt => "adopt",
            ScriptId::Capture => "capture",
            ScriptId::Sweep => "sweep",
            ScriptId::Commit => "commit",
            ScriptId::DeadLetter => "dead_letter",
            ScriptId::Release => "release",
            ScriptId::Prune => "prune",
            ScriptId::Retry => "retry",
            ScriptId::Claim => "claim",
        }
    }

    /// The script's own files in `lua/`, in order; [`ScriptId::source`] is `common.lua`, then
    /// each of these after a newline.
    pub fn files(self) -> &'static [&'static str] {
        match self {
            ScriptId::Write => &["write.lua"],
            ScriptId::Track => &["track.lua"],
            ScriptId::Adopt => &["adopt.lua"],
            ScriptId::Capture => &["capture.lua"],
            ScriptId::Sweep => &["sweep.lua"],
            ScriptId::Commit => &["effects.lua", "commit.lua"],
            ScriptId::DeadLetter => &["dead_letter.lua"],
            ScriptId::Release => &["release.lua"],
            ScriptId::Prune => &["prune.lua"],
            ScriptId::Retry => &["retry.lua"],
            ScriptId::Claim => &["claim.lua"],
        }
    }

    /// The script's text as the server runs it: `common.lua` prepended.
    ///
    /// With the `mutants` feature and `EXPIRY_STREAM_LUA_DIR` set, the text is assembled from
    /// that directory's files instead (`scripts/mutants/lua.sh` runs the tests on mutated copies).
    pub fn source(self) -> &'static str {
        #[cfg(feature = "mutants")]
        if let Some(s) = lua_dir::source(self) {
            return s;
        }
        self.built_in()
    }

    /// The text compiled into the binary.
    fn built_in(self) -> &'static str {
        match self {
            ScriptId::Write => source!("write.lua"),
            ScriptId::Track => source!("track.lua"),
            ScriptId::Adopt => source!("adopt.lua"),
            ScriptId::Capture => source!("capture.lua"),
            ScriptId::Sweep => source!("sweep.lua"),
            ScriptId::Commit => source!("effects.lua", "commit.lua"),
            ScriptId::DeadLetter => source!("dead_letter.lua"),
            ScriptId::Release => source!("release.lua"),
            ScriptId::Prune => source!("prune.lua"),
            ScriptId::Retry => source!("retry.lua"),
            ScriptId::Claim => source!("claim.lua"),
        }
    }
}

/// Mutation testing of the scripts without a rebuild per mutant: the scripts read once per
/// process from `EXPIRY_STREAM_LUA_DIR` (same files, same concatenation as `source!`).
/// Only with the `mutants` feature; without it this code does not exist.
#[cfg(feature = "mutants")]
mod lua_dir {
    use std::sync::OnceLock;

    use super::ScriptId;

    /// The script's text from `$EXPIRY_STREAM_LUA_DIR`, or None when the variable is unset.
    /// A missing or unreadable file panics: a mutant must never silently run the built-in text.
    pub(super) fn source(id: ScriptId) -> Option<&'static str> {
        static SOURCES: OnceLock<Option<Vec<(ScriptId, &'static str)>>> = OnceLock::new();
        let all = SOURCES.get_or_init(|| {
            let dir = std::path::PathBuf::from(std::env::var_os("EXPIRY_STREAM_LUA_DIR")?);
            let read = |f: &str| {
                std::fs::read_to_string(dir.join(f))
                    .unwrap_or_else(|e| panic!("EXPIRY_STREAM_LUA_DIR: {}: {e}", dir.join(f).display()))
            };
            let common = read("common.lua");
            let texts = ScriptId::ALL.into_iter().map(|s| {
                let mut text = common.clone();
                for f in s.files() {
                    text.push('\n');
                    text.push_str(&read(f));
                }
                (s, &*Box::leak(text.into_boxed_str()))
            });
            Some(texts.collect())
        });
        all.as_ref().map(|v| v.iter().find(|(s, _)| *s == id).expect("every script").1)
    }
}

/// One script call: the script, its `KEYS` and its `ARGV`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Call {
    pub script: ScriptId,
    pub keys: Vec<Vec<u8>>,
    pub args: Vec<Vec<u8>>,
}

impl Call {
    fn new(script: ScriptId) -> Call {
        Call { script, keys: vec![], args: vec![] }
    }
    fn key(mut self, k: impl AsRef<[u8]>) -> Call {
        self.keys.push(k.as_ref().to_vec());
        self
    }
    fn arg(mut self, a: impl ToArg) -> Call {
        self.args.push(a.to_arg());
        self
    }
    /// `idx, pay, stream, stats`: the first four keys of the capture-side scripts.
    fn capture_keys(script: ScriptId, k: &Keys) -> Call {
        Call::new(script).key(&k.idx).key(&k.pay).key(&k.stream).key(&k.stats)
    }
}

/// An argument as Redis receives it: bytes, numbers in decimal.
trait ToArg {
    fn to_arg(&self) -> Vec<u8>;
}
impl ToArg for &str {
    fn to_arg(&self) -> Vec<u8> {
        self.as_bytes().to_vec()
    }
}
impl ToArg for &String {
    fn to_arg(&self) -> Vec<u8> {
        self.as_bytes().to_vec()
    }
}
impl ToArg for &[u8] {
    fn to_arg(&self) -> Vec<u8> {
        self.to_vec()
    }
}
macro_rules! int_arg {
    ($($t:ty),+) => { $(impl ToArg for $t { fn to_arg(&self) -> Vec<u8> { self.to_string().into_bytes() } })+ };
}
int_arg!(u64, i64, usize);

fn ms(d: Duration) -> u64 {
    d.as_millis() as u64
}

/// How long the record of an applied batch (`{ns}:wb:<id>`) is kept.
pub use super::BATCH_RECORD_TTL;

/// `write.lua`: the batch, and with `batch_id` its record, which makes a repeat a no-op.
pub fn write(k: &Keys, items: &[(Vec<u8>, Vec<u8>, Duration)], batch_id: Option<&str>) -> Call {
    let mut c = Call::capture_keys(ScriptId::Write, k);
    for (key, value, ttl) in items {
        c = c.key(key).arg(ms(*ttl).max(1)).arg(value.as_slice());
    }
    // The batch record goes last, as one more key and one more argument (its PX): the odd
    // argument count is how write.lua tells the two forms apart.
    if let Some(id) = batch_id {
        c = c.key(format!("{{{}}}:wb:{id}", k.ns)).arg(ms(BATCH_RECORD_TTL));
    }
    c
}

pub fn write_reply(v: &Value) -> Result<Vec<i64>> {
    as_array(v).ok_or_else(|| bad("write", v))?.iter().map(|d| as_int(d).ok_or_else(|| bad("write", v))).collect()
}

/// `track.lua`: registers an existing key with a TTL.
pub fn track(k: &Keys, key: &[u8]) -> Call {
    Call::capture_keys(ScriptId::Track, k).key(key)
}

/// The key's deadline; None when it has no TTL or does not exist.
pub fn track_reply(v: &Value) -> Result<Option<i64>> {
    let dl = as_int(v).ok_or_else(|| bad("track", v))?;
    Ok((dl >= 0).then_some(dl))
}

/// `adopt.lua`: the named keys (other programs' keys matching an adoption pattern) that have a
/// TTL go into the deadline index.
/// `copy_max`: the value copy's bound in bytes (0: no copy).
pub fn adopt(k: &Keys, keys: &[Vec<u8>], copy_max: usize) -> Call {
    let mut c = Call::capture_keys(ScriptId::Adopt, k);
    for key in keys {
        c = c.key(key);
    }
    c.arg(&format!("{{{}}}:", k.ns)).arg(copy_max)
}

/// (adopted, moved).
pub fn adopt_reply(v: &Value) -> Result<(u64, u64)> {
    match ints(v, "adopt")?[..] {
        [a, m] => Ok((a as u64, m as u64)),
        _ => Err(bad("adopt", v)),
    }
}

/// `capture.lua` for keys named by notifications.
pub fn capture(k: &Keys, keys: &[Vec<u8>], via: Via) -> Call {
    let mut c = Call::capture_keys(ScriptId::Capture, k);
    for key in keys {
        c = c.key(key);
    }
    c.arg(via.tag())
}

/// (emitted, moved, dropped).
pub fn capture_reply(v: &Value) -> Result<(u64, u64, u64)> {
    match ints(v, "capture")?[..] {
        [e, m, d] => Ok((e as u64, m as u64, d as u64)),
        _ => Err(bad("capture", v)),
    }
}

/// `sweep.lua`: up to `limit` due index entries, by the server's clock.
pub fn sweep(k: &Keys, limit: usize) -> Call {
    Call::capture_keys(ScriptId::Sweep, k).arg(limit)
}

pub fn sweep_reply(v: &Value) -> Result<Sweep> {
    match ints(v, "sweep")?[..] {
        [emitted, examined, next, now] => Ok(Sweep {
            emitted: emitted as u64,
            examined: examined as u64,
            next_deadline_ms: (next >= 0).then_some(next),
            now_ms: now,
        }),
        _ => Err(bad("sweep", v)),
    }
}

fn ints(v: &Value, what: &'static str) -> Result<Vec<i64>> {
    as_array(v).ok_or_else(|| bad(what, v))?.iter().map(|i| as_int(i).ok_or_else(|| bad(what, v))).collect()
}

/// `claim.lua`: XAUTOCLAIM, dead-lettering what the stream lost while pending.
pub fn claim(k: &Keys, group: &str, consumer: &str, min_idle: Duration, cursor: &str, count: usize) -> Call {
    Call::new(ScriptId::Claim)
        .key(&k.stream)
        .key(&k.dead)
        .key(&k.stats)
        .arg(group)
        .arg(consumer)
        .arg(ms(min_idle))
        .arg(cursor)
        .arg(count)
}

/// XAUTOCLAIM's reply: the next cursor, the claimed entries, and the deleted ids.
pub fn claim_reply(v: &Value) -> Result<(String, Vec<RawEntry>, Vec<String>)> {
    let items = as_array(v).ok_or_else(|| bad("XAUTOCLAIM", v))?;
    let next = items.first().and_then(as_string).ok_or_else(|| bad("XAUTOCLAIM", v))?;
    let entries = match items.get(1) {
        Some(list) => parse_entries(list)?,
        None => vec![],
    };
    let deleted = match items.get(2).and_then(as_array) {
        Some(ids) => {
            ids.iter().map(|i| as_string(i).ok_or_else(|| bad("XAUTOCLAIM deleted ids", i))).collect::<Result<_>>()?
        }
        None => vec![],
    };
    Ok((next, entries, deleted))
}

/// `XPENDING stream group first last count consumer` over the ids of `entries` (non-empty):
/// the delivery counts (fencing tokens) this consumer holds them with.
pub fn tokens_command(k: &Keys, group: &str, consumer: &str, entries: &[RawEntry]) -> Vec<Vec<u8>> {
    let first = &entries.first().expect("non-empty").id;
    let last = &entries.last().expect("non-empty").id;
    let count = (entries.len() * 2 + 16).to_string();
    [b"XPENDING".as_slice(), k.stream.as_bytes(), group.as_bytes(), first.as_bytes(), last.as_bytes()]
        .into_iter()
        .chain([count.as_bytes(), consumer.as_bytes()])
        .map(|a| a.to_vec())
        .collect()
}

pub fn tokens_reply(v: &Value) -> Result<HashMap<String, u64>> {
    let mut out = HashMap::new();
    for row in as_array(v).ok_or_else(|| bad("XPENDING", v))? {
        let r = as_array(row).ok_or_else(|| bad("XPENDING", row))?;
        let (Some(id), Some(n)) = (r.first().and_then(as_string), r.get(3).and_then(as_int)) else {
            return Err(bad("XPENDING", row));
        };
        out.insert(id, n as u64);
    }
    Ok(out)
}

/// Claimed entries paired with their tokens; an entry without one (no longer held) is left out.
pub fn with_tokens(entries: Vec<RawEntry>, tokens: &HashMap<String, u64>) -> Vec<(RawEntry, u64)> {
    entries.into_iter().filter_map(|e| tokens.get(&e.id).map(|t| (e, *t))).collect()
}

/// `XREADGROUP GROUP group consumer COUNT n [BLOCK ms] STREAMS stream >`.
pub fn read_command(k: &Keys, group: &str, consumer: &str, count: usize, block: Option<Duration>) -> Vec<Vec<u8>> {
    let mut a: Vec<Vec<u8>> = ["XREADGROUP", "GROUP", group, consumer, "COUNT", &count.to_string()]
        .iter()
        .map(|s| s.as_bytes().to_vec())
        .collect();
    if let Some(b) = block {
        a.push(b"BLOCK".to_vec());
        a.push(ms(b).to_string().into_bytes());
    }
    a.extend([b"STREAMS".to_vec(), k.stream.as_bytes().to_vec(), b">".to_vec()]);
    a
}

/// `commit.lua` for entries of one or several consumers, each fenced on its own.
pub fn commit(k: &Keys, group: &str, ledger: LedgerConfig, items: &[(&str, &CommitItem<'_>)]) -> Call {
    let mut c = Call::new(ScriptId::Commit)
        .key(&k.stream)
        .key(&k.stats)
        .key(&k.dead)
        .arg(group)
        .arg(&k.ledger_prefix)
        .arg(ms(ledger.bucket))
        .arg(ms(ledger.retention))
        .arg(ledger.safety.arg())
        .arg(items.len());
    for (consumer, it) in items {
        c = c
            .arg(it.entry_id)
            .arg(*consumer)
            .arg(it.token)
            .arg(&it.event.event_id)
            .arg(it.event.deadline_ms)
            .arg(it.effects.len());
        for e in it.effects {
            c = c.arg(e.args.len());
            for a in &e.args {
                c = c.arg(a.as_slice());
            }
        }
    }
    c
}

/// `dead_letter.lua`, fenced.
pub fn dead_letter(k: &Keys, group: &str, consumer: &str, entry_id: &str, token: u64, reason: &str) -> Call {
    Call::new(ScriptId::DeadLetter)
        .key(&k.stream)
        .key(&k.dead)
        .key(&k.stats)
        .arg(group)
        .arg(consumer)
        .arg(entry_id)
        .arg(token)
        .arg(reason)
}

/// True when moved, false when fenced.
pub fn dead_letter_reply(v: &Value) -> Result<bool> {
    Ok(as_int(v).ok_or_else(|| bad("dead_letter", v))? == 1)
}

/// `retry.lua`: another delivery of an entry this consumer holds.
pub fn retry(k: &Keys, group: &str, consumer: &str, entry_id: &str, token: u64) -> Call {
    Call::new(ScriptId::Retry).key(&k.stream).arg(group).arg(consumer).arg(entry_id).arg(token)
}

/// The new token; None when the entry is no longer held with the old one.
pub fn retry_reply(v: &Value) -> Result<Option<u64>> {
    let r = as_int(v).ok_or_else(|| bad("retry", v))?;
    Ok((r > 0).then_some(r as u64))
}

/// `release.lua`: held entries marked idle for `idle`.
pub fn release(k: &Keys, group: &str, consumer: &str, ids: &[String], idle: Duration) -> Call {
    let mut c = Call::new(ScriptId::Release).key(&k.stream).arg(group).arg(consumer).arg(ms(idle));
    for id in ids {
        c = c.arg(id);
    }
    c
}

/// `prune.lua`: consumers holding nothing and idle longer than `idle`.
pub fn prune(k: &Keys, group: &str, idle: Duration) -> Call {
    Call::new(ScriptId::Prune).key(&k.stream).arg(group).arg(ms(idle))
}

/// A count (`release.lua`, `prune.lua`).
pub fn count_reply(what: &'static str, v: &Value) -> Result<u64> {
    as_int(v).filter(|n| *n >= 0).map(|n| n as u64).ok_or_else(|| bad(what, v))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_script_has_common_lua_first_and_its_own_text() {
        let common = include_str!("lua/common.lua");
        for s in ScriptId::ALL {
            assert!(s.built_in().starts_with(common), "{}", s.name());
            assert!(s.built_in().len() > common.len() + 100, "{}", s.name());
        }
        assert!(ScriptId::Commit.built_in().contains("local function preflight"));
    }

    /// `files()` (what `EXPIRY_STREAM_LUA_DIR` is read by) lists what `source!` includes.
    #[test]
    fn files_name_exactly_what_the_built_in_text_concatenates() {
        macro_rules! lua {
            ($($f:literal),+) => { [$(($f, include_str!(concat!("lua/", $f)))),+] };
        }
        let files = lua!(
            "adopt.lua",
            "capture.lua",
            "claim.lua",
            "commit.lua",
            "dead_letter.lua",
            "effects.lua",
            "prune.lua",
            "release.lua",
            "retry.lua",
            "sweep.lua",
            "track.lua",
            "write.lua"
        );
        let read = |f: &str| files.iter().find(|(n, _)| *n == f).unwrap_or_else(|| panic!("{f}")).1;
        for s in ScriptId::ALL {
            let mut text = include_str!("lua/common.lua").to_string();
            for f in s.files() {
                text.push('\n');
                text.push_str(read(f));
            }
            assert_eq!(text, s.built_in(), "{}", s.name());
        }
    }

    #[test]
    fn write_with_a_batch_record_has_an_odd_argument_count() {
        let k = Keys::new("t");
        let items = vec![(b"a".to_vec(), b"v".to_vec(), Duration::from_millis(0))];
        let plain = write(&k, &items, None);
        assert_eq!(plain.args, vec![b"1".to_vec(), b"v".to_vec()], "a zero TTL is sent as 1 ms");
        assert_eq!(plain.keys.len(), 5);
        let once = write(&k, &items, Some("b1"));
        assert_eq!(once.args.len() % 2, 1);
        assert_eq!(once.keys.last().unwrap(), b"{t}:wb:b1");
    }
}
