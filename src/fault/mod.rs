//! The faults, by their one name ([`Fault`]), and the named fault points that inject some of
//! them inside a process.
//!
//! A point is a place-like name in the code
//! (`consume::before_commit`); `EXPIRY_STREAM_FAULTS` arms some of them in a process:
//!
//! `consume::before_commit=sleep(3000)@0.05;consume::after_read=abort@0.001`
//!
//! Actions: `sleep(MS)` (delays the task: a delayed ack), `abort` (the process dies at once,
//! as with `kill -9`: no cleanup, no commit). `@P` fires with probability P (default 1).
//! Unarmed points cost one relaxed load. Bad specs are refused at startup with the reason.

use std::sync::OnceLock;
use std::time::Duration;

/// Every fault the project injects, defined once. The simulator draws a rate for each fault it
/// can express ([`Fault::in_sim`]); scenario files name the faults real processes and servers
/// can suffer ([`Fault::in_scenarios`]). A fault both express has one name and one meaning in
/// both: a seed's options and a scenario file say `kill_consumer`, `stop_consumer`,
/// `delay_acks`, `replay`, `kill_listener`, `kill_sweeper` and `restart_redis` alike.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Fault {
    KillConsumer,
    CrashMidBatch,
    StopConsumer,
    TermConsumer,
    DelayAcks,
    Replay,
    DuplicateEntry,
    GarbageEntry,
    KillListener,
    KillSweeper,
    NoListener,
    DropNotification,
    RestartRedis,
    ClientKill,
    PauseRedis,
    NetDelay,
    NetCut,
    HandlerTransient,
    HandlerPermanent,
}

impl Fault {
    pub const ALL: &'static [Fault] = &[
        Fault::KillConsumer,
        Fault::CrashMidBatch,
        Fault::StopConsumer,
        Fault::TermConsumer,
        Fault::DelayAcks,
        Fault::Replay,
        Fault::DuplicateEntry,
        Fault::GarbageEntry,
        Fault::KillListener,
        Fault::KillSweeper,
        Fault::NoListener,
        Fault::DropNotification,
        Fault::RestartRedis,
        Fault::ClientKill,
        Fault::PauseRedis,
        Fault::NetDelay,
        Fault::NetCut,
        Fault::HandlerTransient,
        Fault::HandlerPermanent,
    ];

    /// The one name, in seeds' options, sweep summaries, scenario files and reports.
    pub fn name(self) -> &'static str {
        match self {
            Fault::KillConsumer => "kill_consumer",
            Fault::CrashMidBatch => "crash_mid_batch",
            Fault::StopConsumer => "stop_consumer",
            Fault::TermConsumer => "term_consumer",
            Fault::DelayAcks => "delay_acks",
            Fault::Replay => "replay",
            Fault::DuplicateEntry => "duplicate_entry",
            Fault::GarbageEntry => "garbage_entry",
            Fault::KillListener => "kill_listener",
            Fault::KillSweeper => "kill_sweeper",
            Fault::NoListener => "no_listener",
            Fault::DropNotification => "drop_notification",
            Fault::RestartRedis => "restart_redis",
            Fault::ClientKill => "client_kill",
            Fault::PauseRedis => "pause_redis",
            Fault::NetDelay => "net_delay",
            Fault::NetCut => "net_cut",
            Fault::HandlerTransient => "handler_transient",
            Fault::HandlerPermanent => "handler_permanent",
        }
    }

    /// What the fault is, in both harnesses.
    pub fn meaning(self) -> &'static str {
        match self {
            Fault::KillConsumer => "a consumer dies at once (SIGKILL): what it held in memory is gone, its entries stay pending",
            Fault::CrashMidBatch => "kill_consumer right after a read (the fault point consume::after_read=abort): a batch read and never committed",
            Fault::StopConsumer => "a consumer freezes (SIGSTOP, then SIGCONT), often past the claim timeout",
            Fault::TermConsumer => "a consumer is asked to stop gracefully (SIGTERM): it commits what it started, releases the rest, restarts",
            Fault::DelayAcks => "a commit waits before it is sent (the fault point consume::before_commit=sleep)",
            Fault::Replay => "an already effected event's entry is added to the stream again",
            Fault::DuplicateEntry => "a live stream entry is added a second time",
            Fault::GarbageEntry => "an entry the capture script would never write is added to the stream",
            Fault::KillListener => "a keyspace listener dies (or, in the simulator, is down for a while)",
            Fault::KillSweeper => "a sweeper dies (or, in the simulator, is down for a while)",
            Fault::NoListener => "no listener runs for a while: only the sweeper captures",
            Fault::DropNotification => "a keyspace notification to one listener is lost",
            Fault::RestartRedis => "Redis restarts, keeping what its persistence kept",
            Fault::ClientKill => "CLIENT KILL of a fraction of the connections",
            Fault::PauseRedis => "Redis stops answering for a while (CLIENT PAUSE, DEBUG SLEEP or a frozen process)",
            Fault::NetDelay => "latency added to a role's network path",
            Fault::NetCut => "a role's network path is cut for a while",
            Fault::HandlerTransient => "a handler fails with a transient error (retried with backoff)",
            Fault::HandlerPermanent => "a handler refuses an event (dead-lettered)",
        }
    }

    /// Drawn per seed by the simulator.
    pub fn in_sim(self) -> bool {
        !matches!(
            self,
            Fault::CrashMidBatch
                | Fault::NoListener
                | Fault::ClientKill
                | Fault::PauseRedis
                | Fault::NetDelay
                | Fault::NetCut
        )
    }

    /// Named in scenario files (injected into real processes and servers).
    pub fn in_scenarios(self) -> bool {
        !matches!(
            self,
            Fault::TermConsumer
                | Fault::DuplicateEntry
                | Fault::GarbageEntry
                | Fault::DropNotification
                | Fault::HandlerTransient
                | Fault::HandlerPermanent
        )
    }
}

impl std::fmt::Display for Fault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    Sleep(Duration),
    Abort,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Arm {
    pub point: String,
    pub action: Action,
    pub probability: f64,
}

/// Every fault point in the code, so a typo in a spec is an error, not a silent no-op.
pub const POINTS: &[&str] = &["consume::after_read", "consume::before_commit", "consume::after_commit"];

static ARMED: OnceLock<Vec<Arm>> = OnceLock::new();

/// Parses a fault spec (see the module doc).
pub fn parse(spec: &str) -> Result<Vec<Arm>, String> {
    let mut out = vec![];
    for part in spec.split(';').map(str::trim).filter(|p| !p.is_empty()) {
        let (point, rest) = part.split_once('=').ok_or_else(|| format!("fault {part:?}: expected POINT=ACTION"))?;
        let point = point.trim();
        if !POINTS.contains(&point) {
            return Err(format!("fault {part:?}: unknown point {point:?}; known: {}", POINTS.join(", ")));
        }
        let (action, p) = match rest.split_once('@') {
            Some((a, p)) => (a.trim(), p.trim()),
            None => (rest.trim(), "1"),
        };
        let probability: f64 = p
            .parse()
            .ok()
            .filter(|p: &f64| (0.0..=1.0).contains(p))
            .ok_or_else(|| format!("fault {part:?}: probability {p:?} is not in [0, 1]"))?;
        let action = if action == "abort" {
            Action::Abort
        } else if let Some(ms) = action.strip_prefix("sleep(").and_then(|a| a.strip_suffix(')')) {
            let ms: u64 =
                ms.trim().parse().map_err(|_| format!("fault {part:?}: sleep needs milliseconds, got {ms:?}"))?;
            Action::Sleep(Duration::from_millis(ms))
        } else {
            return Err(format!("fault {part:?}: unknown action {action:?}; known: sleep(MS), abort"));
        };
        out.push(Arm { point: point.to_string(), action, probability });
    }
    Ok(out)
}

/// Arms the points named in `EXPIRY_STREAM_FAULTS` (once per process).
pub fn init_from_env() -> Result<(), String> {
    let spec = std::env::var("EXPIRY_STREAM_FAULTS").unwrap_or_default();
    let arms = parse(&spec)?;
    if !arms.is_empty() {
        eprintln!("fault points armed: {spec}");
    }
    let _ = ARMED.set(arms);
    Ok(())
}

/// A fault point. Does nothing unless armed.
pub async fn point(name: &'static str) {
    let Some(arms) = ARMED.get() else { return };
    for a in arms.iter().filter(|a| a.point == name) {
        if a.probability < 1.0 && fastrand::f64() >= a.probability {
            continue;
        }
        match &a.action {
            Action::Sleep(d) => tokio::time::sleep(*d).await,
            Action::Abort => {
                eprintln!("fault point {name}: abort");
                std::process::abort();
            }
        }
    }
}

#[cfg(test)]
mod fault_names {
    use super::Fault;

    #[test]
    fn every_fault_has_one_name_that_round_trips_and_a_harness() {
        let mut names: Vec<&str> = Fault::ALL.iter().map(|f| f.name()).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), Fault::ALL.len(), "two faults share a name");
        for f in Fault::ALL {
            let json = serde_json::to_string(f).unwrap();
            assert_eq!(json, format!("\"{}\"", f.name()));
            assert_eq!(serde_json::from_str::<Fault>(&json).unwrap(), *f);
            assert!(f.in_sim() || f.in_scenarios(), "{f} is injected nowhere");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_refuses() {
        let a = parse("consume::before_commit=sleep(30)@0.5; consume::after_read=abort").unwrap();
        assert_eq!(a[0].action, Action::Sleep(Duration::from_millis(30)));
        assert_eq!(a[0].probability, 0.5);
        assert_eq!(a[1].action, Action::Abort);
        assert!(parse("nowhere=abort").unwrap_err().contains("unknown point"));
        assert!(parse("consume::after_read=explode").unwrap_err().contains("unknown action"));
        assert!(parse("consume::after_read=abort@2").unwrap_err().contains("probability"));
        assert!(parse("consume::after_read").unwrap_err().contains("POINT=ACTION"));
        assert!(parse("").unwrap().is_empty());
    }
}
