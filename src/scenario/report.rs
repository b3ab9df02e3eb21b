//! The scenario report: the oracle's verdict beside the faults actually injected (with
//! counts), the expectations and how each fared. Written as JSON and Markdown. Its
//! deterministic part ([`Report::snapshot`]: no wall-clock times, no counts that vary from run
//! to run) is what the snapshot tests compare.

use std::collections::BTreeMap;

use serde::Serialize;

use super::procs::Exit;
use super::spec::{Fault, RedisSpec, Topology, Workload};
use crate::oracle::{Latency, Verdict};
use crate::report::{oracle_sections, Block, Doc, Section, Table};

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

    /// The scenario as the one report model ([`Doc`]), rendered by [`Report::markdown`].
    pub fn doc(&self) -> Doc {
        let mut facts = vec![
            format!("file: `{}`, seed {}", self.file, self.seed),
            format!("run again: `{}`", self.replay),
            format!("Redis: {}", self.backend),
        ];
        if !self.unsafe_switches.is_empty() {
            facts.push(format!("**unsafe switches in consumers: `{}`** (test-only)", self.unsafe_switches));
        }
        facts.push(format!(
            "wall {:.1} s (produce {:.1} s, drain {:.1} s); processes spawned: {}; logs: `{}`",
            self.timings.wall_s, self.timings.produce_s, self.timings.drain_s, self.processes_spawned, self.logs
        ));
        let mut sections = oracle_sections(&self.oracle);
        let a = &self.acknowledged;
        sections[1].blocks.push(Block::Text(format!(
            "Harness witnesses: {} creations acknowledged to the producer, {} of them missing from Redis; \
             {} effects rolled back by Redis restarts.",
            a.created, a.lost, a.effects_rolled_back
        )));
        if !a.restarts.is_empty() {
            sections[1].blocks.push(Block::List(
                a.restarts
                    .iter()
                    .map(|r| {
                        format!(
                            "restart (appendfsync {}), down {} ms: created ledger {} -> {}, effects ledger {} -> {}",
                            r.appendfsync,
                            r.down_ms,
                            r.created_before,
                            r.created_after,
                            r.effects_before,
                            r.effects_after
                        )
                    })
                    .collect(),
            ));
        }
        let mut faults =
            Table::new(&[("#", true), ("kind", false), ("planned", true), ("fired", true), ("counts", false)]);
        for (i, f) in self.faults.iter().enumerate() {
            let counts: Vec<String> = f.counts.iter().map(|(k, v)| format!("{k} {v}")).collect();
            faults = faults.row(vec![
                i.to_string(),
                f.kind.clone(),
                f.planned.to_string(),
                f.fired.to_string(),
                counts.join(", "),
            ]);
        }
        sections.push(Section::new("Faults injected", vec![Block::Table(faults)]));
        let mut expectations =
            Table::new(&[("expectation", false), ("expected", false), ("actual", false), ("", false)]);
        for e in &self.expectations {
            let verdict = if e.ok { "ok" } else { "**FAILED**" };
            expectations = expectations.row(vec![e.name.clone(), e.expected.clone(), e.actual.clone(), verdict.into()]);
        }
        sections.push(Section::new("Expectations", vec![Block::Table(expectations)]));
        if !self.unexpected_exits.is_empty() {
            let exits = self
                .unexpected_exits
                .iter()
                .map(|x| format!("{} {} (pid {}): {}", x.role.name(), x.index, x.pid, x.status))
                .collect();
            sections.push(Section::new("Unexpected process exits", vec![Block::List(exits)]));
        }
        let lib: Vec<String> = self.library.iter().map(|(k, v)| format!("{k} {v}")).collect();
        let l = &self.deadline_to_effect_ms;
        let mut beside = vec![
            format!("deadline to effect, ms: p50 {} p99 {} max {}", l.p50, l.p99, l.max),
            format!("library counters: {}", lib.join(", ")),
            format!("producer retries: {}", self.producer_retries),
        ];
        if !self.lost_sample.is_empty() {
            beside.push(format!("lost sample: {}", self.lost_sample.join(", ")));
        }
        sections.push(Section::new("Beside the verdict (not used by it)", vec![Block::List(beside)]));
        Doc {
            title: format!("Scenario `{}`: {}", self.scenario, self.verdict),
            paragraphs: if self.description.is_empty() { vec![] } else { vec![self.description.clone()] },
            facts,
            sections,
        }
    }

    /// The human report (Markdown).
    pub fn markdown(&self) -> String {
        self.doc().markdown()
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
