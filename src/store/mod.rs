//! The only code that knows Redis commands. Every multi-step change is one Lua script
//! (`store/lua/*.lua`, with `common.lua` prepended), so each is atomic on the server.
//!
//! Key layout of a namespace `ns` (one hash tag, so every key of a namespace lives in one
//! cluster slot and the scripts stay legal on Redis Cluster):
//! `{ns}:idx` deadline index (ZSET key -> deadline), `{ns}:pay` payloads (HASH),
//! `{ns}:events` the stream, `{ns}:dead` dead letters, `{ns}:ledger:<bucket>` ledger sets,
//! `{ns}:stats` capture and commit counts, `{ns}:oracle:*` the oracle's ledgers.

use std::collections::HashMap;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use redis::{AsyncConnectionConfig, Client, RedisResult, Script, Value};

use crate::core::{CommitOutcome, Event};

mod admin;
pub mod compat;
pub mod conn;
pub mod ledgers;
pub mod model;
mod model_store;
pub mod notify;
pub mod protocol;
pub mod scripts;
mod seam;
pub mod seed_peer;
pub mod server;

pub use model_store::{ModelStore, SharedModel};
use scripts::{Call, ScriptId};
pub use seam::Store;

/// The script set, loaded once per process (EVALSHA, re-loaded on NOSCRIPT after a restart).
struct Scripts(std::collections::BTreeMap<ScriptId, Script>);

impl Scripts {
    fn new() -> Scripts {
        Scripts(ScriptId::ALL.into_iter().map(|s| (s, Script::new(s.source()))).collect())
    }
}

/// Names of a namespace's keys.
#[derive(Clone, Debug)]
pub struct Keys {
    pub ns: String,
    pub idx: String,
    pub pay: String,
    pub stream: String,
    pub dead: String,
    pub stats: String,
    pub ledger_prefix: String,
    pub created: String,
    pub effects: String,
    /// The reconcile scan's cursors, one field per adoption pattern.
    pub adopt: String,
}

impl Keys {
    pub fn new(ns: &str) -> Keys {
        let t = format!("{{{ns}}}");
        Keys {
            ns: ns.to_string(),
            idx: format!("{t}:idx"),
            pay: format!("{t}:pay"),
            stream: format!("{t}:events"),
            dead: format!("{t}:dead"),
            stats: format!("{t}:stats"),
            ledger_prefix: format!("{t}:ledger:"),
            created: format!("{t}:oracle:created"),
            effects: format!("{t}:oracle:effects"),
            adopt: format!("{t}:adopt"),
        }
    }
    /// Prefix for workload keys of this namespace (same hash tag).
    pub fn key_prefix(&self) -> String {
        format!("{{{}}}:k:", self.ns)
    }
}

/// Errors at the store boundary.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The connection to Redis was refused, dropped (reset, broken pipe, killed by
    /// `CLIENT KILL`), or timed out. Retryable (see [`StoreError::is_retryable`]): the shared
    /// connection reconnects by itself on the next call. The call that failed may or may not
    /// have been applied on the server.
    #[error("redis connection: {0}")]
    Connection(redis::RedisError),
    /// Any other error from Redis or redis-rs (a script error, a wrong type, bad config).
    #[error("redis: {0}")]
    Redis(redis::RedisError),
    /// The server lacks a command the pipeline needs (see `store::compat`).
    #[error("{0}")]
    Unsupported(String),
    #[error("unexpected reply to {what}: {reply}")]
    Reply { what: &'static str, reply: String },
    /// A local file written beside the store calls failed (the chaos producer's ledger file).
    #[error("local file: {0}")]
    Io(std::io::Error),
    /// A retrying caller (such as `workload::produce`) gave up on retryable errors.
    #[error("{what}: no success after {after:?} of retries, giving up; last error: {last}")]
    GaveUp { what: String, after: Duration, last: Box<StoreError> },
}

impl From<redis::RedisError> for StoreError {
    fn from(e: redis::RedisError) -> StoreError {
        // All of these are I/O failures in redis-rs; listed one by one so the intent does
        // not depend on that detail.
        if e.is_io_error() || e.is_connection_dropped() || e.is_timeout() || e.is_connection_refusal() {
            StoreError::Connection(e)
        } else {
            StoreError::Redis(e)
        }
    }
}

impl StoreError {
    /// True when the same call may succeed if it is made again after a pause: the connection
    /// was lost, refused or timed out ([`StoreError::Connection`]), or the server said "not
    /// now" without running the command (`LOADING` after a restart, `BUSY` while a script
    /// runs, `TRYAGAIN`, `MASTERDOWN`, `CLUSTERDOWN`).
    ///
    /// Retryable does not mean "had no effect". A connection lost after the command was sent
    /// may have lost only the reply, so the command may have been applied. Repeat only calls
    /// that are idempotent: reads, [`RedisStore::write_batch_once`] and
    /// `oracle::record_created_once` with the same batch id. A blind repeat of
    /// [`RedisStore::write_batch`] writes the keys again (a new deadline generation).
    pub fn is_retryable(&self) -> bool {
        match self {
            StoreError::Connection(_) => true,
            StoreError::Redis(e) => {
                matches!(e.code(), Some("LOADING" | "BUSY" | "TRYAGAIN" | "MASTERDOWN" | "CLUSTERDOWN"))
            }
            StoreError::Reply { .. } | StoreError::GaveUp { .. } | StoreError::Unsupported(_) | StoreError::Io(_) => {
                false
            }
        }
    }
}

pub type Result<T> = std::result::Result<T, StoreError>;

/// How long the record of an applied batch (`{ns}:wb:<id>`, [`RedisStore::write_batch_once`]) and
/// of a recorded creation batch (`oracle::record_created_once`) are kept. Retries of a batch
/// must end well within it (`workload::produce` gives up after `workload::RETRY_BOUND`).
pub const BATCH_RECORD_TTL: Duration = Duration::from_secs(600);

/// Longest text of an unexpected reply kept in an error message, in bytes.
const REPLY_TEXT_MAX: usize = 200;

pub(crate) fn bad(what: &'static str, v: &Value) -> StoreError {
    StoreError::Reply { what, reply: clip_text(&format!("{v:?}"), REPLY_TEXT_MAX) }
}

/// `s` cut to at most `max` bytes, with `...` appended when anything was cut. The cut moves
/// back to the previous character boundary: text from outside (a reply's Debug form keeps
/// non-ASCII characters as they are) can put byte `max` inside a multi-byte character, where
/// `String::truncate` and `&s[..max]` panic.
pub fn clip_text(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}

// A stream entry as read, before decoding: the core's type (the consumer's state machine
// holds entries), re-exported where the store's callers look for it.
pub use crate::core::RawEntry;

/// One entry of a commit batch.
pub struct CommitItem<'a> {
    pub entry_id: &'a str,
    /// Delivery count this consumer holds the entry with (the fencing token).
    pub token: u64,
    pub event: &'a Event,
    pub effects: &'a [crate::core::Effect],
}

/// Result of one reclaim call.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Claimed {
    /// Cursor for the next call ("0-0" when the scan wrapped).
    pub next: String,
    /// Entries now held by the caller, with their delivery counts (fencing tokens).
    pub entries: Vec<(RawEntry, u64)>,
    /// Pending entries the stream no longer held, already dead-lettered by the script.
    pub deleted: Vec<String>,
}

/// Result of one sweep call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sweep {
    pub emitted: u64,
    pub examined: u64,
    pub next_deadline_ms: Option<i64>,
    pub now_ms: i64,
}

/// Handle on one namespace of one Redis. Cheap to clone.
#[derive(Clone)]
pub struct RedisStore {
    pub client: Client,
    pub keys: Keys,
    pub group: String,
    scripts: std::sync::Arc<Scripts>,
    /// Shared, auto-reconnecting connection for short commands (never blocking ones).
    pub conn: ConnectionManager,
}

/// Ledger settings carried by every commit.
#[derive(Clone, Copy, Debug)]
pub struct LedgerConfig {
    pub bucket: Duration,
    pub retention: Duration,
    pub safety: Safety,
}

impl Default for LedgerConfig {
    fn default() -> Self {
        LedgerConfig {
            bucket: Duration::from_secs(60),
            retention: Duration::from_secs(3600),
            safety: Safety::from_env(),
        }
    }
}

/// The commit's two safety mechanisms. Both are on outside tests. The switches exist only so
/// the test suites can prove they catch what each mechanism prevents: set
/// `EXPIRY_STREAM_UNSAFE=no-fence` or `no-ledger` (or both, comma-separated).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Safety {
    pub fence: bool,
    pub ledger: bool,
}

impl Safety {
    pub const ON: Safety = Safety { fence: true, ledger: true };

    pub fn from_env() -> Safety {
        let v = std::env::var("EXPIRY_STREAM_UNSAFE").unwrap_or_default();
        let s = Safety { fence: !v.contains("no-fence"), ledger: !v.contains("no-ledger") };
        if s != Safety::ON {
            eprintln!("WARNING: EXPIRY_STREAM_UNSAFE={v}: commit safety reduced to {s:?} (test-only switch)");
        }
        s
    }

    pub(crate) fn arg(self) -> &'static str {
        match (self.fence, self.ledger) {
            (true, true) => "fence,ledger",
            (true, false) => "fence",
            (false, true) => "ledger",
            (false, false) => "",
        }
    }
}

impl RedisStore {
    pub async fn connect(url: &str, ns: &str, group: &str) -> Result<RedisStore> {
        let client = Client::open(url)?;
        // Scripts over big batches can take longer than redis-rs's 500 ms default.
        let cfg = ConnectionManagerConfig::new()
            .set_response_timeout(Some(Duration::from_secs(30)))
            .set_connection_timeout(Some(Duration::from_secs(5)));
        let mut conn = ConnectionManager::new_with_config(client.clone(), cfg).await?;
        compat::check_server(&mut conn).await?;
        Ok(RedisStore {
            client,
            keys: Keys::new(ns),
            group: group.to_string(),
            scripts: std::sync::Arc::new(Scripts::new()),
            conn,
        })
    }

    /// A dedicated connection for one consumer: blocking reads stall a shared multiplexed
    /// connection, and they need no response timeout (they block on purpose).
    pub async fn dedicated(&self) -> Result<MultiplexedConnection> {
        let cfg = AsyncConnectionConfig::new()
            .set_response_timeout(None)
            .set_connection_timeout(Some(Duration::from_secs(5)));
        Ok(self.client.get_multiplexed_async_connection_with_config(&cfg).await?)
    }

    /// Creates the consumer group at the start of the stream (so entries captured before any
    /// consumer existed are delivered). Idempotent.
    pub async fn ensure_group(&self) -> Result<()> {
        let mut c = self.conn.clone();
        let r: RedisResult<()> = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(&self.keys.stream)
            .arg(&self.group)
            .arg("0")
            .arg("MKSTREAM")
            .query_async(&mut c)
            .await;
        match r {
            Ok(()) => Ok(()),
            Err(e) if e.code() == Some("BUSYGROUP") => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Deletes every key of the namespace (the workload keys under [`Keys::key_prefix`] included).
    pub async fn wipe(&self) -> Result<u64> {
        let mut c = self.conn.clone();
        let pattern = format!("{{{}}}:*", self.keys.ns);
        let mut cursor: u64 = 0;
        let mut n = 0;
        loop {
            let (next, keys): (u64, Vec<Vec<u8>>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut c)
                .await?;
            if !keys.is_empty() {
                n += keys.len() as u64;
                redis::cmd("UNLINK").arg(&keys).query_async::<()>(&mut c).await?;
            }
            if next == 0 {
                return Ok(n);
            }
            cursor = next;
        }
    }

    /// Runs `call` on `conn` (EVALSHA, loading the script on NOSCRIPT).
    async fn eval(&self, conn: &mut (impl redis::aio::ConnectionLike + Send), call: Call) -> Result<Value> {
        let script = &self.scripts.0[&call.script];
        let mut inv = script.prepare_invoke();
        for k in &call.keys {
            inv.key(k.as_slice());
        }
        for a in &call.args {
            inv.arg(a.as_slice());
        }
        Ok(inv.invoke_async(conn).await?)
    }

    /// `set_with_ttl` for a batch of `(key, value, ttl)`, one atomic script call. Returns each
    /// key's deadline (Unix ms). A previous generation that already expired is captured first.
    ///
    /// Not idempotent: after a retryable error the batch may have been applied, and calling
    /// again writes every key again. Callers that retry use [`RedisStore::write_batch_once`].
    pub async fn write_batch(&self, items: &[(Vec<u8>, Vec<u8>, Duration)]) -> Result<Vec<i64>> {
        self.write_batch_with(items, None).await
    }

    /// [`RedisStore::write_batch`] applied at most once per `batch_id`: the script stores the
    /// batch's deadlines under `{ns}:wb:<batch_id>` (expiring after [`BATCH_RECORD_TTL`]) in
    /// the same atomic call, and a call with an id already recorded writes nothing and returns
    /// the recorded deadlines. So after a lost reply the same call can be repeated safely.
    /// `batch_id` must be unique per batch (not reused for other items) for at least
    /// [`BATCH_RECORD_TTL`]; a reuse with a different number of items is an error.
    pub async fn write_batch_once(&self, batch_id: &str, items: &[(Vec<u8>, Vec<u8>, Duration)]) -> Result<Vec<i64>> {
        self.write_batch_with(items, Some(batch_id)).await
    }

    async fn write_batch_with(
        &self,
        items: &[(Vec<u8>, Vec<u8>, Duration)],
        batch_id: Option<&str>,
    ) -> Result<Vec<i64>> {
        if items.is_empty() {
            return Ok(vec![]);
        }
        let v = self.eval(&mut self.conn.clone(), scripts::write(&self.keys, items, batch_id)).await?;
        scripts::write_reply(&v)
    }

    /// Registers an existing key with a TTL. `Ok(None)` when it has no TTL or does not exist.
    pub async fn track(&self, key: &[u8]) -> Result<Option<i64>> {
        scripts::track_reply(&self.eval(&mut self.conn.clone(), scripts::track(&self.keys, key)).await?)
    }

    /// Runs the capture step for keys named by notifications. Returns (emitted, moved, dropped).
    pub async fn capture(&self, keys: &[Vec<u8>], via: crate::core::Via) -> Result<(u64, u64, u64)> {
        scripts::capture_reply(&self.eval(&mut self.conn.clone(), scripts::capture(&self.keys, keys, via)).await?)
    }

    /// Adopts `keys` (other programs' keys matching an adoption pattern): each that has a TTL
    /// goes into the deadline index; with `copy_max` > 0 a string value of at most that many
    /// bytes is copied as the event's payload (`adopt.lua`). Returns (adopted, moved).
    pub async fn adopt(&self, keys: &[Vec<u8>], copy_max: usize) -> Result<(u64, u64)> {
        if keys.is_empty() {
            return Ok((0, 0));
        }
        scripts::adopt_reply(&self.eval(&mut self.conn.clone(), scripts::adopt(&self.keys, keys, copy_max)).await?)
    }

    /// One step of the reconcile scan: `SCAN cursor MATCH pattern COUNT count` (keys of every
    /// type; the adopt script skips those without a TTL). Returns the next cursor (0: a pass
    /// is complete) and the keys.
    pub async fn scan_match(&self, cursor: u64, pattern: &[u8], count: usize) -> Result<(u64, Vec<Vec<u8>>)> {
        Ok(redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(count)
            .query_async(&mut self.conn.clone())
            .await?)
    }

    /// The server's clock, Unix ms (`TIME`).
    pub async fn server_time_ms(&self) -> Result<i64> {
        let (secs, micros): (i64, i64) = redis::cmd("TIME").query_async(&mut self.conn.clone()).await?;
        Ok(secs * 1000 + micros / 1000)
    }

    /// Writes `items` as any other program would, with no script and no index: one plain
    /// `SET key value PXAT deadline` each (pipelined). The workload's plain writer
    /// (`run --writer plain`): its keys reach the pipeline only by adoption.
    pub async fn set_plain(&self, items: &[(Vec<u8>, Vec<u8>, Duration)], deadlines: &[i64]) -> Result<()> {
        let mut pipe = redis::pipe();
        for ((k, v, _), d) in items.iter().zip(deadlines) {
            pipe.cmd("SET").arg(k.as_slice()).arg(v.as_slice()).arg("PXAT").arg(*d).ignore();
        }
        Ok(pipe.query_async(&mut self.conn.clone()).await?)
    }

    /// The reconcile scan's cursor for `pattern`, kept in Redis (`{ns}:adopt`, one field per
    /// pattern) so that a restarted scan resumes where it stopped; 0 when none is kept.
    pub async fn adopt_cursor(&self, pattern: &[u8]) -> Result<u64> {
        let v: Option<u64> =
            redis::cmd("HGET").arg(&self.keys.adopt).arg(pattern).query_async(&mut self.conn.clone()).await?;
        Ok(v.unwrap_or(0))
    }

    /// Keeps the reconcile scan's cursor for `pattern` (see [`RedisStore::adopt_cursor`]).
    pub async fn set_adopt_cursor(&self, pattern: &[u8], cursor: u64) -> Result<()> {
        Ok(redis::cmd("HSET")
            .arg(&self.keys.adopt)
            .arg(pattern)
            .arg(cursor)
            .query_async(&mut self.conn.clone())
            .await?)
    }

    /// Captures up to `limit` due index entries, by the server's clock.
    pub async fn sweep(&self, limit: usize) -> Result<Sweep> {
        scripts::sweep_reply(&self.eval(&mut self.conn.clone(), scripts::sweep(&self.keys, limit)).await?)
    }

    /// `XREADGROUP ... >` on a dedicated connection.
    pub async fn read_new(
        &self,
        conn: &mut MultiplexedConnection,
        consumer: &str,
        count: usize,
        block: Duration,
    ) -> Result<Vec<RawEntry>> {
        let args = scripts::read_command(&self.keys, &self.group, consumer, count, Some(block));
        let v: Value = command(&args).query_async(conn).await?;
        parse_xread(&v)
    }

    /// `XAUTOCLAIM` entries idle longer than `min_idle` to `consumer` (`claim.lua`). Returns
    /// the next cursor, the claimed entries with their delivery counts (fencing tokens), and
    /// the ids of pending entries the stream no longer held: the script has already recorded
    /// each in the dead-letter stream and the `deleted_while_pending` count.
    pub async fn reclaim(
        &self,
        conn: &mut MultiplexedConnection,
        consumer: &str,
        min_idle: Duration,
        cursor: &str,
        count: usize,
    ) -> Result<Claimed> {
        let call = scripts::claim(&self.keys, &self.group, consumer, min_idle, cursor, count);
        let (next, entries, deleted) = scripts::claim_reply(&self.eval(conn, call).await?)?;
        if entries.is_empty() {
            return Ok(Claimed { next, entries: vec![], deleted });
        }
        let tokens = self.tokens(conn, consumer, &entries).await?;
        Ok(Claimed { next, entries: scripts::with_tokens(entries, &tokens), deleted })
    }

    /// [`RedisStore::reclaim`] without the deleted ids: (next cursor, claimed entries and tokens).
    pub async fn autoclaim(
        &self,
        conn: &mut MultiplexedConnection,
        consumer: &str,
        min_idle: Duration,
        cursor: &str,
        count: usize,
    ) -> Result<(String, Vec<(RawEntry, u64)>)> {
        let c = self.reclaim(conn, consumer, min_idle, cursor, count).await?;
        Ok((c.next, c.entries))
    }

    /// Delivery counts of entries this consumer holds (one XPENDING over their id range).
    pub async fn tokens(
        &self,
        conn: &mut MultiplexedConnection,
        consumer: &str,
        entries: &[RawEntry],
    ) -> Result<HashMap<String, u64>> {
        let args = scripts::tokens_command(&self.keys, &self.group, consumer, entries);
        let v: Value = command(&args).query_async(conn).await?;
        scripts::tokens_reply(&v)
    }

    /// The fenced commit of one consumer's batch: one script call.
    pub async fn commit(
        &self,
        conn: &mut (impl redis::aio::ConnectionLike + Send),
        consumer: &str,
        ledger: LedgerConfig,
        items: &[CommitItem<'_>],
    ) -> Result<Vec<CommitOutcome>> {
        let items: Vec<(&str, &CommitItem<'_>)> = items.iter().map(|i| (consumer, i)).collect();
        self.commit_many(conn, ledger, &items).await
    }

    /// The fenced commit of entries from several consumers (group commit): one script call;
    /// each entry is fenced against its own consumer.
    pub async fn commit_many(
        &self,
        conn: &mut (impl redis::aio::ConnectionLike + Send),
        ledger: LedgerConfig,
        items: &[(&str, &CommitItem<'_>)],
    ) -> Result<Vec<CommitOutcome>> {
        let v = self.eval(conn, scripts::commit(&self.keys, &self.group, ledger, items)).await?;
        parse_commit_reply(&v, items.len())
    }

    /// Moves a pending entry this consumer holds to the dead-letter stream with `reason`.
    /// Returns false when the fence refused (someone else holds it now).
    pub async fn dead_letter(
        &self,
        conn: &mut MultiplexedConnection,
        consumer: &str,
        entry_id: &str,
        token: u64,
        reason: &str,
    ) -> Result<bool> {
        let call = scripts::dead_letter(&self.keys, &self.group, consumer, entry_id, token, reason);
        scripts::dead_letter_reply(&self.eval(conn, call).await?)
    }

    /// Takes another delivery of an entry this consumer holds (a retry): bumps its delivery
    /// count. Returns the new token, or None when the entry is no longer ours.
    pub async fn retry(
        &self,
        conn: &mut MultiplexedConnection,
        consumer: &str,
        entry_id: &str,
        token: u64,
    ) -> Result<Option<u64>> {
        let call = scripts::retry(&self.keys, &self.group, consumer, entry_id, token);
        scripts::retry_reply(&self.eval(conn, call).await?)
    }

    /// Marks entries this consumer holds as long idle so any consumer reclaims them at once.
    pub async fn release(
        &self,
        conn: &mut MultiplexedConnection,
        consumer: &str,
        ids: &[String],
        idle: Duration,
    ) -> Result<u64> {
        if ids.is_empty() {
            return Ok(0);
        }
        let call = scripts::release(&self.keys, &self.group, consumer, ids, idle);
        scripts::count_reply("release", &self.eval(conn, call).await?)
    }

    /// Removes group consumers holding nothing and idle longer than `idle`.
    pub async fn prune_consumers(&self, idle: Duration) -> Result<u64> {
        let call = scripts::prune(&self.keys, &self.group, idle);
        scripts::count_reply("prune", &self.eval(&mut self.conn.clone(), call).await?)
    }

    /// The library's own counters (`{ns}:stats`). Reported beside the oracle, never instead.
    pub async fn stats(&self) -> Result<HashMap<String, i64>> {
        let mut c = self.conn.clone();
        Ok(redis::cmd("HGETALL").arg(&self.keys.stats).query_async(&mut c).await?)
    }

    /// Tracked keys not yet captured, entries in the stream, and entries pending in the group.
    pub async fn backlog(&self) -> Result<Backlog> {
        let mut c = self.conn.clone();
        let (tracked, stream_len): (u64, u64) = redis::pipe()
            .cmd("ZCARD")
            .arg(&self.keys.idx)
            .cmd("XLEN")
            .arg(&self.keys.stream)
            .query_async(&mut c)
            .await?;
        let v: Value = redis::cmd("XPENDING").arg(&self.keys.stream).arg(&self.group).query_async(&mut c).await?;
        let pending = as_array(&v).and_then(|a| a.first()).and_then(as_int).unwrap_or(0) as u64;
        Ok(Backlog { tracked, stream_len, pending })
    }
}

impl RedisStore {
    /// Every entry of stream `key`, read in pages of 10,000 (`XRANGE`).
    pub async fn range_all(&self, key: &str) -> Result<Vec<RawEntry>> {
        let mut c = self.conn.clone();
        let mut out = vec![];
        let mut from = "-".to_string();
        loop {
            let v: Value =
                redis::cmd("XRANGE").arg(key).arg(&from).arg("+").arg("COUNT").arg(10_000).query_async(&mut c).await?;
            let entries = parse_entries(&v)?;
            let Some(last) = entries.last() else { return Ok(out) };
            from = format!("({}", last.id);
            out.extend(entries);
        }
    }

    /// Dead letters by kind of reason (the reason's text up to its first `:`, digits as `N`).
    pub async fn dead_letter_kinds(&self) -> Result<std::collections::BTreeMap<String, u64>> {
        let mut out = std::collections::BTreeMap::new();
        for e in self.range_all(&self.keys.dead).await? {
            let reason =
                e.fields.iter().find(|(k, _)| k == b"reason").map(|(_, v)| String::from_utf8_lossy(v).into_owned());
            let reason = reason.unwrap_or_else(|| "(no reason)".into());
            let kind: String = reason
                .split(':')
                .next()
                .unwrap_or("")
                .chars()
                .map(|c| if c.is_ascii_digit() { 'N' } else { c })
                .collect();
            let kind = kind.replace("NN", "N").replace("NN", "N");
            *out.entry(kind).or_insert(0) += 1;
        }
        Ok(out)
    }
}

/// A plain command from its arguments (the name first).
fn command(args: &[Vec<u8>]) -> redis::Cmd {
    let mut c = redis::Cmd::new();
    for a in args {
        c.arg(a.as_slice());
    }
    c
}

/// How much work remains in a namespace.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Backlog {
    pub tracked: u64,
    pub stream_len: u64,
    pub pending: u64,
}

impl Backlog {
    pub fn is_empty(&self) -> bool {
        self.tracked == 0 && self.stream_len == 0 && self.pending == 0
    }
}

pub(crate) fn as_array(v: &Value) -> Option<&Vec<Value>> {
    match v {
        Value::Array(a) | Value::Set(a) => Some(a),
        _ => None,
    }
}

pub(crate) fn as_bytes(v: &Value) -> Option<Vec<u8>> {
    match v {
        Value::BulkString(b) => Some(b.clone()),
        Value::SimpleString(s) => Some(s.clone().into_bytes()),
        Value::VerbatimString { text, .. } => Some(text.clone().into_bytes()),
        Value::Int(i) => Some(i.to_string().into_bytes()),
        _ => None,
    }
}

pub(crate) fn as_string(v: &Value) -> Option<String> {
    as_bytes(v).and_then(|b| String::from_utf8(b).ok())
}

pub(crate) fn as_int(v: &Value) -> Option<i64> {
    match v {
        Value::Int(i) => Some(*i),
        other => as_string(other).and_then(|s| s.parse().ok()),
    }
}

/// Parses `commit.lua`'s reply: per entry a code, or `[code, reason]`.
pub fn parse_commit_reply(v: &Value, n: usize) -> Result<Vec<CommitOutcome>> {
    let list = as_array(v).ok_or_else(|| bad("commit", v))?;
    if list.len() != n {
        return Err(bad("commit", v));
    }
    list.iter()
        .map(|o| {
            let parsed = match o {
                Value::Int(c) => CommitOutcome::from_code(*c),
                other => as_array(other).and_then(|pair| {
                    match (pair.first().and_then(as_int), pair.get(1).and_then(as_bytes)) {
                        (Some(c), Some(r)) => {
                            CommitOutcome::from_code_reason(c, String::from_utf8_lossy(&r).into_owned())
                        }
                        _ => None,
                    }
                }),
            };
            parsed.ok_or_else(|| bad("commit", o))
        })
        .collect()
}

/// Parses a list of `[id, [field, value, ...]]` entries. A deleted entry (nil fields) comes
/// back with no fields; decoding then dead-letters it with a reason.
pub fn parse_entries(v: &Value) -> Result<Vec<RawEntry>> {
    let list = as_array(v).ok_or_else(|| bad("stream entries", v))?;
    let mut out = Vec::with_capacity(list.len());
    for e in list {
        let Some(pair) = as_array(e) else { continue };
        let id = pair.first().and_then(as_string).ok_or_else(|| bad("stream entry id", e))?;
        let mut fields = vec![];
        match pair.get(1) {
            Some(Value::Map(m)) => {
                for (k, v) in m {
                    fields.push((as_bytes(k).unwrap_or_default(), as_bytes(v).unwrap_or_default()));
                }
            }
            Some(f) => {
                if let Some(flat) = as_array(f) {
                    for kv in flat.chunks(2) {
                        let k = as_bytes(&kv[0]).unwrap_or_default();
                        let v = kv.get(1).and_then(as_bytes).unwrap_or_default();
                        fields.push((k, v));
                    }
                }
            }
            None => {}
        }
        out.push(RawEntry { id, fields });
    }
    Ok(out)
}

/// Parses an `XREAD`/`XREADGROUP` reply for a single stream (RESP2 or RESP3 shape).
pub fn parse_xread(v: &Value) -> Result<Vec<RawEntry>> {
    match v {
        Value::Nil => Ok(vec![]),
        Value::Map(m) => match m.first() {
            Some((_, entries)) => parse_entries(entries),
            None => Ok(vec![]),
        },
        Value::Array(streams) => match streams.first().and_then(as_array) {
            Some(s) => match s.get(1) {
                Some(entries) => parse_entries(entries),
                None => Ok(vec![]),
            },
            None => Ok(vec![]),
        },
        other => Err(bad("XREADGROUP", other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn xread_replies_of_every_shape() {
        let entry = Value::Array(vec![bulk("1-0"), Value::Array(vec![bulk("k"), bulk("v")])]);
        let resp2 = Value::Array(vec![Value::Array(vec![bulk("s"), Value::Array(vec![entry.clone()])])]);
        let resp3 = Value::Map(vec![(bulk("s"), Value::Array(vec![entry]))]);
        let want = vec![RawEntry { id: "1-0".into(), fields: vec![(b"k".to_vec(), b"v".to_vec())] }];
        assert_eq!(parse_xread(&resp2).unwrap(), want);
        assert_eq!(parse_xread(&resp3).unwrap(), want);
        assert_eq!(parse_xread(&Value::Nil).unwrap(), vec![]);
        // Truncated: a field without its value, and an entry whose fields are nil (deleted).
        let odd = Value::Array(vec![Value::Array(vec![bulk("2-0"), Value::Array(vec![bulk("k")])])]);
        assert_eq!(parse_entries(&odd).unwrap()[0].fields, vec![(b"k".to_vec(), vec![])]);
        let deleted = Value::Array(vec![Value::Array(vec![bulk("3-0"), Value::Nil])]);
        assert_eq!(parse_entries(&deleted).unwrap()[0].fields, vec![]);
        // Wrong types are errors, not panics.
        assert!(parse_xread(&Value::Int(3)).is_err());
        assert!(parse_entries(&Value::Array(vec![Value::Array(vec![Value::Nil])])).is_err());
    }

    /// An unexpected reply's text is cut for the error message. The cut must land on a
    /// character boundary whatever the reply holds: `bulk-string('"` is 14 bytes, then one
    /// ASCII byte puts every 2-byte `é` at an odd offset, so byte 200 falls inside one.
    #[test]
    fn an_unexpected_reply_with_multibyte_text_is_cut_without_a_panic() {
        let text = format!("a{}", "é".repeat(150));
        let v = Value::BulkString(text.into_bytes());
        let full = format!("{v:?}");
        assert!(!full.is_char_boundary(200), "the test must put byte 200 inside a character");
        let StoreError::Reply { reply, .. } = bad("XREADGROUP", &v) else { panic!("not a reply error") };
        assert!(reply.len() <= 200 + "...".len(), "{} bytes", reply.len());
        assert!(full.starts_with(reply.trim_end_matches("...")), "the cut text is a prefix of the reply");
        // Every parser that reports such a reply returns the error, never panics.
        assert!(parse_xread(&v).is_err());
        assert!(parse_entries(&v).is_err());
        // Short replies are kept whole, 3- and 4-byte characters are cut cleanly too.
        let StoreError::Reply { reply, .. } = bad("x", &Value::Int(7)) else { panic!() };
        assert_eq!(reply, "int(7)");
        for c in ["€", "𝄞"] {
            for lead in 0..4 {
                let v = Value::BulkString(format!("{}{}", "a".repeat(lead), c.repeat(100)).into_bytes());
                let _ = bad("x", &v);
            }
        }
    }

    #[test]
    fn clip_text_cuts_only_at_character_boundaries() {
        assert_eq!(clip_text("abc", 3), "abc");
        assert_eq!(clip_text("abcd", 3), "abc...");
        // 'é' is bytes 1..3: a cut at 2 moves back to 1.
        assert_eq!(clip_text("aé", 2), "a...");
        assert_eq!(clip_text("€", 1), "...");
        for max in 0..12 {
            let s = clip_text("a€𝄞é", max);
            assert!(s.len() <= max + 3, "{max}: {s}");
        }
    }

    /// The inputs that once crashed the `stream_reply` fuzz target (fuzz/regressions/), replayed
    /// here too so `cargo test` catches a regression without cargo-fuzz.
    #[test]
    fn fuzz_regressions_of_stream_reply_do_not_panic() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/regressions/stream_reply");
        let mut n = 0;
        for f in std::fs::read_dir(&dir).expect("fuzz/regressions/stream_reply") {
            let data = std::fs::read(f.unwrap().path()).unwrap();
            if let Ok(v) = redis::parse_redis_value(&data) {
                let _ = parse_xread(&v);
                let _ = parse_entries(&v);
            }
            n += 1;
        }
        assert!(n > 0, "no regression inputs in {}", dir.display());
    }
}
