//! The scenario report: the oracle's verdict beside the faults actually injected (with
//! counts), the expectations and how each fared. Written as JSON and Markdown. Its
//! deterministic part ([`Report::snapshot`]: no wall-clock times, no counts that vary from run
//! to run) is what the snapshot tests compare.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use super::procs::Exit;
use super::spec::{Fault, RedisSpec, Topology, Workload};
use crate::oracle::{Latency, Verdict};

/// One planned firing of a fault (deterministic: from the file and its seed).
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Firing {
    /// Index of the `[[fault]]` table.
    pub fault: usize,
    pub kind: Fault,
    /// 0-based firing number.
    pub n: u32,
    pub at_ms: u64,
    /// Process indices of the fault's role hit by this firing (chosen from the seed).
    pub targets: Vec<usize>,
    /// Seed of this firing's own random choices (replayed entries, clients killed).
    #[serde(skip)]
    pub seed: u64,
}

/// What one `[[fault]]` table actually did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct FaultReport {
    pub kind: String,
    pub planned: u64,
    /// Firings that really injected something (a signal delivered, a command that succeeded,
    /// an entry replayed...).
    pub fired: u64,
    /// What was done, counted as it happened (kind-specific names; see docs/SCENARIOS.md).
    pub counts: BTreeMap<String, u64>,
}

/// A Redis restart, observed from outside: list lengths read just before the crash (so
/// acknowledged to a client) and just after the restart.
#[derive(Clone, Debug, Default, Serialize)]
pub struct RestartObs {
    pub appendfsync: String,
    pub created_before: u64,
    pub created_after: u64,
    pub effects_before: u64,
    pub effects_after: u64,
    pub down_ms: u64,
}

/// The harness's own witnesses, independent of anything Redis keeps.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Acknowledged {
    /// Creations acknowledged to the producer (its local ledger file).
    pub created: u64,
    /// Of those, how many the oracle's created ledger (in Redis) no longer has.
    pub lost: u64,
    /// Effects read before a restart and missing after it (would be duplicates in a sink
    /// outside Redis: the events are redelivered and applied again).
    pub effects_rolled_back: u64,
    pub restarts: Vec<RestartObs>,
}

/// One expectation, judged.
#[derive(Clone, Debug, Serialize)]
pub struct ExpectationResult {
    pub name: String,
    pub expected: String,
    pub actual: String,
    pub ok: bool,
    /// False when `actual` can vary between passing runs (kept out of the snapshot).
    #[serde(skip)]
    pub stable: bool,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Timings {
    pub wall_s: f64,
    pub produce_s: f64,
    pub drain_s: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub scenario: String,
    pub description: String,
    pub file: String,
    pub seed: u64,
    /// The command that runs this scenario again.
    pub replay: String,
    pub backend: String,
    /// Test-only commit safety switches given to the consumer processes ("" when none).
    pub unsafe_switches: String,
    pub verdict: String,
    pub oracle: Verdict,
    pub acknowledged: Acknowledged,
    pub drained: bool,
    pub faults: Vec<FaultReport>,
    pub plan: Vec<Firing>,
    pub expectations: Vec<ExpectationResult>,
    pub processes_spawned: u64,
    pub unexpected_exits: Vec<Exit>,
    pub producer_retries: u64,
    pub deadline_to_effect_ms: Latency,
    pub lost_sample: Vec<String>,
    /// The library's own counters (`{ns}:stats`), printed beside the verdict, never used by it.
    pub library: BTreeMap<String, i64>,
    pub timings: Timings,
    pub workload: Workload,
    pub topology: Topology,
    pub redis: RedisSpec,
    pub logs: String,
}

impl Report {
    pub fn passed(&self) -> bool {
        self.expectations.iter().all(|e| e.ok)
    }

    /// The deterministic part: what the snapshot tests compare. No times, no counts that
    /// vary between runs; fault counts appear as "fired all planned".
    pub fn snapshot(&self) -> serde_json::Value {
        let faults: Vec<serde_json::Value> = self
            .faults
            .iter()
            .map(|f| {
                serde_json::json!({
                    "kind": f.kind,
                    "planned": f.planned,
                    "fired": f.fired,
                    "counted": f.counts.keys().cloned().collect::<Vec<_>>(),
                })
            })
            .collect();
        let plan: Vec<serde_json::Value> = self
            .plan
            .iter()
            .map(|p| serde_json::json!({ "kind": p.kind, "at_ms": p.at_ms, "targets": p.targets }))
            .collect();
        let expectations: Vec<serde_json::Value> = self
            .expectations
            .iter()
            .map(|e| {
                if e.stable {
                    serde_json::json!({ "name": e.name, "expected": e.expected, "actual": e.actual, "ok": e.ok })
                } else {
                    serde_json::json!({ "name": e.name, "expected": e.expected, "ok": e.ok })
                }
            })
            .collect();
        serde_json::json!({
            "scenario": self.scenario,
            "seed": self.seed,
            "unsafe_switches": self.unsafe_switches,
            "verdict": self.verdict,
            // Creations acknowledged to the producer (its local ledger): the oracle's own count
            // can legitimately vary where a restart may lose writes (appendfsync everysec).
            "created": self.acknowledged.created,
            "expectations": expectations,
            "faults": faults,
            "plan": plan,
        })
    }

    /// The human report.
    pub fn markdown(&self) -> String {
        let mut s = String::new();
        let o = &self.oracle;
        let _ = writeln!(s, "# Scenario `{}`: {}\n", self.scenario, self.verdict);
        if !self.description.is_empty() {
            let _ = writeln!(s, "{}\n", self.description.trim());
        }
        let _ = writeln!(s, "- file: `{}`, seed {}", self.file, self.seed);
        let _ = writeln!(s, "- run again: `{}`", self.replay);
        let _ = writeln!(s, "- Redis: {}", self.backend);
        if !self.unsafe_switches.is_empty() {
            let _ = writeln!(s, "- **unsafe switches in consumers: `{}`** (test-only)", self.unsafe_switches);
        }
        let _ = writeln!(
            s,
            "- wall {:.1} s (produce {:.1} s, drain {:.1} s); processes spawned: {}; logs: `{}`\n",
            self.timings.wall_s, self.timings.produce_s, self.timings.drain_s, self.processes_spawned, self.logs
        );
        let _ = writeln!(s, "## Oracle (created vs effected)\n");
        let _ = writeln!(s, "| created | effected | lost | duplicate effects | unexpected effects | dead-lettered |");
        let _ = writeln!(s, "|---:|---:|---:|---:|---:|---:|");
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} |\n",
            o.created, o.effected, o.lost, o.duplicate_effects, o.unexpected_effects, o.dead_lettered
        );
        let a = &self.acknowledged;
        let _ = writeln!(s, "## Witnesses outside the commit path (ADR 009)\n");
        let _ = writeln!(s, "{}", o.witness_table());
        let _ = writeln!(
            s,
            "Harness witnesses: {} creations acknowledged to the producer, {} of them missing from Redis; \
             {} effects rolled back by Redis restarts.\n",
            a.created, a.lost, a.effects_rolled_back
        );
        for r in &a.restarts {
            let _ = writeln!(
                s,
                "- restart (appendfsync {}), down {} ms: created ledger {} -> {}, effects ledger {} -> {}",
                r.appendfsync, r.down_ms, r.created_before, r.created_after, r.effects_before, r.effects_after
            );
        }
        if !a.restarts.is_empty() {
            s.push('\n');
        }
        let _ = writeln!(s, "## Faults injected\n");
        let _ = writeln!(s, "| # | kind | planned | fired | counts |");
        let _ = writeln!(s, "|---:|---|---:|---:|---|");
        for (i, f) in self.faults.iter().enumerate() {
            let counts: Vec<String> = f.counts.iter().map(|(k, v)| format!("{k} {v}")).collect();
            let _ = writeln!(s, "| {i} | {} | {} | {} | {} |", f.kind, f.planned, f.fired, counts.join(", "));
        }
        let _ = writeln!(s, "\n## Expectations\n");
        let _ = writeln!(s, "| expectation | expected | actual | |");
        let _ = writeln!(s, "|---|---|---|---|");
        for e in &self.expectations {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} |",
                e.name,
                e.expected,
                e.actual,
                if e.ok { "ok" } else { "**FAILED**" }
            );
        }
        if !self.unexpected_exits.is_empty() {
            let _ = writeln!(s, "\n## Unexpected process exits\n");
            for x in &self.unexpected_exits {
                let _ = writeln!(s, "- {} {} (pid {}): {}", x.role.name(), x.index, x.pid, x.status);
            }
        }
        let _ = writeln!(s, "\n## Beside the verdict (not used by it)\n");
        let _ = writeln!(
            s,
            "- deadline to effect, ms: p50 {} p99 {} max {}",
            self.deadline_to_effect_ms.p50, self.deadline_to_effect_ms.p99, self.deadline_to_effect_ms.max
        );
        let lib: Vec<String> = self.library.iter().map(|(k, v)| format!("{k} {v}")).collect();
        let _ = writeln!(s, "- library counters: {}", lib.join(", "));
        let _ = writeln!(s, "- producer retries: {}", self.producer_retries);
        if !self.lost_sample.is_empty() {
            let _ = writeln!(s, "- lost sample: {}", self.lost_sample.join(", "));
        }
        s
    }

    /// One line for the terminal.
    pub fn summary(&self) -> String {
        let o = &self.oracle;
        let faults: Vec<String> = self.faults.iter().map(|f| format!("{} {}/{}", f.kind, f.fired, f.planned)).collect();
        let failed: Vec<String> = self
            .expectations
            .iter()
            .filter(|e| !e.ok)
            .map(|e| format!("{} expected {} got {}", e.name, e.expected, e.actual))
            .collect();
        format!(
            "scenario {}: {} | oracle: {} | faults fired: {}{}",
            self.scenario,
            self.verdict,
            o.line(),
            if faults.is_empty() { "none".to_string() } else { faults.join(", ") },
            if failed.is_empty() { String::new() } else { format!(" | FAILED: {}", failed.join("; ")) }
        )
    }
}
