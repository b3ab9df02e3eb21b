//! The simulator's own tests: one seed's report is a snapshot (options, verdict, fault and
//! protocol counts, event-log hash), a seed replays bit for bit, a safe sweep passes, and a
//! sweep with the fence or the ledger switched off finds duplicate effects (so the checker
//! cannot silently stop biting). The long sweep is `just sim-sweep` (release build).

use expiry_stream::sim::{replay_command, run_seed, run_sweep};
use expiry_stream::store::Safety;

/// A seed with crashes, pauses past the claim timeout, fenced commits, dead letters and a restart.
const SNAPSHOT_SEED: u64 = 51;

#[test]
fn one_seed_report_is_a_snapshot() {
    let r = run_seed(SNAPSHOT_SEED, Safety::ON, false);
    assert!(
        r.ok,
        "seed {SNAPSHOT_SEED} failed: {:?}\nreplay: {}",
        r.failure,
        replay_command(SNAPSHOT_SEED, Safety::ON)
    );
    insta::assert_json_snapshot!("seed_report", r);
}

#[test]
fn a_seed_replays_to_the_same_event_log_hash() {
    let a = run_seed(SNAPSHOT_SEED, Safety::ON, false);
    let b = run_seed(SNAPSHOT_SEED, Safety::ON, false);
    assert_eq!(a.event_log_hash, b.event_log_hash);
    assert_eq!(a.counts, b.counts);
    assert_ne!(a.event_log_hash, run_seed(SNAPSHOT_SEED + 1, Safety::ON, false).event_log_hash);
}

#[test]
fn a_safe_sweep_passes() {
    let s = run_sweep(0, 300, 2, Safety::ON);
    assert_eq!(s.failed, 0, "{:?}", s.first_failures);
}

fn bites(safety: Safety, seeds: u64) {
    let s = run_sweep(0, seeds, 2, safety);
    assert!(s.failed_safety > 0, "no duplicate found in {seeds} seeds with {safety:?}: the checker does not bite");
    let (seed, why) = &s.first_failures[0];
    eprintln!("{safety:?}: {} of {seeds} seeds duplicate; first: seed {seed}: {why}", s.failed_safety);
    eprintln!("replay: {}", replay_command(*seed, safety));
    // The printed replay reproduces it.
    let again = run_seed(*seed, safety, false);
    assert!(again.verdict.duplicate_effects > 0 || again.failure.as_deref().is_some_and(|f| f.starts_with("safety")));
    assert!(s.first_failures.iter().all(|(_, f)| f.starts_with("safety")), "{:?}", s.first_failures);
}

#[test]
fn without_the_fence_the_sweep_finds_duplicates() {
    bites(Safety { fence: false, ledger: true }, 300);
}

#[test]
fn without_the_ledger_the_sweep_finds_duplicates() {
    bites(Safety { fence: true, ledger: false }, 300);
}
