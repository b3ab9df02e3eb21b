//! The scenario file format (TOML), its parser and its checks. Every field is documented in
//! `docs/SCENARIOS.md`; a field added here must be added there (the doc-example test parses
//! the document's examples). Unknown fields are refused (`deny_unknown_fields`), and every
//! error names the field and the line: `scenarios/x.toml: line 12, field `fault[1].for_ms`: ...`.

use std::fmt;
use std::ops::Range;
use std::path::Path;

use serde::{Deserialize, Deserializer, Serialize};
use toml::de::{DeTable, DeValue};
use toml::Spanned;

/// A whole scenario file.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// Also the name of its report snapshot.
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// Every random choice of the run (TTLs, fault targets, replayed entries) comes from it.
    pub seed: u64,
    pub workload: Workload,
    #[serde(default)]
    pub topology: Topology,
    #[serde(default)]
    pub redis: RedisSpec,
    /// The fault timeline: `[[fault]]` tables.
    #[serde(default, rename = "fault")]
    pub faults: Vec<FaultSpec>,
    #[serde(default)]
    pub expect: Expect,
    /// Seconds allowed, after the workload and the last fault ended, for everything to drain.
    #[serde(default = "d_drain")]
    pub drain_timeout_s: u64,
}

fn d_drain() -> u64 {
    60
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Workload {
    /// Tracked keys created (each one expiration event the oracle expects).
    pub keys: u64,
    /// Creation rate, keys per second (paced: key i is created at i / rate).
    pub rate_per_s: f64,
    #[serde(default)]
    pub ttl: Ttl,
    #[serde(default = "d_payload")]
    pub payload_bytes: usize,
    /// Untracked keys with a long TTL written before the run (they make Redis's own active
    /// expiry slow, as in production).
    #[serde(default)]
    pub background_keys: u64,
    #[serde(default = "d_bg_ttl")]
    pub background_ttl_ms: u64,
}

fn d_payload() -> usize {
    16
}
fn d_bg_ttl() -> u64 {
    3_600_000
}

/// TTL distribution of the workload keys.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(tag = "dist", rename_all = "snake_case", deny_unknown_fields)]
pub enum Ttl {
    Fixed { ms: u64 },
    Uniform { min_ms: u64, max_ms: u64 },
}

impl Default for Ttl {
    fn default() -> Self {
        Ttl::Fixed { ms: 500 }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Topology {
    /// Consumer OS processes (`expiry-stream consume`).
    #[serde(default = "d_2")]
    pub consumer_processes: usize,
    /// Consumer tasks inside each consumer process (`consume --consumers`).
    #[serde(default = "d_2")]
    pub consumers_per_process: usize,
    /// Workers of each consumer (`consume --workers`): handlers at once, fed by its dispatcher.
    #[serde(default = "d_1")]
    pub workers: usize,
    /// Listener OS processes (`expiry-stream capture --listeners 1 --sweepers 0`).
    #[serde(default = "d_1")]
    pub listeners: usize,
    /// Sweeper OS processes (`expiry-stream capture --listeners 0 --sweepers 1`).
    #[serde(default = "d_1")]
    pub sweepers: usize,
    /// Handler work time per event, ms (`consume --work-ms`).
    #[serde(default = "d_work")]
    pub work_ms: u64,
    #[serde(default = "d_batch")]
    pub batch: usize,
    #[serde(default = "d_claim")]
    pub claim_idle_ms: u64,
    #[serde(default = "d_deliveries")]
    pub max_deliveries: u64,
    #[serde(default = "d_retention")]
    pub ledger_retention_ms: u64,
    #[serde(default = "d_bucket")]
    pub ledger_bucket_ms: u64,
    /// `EXPIRY_STREAM_FAULTS` for every consumer process, for the whole run.
    #[serde(default)]
    pub fault_points: String,
}

fn d_1() -> usize {
    1
}
fn d_2() -> usize {
    2
}
fn d_work() -> u64 {
    5
}
fn d_batch() -> usize {
    8
}
fn d_claim() -> u64 {
    1000
}
fn d_deliveries() -> u64 {
    20
}
fn d_retention() -> u64 {
    24 * 3600 * 1000
}
fn d_bucket() -> u64 {
    60_000
}

impl Default for Topology {
    fn default() -> Self {
        Topology {
            consumer_processes: 2,
            consumers_per_process: 2,
            workers: 1,
            listeners: 1,
            sweepers: 1,
            work_ms: d_work(),
            batch: d_batch(),
            claim_idle_ms: d_claim(),
            max_deliveries: d_deliveries(),
            ledger_retention_ms: d_retention(),
            ledger_bucket_ms: d_bucket(),
            fault_points: String::new(),
        }
    }
}

#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Appendfsync {
    Always,
    #[default]
    Everysec,
    No,
}

impl Appendfsync {
    pub fn as_str(self) -> &'static str {
        match self {
            Appendfsync::Always => "always",
            Appendfsync::Everysec => "everysec",
            Appendfsync::No => "no",
        }
    }
}

/// Which Redis backends a scenario can run on.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum BackendReq {
    #[default]
    Any,
    Process,
    Container,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RedisSpec {
    #[serde(default)]
    pub appendonly: bool,
    #[serde(default)]
    pub appendfsync: Appendfsync,
    /// Redis `hz` (active-expiry frequency); Redis's default when absent.
    pub hz: Option<u32>,
    #[serde(default)]
    pub backend: BackendReq,
}

/// A scenario's fault kinds are the project's faults ([`crate::fault::Fault`], one name each,
/// shared with the simulator); those that only the simulator can express are refused here.
/// `docs/SCENARIOS.md` documents each; [`Fault::params`] lists the parameters each accepts.
pub use crate::fault::Fault;

impl Fault {
    /// (required, optional) parameters beyond the timeline (`at_ms`, `every_ms`, `times`).
    pub fn params(self) -> (&'static [&'static str], &'static [&'static str]) {
        match self {
            Fault::KillConsumer => (&[], &["targets", "restart_after_ms"]),
            Fault::CrashMidBatch => (&["for_ms", "probability"], &["targets", "restart_after_ms"]),
            Fault::StopConsumer => (&["for_ms"], &["targets"]),
            Fault::DelayAcks => (&["for_ms", "delay_ms"], &["targets", "probability"]),
            Fault::Replay => (&["mode"], &["entries"]),
            Fault::KillListener | Fault::KillSweeper => (&[], &["targets", "restart_after_ms"]),
            Fault::NoListener => (&["for_ms"], &[]),
            Fault::RestartRedis => (&[], &["restart_after_ms"]),
            Fault::ClientKill => (&[], &["fraction"]),
            Fault::PauseRedis => (&["mode", "for_ms"], &[]),
            Fault::NetDelay => (&["for_ms", "delay_ms"], &["role"]),
            Fault::NetCut => (&["for_ms"], &["role"]),
            // Simulator-only faults (refused by `check` before their parameters are looked at).
            _ => (&[], &[]),
        }
    }

    /// Modes accepted by `mode`, for the kinds that take one.
    pub fn modes(self) -> &'static [&'static str] {
        match self {
            Fault::Replay => &["readd", "setid", "xclaim"],
            Fault::PauseRedis => &["client_pause", "debug_sleep", "freeze"],
            _ => &[],
        }
    }

    /// The process role a kind targets, if any.
    pub fn role(self) -> Option<Role> {
        match self {
            Fault::KillConsumer | Fault::CrashMidBatch | Fault::StopConsumer | Fault::DelayAcks => Some(Role::Consumer),
            Fault::KillListener | Fault::NoListener => Some(Role::Listener),
            Fault::KillSweeper => Some(Role::Sweeper),
            _ => None,
        }
    }
}

/// A role of the pipeline's processes.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Consumer,
    Listener,
    Sweeper,
}

impl Role {
    pub fn name(self) -> &'static str {
        match self {
            Role::Consumer => "consumer",
            Role::Listener => "listener",
            Role::Sweeper => "sweeper",
        }
    }
}

/// Which connections a network fault applies to.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[serde(rename_all = "snake_case")]
pub enum NetRole {
    /// Consumer processes to Redis.
    #[default]
    Consumers,
    /// Listener and sweeper processes to Redis.
    Capture,
}

/// How many processes of the role a firing hits: a count chosen from the seed, or all.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Targets {
    Count(usize),
    All,
}

impl<'de> Deserialize<'de> for Targets {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Targets;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a positive number of processes or \"all\"")
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Targets, E> {
                if v >= 1 {
                    Ok(Targets::Count(v as usize))
                } else {
                    Err(E::custom(format!("targets must be at least 1, got {v}")))
                }
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Targets, E> {
                self.visit_i64(v.min(i64::MAX as u64) as i64)
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Targets, E> {
                if v == "all" {
                    Ok(Targets::All)
                } else {
                    Err(E::custom(format!("targets must be a number or \"all\", got {v:?}")))
                }
            }
        }
        d.deserialize_any(V)
    }
}

/// One `[[fault]]` table: a kind, its timeline, its parameters.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FaultSpec {
    pub kind: Fault,
    /// First firing, ms after the workload starts.
    #[serde(default)]
    pub at_ms: u64,
    /// Interval between firings (needed when `times` > 1).
    pub every_ms: Option<u64>,
    /// Number of firings.
    #[serde(default = "d_times")]
    pub times: u32,
    /// How long each firing lasts (pauses, stops, cuts, delays, outages).
    pub for_ms: Option<u64>,
    pub targets: Option<Targets>,
    pub restart_after_ms: Option<u64>,
    pub delay_ms: Option<u64>,
    pub probability: Option<f64>,
    pub mode: Option<String>,
    pub entries: Option<u64>,
    pub fraction: Option<f64>,
    pub role: Option<NetRole>,
}

fn d_times() -> u32 {
    1
}

impl FaultSpec {
    fn present(&self) -> Vec<&'static str> {
        let mut v = vec![];
        let opts: [(&str, bool); 9] = [
            ("for_ms", self.for_ms.is_some()),
            ("targets", self.targets.is_some()),
            ("restart_after_ms", self.restart_after_ms.is_some()),
            ("delay_ms", self.delay_ms.is_some()),
            ("probability", self.probability.is_some()),
            ("mode", self.mode.is_some()),
            ("entries", self.entries.is_some()),
            ("fraction", self.fraction.is_some()),
            ("role", self.role.is_some()),
        ];
        for (n, p) in opts {
            if p {
                v.push(n);
            }
        }
        v
    }
    /// Milliseconds after the workload start of each firing.
    pub fn firings(&self) -> Vec<u64> {
        (0..self.times as u64).map(|k| self.at_ms + k * self.every_ms.unwrap_or(0)).collect()
    }
    /// When the last firing has ended.
    pub fn end_ms(&self) -> u64 {
        self.firings().last().copied().unwrap_or(0) + self.for_ms.unwrap_or(0) + self.restart_after_ms.unwrap_or(0)
    }
}

/// An expected value of a verdict number: exact, `"any"`, or a bound like `">= 1"`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Bound {
    Exactly(u64),
    Any,
    AtLeast(u64),
    AtMost(u64),
}

impl Bound {
    pub fn holds(&self, v: u64) -> bool {
        match self {
            Bound::Exactly(n) => v == *n,
            Bound::Any => true,
            Bound::AtLeast(n) => v >= *n,
            Bound::AtMost(n) => v <= *n,
        }
    }
}

impl fmt::Display for Bound {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Bound::Exactly(n) => write!(f, "= {n}"),
            Bound::Any => write!(f, "any"),
            Bound::AtLeast(n) => write!(f, ">= {n}"),
            Bound::AtMost(n) => write!(f, "<= {n}"),
        }
    }
}

impl Serialize for Bound {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl std::str::FromStr for Bound {
    type Err = String;
    fn from_str(s: &str) -> Result<Bound, String> {
        let t = s.trim();
        let num = |r: &str| r.trim().parse::<u64>().map_err(|_| format!("{s:?} is not a bound"));
        if t == "any" {
            Ok(Bound::Any)
        } else if let Some(r) = t.strip_prefix(">=") {
            Ok(Bound::AtLeast(num(r)?))
        } else if let Some(r) = t.strip_prefix("<=") {
            Ok(Bound::AtMost(num(r)?))
        } else if let Some(r) = t.strip_prefix('>') {
            Ok(Bound::AtLeast(num(r)? + 1))
        } else if let Some(r) = t.strip_prefix('=') {
            Ok(Bound::Exactly(num(r)?))
        } else {
            Ok(Bound::Exactly(
                num(t).map_err(|_| {
                    format!("{s:?} is not a bound: use a number, \"any\", \">= N\", \"> N\" or \"<= N\"")
                })?,
            ))
        }
    }
}

impl<'de> Deserialize<'de> for Bound {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Bound;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a number, \"any\", or a bound like \">= 1\"")
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Bound, E> {
                u64::try_from(v).map(Bound::Exactly).map_err(|_| E::custom(format!("{v} is negative")))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Bound, E> {
                Ok(Bound::Exactly(v))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Bound, E> {
                v.parse().map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

/// What the oracle (and the harness's own witnesses) must report.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Expect {
    #[serde(default = "zero")]
    pub lost: Bound,
    #[serde(default = "zero")]
    pub duplicate_effects: Bound,
    #[serde(default = "zero")]
    pub unexpected_effects: Bound,
    #[serde(default = "zero")]
    pub dead_lettered: Bound,
    /// Creations acknowledged to the producer that Redis no longer has (restart faults).
    #[serde(default = "zero")]
    pub acknowledged_lost: Bound,
    /// Effects observed before a Redis restart and gone after it.
    #[serde(default = "zero")]
    pub effects_rolled_back: Bound,
    /// Created events with an effect and a dead-letter entry both.
    #[serde(default = "zero")]
    pub effected_and_dead_lettered: Bound,
    /// Stream entries beyond one per event id, as the witnesses saw them (replays add some).
    #[serde(default = "zero")]
    pub capture_duplicates: Bound,
    /// External sink applications beyond one per (key, deadline).
    #[serde(default = "zero")]
    pub external_duplicates: Bound,
    /// Effected events with no external write applied.
    #[serde(default = "zero")]
    pub external_missing: Bound,
    /// Effects with no recorded handler run.
    #[serde(default = "zero")]
    pub effects_without_run: Bound,
    /// Pending entries deleted from the stream under the consumers.
    #[serde(default = "zero")]
    pub deleted_while_pending: Bound,
}

fn zero() -> Bound {
    Bound::Exactly(0)
}

impl Default for Expect {
    fn default() -> Self {
        Expect {
            lost: zero(),
            duplicate_effects: zero(),
            unexpected_effects: zero(),
            dead_lettered: zero(),
            acknowledged_lost: zero(),
            effects_rolled_back: zero(),
            effected_and_dead_lettered: zero(),
            capture_duplicates: zero(),
            external_duplicates: zero(),
            external_missing: zero(),
            effects_without_run: zero(),
            deleted_while_pending: zero(),
        }
    }
}

/// A scenario file that could not be used: where and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecError {
    pub file: String,
    pub line: Option<usize>,
    pub column: Option<usize>,
    /// Dotted path of the field, e.g. `fault[1].for_ms`.
    pub field: Option<String>,
    pub message: String,
    /// The offending line of the file, for context.
    pub source_line: Option<String>,
}

impl fmt::Display for SpecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file)?;
        if let Some(l) = self.line {
            write!(f, ": line {l}")?;
            if let Some(c) = self.column {
                write!(f, ", column {c}")?;
            }
        }
        if let Some(p) = &self.field {
            write!(f, ": field `{p}`")?;
        }
        write!(f, ": {}", self.message)?;
        if let (Some(l), Some(s)) = (self.line, &self.source_line) {
            write!(f, "\n  {l:>4} | {s}")?;
        }
        Ok(())
    }
}

impl std::error::Error for SpecError {}

fn line_col(src: &str, pos: usize) -> (usize, usize) {
    // The position comes from the TOML parser's error span: step back to a character
    // boundary rather than trust it, since slicing inside a character panics.
    let mut pos = pos.min(src.len());
    while !src.is_char_boundary(pos) {
        pos -= 1;
    }
    let before = &src[..pos];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map(|l| l.chars().count()).unwrap_or(0) + 1;
    (line, col)
}

fn contains(outer: &Range<usize>, inner: &Range<usize>) -> bool {
    outer.start <= inner.start && inner.end <= outer.end.max(outer.start + 1)
}

/// The dotted path of the deepest field whose key or value holds `span`.
fn path_at(t: &DeTable<'_>, span: &Range<usize>, out: &mut Vec<String>) {
    for (k, v) in t.iter() {
        let (ks, vs) = (k.span(), v.span());
        if contains(&ks, span) {
            out.push(k.get_ref().to_string());
            return;
        }
        if contains(&vs, span) {
            out.push(k.get_ref().to_string());
            value_path(v.get_ref(), span, out);
            return;
        }
    }
    // Tables declared with headers (`[workload]`) may not span their content: fall back to
    // the last table that starts before the span.
    let mut best: Option<(&Spanned<std::borrow::Cow<'_, str>>, &Spanned<DeValue<'_>>)> = None;
    for (k, v) in t.iter() {
        let starts = k.span().start.min(v.span().start);
        if starts <= span.start && matches!(v.get_ref(), DeValue::Table(_) | DeValue::Array(_)) {
            match best {
                Some((bk, bv)) if bk.span().start.min(bv.span().start) >= starts => {}
                _ => best = Some((k, v)),
            }
        }
    }
    if let Some((k, v)) = best {
        out.push(k.get_ref().to_string());
        value_path(v.get_ref(), span, out);
    }
}

fn value_path(v: &DeValue<'_>, span: &Range<usize>, out: &mut Vec<String>) {
    match v {
        DeValue::Table(t) => path_at(t, span, out),
        DeValue::Array(a) => {
            let idx = a.iter().position(|x| contains(&x.span(), span)).or_else(|| {
                a.iter().enumerate().filter(|(_, x)| x.span().start <= span.start).map(|(i, _)| i).next_back()
            });
            if let Some(i) = idx {
                if let Some(last) = out.last_mut() {
                    last.push_str(&format!("[{i}]"));
                }
                value_path(a[i].get_ref(), span, out);
            }
        }
        _ => {}
    }
}

/// The span of a dotted path like `fault[1].for_ms` (the key if present, else its table).
fn span_of(root: &DeTable<'_>, path: &str) -> Option<Range<usize>> {
    let mut table = root;
    let mut best: Option<Range<usize>> = None;
    let parts: Vec<&str> = path.split('.').collect();
    for (i, part) in parts.iter().enumerate() {
        let (name, index) = match part.split_once('[') {
            Some((n, rest)) => (n, rest.trim_end_matches(']').parse::<usize>().ok()),
            None => (*part, None),
        };
        let Some((k, v)) = table.iter().find(|(k, _)| k.get_ref() == name) else { return best };
        best = Some(k.span());
        let mut val = v.get_ref();
        if let (Some(i), DeValue::Array(a)) = (index, val) {
            let item = a.get(i)?;
            best = Some(item.span());
            val = item.get_ref();
        }
        if i + 1 < parts.len() {
            match val {
                DeValue::Table(t) => table = t,
                _ => return best,
            }
        }
    }
    best
}

/// For a syntax error, where no document exists to walk: the field named on that line
/// (`key = ...`), inside the last table header above it (`[workload]`, the n-th `[[fault]]`).
fn field_on_line(src: &str, line: usize) -> Option<String> {
    let lines: Vec<&str> = src.lines().collect();
    let text = lines.get(line.checked_sub(1)?)?.trim();
    let bare =
        |k: &str| !k.is_empty() && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.');
    let mut table: Option<String> = None;
    let mut arrays: std::collections::HashMap<String, usize> = Default::default();
    for l in &lines[..line - 1] {
        let l = l.trim();
        if let Some(name) = l.strip_prefix("[[").and_then(|r| r.split("]]").next()) {
            let n = arrays.entry(name.trim().to_string()).or_insert(0);
            table = Some(format!("{}[{}]", name.trim(), *n));
            *n += 1;
        } else if let Some(name) = l.strip_prefix('[').and_then(|r| r.split(']').next()) {
            table = Some(name.trim().to_string());
        }
    }
    if let Some(h) = text.strip_prefix('[') {
        let h = h.trim_start_matches('[').split(']').next().unwrap_or("").trim();
        return bare(h).then(|| h.to_string());
    }
    let key = text.split('=').next().unwrap_or("").trim();
    let key = bare(key).then(|| key.to_string());
    match (table, key) {
        (Some(t), Some(k)) => Some(format!("{t}.{k}")),
        (None, Some(k)) => Some(k),
        (t, None) => t,
    }
}

/// Parses and checks a scenario file's text. `file` is only used in messages.
pub fn parse(file: &str, src: &str) -> Result<Scenario, Box<SpecError>> {
    let mk = |span: Option<Range<usize>>, field: Option<String>, message: String| {
        let (line, column, source_line) = match span {
            Some(s) => {
                let (l, c) = line_col(src, s.start);
                (Some(l), Some(c), src.lines().nth(l - 1).map(|x| x.to_string()))
            }
            None => (None, None, None),
        };
        Box::new(SpecError { file: file.to_string(), line, column, field, message, source_line })
    };
    let doc = DeTable::parse(src).map_err(|e| {
        let field = e.span().and_then(|s| field_on_line(src, line_col(src, s.start).0));
        mk(e.span(), field, format!("not valid TOML: {}", e.message()))
    })?;
    let scenario: Scenario = toml::from_str(src).map_err(|e| {
        let mut path = vec![];
        if let Some(s) = e.span() {
            path_at(doc.get_ref(), &s, &mut path);
        }
        let mut field = (!path.is_empty()).then(|| path.join("."));
        let msg = e.message().to_string();
        // "missing field `x`" points at the table: name the field that is missing.
        if let Some(missing) = msg.strip_prefix("missing field `").and_then(|r| r.split('`').next()) {
            field = Some(match field {
                Some(p) => format!("{p}.{missing}"),
                None => missing.to_string(),
            });
        }
        if let Some(unknown) = msg.strip_prefix("unknown field `").and_then(|r| r.split('`').next()) {
            if field.as_deref().is_none_or(|f| !f.ends_with(unknown)) {
                field = Some(match field {
                    Some(p) => format!("{p}.{unknown}"),
                    None => unknown.to_string(),
                });
            }
        }
        mk(e.span(), field, msg)
    })?;
    if let Err((path, message)) = validate(&scenario) {
        let span = span_of(doc.get_ref(), &path);
        return Err(mk(span, Some(path), message));
    }
    Ok(scenario)
}

/// Reads and parses a scenario file.
pub fn load(path: &Path) -> Result<Scenario, Box<SpecError>> {
    let src = std::fs::read_to_string(path).map_err(|e| {
        Box::new(SpecError {
            file: path.display().to_string(),
            line: None,
            column: None,
            field: None,
            message: format!("cannot read: {e}"),
            source_line: None,
        })
    })?;
    parse(&path.display().to_string(), &src)
}

type Invalid = (String, String);

fn check(ok: bool, path: impl Into<String>, msg: impl Into<String>) -> Result<(), Invalid> {
    if ok {
        Ok(())
    } else {
        Err((path.into(), msg.into()))
    }
}

/// Checks that need more than a type: ranges, and which parameters each fault kind takes.
fn validate(s: &Scenario) -> Result<(), Invalid> {
    check(
        !s.name.is_empty() && s.name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'),
        "name",
        "must be non-empty and use only letters, digits, '-' and '_' (it names the snapshot file)",
    )?;
    let w = &s.workload;
    check(w.keys >= 1, "workload.keys", "must be at least 1")?;
    check(w.rate_per_s.is_finite() && w.rate_per_s > 0.0, "workload.rate_per_s", "must be a positive number")?;
    match w.ttl {
        Ttl::Fixed { ms } => check(ms >= 1, "workload.ttl.ms", "must be at least 1")?,
        Ttl::Uniform { min_ms, max_ms } => {
            check(min_ms >= 1, "workload.ttl.min_ms", "must be at least 1")?;
            check(max_ms >= min_ms, "workload.ttl.max_ms", format!("must be >= min_ms ({min_ms})"))?;
        }
    }
    check(w.payload_bytes <= 1 << 20, "workload.payload_bytes", "must be at most 1 MiB")?;
    check(
        w.background_ttl_ms >= 60_000,
        "workload.background_ttl_ms",
        "must be at least 60000 (keys must outlive the run)",
    )?;
    let t = &s.topology;
    check(t.consumer_processes >= 1, "topology.consumer_processes", "must be at least 1")?;
    check(t.consumers_per_process >= 1, "topology.consumers_per_process", "must be at least 1")?;
    check(t.workers >= 1, "topology.workers", "must be at least 1")?;
    check(t.listeners + t.sweepers >= 1, "topology.sweepers", "at least one listener or sweeper is needed")?;
    check(t.batch >= 1, "topology.batch", "must be at least 1")?;
    check(t.claim_idle_ms >= 50, "topology.claim_idle_ms", "must be at least 50")?;
    check(t.max_deliveries >= 1, "topology.max_deliveries", "must be at least 1")?;
    check(t.ledger_bucket_ms >= 1, "topology.ledger_bucket_ms", "must be at least 1")?;
    if !t.fault_points.is_empty() {
        crate::fault::parse(&t.fault_points).map_err(|e| ("topology.fault_points".to_string(), e))?;
    }
    check(s.drain_timeout_s >= 1, "drain_timeout_s", "must be at least 1")?;
    for (i, f) in s.faults.iter().enumerate() {
        let p = |field: &str| format!("fault[{i}].{field}");
        let in_files: Vec<&str> = Fault::ALL.iter().filter(|k| k.in_scenarios()).map(|k| k.name()).collect();
        check(
            f.kind.in_scenarios(),
            p("kind"),
            format!(
                "fault kind `{}` exists only in the simulator (`expiry-stream sim` draws it per seed); scenario files take: {}",
                f.kind,
                in_files.join(", ")
            ),
        )?;
        let (required, optional) = f.kind.params();
        let present = f.present();
        for r in required {
            check(present.contains(r), p(r), format!("fault kind `{}` needs `{r}`", f.kind))?;
        }
        for x in &present {
            check(
                required.contains(x) || optional.contains(x),
                p(x),
                format!(
                    "fault kind `{}` takes no `{x}` (its parameters: {})",
                    f.kind,
                    required.iter().chain(optional.iter()).copied().collect::<Vec<_>>().join(", ")
                ),
            )?;
        }
        check(f.times >= 1, p("times"), "must be at least 1")?;
        if f.times > 1 {
            check(
                f.every_ms.is_some_and(|e| e > 0),
                p("every_ms"),
                "a fault firing more than once needs `every_ms` > 0",
            )?;
            if let Some(d) = f.for_ms {
                check(
                    f.every_ms.unwrap_or(0) > d + f.restart_after_ms.unwrap_or(0),
                    p("every_ms"),
                    "firings must not overlap: `every_ms` must exceed `for_ms` (+ `restart_after_ms`)",
                )?;
            }
        }
        if let Some(m) = &f.mode {
            check(
                f.kind.modes().contains(&m.as_str()),
                p("mode"),
                format!("unknown mode {m:?} for `{}`; one of: {}", f.kind, f.kind.modes().join(", ")),
            )?;
        }
        if let Some(pr) = f.probability {
            check(pr > 0.0 && pr <= 1.0, p("probability"), "must be in (0, 1]")?;
        }
        if let Some(fr) = f.fraction {
            check(fr > 0.0 && fr <= 1.0, p("fraction"), "must be in (0, 1]")?;
        }
        if let Some(d) = f.for_ms {
            check(d >= 1, p("for_ms"), "must be at least 1")?;
        }
        if let (Some(role), Some(Targets::Count(n))) = (f.kind.role(), f.targets) {
            let have = match role {
                Role::Consumer => t.consumer_processes,
                Role::Listener => t.listeners,
                Role::Sweeper => t.sweepers,
            };
            check(
                n <= have,
                p("targets"),
                format!("{n} targets but the topology has {have} {} process(es)", role.name()),
            )?;
        }
        match f.kind {
            Fault::KillListener | Fault::NoListener => {
                check(t.listeners >= 1, p("kind"), "the topology has no listener to fault")?
            }
            Fault::KillSweeper => check(t.sweepers >= 1, p("kind"), "the topology has no sweeper to fault")?,
            Fault::DelayAcks => check(
                f.delay_ms.unwrap_or(0) > 0,
                p("delay_ms"),
                "must be positive (above `topology.claim_idle_ms` to make acks late)",
            )?,
            Fault::NetCut | Fault::NetDelay if f.role == Some(NetRole::Capture) => {
                check(t.listeners + t.sweepers >= 1, p("role"), "the topology has no capture process")?
            }
            _ => {}
        }
    }
    // Faults of one kind that last must not overlap each other (their state would clash).
    let mut spans: Vec<(Fault, u64, u64, usize)> = vec![];
    for (i, f) in s.faults.iter().enumerate() {
        if f.for_ms.is_some() && matches!(f.kind, Fault::NetDelay | Fault::NetCut | Fault::NoListener) {
            for at in f.firings() {
                spans.push((f.kind, at, at + f.for_ms.unwrap_or(0), i));
            }
        }
    }
    for a in &spans {
        for b in &spans {
            if a.3 < b.3 && a.0 == b.0 && a.1 < b.2 && b.1 < a.2 {
                return Err((format!("fault[{}].at_ms", b.3), format!("overlaps fault[{}] of the same kind", a.3)));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const OK: &str = r#"
name = "t"
seed = 7

[workload]
keys = 100
rate_per_s = 50.0
ttl = { dist = "uniform", min_ms = 100, max_ms = 300 }

[topology]
consumer_processes = 2

[[fault]]
kind = "kill_consumer"
at_ms = 1000
every_ms = 1000
times = 2

[[fault]]
kind = "stop_consumer"
at_ms = 500
for_ms = 1500

[expect]
dead_lettered = "any"
duplicate_effects = ">= 1"
"#;

    #[test]
    fn parses_a_good_file() {
        let s = parse("ok.toml", OK).unwrap();
        assert_eq!(s.workload.ttl, Ttl::Uniform { min_ms: 100, max_ms: 300 });
        assert_eq!(s.faults.len(), 2);
        assert_eq!(s.faults[0].firings(), vec![1000, 2000]);
        assert_eq!(s.expect.dead_lettered, Bound::Any);
        assert_eq!(s.expect.duplicate_effects, Bound::AtLeast(1));
        assert_eq!(s.expect.lost, Bound::Exactly(0));
    }

    fn err(src: &str) -> Box<SpecError> {
        parse("bad.toml", src).unwrap_err()
    }

    #[test]
    fn unknown_field_names_field_and_line() {
        let e = err(&OK.replace("every_ms = 1000\n", "evry_ms = 1000\n"));
        assert_eq!(e.line, Some(16), "{e}");
        assert_eq!(e.field.as_deref(), Some("fault[0].evry_ms"), "{e}");
        assert!(e.message.contains("unknown field `evry_ms`"), "{e}");
    }

    #[test]
    fn wrong_type_names_field_and_line() {
        let e = err(&OK.replace("keys = 100", "keys = \"many\""));
        assert_eq!(e.line, Some(6), "{e}");
        assert_eq!(e.field.as_deref(), Some("workload.keys"), "{e}");
    }

    #[test]
    fn missing_field_is_named() {
        let e = err(&OK.replace("rate_per_s = 50.0\n", ""));
        assert_eq!(e.field.as_deref(), Some("workload.rate_per_s"), "{e}");
        assert!(e.line.is_some(), "{e}");
    }

    #[test]
    fn unknown_kind_and_bad_ttl() {
        let e = err(&OK.replace("\"stop_consumer\"", "\"stop_consumr\""));
        assert_eq!(e.line, Some(20), "{e}");
        assert_eq!(e.field.as_deref(), Some("fault[1].kind"), "{e}");
        let e = err(&OK.replace("max_ms = 300", "mx_ms = 300"));
        assert_eq!(e.line, Some(8), "{e}");
        assert!(e.message.contains("mx_ms"), "{e}");
    }

    /// One vocabulary: a simulator-only fault is a known name, refused with where it lives.
    #[test]
    fn a_simulator_only_fault_is_refused_by_name() {
        let e = err(&OK.replace("\"stop_consumer\"", "\"drop_notification\""));
        assert_eq!(e.field.as_deref(), Some("fault[1].kind"), "{e}");
        assert!(e.message.contains("exists only in the simulator"), "{e}");
        assert!(e.message.contains("kill_consumer"), "{e}");
    }

    #[test]
    fn validation_errors_name_field_and_line() {
        let e = err(&OK.replace("for_ms = 1500", "for_ms = 1500\ndelay_ms = 3"));
        assert_eq!(e.field.as_deref(), Some("fault[1].delay_ms"), "{e}");
        assert_eq!(e.line, Some(23), "{e}");
        let e = err(&OK.replace("at_ms = 500\nfor_ms = 1500\n", "at_ms = 500\n"));
        assert_eq!(e.field.as_deref(), Some("fault[1].for_ms"), "{e}");
        assert_eq!(e.line, Some(19), "{e}"); // the `[[fault]]` header of the table missing it
        let e = err(&OK.replace("times = 2", "times = 2\ntargets = 3"));
        assert_eq!(e.field.as_deref(), Some("fault[0].targets"), "{e}");
        assert_eq!(e.line, Some(18), "{e}");
        let e = err(&OK.replace("max_ms = 300", "max_ms = 30"));
        assert_eq!(e.field.as_deref(), Some("workload.ttl.max_ms"), "{e}");
        assert_eq!(e.line, Some(8), "{e}");
    }

    #[test]
    fn syntax_error_has_a_line_and_field() {
        let e = err("name = \"x\"\nseed = \n");
        assert_eq!(e.line, Some(2), "{e}");
        assert_eq!(e.field.as_deref(), Some("seed"), "{e}");
        let e = err(&OK.replace("keys = 100", "keys = 1 00"));
        assert_eq!(e.line, Some(6), "{e}");
        assert_eq!(e.field.as_deref(), Some("workload.keys"), "{e}");
        let e = err(&OK.replace("for_ms = 1500", "for_ms = = 1500"));
        assert_eq!(e.field.as_deref(), Some("fault[1].for_ms"), "{e}");
    }

    /// Bad input never panics: every one-character deletion, and a few insertions at every
    /// position, of a valid file is either accepted or refused with a message.
    #[test]
    fn mutated_files_never_panic() {
        let chars: Vec<char> = OK.chars().collect();
        for i in 0..chars.len() {
            let mut del = chars.clone();
            del.remove(i);
            let _ = parse("m.toml", &del.iter().collect::<String>());
            for ins in ['"', '[', '=', '\n', '9', '-', '{'] {
                let mut v = chars.clone();
                v.insert(i, ins);
                if let Err(e) = parse("m.toml", &v.iter().collect::<String>()) {
                    assert!(!e.message.is_empty());
                    assert!(e.line.is_some(), "{e}");
                    assert!(e.field.is_some() || e.message.starts_with("not valid TOML"), "{e}");
                }
            }
        }
    }
}
