//! Deterministic simulation over the in-memory model ([`crate::store::model`]): a seed fixes every
//! option ([`options::Options::from_seed`], swarm testing) and every later draw (one in-house
//! splitmix64, [`rng`]); time is virtual. The whole pipeline runs as actors ([`world`]):
//! producer, Redis's active expiry, listeners that miss notifications, sweepers, consumers
//! that crash, pause, delay commits and retry, and a fault injector (replays, duplicate and
//! malformed entries, listeners and sweepers down, Redis restarts with modelled persistence).
//! The [`checker`] checks safety after every step, then faults stop and the run must drain:
//! every created event has exactly one effect or a dead-letter entry, nothing pending.
//!
//! `expiry-stream sim --seed N` runs one seed (twice, to check determinism) and prints its
//! options and report; `expiry-stream sim sweep --from N --count K` runs many. The commit's
//! safety switches come from `EXPIRY_STREAM_UNSAFE`, exactly as the real commit script's do.

pub mod checker;
pub mod options;
pub mod rng;
pub mod world;

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use serde::Serialize;

use crate::store::Safety;
use checker::Verdict;
use options::Options;
use world::{Counts, World};

/// `expiry-stream sim ...`
#[derive(clap::Args, Debug)]
#[command(args_conflicts_with_subcommands = true)]
pub struct SimArgs {
    #[command(subcommand)]
    pub cmd: Option<SimCmd>,
    /// Seed to run (default: one from the clock, printed).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Print the event log as it happens.
    #[arg(long)]
    pub trace: bool,
    /// Print the report as JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(clap::Subcommand, Debug)]
pub enum SimCmd {
    /// Runs seeds FROM..FROM+COUNT and prints every failure with the command that replays it.
    Sweep {
        #[arg(long, default_value_t = 0)]
        from: u64,
        #[arg(long, default_value_t = 10_000)]
        count: u64,
        /// Worker threads (default: up to 2).
        #[arg(long)]
        jobs: Option<usize>,
        /// Succeed only if some seed fails: proves the checker bites (with EXPIRY_STREAM_UNSAFE).
        #[arg(long)]
        expect_failure: bool,
        /// Failures to print in full.
        #[arg(long, default_value_t = 5)]
        show: usize,
    },
}

/// One seed's result.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub seed: u64,
    pub safety: String,
    pub options: Options,
    pub ok: bool,
    pub failure: Option<String>,
    pub verdict: Verdict,
    pub drained: bool,
    /// Virtual time at the end, ms since the start.
    pub end_ms: i64,
    pub counts: Counts,
    pub model: crate::store::model::ModelCounters,
    pub lost_sample: Vec<String>,
    /// FNV-1a of the event log: equal for equal seeds, or the run is not deterministic.
    pub event_log_hash: String,
}

pub fn safety_name(s: Safety) -> String {
    match (s.fence, s.ledger) {
        (true, true) => "fence,ledger".into(),
        (true, false) => "fence (no-ledger)".into(),
        (false, true) => "ledger (no-fence)".into(),
        (false, false) => "none (no-fence,no-ledger)".into(),
    }
}

/// The command that replays `seed` under `safety`.
pub fn replay_command(seed: u64, safety: Safety) -> String {
    let mut env = vec![];
    if !safety.fence {
        env.push("no-fence");
    }
    if !safety.ledger {
        env.push("no-ledger");
    }
    let prefix = if env.is_empty() { String::new() } else { format!("EXPIRY_STREAM_UNSAFE={} ", env.join(",")) };
    format!("{prefix}cargo run --release -- sim --seed {seed}")
}

/// Runs one seed.
pub fn run_seed(seed: u64, safety: Safety, trace: bool) -> Report {
    let options = Options::from_seed(seed);
    let out = World::new(seed, options.clone(), safety, trace).run();
    let v = out.checker.verdict.clone();
    let failure = if let Some(violation) = &out.checker.violation {
        Some(format!("safety: {violation}"))
    } else if v.duplicate_effects > 0 {
        Some(format!("safety: {} duplicate effects", v.duplicate_effects))
    } else if v.unexpected_effects > 0 {
        Some(format!("safety: {} effects of events never created", v.unexpected_effects))
    } else if out.counts.effects_refused > 0 {
        Some(format!(
            "safety: {} commits refused effects the handler was allowed to return",
            out.counts.effects_refused
        ))
    } else if let Some(why) = &out.checker.unexplained {
        Some(format!("safety: {why}"))
    } else if !out.drained {
        Some("liveness: did not drain after faults stopped".into())
    } else if v.lost > 0 {
        Some(format!("liveness: {} events lost: {:?}", v.lost, out.checker.lost_sample))
    } else {
        None
    };
    Report {
        seed,
        safety: safety_name(safety),
        options,
        ok: failure.is_none(),
        failure,
        verdict: v,
        drained: out.drained,
        end_ms: out.end_ms,
        counts: out.counts,
        model: out.model,
        lost_sample: out.checker.lost_sample.clone(),
        event_log_hash: format!("{:016x}", out.log_hash),
    }
}

fn print_report(r: &Report) {
    println!("seed {}  safety {}", r.seed, r.safety);
    println!("options {}", serde_json::to_string(&r.options).unwrap_or_default());
    println!("verdict {}", serde_json::to_string(&r.verdict).unwrap_or_default());
    println!("counts {}", serde_json::to_string(&r.counts).unwrap_or_default());
    println!("model {}", serde_json::to_string(&r.model).unwrap_or_default());
    println!("drained {}  end {} ms  event-log hash {}", r.drained, r.end_ms, r.event_log_hash);
}

/// Runs the `sim` subcommand; returns the process exit code.
pub async fn main(args: SimArgs) -> anyhow::Result<i32> {
    let safety = Safety::from_env();
    match args.cmd {
        Some(SimCmd::Sweep { from, count, jobs, expect_failure, show }) => {
            Ok(sweep(from, count, jobs, expect_failure, show, safety))
        }
        None => {
            let seed = args.seed.unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos() as u64)
                    .unwrap_or(0)
            });
            println!("sim: seed {seed} (replay: {})", replay_command(seed, safety));
            println!("options {}", serde_json::to_string(&Options::from_seed(seed))?);
            let r = run_seed(seed, safety, args.trace);
            let again = run_seed(seed, safety, false);
            if args.json {
                println!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                print_report(&r);
            }
            if again.event_log_hash != r.event_log_hash {
                println!("FAIL: not deterministic: event-log hash {} then {}", r.event_log_hash, again.event_log_hash);
                return Ok(1);
            }
            println!("determinism: same seed twice, same event-log hash {}", r.event_log_hash);
            match &r.failure {
                None => {
                    println!("PASS");
                    Ok(0)
                }
                Some(f) => {
                    println!("FAIL: {f}\nreplay: {}", replay_command(seed, safety));
                    Ok(1)
                }
            }
        }
    }
}

/// Summary of a sweep.
#[derive(Clone, Debug, Default, Serialize)]
pub struct SweepSummary {
    pub seeds: u64,
    pub failed: u64,
    pub failed_safety: u64,
    pub failed_liveness: u64,
    pub nondeterministic: u64,
    /// Seeds in which each fault fired at least once.
    pub seeds_with: std::collections::BTreeMap<&'static str, u64>,
    pub duplicate_effects: u64,
    pub lost_by_restart: u64,
    pub dead_lettered: u64,
    pub created: u64,
    /// Summed over the seeds: what the consumers' state machine did that only it does.
    pub mixed_group_commits: u64,
    pub readahead_released: u64,
    pub adaptive_growths: u64,
    /// (seed, failure) of the first failures, in seed order.
    pub first_failures: Vec<(u64, String)>,
}

/// Runs `count` seeds from `from`; every 97th is run twice to check determinism.
pub fn run_sweep(from: u64, count: u64, jobs: usize, safety: Safety) -> SweepSummary {
    let next = AtomicU64::new(0);
    let results: std::sync::Mutex<Vec<(u64, Report, bool)>> = std::sync::Mutex::new(Vec::with_capacity(count as usize));
    std::thread::scope(|s| {
        for _ in 0..jobs.max(1) {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= count {
                    break;
                }
                let seed = from + i;
                let r = run_seed(seed, safety, false);
                let det = seed % 97 != 0 || run_seed(seed, safety, false).event_log_hash == r.event_log_hash;
                results.lock().expect("not poisoned").push((seed, r, det));
            });
        }
    });
    let mut results = results.into_inner().expect("not poisoned");
    results.sort_by_key(|(s, _, _)| *s);
    let mut sum = SweepSummary { seeds: count, ..SweepSummary::default() };
    for (seed, r, det) in &results {
        let c = &r.counts;
        use crate::fault::Fault;
        for (name, n) in [
            (Fault::KillConsumer.name(), c.kill_consumer),
            (Fault::StopConsumer.name(), c.stop_consumer),
            (Fault::DelayAcks.name(), c.delay_acks),
            (Fault::Replay.name(), c.replay),
            (Fault::DuplicateEntry.name(), c.duplicate_entry),
            (Fault::GarbageEntry.name(), c.garbage_entry),
            (Fault::TermConsumer.name(), c.term_consumer),
            (Fault::KillListener.name(), c.kill_listener),
            (Fault::KillSweeper.name(), c.kill_sweeper),
            (Fault::DropNotification.name(), c.drop_notification),
            (Fault::RestartRedis.name(), c.restart_redis),
            ("handler_error", c.handler_transient + c.handler_permanent),
            ("fenced_commit", c.not_owner),
            ("ledger_suppressed", c.already_applied),
            ("mixed_group_commit", c.mixed_group_commits),
            ("readahead_released", c.readahead_released),
        ] {
            *sum.seeds_with.entry(name).or_insert(0) += u64::from(n > 0);
        }
        sum.duplicate_effects += r.verdict.duplicate_effects;
        sum.lost_by_restart += r.verdict.lost_by_restart;
        sum.dead_lettered += r.verdict.dead_lettered;
        sum.created += r.verdict.created;
        sum.mixed_group_commits += c.mixed_group_commits;
        sum.readahead_released += c.readahead_released;
        sum.adaptive_growths += c.adaptive_growths;
        let failure = if !det {
            Some("not deterministic: two runs, two event-log hashes".to_string())
        } else {
            r.failure.clone()
        };
        if let Some(f) = failure {
            sum.failed += 1;
            if !det {
                sum.nondeterministic += 1;
            } else if f.starts_with("safety") {
                sum.failed_safety += 1;
            } else {
                sum.failed_liveness += 1;
            }
            if sum.first_failures.len() < 50 {
                sum.first_failures.push((*seed, f));
            }
        }
    }
    sum
}

fn sweep(from: u64, count: u64, jobs: Option<usize>, expect_failure: bool, show: usize, safety: Safety) -> i32 {
    let jobs = jobs.unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1).min(2));
    println!("sim sweep: seeds {from}..{} ({count}), safety {}, {jobs} thread(s)", from + count, safety_name(safety));
    let t = Instant::now();
    let sum = run_sweep(from, count, jobs, safety);
    let secs = t.elapsed().as_secs_f64();
    println!(
        "sim sweep: {} seeds in {secs:.1} s ({:.0} seeds/s): {} failed ({} safety, {} liveness, {} nondeterministic)",
        sum.seeds,
        sum.seeds as f64 / secs.max(1e-9),
        sum.failed,
        sum.failed_safety,
        sum.failed_liveness,
        sum.nondeterministic
    );
    println!(
        "events created {}, dead-lettered {}, lost by restart (everysec persistence, not the protocol) {}, duplicate effects {}",
        sum.created, sum.dead_lettered, sum.lost_by_restart, sum.duplicate_effects
    );
    println!(
        "consumer machine: mixed_group_commits={} readahead_released={} adaptive_growths={}",
        sum.mixed_group_commits, sum.readahead_released, sum.adaptive_growths
    );
    let with: Vec<String> = sum.seeds_with.iter().map(|(k, v)| format!("{k} {v}")).collect();
    println!("seeds exercising: {}", with.join(", "));
    for (seed, f) in sum.first_failures.iter().take(show) {
        println!("FAIL seed {seed}: {f}\n  replay: {}", replay_command(*seed, safety));
    }
    if expect_failure {
        if sum.failed_safety > 0 {
            println!("expected failures found: the checker bites under safety {}", safety_name(safety));
            0
        } else {
            println!(
                "FAIL: expected the checker to find duplicate effects under {}, it found none",
                safety_name(safety)
            );
            1
        }
    } else if sum.failed == 0 {
        println!("PASS");
        0
    } else {
        1
    }
}
