//! The fault injectors: one function per firing of a `[[fault]]`, each counting what it
//! actually did (signals delivered, commands that succeeded, entries replayed), never what
//! was planned. The plan itself ([`plan`]) is a pure function of the file and its seed.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::procs::{self, Shared};
use super::proxy::{host_port, Proxy};
use super::report::{FaultReport, Firing, RestartObs};
use super::spec::{Fault, NetRole, Role, Scenario, Targets};
use crate::core::{encode_entry, event_id, Event, Via};
use crate::provision::RedisServer;
use crate::store::server::Server;
use crate::store::RedisStore;

/// What a fault touched: the consumer process slots it paused or armed (every incarnation of
/// slot `t` names its consumers `c<t>-…`), and the outages it caused (Unix ms, from the
/// fault's start to the end of its restart).
#[derive(Clone, Debug, Default)]
pub struct Evidence {
    pub slots: Vec<usize>,
    pub windows: Vec<(i64, i64)>,
}

/// Whether each fault bit: had an effect that would have caused a loss or a duplicate if the
/// code were wrong. Judged after the run from the oracle's witnesses, never from library
/// counters; adds the evidence to the fault's counts and returns, per fault, what was required
/// and whether it held.
pub fn bite(
    s: &Scenario,
    reports: &mut [FaultReport],
    evidence: &[Evidence],
    check: &crate::oracle::Check,
) -> Vec<(String, bool)> {
    let superseded_by = |slots: &[usize]| -> u64 {
        check
            .superseded_runs
            .iter()
            .filter(|(c, _)| slots.iter().any(|t| c.starts_with(&format!("c{t}-"))))
            .map(|(_, n)| *n)
            .sum()
    };
    // Expirations captured (server time at capture) while part of the capture layer was down,
    // by `via` or by any path when None: the surviving path's work (the killed component was
    // down for the whole window: it is restarted at its end).
    let in_outage = |ev: &Evidence, via: Option<Via>| -> u64 {
        check
            .captured_via
            .iter()
            .filter(|(d, v)| via.is_none_or(|w| *v == w) && ev.windows.iter().any(|(a, b)| a <= d && d <= b))
            .count() as u64
    };
    let superseded_all: u64 = check.superseded_runs.values().sum();
    let mut out = vec![];
    for (i, (f, r)) in s.faults.iter().zip(reports.iter_mut()).enumerate() {
        let ev = evidence.get(i).cloned().unwrap_or_default();
        let c = |r: &FaultReport, n: &str| r.counts.get(n).copied().unwrap_or(0);
        let (what, ok) = match (f.kind, f.mode.as_deref()) {
            (Fault::KillConsumer, _) => ("kills_mid_batch >= 1", c(r, "kills_mid_batch") > 0),
            (Fault::CrashMidBatch, _) => ("aborts_observed >= 1", c(r, "aborts_observed") > 0),
            (Fault::StopConsumer, _) => {
                r.counts.insert("runs_superseded".into(), superseded_by(&ev.slots));
                (
                    "entries_held_at_stop >= 1 and runs_superseded >= 1",
                    c(r, "entries_held_at_stop") > 0 && c(r, "runs_superseded") > 0,
                )
            }
            (Fault::DelayAcks, _) => {
                r.counts.insert("runs_superseded".into(), superseded_by(&ev.slots));
                ("runs_superseded >= 1", c(r, "runs_superseded") > 0)
            }
            (Fault::Replay, Some("setid") | Some("xclaim")) => {
                r.counts.insert("runs_superseded".into(), superseded_all);
                ("runs_superseded >= 1 (in the run)", superseded_all > 0)
            }
            (Fault::Replay, _) => {
                r.counts.insert("capture_duplicates".into(), check.oracle.capture_duplicates);
                ("capture_duplicates >= 1 (replays reached handlers)", check.oracle.capture_duplicates > 0)
            }
            (Fault::KillListener | Fault::KillSweeper, _) => {
                // The survivor is the other listener or sweeper of the same kind, or the other path.
                r.counts.insert("captured_in_outage".into(), in_outage(&ev, None));
                ("captured_in_outage >= 1", c(r, "captured_in_outage") > 0)
            }
            (Fault::NoListener, _) => {
                r.counts.insert("captured_by_sweeper_in_outage".into(), in_outage(&ev, Some(Via::Sweeper)));
                ("captured_by_sweeper_in_outage >= 1", c(r, "captured_by_sweeper_in_outage") > 0)
            }
            _ => ("fired >= 1", r.fired > 0),
        };
        out.push((format!("fault[{i}] {}: {what}", f.kind), ok));
    }
    out
}

/// Every firing of every fault, with its targets, from the seed alone.
pub fn plan(s: &Scenario) -> Vec<Firing> {
    let mut rng = fastrand::Rng::with_seed(s.seed);
    let mut out = vec![];
    for (i, f) in s.faults.iter().enumerate() {
        let have = match f.kind.role() {
            Some(Role::Consumer) => s.topology.consumer_processes,
            Some(Role::Listener) => s.topology.listeners,
            Some(Role::Sweeper) => s.topology.sweepers,
            None => 0,
        };
        let default = if f.kind == Fault::NoListener { Targets::All } else { Targets::Count(1) };
        for (n, at) in f.firings().into_iter().enumerate() {
            let targets = match (f.kind.role(), f.targets.unwrap_or(default)) {
                (None, _) => vec![],
                (Some(_), Targets::All) => (0..have).collect(),
                (Some(_), Targets::Count(k)) => {
                    let mut all: Vec<usize> = (0..have).collect();
                    rng.shuffle(&mut all);
                    let mut t: Vec<usize> = all.into_iter().take(k.min(have)).collect();
                    t.sort_unstable();
                    t
                }
            };
            out.push(Firing { fault: i, kind: f.kind, n: n as u32, at_ms: at, targets, seed: rng.u64(..) });
        }
    }
    out
}

/// The proxies every role reaches Redis through.
pub struct Proxies {
    pub consumers: Proxy,
    pub capture: Proxy,
    pub harness: Proxy,
}

impl Proxies {
    pub fn all(&self) -> [&Proxy; 3] {
        [&self.consumers, &self.capture, &self.harness]
    }
    fn for_role(&self, r: NetRole) -> &Proxy {
        match r {
            NetRole::Consumers => &self.consumers,
            NetRole::Capture => &self.capture,
        }
    }
}

/// Everything a fault needs.
pub struct Ctx {
    pub scenario: Scenario,
    pub procs: Shared,
    pub server: Arc<tokio::sync::Mutex<RedisServer>>,
    /// Arguments the server was started with (a restart must use the same).
    pub server_args: Vec<String>,
    pub proxies: Proxies,
    /// The harness's own connection (through its proxy).
    pub store: RedisStore,
    /// Held for writing by faults that break the harness's own connections (restart, client
    /// kill), so the producer is never caught mid-write: each creation is acknowledged or
    /// cleanly retried, never ambiguous. (Re)starting a process takes it for reading: a
    /// process is never started while Redis is deliberately down (it would exit at once, as
    /// `consume` and `capture` do when Redis is unreachable at startup).
    pub gate: Arc<tokio::sync::RwLock<()>>,
    pub reports: Mutex<Vec<FaultReport>>,
    /// What each fault touched, for judging afterwards whether it bit ([`bite`]).
    pub evidence: Mutex<Vec<Evidence>>,
    pub restarts: Mutex<Vec<RestartObs>>,
    /// Payload of workload key `i` (to replay faithful copies of entries).
    pub payload_for: fn(u64, usize) -> Vec<u8>,
}

impl Ctx {
    fn count(&self, fault: usize, what: &str, n: u64) {
        let mut r = self.reports.lock().unwrap();
        *r[fault].counts.entry(what.to_string()).or_insert(0) += n;
    }
    fn evidence(&self, fault: usize, f: impl FnOnce(&mut Evidence)) {
        let mut e = self.evidence.lock().unwrap();
        if e.len() <= fault {
            e.resize(fault + 1, Evidence::default());
        }
        f(&mut e[fault]);
    }

    fn fired(&self, fault: usize) {
        self.reports.lock().unwrap()[fault].fired += 1;
    }
    /// A server connection of the harness's own (through its proxy), for server-wide faults.
    async fn server(&self) -> anyhow::Result<Server> {
        Ok(self.store.server().await?)
    }
    fn base_faults(&self) -> String {
        self.scenario.topology.fault_points.clone()
    }
}

fn join_faults(base: &str, extra: &str) -> String {
    if base.is_empty() {
        extra.to_string()
    } else {
        format!("{base};{extra}")
    }
}

/// Entries pending for the consumers of process `pid` (consumer names embed the pid).
pub async fn held_by(store: &RedisStore, pid: u32) -> u64 {
    let tag = format!("-{pid}-");
    let per = store.pending_per_consumer().await.unwrap_or_default();
    per.iter().filter(|(name, _)| name.contains(&tag)).map(|(_, n)| n).sum()
}

async fn llen(store: &RedisStore, key: &str) -> anyhow::Result<u64> {
    Ok(store.list_len(key).await?)
}

/// Runs one firing. Errors are counted, never fatal to the run: the report shows a firing
/// that did not fire.
pub async fn fire(ctx: Arc<Ctx>, f: Firing) {
    let spec = ctx.scenario.faults[f.fault].clone();
    let for_ms = Duration::from_millis(spec.for_ms.unwrap_or(0));
    let restart_after = Duration::from_millis(spec.restart_after_ms.unwrap_or(500));
    let i = f.fault;
    let grace = Duration::from_secs(20);
    let result: anyhow::Result<()> = async {
        match f.kind {
            Fault::KillConsumer | Fault::KillListener | Fault::KillSweeper => {
                let role = f.kind.role().expect("role");
                let mut killed = vec![];
                let down_from = crate::oracle::now_ms();
                for &t in &f.targets {
                    wait_alive(&ctx.procs, role, t).await;
                    let pid = ctx.procs.lock().unwrap().kill9(role, t);
                    if let Some(pid) = pid {
                        ctx.count(i, "sigkill_delivered", 1);
                        if role == Role::Consumer {
                            // The dead process's pending entries, frozen at the kill: the batch
                            // it was in the middle of.
                            let held = held_by(&ctx.store, pid).await;
                            ctx.count(i, "entries_held_at_kill", held);
                            if held > 0 {
                                ctx.count(i, "kills_mid_batch", 1);
                            }
                        }
                        killed.push(t);
                    }
                }
                if !killed.is_empty() {
                    ctx.fired(i);
                }
                tokio::time::sleep(restart_after).await;
                let any = !killed.is_empty();
                for t in killed {
                    procs::start(&ctx.procs, &ctx.gate, role, t).await?;
                    ctx.count(i, "restarts", 1);
                }
                if any {
                    ctx.evidence(i, |e| e.windows.push((down_from, crate::oracle::now_ms())));
                }
            }
            Fault::CrashMidBatch => {
                let p = spec.probability.unwrap_or(0.05);
                let exits_before = ctx.procs.lock().unwrap().exits.iter().filter(|x| x.injected).count();
                for &t in &f.targets {
                    {
                        let mut pr = ctx.procs.lock().unwrap();
                        pr.set_faults(t, &join_faults(&ctx.base_faults(), &format!("consume::after_read=abort@{p}")));
                        pr.set_restart_after(Role::Consumer, t, restart_after);
                    }
                    procs::stop(&ctx.procs, Role::Consumer, t, grace).await;
                    procs::start(&ctx.procs, &ctx.gate, Role::Consumer, t).await?;
                    ctx.count(i, "processes_armed", 1);
                }
                tokio::time::sleep(for_ms).await;
                for &t in &f.targets {
                    ctx.procs.lock().unwrap().set_faults(t, &ctx.base_faults());
                    procs::stop(&ctx.procs, Role::Consumer, t, grace).await;
                    procs::start(&ctx.procs, &ctx.gate, Role::Consumer, t).await?;
                }
                let aborts =
                    ctx.procs.lock().unwrap().exits.iter().filter(|x| x.injected).count().saturating_sub(exits_before);
                ctx.count(i, "aborts_observed", aborts as u64);
                if aborts > 0 {
                    ctx.fired(i);
                }
            }
            Fault::StopConsumer => {
                let mut stopped = vec![];
                for &t in &f.targets {
                    // The stop lands mid-work: a consumer that dispatches to its workers holds
                    // entries only while it has work, so the firing waits (up to 2 s) for the
                    // target to hold some, and a stop that finds it holding none after all (it
                    // committed meanwhile) is undone at once and tried again. Only the stop
                    // that stays is counted.
                    let mut tries = 0;
                    loop {
                        wait_alive(&ctx.procs, Role::Consumer, t).await;
                        let Some(pid) = ctx.procs.lock().unwrap().pid(Role::Consumer, t) else { break };
                        tries += 1;
                        let last = tries >= 200;
                        if !last && held_by(&ctx.store, pid).await == 0 {
                            tokio::time::sleep(Duration::from_millis(10)).await;
                            continue;
                        }
                        if !ctx.procs.lock().unwrap().signal(Role::Consumer, t, libc::SIGSTOP) {
                            break;
                        }
                        let held = held_by(&ctx.store, pid).await;
                        if held == 0 && !last {
                            ctx.procs.lock().unwrap().signal(Role::Consumer, t, libc::SIGCONT);
                            continue;
                        }
                        ctx.count(i, "sigstop_delivered", 1);
                        ctx.count(i, "entries_held_at_stop", held);
                        ctx.evidence(i, |e| e.slots.push(t));
                        stopped.push(t);
                        break;
                    }
                }
                if !stopped.is_empty() {
                    ctx.fired(i);
                }
                tokio::time::sleep(for_ms).await;
                for t in stopped {
                    if ctx.procs.lock().unwrap().signal(Role::Consumer, t, libc::SIGCONT) {
                        ctx.count(i, "sigcont_delivered", 1);
                    }
                }
            }
            Fault::DelayAcks => {
                let d = spec.delay_ms.unwrap_or(0);
                let p = spec.probability.unwrap_or(1.0);
                let fenced_before = ctx.store.stats().await.ok().and_then(|s| s.get("fenced").copied()).unwrap_or(0);
                for &t in &f.targets {
                    ctx.procs.lock().unwrap().set_faults(
                        t,
                        &join_faults(&ctx.base_faults(), &format!("consume::before_commit=sleep({d})@{p}")),
                    );
                    procs::stop(&ctx.procs, Role::Consumer, t, grace).await;
                    procs::start(&ctx.procs, &ctx.gate, Role::Consumer, t).await?;
                    ctx.count(i, "processes_armed", 1);
                    ctx.evidence(i, |e| e.slots.push(t));
                }
                if !f.targets.is_empty() {
                    ctx.fired(i);
                }
                tokio::time::sleep(for_ms).await;
                for &t in &f.targets {
                    ctx.procs.lock().unwrap().set_faults(t, &ctx.base_faults());
                    procs::stop(&ctx.procs, Role::Consumer, t, grace).await;
                    procs::start(&ctx.procs, &ctx.gate, Role::Consumer, t).await?;
                }
                let fenced_after = ctx.store.stats().await.ok().and_then(|s| s.get("fenced").copied()).unwrap_or(0);
                ctx.count(i, "library_fenced_commits_meanwhile", (fenced_after - fenced_before).max(0) as u64);
            }
            Fault::Replay => {
                replay(&ctx, &f, spec.mode.as_deref().unwrap_or("readd"), spec.entries.unwrap_or(20)).await?
            }
            Fault::NoListener => {
                let n = ctx.procs.lock().unwrap().count(Role::Listener);
                let mut stopped = 0;
                for t in 0..n {
                    procs::stop(&ctx.procs, Role::Listener, t, grace).await;
                    stopped += 1;
                }
                let down = Instant::now();
                let down_from = crate::oracle::now_ms();
                ctx.count(i, "listeners_stopped", stopped);
                if stopped > 0 {
                    ctx.fired(i);
                }
                tokio::time::sleep(for_ms).await;
                for t in 0..n {
                    procs::start(&ctx.procs, &ctx.gate, Role::Listener, t).await?;
                }
                ctx.count(i, "listeners_restarted", n as u64);
                ctx.count(i, "outage_ms", down.elapsed().as_millis() as u64);
                ctx.evidence(i, |e| e.windows.push((down_from, crate::oracle::now_ms())));
            }
            Fault::RestartRedis => {
                let _gate = ctx.gate.write().await;
                let created_before = llen(&ctx.store, &ctx.store.keys.created).await?;
                let effects_before = llen(&ctx.store, &ctx.store.keys.effects).await?;
                let down = Duration::from_millis(spec.restart_after_ms.unwrap_or(0));
                let t0 = Instant::now();
                let url = ctx.server.lock().await.crash_restart(&ctx.server_args, down).await?;
                let hp = host_port(&url).ok_or_else(|| anyhow::anyhow!("bad url {url}"))?;
                for p in ctx.proxies.all() {
                    p.set_upstream(&hp);
                    p.reset_all();
                }
                let down_ms = t0.elapsed().as_millis() as u64;
                ctx.count(i, "restarts", 1);
                ctx.fired(i);
                // The harness's connection reconnects on its first command after the restart.
                let mut after = None;
                for _ in 0..100 {
                    if let (Ok(c), Ok(e)) = (
                        llen(&ctx.store, &ctx.store.keys.created).await,
                        llen(&ctx.store, &ctx.store.keys.effects).await,
                    ) {
                        after = Some((c, e));
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                let (created_after, effects_after) =
                    after.ok_or_else(|| anyhow::anyhow!("Redis unreachable after restart"))?;
                ctx.count(i, "effects_rolled_back", effects_before.saturating_sub(effects_after));
                ctx.count(i, "created_rolled_back", created_before.saturating_sub(created_after));
                ctx.restarts.lock().unwrap().push(RestartObs {
                    appendfsync: if ctx.scenario.redis.appendonly {
                        ctx.scenario.redis.appendfsync.as_str().to_string()
                    } else {
                        "appendonly no".to_string()
                    },
                    created_before,
                    created_after,
                    effects_before,
                    effects_after,
                    down_ms,
                });
            }
            Fault::ClientKill => {
                let _gate = ctx.gate.write().await;
                let server = ctx.server().await?;
                let own = server.client_id().await?;
                let harness = ctx.store.client_id().await?;
                let list = server.client_list().await?;
                let mut ids: Vec<i64> = list
                    .lines()
                    .filter_map(|l| l.split(' ').find_map(|kv| kv.strip_prefix("id=")))
                    .filter_map(|id| id.parse().ok())
                    .filter(|id| *id != own && *id != harness)
                    .collect();
                let fraction = spec.fraction.unwrap_or(1.0);
                let mut rng = fastrand::Rng::with_seed(f.seed);
                rng.shuffle(&mut ids);
                let take = ((ids.len() as f64) * fraction).ceil() as usize;
                let mut killed = 0u64;
                for id in ids.into_iter().take(take) {
                    let n = server.client_kill(id).await.unwrap_or(0);
                    killed += n.max(0) as u64;
                }
                ctx.count(i, "clients_killed", killed);
                if killed > 0 {
                    ctx.fired(i);
                }
            }
            Fault::PauseRedis => {
                let mode = spec.mode.as_deref().unwrap_or("client_pause");
                let t0 = Instant::now();
                match mode {
                    "client_pause" => {
                        ctx.server().await?.client_pause(for_ms).await?;
                        ctx.count(i, "client_pauses", 1);
                        ctx.fired(i);
                        tokio::time::sleep(for_ms).await;
                    }
                    "debug_sleep" => {
                        ctx.server().await?.debug_sleep(for_ms).await?;
                        ctx.count(i, "debug_sleeps", 1);
                        ctx.fired(i);
                    }
                    _ => {
                        let (pid, cid) = {
                            let s = ctx.server.lock().await;
                            (s.pid(), s.container_id())
                        };
                        if let Some(pid) = pid {
                            if procs::send(pid, libc::SIGSTOP) {
                                ctx.count(i, "freezes", 1);
                                ctx.fired(i);
                                tokio::time::sleep(for_ms).await;
                                if procs::send(pid, libc::SIGCONT) {
                                    ctx.count(i, "thaws", 1);
                                }
                            }
                        } else if let Some(id) = cid {
                            if docker(&["pause", &id]).await {
                                ctx.count(i, "freezes", 1);
                                ctx.fired(i);
                                tokio::time::sleep(for_ms).await;
                                if docker(&["unpause", &id]).await {
                                    ctx.count(i, "thaws", 1);
                                }
                            }
                        } else {
                            anyhow::bail!("freeze needs a provisioned Redis (process or container)");
                        }
                    }
                }
                ctx.count(i, "paused_ms", t0.elapsed().as_millis() as u64);
            }
            Fault::NetDelay => {
                let p = ctx.proxies.for_role(spec.role.unwrap_or_default());
                let before = p.stats().chunks_delayed.load(std::sync::atomic::Ordering::Relaxed);
                p.set_delay(Duration::from_millis(spec.delay_ms.unwrap_or(0)));
                tokio::time::sleep(for_ms).await;
                p.set_delay(Duration::ZERO);
                let n = p.stats().chunks_delayed.load(std::sync::atomic::Ordering::Relaxed) - before;
                ctx.count(i, "chunks_delayed", n);
                if n > 0 {
                    ctx.fired(i);
                }
            }
            Fault::NetCut => {
                let p = ctx.proxies.for_role(spec.role.unwrap_or_default());
                let before = p.stats().connections_reset.load(std::sync::atomic::Ordering::Relaxed);
                p.cut();
                ctx.count(i, "cuts", 1);
                tokio::time::sleep(for_ms).await;
                p.heal();
                // Resets are counted by the connection tasks as they close.
                tokio::time::sleep(Duration::from_millis(100)).await;
                let n = p.stats().connections_reset.load(std::sync::atomic::Ordering::Relaxed) - before;
                ctx.count(i, "connections_reset", n);
                if n > 0 {
                    ctx.fired(i);
                }
            }
            // Refused when the scenario is checked (`spec::check`): simulator-only faults.
            k => anyhow::bail!("fault `{k}` cannot be injected by a scenario"),
        }
        Ok(())
    }
    .await;
    if let Err(e) = result {
        eprintln!("scenario: fault {} #{} ({}) failed: {e:#}", f.kind, f.n, i);
        ctx.count(i, "errors", 1);
    }
}

/// In mixes another fault may have the target down (killed, restarting) right now: wait a
/// little for it to be back, so the firing hits a live process rather than nothing.
async fn wait_alive(procs: &Shared, role: Role, index: usize) -> bool {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(5) {
        if procs.lock().unwrap().pid(role, index).is_some() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

async fn docker(args: &[&str]) -> bool {
    tokio::process::Command::new("docker").args(args).output().await.map(|o| o.status.success()).unwrap_or(false)
}

/// Replays: `readd` re-XADDs faithful copies of entries already effected (rebuilt from the
/// created ledger: same key, deadline, event id and payload); `setid` rewinds the group to 0
/// so entries still in the stream are delivered again; `xclaim` forcibly moves pending
/// entries to another consumer name, so their holder's commit comes too late.
async fn replay(ctx: &Ctx, f: &Firing, mode: &str, entries: u64) -> anyhow::Result<()> {
    let i = f.fault;
    let store = &ctx.store;
    let mut c = store.dedicated().await?;
    let mut rng = fastrand::Rng::with_seed(f.seed);
    match mode {
        "readd" => {
            let effects = store.read_list_with(&mut c, &store.keys.effects, "the oracle's effects ledger").await?;
            let created = store.read_list_with(&mut c, &store.keys.created, "the oracle's created ledger").await?;
            let mut by_id: HashMap<String, (Vec<u8>, i64)> = HashMap::new();
            for rec in &created {
                let Some(colon) = rec.iter().position(|b| *b == b':') else { continue };
                let Some(d) = std::str::from_utf8(&rec[..colon]).ok().and_then(|s| s.parse::<i64>().ok()) else {
                    continue;
                };
                let key = rec[colon + 1..].to_vec();
                by_id.insert(event_id(&key, d), (key, d));
            }
            let mut ids: Vec<String> = effects
                .iter()
                .filter_map(|r| String::from_utf8_lossy(r).split('|').next().map(str::to_string))
                .filter(|id| by_id.contains_key(id))
                .collect();
            ids.sort();
            ids.dedup();
            rng.shuffle(&mut ids);
            let prefix = store.keys.key_prefix();
            let mut added = 0u64;
            for id in ids.into_iter().take(entries as usize) {
                let (key, d) = by_id[&id].clone();
                let index = String::from_utf8_lossy(&key).strip_prefix(&prefix).and_then(|s| s.parse::<u64>().ok());
                let ev = Event {
                    event_id: id,
                    deadline_ms: d,
                    via: Via::Sweeper,
                    captured_ms: crate::oracle::now_ms(),
                    payload: index
                        .map(|n| (ctx.payload_for)(n, ctx.scenario.workload.payload_bytes))
                        .unwrap_or_default(),
                    key,
                };
                if store.add_raw_entry(&mut c, &encode_entry(&ev)).await.is_ok() {
                    added += 1;
                }
            }
            ctx.count(i, "entries_readded", added);
            if added > 0 {
                ctx.fired(i);
            }
        }
        "setid" => {
            let len = store.stream_len(&mut c).await?;
            store.rewind_group(&mut c).await?;
            ctx.count(i, "setid_calls", 1);
            ctx.count(i, "entries_rewound", len);
            ctx.fired(i);
        }
        _ => {
            // Wait (briefly) for something in flight to steal.
            let start = Instant::now();
            let mut claimed = 0u64;
            while start.elapsed() < Duration::from_secs(3) && claimed == 0 {
                let ids = store.pending_ids(&mut c, entries).await?;
                if !ids.is_empty() {
                    claimed += store.force_claim(&mut c, "chaos-xclaim", &ids).await?.len() as u64;
                }
                if claimed == 0 {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
            ctx.count(i, "entries_force_claimed", claimed);
            if claimed > 0 {
                ctx.fired(i);
            }
        }
    }
    Ok(())
}

/// The counters each kind reports (all present, 0 until counted, so that the set of names in
/// a report does not depend on the run).
pub fn counters(kind: Fault, mode: Option<&str>) -> &'static [&'static str] {
    match kind {
        Fault::KillConsumer => &["sigkill_delivered", "entries_held_at_kill", "kills_mid_batch", "restarts"],
        Fault::CrashMidBatch => &["processes_armed", "aborts_observed"],
        Fault::StopConsumer => &["sigstop_delivered", "entries_held_at_stop", "sigcont_delivered", "runs_superseded"],
        Fault::DelayAcks => &["processes_armed", "library_fenced_commits_meanwhile", "runs_superseded"],
        Fault::Replay => match mode {
            Some("setid") => &["setid_calls", "entries_rewound", "runs_superseded"],
            Some("xclaim") => &["entries_force_claimed", "runs_superseded"],
            _ => &["entries_readded", "capture_duplicates"],
        },
        Fault::KillListener | Fault::KillSweeper => &["sigkill_delivered", "restarts", "captured_in_outage"],
        Fault::NoListener => {
            &["listeners_stopped", "listeners_restarted", "outage_ms", "captured_by_sweeper_in_outage"]
        }
        Fault::RestartRedis => &["restarts", "created_rolled_back", "effects_rolled_back"],
        Fault::ClientKill => &["clients_killed"],
        Fault::PauseRedis => match mode {
            Some("debug_sleep") => &["debug_sleeps", "paused_ms"],
            Some("freeze") => &["freezes", "thaws", "paused_ms"],
            _ => &["client_pauses", "paused_ms"],
        },
        Fault::NetDelay => &["chunks_delayed"],
        Fault::NetCut => &["cuts", "connections_reset"],
        // Simulator-only faults: a scenario never holds one.
        _ => &[],
    }
}

/// Fresh per-fault reports, one per `[[fault]]`, with the planned firing counts.
pub fn empty_reports(s: &Scenario) -> Vec<FaultReport> {
    s.faults
        .iter()
        .map(|f| FaultReport {
            kind: f.kind.name().to_string(),
            planned: f.times as u64,
            fired: 0,
            counts: counters(f.kind, f.mode.as_deref()).iter().map(|c| (c.to_string(), 0)).collect(),
        })
        .collect()
}
