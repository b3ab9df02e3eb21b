//! Runs one scenario: provisions Redis, starts the proxies and the pipeline's processes,
//! produces the workload (keeping a local ledger of every creation Redis acknowledged),
//! fires the fault timeline, drains, stops everything gracefully and asks the oracle.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;

use super::faults::{self, Ctx, Proxies};
use super::procs::{self, Procs};
use super::proxy::{host_port, Proxy};
use super::report::{Acknowledged, ExpectationResult, Report, Timings};
use super::spec::{BackendReq, Bound, Fault, Role, Scenario, Ttl};
use crate::provision::{Choice, RedisServer};
use crate::store::RedisStore;

/// How to run a scenario (what the file does not say).
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// The `expiry-stream` binary the pipeline processes run.
    pub exe: PathBuf,
    pub redis: Choice,
    /// Logs of every process and the producer's local ledger go here.
    pub work_dir: PathBuf,
    /// Extra environment for consumer processes only (e.g. `EXPIRY_STREAM_UNSAFE`).
    pub consumer_env: Vec<(String, String)>,
    /// Print a progress line every few seconds.
    pub progress: bool,
    /// The file as given (for the report and the replay command).
    pub file: String,
}

/// Payload of workload key `i`: `v<i>:` padded to `bytes` (the producer and replays agree).
pub use crate::workload::payload_for;

const NS: &str = "chaos";
const GROUP: &str = "expiry";

fn server_args(s: &Scenario, container: bool) -> Vec<String> {
    let mut a: Vec<String> = vec![];
    // Configured on the server, as an operator would: a CONFIG SET by the listener is lost
    // when Redis restarts.
    a.extend(["--notify-keyspace-events".into(), "Ex".into()]);
    if s.redis.appendonly {
        a.extend(["--appendonly".into(), "yes".into(), "--appendfsync".into(), s.redis.appendfsync.as_str().into()]);
    }
    if let Some(hz) = s.redis.hz {
        a.extend(["--hz".into(), hz.to_string()]);
    }
    let debug_sleep = s.faults.iter().any(|f| f.kind == Fault::PauseRedis && f.mode.as_deref() == Some("debug_sleep"));
    if container && debug_sleep {
        // The host reaches a container through the bridge, which `local` does not allow.
        a.extend(["--enable-debug-command".into(), "yes".into()]);
    }
    a
}

fn choose_backend(s: &Scenario, choice: Choice) -> anyhow::Result<Choice> {
    let needs_own = s
        .faults
        .iter()
        .any(|f| f.kind == Fault::RestartRedis || (f.kind == Fault::PauseRedis && f.mode.as_deref() == Some("freeze")));
    Ok(match (s.redis.backend, choice) {
        (_, Choice::Url(u)) if needs_own || s.redis.appendonly => anyhow::bail!(
            "scenario {} restarts, freezes or configures Redis: it needs a provisioned server (container or process), not {u}",
            s.name
        ),
        (BackendReq::Process, _) => Choice::Process,
        (BackendReq::Container, _) => Choice::Container,
        (BackendReq::Any, c) => c,
    })
}

/// Runs a parsed scenario and returns its report (the verdict is in it).
pub async fn run(s: &Scenario, opts: &RunOptions) -> anyhow::Result<Report> {
    let wall = Instant::now();
    let log_dir = opts.work_dir.join("logs");
    let _ = std::fs::remove_dir_all(&log_dir);
    std::fs::create_dir_all(&log_dir).with_context(|| format!("creating {}", log_dir.display()))?;
    let plan = faults::plan(s);
    let unsafe_switches = opts
        .consumer_env
        .iter()
        .find(|(k, _)| k == "EXPIRY_STREAM_UNSAFE")
        .map(|(_, v)| v.clone())
        .or_else(|| std::env::var("EXPIRY_STREAM_UNSAFE").ok())
        .unwrap_or_default();
    eprintln!(
        "scenario {}: seed {} | {} keys at {}/s, ttl {:?} | {} consumer process(es) x {}, {} listener(s), {} sweeper(s){}",
        s.name,
        s.seed,
        s.workload.keys,
        s.workload.rate_per_s,
        s.workload.ttl,
        s.topology.consumer_processes,
        s.topology.consumers_per_process,
        s.topology.listeners,
        s.topology.sweepers,
        if unsafe_switches.is_empty() { String::new() } else { format!(" | UNSAFE: {unsafe_switches}") }
    );
    for p in &plan {
        eprintln!("  plan: fault[{}] {} #{} at {} ms, targets {:?}", p.fault, p.kind, p.n, p.at_ms, p.targets);
    }

    // Redis.
    let choice = choose_backend(s, opts.redis.clone())?;
    let container = matches!(choice, Choice::Container | Choice::Auto);
    let mut args = server_args(s, container);
    let server = RedisServer::start(choice.clone(), &args).await?;
    if server.kind == "process" && container {
        // Auto fell back to a process: the container-only arguments do not apply.
        args = server_args(s, false);
    }
    let backend = format!("{} ({})", server.kind, server.backend);
    eprintln!("  redis: {backend} at {}", server.url);
    let upstream = host_port(&server.url).context("redis url")?;
    let proxies = Proxies {
        consumers: Proxy::start("consumers", &upstream).await?,
        capture: Proxy::start("capture", &upstream).await?,
        harness: Proxy::start("harness", &upstream).await?,
    };
    let store = RedisStore::connect(&proxies.harness.url(), NS, GROUP).await?;
    store.ensure_group().await?;
    crate::capture::ensure_notifications(&store).await;
    background_keys(&store, s).await?;

    // Processes.
    let mut urls = BTreeMap::new();
    urls.insert(Role::Consumer, proxies.consumers.url());
    urls.insert(Role::Listener, proxies.capture.url());
    urls.insert(Role::Sweeper, proxies.capture.url());
    let procs: procs::Shared = Arc::new(Mutex::new(Procs::new(
        opts.exe.clone(),
        NS,
        &s.topology,
        log_dir.clone(),
        urls,
        opts.consumer_env.clone(),
    )));
    {
        let mut p = procs.lock().unwrap();
        for (role, idx) in p.all() {
            p.spawn(role, idx)
                .with_context(|| format!("starting {} {idx} from {}", role.name(), opts.exe.display()))?;
        }
    }
    wait_ready(&store, s).await?;

    let ctx = Arc::new(Ctx {
        scenario: s.clone(),
        procs: procs.clone(),
        server: Arc::new(tokio::sync::Mutex::new(server)),
        server_args: args,
        proxies,
        store: store.clone(),
        gate: Arc::new(tokio::sync::RwLock::new(())),
        reports: Mutex::new(faults::empty_reports(s)),
        evidence: Mutex::new(vec![faults::Evidence::default(); s.faults.len()]),
        restarts: Mutex::new(vec![]),
        payload_for,
    });

    // Supervisor: processes that die on their own are recorded and restarted.
    let stop_supervisor = StopOnDrop(Arc::new(std::sync::atomic::AtomicBool::new(false)));
    let supervisor = {
        let (procs, stop, gate) = (procs.clone(), stop_supervisor.0.clone(), ctx.gate.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let due = procs.lock().unwrap().reap();
                for (role, idx, at) in due {
                    let (procs, gate, stop) = (procs.clone(), gate.clone(), stop.clone());
                    tokio::spawn(async move {
                        tokio::time::sleep_until(at.into()).await;
                        if stop.load(Ordering::Relaxed) || procs.lock().unwrap().pid(role, idx).is_some() {
                            return;
                        }
                        if let Err(e) = procs::start(&procs, &gate, role, idx).await {
                            eprintln!("scenario: restarting {} {idx}: {e}", role.name());
                        }
                    });
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };

    // The workload and the fault timeline start together.
    let t0 = Instant::now();
    let created = Arc::new(AtomicU64::new(0));
    let retries = Arc::new(AtomicU64::new(0));
    let ledger_path = opts.work_dir.join("created.ledger");
    let producer = tokio::spawn(produce(
        store.clone(),
        s.clone(),
        ctx.gate.clone(),
        ledger_path.clone(),
        created.clone(),
        retries.clone(),
        t0,
    ));
    let mut fault_tasks = vec![];
    for f in plan.clone() {
        let ctx = ctx.clone();
        fault_tasks.push(tokio::spawn(async move {
            tokio::time::sleep_until((t0 + Duration::from_millis(f.at_ms)).into()).await;
            eprintln!(
                "  [{:>6.1}s] fault[{}] {} #{} targets {:?}",
                t0.elapsed().as_secs_f64(),
                f.fault,
                f.kind,
                f.n,
                f.targets
            );
            faults::fire(ctx, f).await;
        }));
    }

    // Progress until the workload is produced and every fault has ended.
    let mut last = Instant::now();
    let mut produce_s = None;
    let mut producer = Some(producer);
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if let Some(p) = producer.as_ref() {
            if p.is_finished() {
                producer.take().unwrap().await??;
                produce_s = Some(t0.elapsed().as_secs_f64());
            }
        }
        let faults_done = fault_tasks.iter().all(|t| t.is_finished());
        if opts.progress && last.elapsed() >= Duration::from_secs(2) {
            last = Instant::now();
            progress(&store, s, t0, &created, &ctx).await;
        }
        if producer.is_none() && faults_done {
            break;
        }
    }
    for t in fault_tasks {
        let _ = t.await;
    }

    // Drain: every created event effected or dead-lettered, stream empty, nothing pending.
    let drain_start = Instant::now();
    let mut drained = false;
    let mut empty_since: Option<Instant> = None;
    while drain_start.elapsed() < Duration::from_secs(s.drain_timeout_s) {
        let b = store.backlog().await.unwrap_or(crate::store::Backlog { tracked: 1, stream_len: 1, pending: 1 });
        if b.is_empty() {
            // Stable for a moment: a late stale commit or a replay in flight shows up here.
            let since = *empty_since.get_or_insert_with(Instant::now);
            if since.elapsed() >= Duration::from_millis(500) {
                drained = true;
                break;
            }
        } else {
            empty_since = None;
        }
        if opts.progress && last.elapsed() >= Duration::from_secs(2) {
            last = Instant::now();
            progress(&store, s, t0, &created, &ctx).await;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let drain_s = drain_start.elapsed().as_secs_f64();
    if !drained {
        eprintln!(
            "scenario {}: did not drain within {} s: {:?}",
            s.name,
            s.drain_timeout_s,
            store.backlog().await.ok()
        );
        // Who is connected and what each connection is doing: a consumer blocked on a read
        // shows `cmd=xreadgroup`; one missing from the list waits on a connection Redis lost.
        if let Ok(list) = store.client_list().await {
            eprintln!("scenario {}: CLIENT LIST when the drain timed out:\n{list}", s.name);
        }
    }

    // Stop everything gracefully (consumers finish and commit what they started).
    stop_supervisor.0.store(true, Ordering::Relaxed);
    let _ = supervisor.await;
    let all = procs.lock().unwrap().all();
    let stops = all.into_iter().map(|(r, i)| {
        let procs = procs.clone();
        async move { procs::stop(&procs, r, i, Duration::from_secs(20)).await }
    });
    futures_util::future::join_all(stops).await;
    // A last reap, for exits between the supervisor's last look and the stop.
    procs.lock().unwrap().reap();

    // The oracle, and the harness's own witnesses.
    let check = crate::oracle::check(&store).await?;
    let acked = acknowledged(&store, &ledger_path, &ctx).await?;
    let library: BTreeMap<String, i64> = store.stats().await.unwrap_or_default().into_iter().collect();
    let (exits, spawned) = {
        let p = procs.lock().unwrap();
        (p.exits.clone(), p.spawned)
    };
    let mut fault_reports = ctx.reports.lock().unwrap().clone();
    let evidence = ctx.evidence.lock().unwrap().clone();
    let bites = faults::bite(s, &mut fault_reports, &evidence, &check);
    let unexpected: Vec<_> = exits.into_iter().filter(|x| !x.injected).collect();

    let o = &check.oracle;
    let e = &s.expect;
    let mut expectations = vec![];
    let mut judge = |name: &str, b: &Bound, v: u64| {
        expectations.push(ExpectationResult {
            name: name.to_string(),
            expected: b.to_string(),
            actual: v.to_string(),
            ok: b.holds(v),
            stable: !matches!(b, Bound::Any | Bound::AtLeast(_) | Bound::AtMost(_)),
        });
    };
    judge("lost", &e.lost, o.lost);
    judge("duplicate_effects", &e.duplicate_effects, o.duplicate_effects);
    judge("unexpected_effects", &e.unexpected_effects, o.unexpected_effects);
    judge("dead_lettered", &e.dead_lettered, o.dead_lettered);
    judge("effected_and_dead_lettered", &e.effected_and_dead_lettered, o.effected_and_dead_lettered);
    judge("capture_duplicates", &e.capture_duplicates, o.capture_duplicates);
    judge("external_duplicates", &e.external_duplicates, o.external_duplicates);
    judge("external_missing", &e.external_missing, o.external_missing);
    judge("effects_without_run", &e.effects_without_run, o.effects_without_run);
    judge("deleted_while_pending", &e.deleted_while_pending, o.deleted_while_pending);
    judge("acknowledged_lost", &e.acknowledged_lost, acked.lost);
    judge("effects_rolled_back", &e.effects_rolled_back, acked.effects_rolled_back);
    expectations.push(ExpectationResult {
        name: "created_all_keys".into(),
        expected: format!("= {}", s.workload.keys),
        actual: acked.created.to_string(),
        ok: acked.created == s.workload.keys,
        stable: true,
    });
    expectations.push(ExpectationResult {
        name: "drained".into(),
        expected: "true".into(),
        actual: drained.to_string(),
        ok: drained,
        stable: true,
    });
    let not_fired: Vec<String> = fault_reports
        .iter()
        .enumerate()
        .filter(|(_, f)| f.fired < f.planned)
        .map(|(i, f)| format!("fault[{i}] {} {}/{}", f.kind, f.fired, f.planned))
        .collect();
    expectations.push(ExpectationResult {
        name: "every_fault_fired".into(),
        expected: "true".into(),
        actual: if not_fired.is_empty() { "true".into() } else { format!("false ({})", not_fired.join(", ")) },
        ok: not_fired.is_empty(),
        stable: true,
    });
    let no_bite: Vec<String> = bites.iter().filter(|(_, ok)| !ok).map(|(w, _)| w.clone()).collect();
    expectations.push(ExpectationResult {
        name: "every_fault_bit".into(),
        expected: "true".into(),
        actual: if no_bite.is_empty() { "true".into() } else { format!("false (not met: {})", no_bite.join("; ")) },
        ok: no_bite.is_empty(),
        stable: true,
    });
    expectations.push(ExpectationResult {
        name: "unexpected_process_exits".into(),
        expected: "= 0".into(),
        actual: unexpected.len().to_string(),
        ok: unexpected.is_empty(),
        stable: true,
    });

    let mut replay = format!("expiry-stream scenario run {}", opts.file);
    if !unsafe_switches.is_empty() {
        replay = format!("EXPIRY_STREAM_UNSAFE={unsafe_switches} {replay}");
    }
    let mut report = Report {
        scenario: s.name.clone(),
        description: s.description.clone(),
        file: opts.file.clone(),
        seed: s.seed,
        replay,
        backend,
        unsafe_switches,
        verdict: String::new(),
        oracle: check.oracle.clone(),
        acknowledged: acked,
        drained,
        faults: fault_reports,
        plan,
        expectations,
        processes_spawned: spawned,
        unexpected_exits: unexpected,
        producer_retries: retries.load(Ordering::Relaxed),
        deadline_to_effect_ms: check.deadline_to_effect_ms,
        lost_sample: check.lost_sample.clone(),
        library,
        timings: Timings { wall_s: wall.elapsed().as_secs_f64(), produce_s: produce_s.unwrap_or(0.0), drain_s },
        workload: s.workload.clone(),
        topology: s.topology.clone(),
        redis: s.redis.clone(),
        logs: log_dir.display().to_string(),
    };
    report.verdict = if report.passed() { "PASS".into() } else { "FAIL".into() };

    // Tear down: proxies close their connections when dropped, the server is removed.
    drop(store);
    match Arc::try_unwrap(ctx) {
        Ok(ctx) => {
            let Ctx { server, proxies, .. } = ctx;
            drop(proxies);
            if let Ok(server) = Arc::try_unwrap(server) {
                server.into_inner().stop().await;
            }
        }
        Err(_) => eprintln!("scenario: fault tasks still hold the context; Redis is removed on exit"),
    }
    Ok(report)
}

/// Stops the supervisor however `run` ends (an early error included), so it never keeps
/// restarting processes of a run that is over.
struct StopOnDrop(Arc<std::sync::atomic::AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

async fn background_keys(store: &RedisStore, s: &Scenario) -> anyhow::Result<()> {
    let n = s.workload.background_keys;
    let ttl = Duration::from_millis(s.workload.background_ttl_ms);
    let mut i = 0;
    while i < n {
        let batch: Vec<String> = (i..(i + 1000).min(n)).map(|j| format!("{{{NS}}}:bg:{j}")).collect();
        store.set_expiring(&batch, "x", ttl).await?;
        i += 1000;
    }
    Ok(())
}

/// Waits until every consumer task of every process is reading (Redis 7.0 registers a group
/// consumer only once something is delivered to it, so the harness counts connections whose
/// last command is a group read) and every listener has subscribed.
async fn wait_ready(store: &RedisStore, s: &Scenario) -> anyhow::Result<()> {
    let start = Instant::now();
    let want = s.topology.consumer_processes * s.topology.consumers_per_process;
    loop {
        let list = store.client_list().await.unwrap_or_default();
        let readers = list.lines().filter(|l| l.contains(" cmd=xreadgroup") || l.contains(" cmd=xautoclaim")).count();
        let listeners = store.subscribers("__keyevent@0__:expired").await.unwrap_or(0) as usize;
        if readers >= want && listeners >= s.topology.listeners {
            return Ok(());
        }
        if start.elapsed() > Duration::from_secs(30) {
            anyhow::bail!(
                "pipeline processes not ready after 30 s ({readers} of {want} consumers reading, {listeners} of {} listeners subscribed); see the logs",
                s.topology.listeners
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The workload: the one producer (`workload::produce_with`), paced on the scenario's clock,
/// TTLs drawn from the seed. Each batch is one idempotent write; once Redis acknowledges it,
/// the creations go to the local ledger file, then to the oracle's created ledger, all under
/// the gate's shared guard (faults that break the harness's connections take it exclusively).
async fn produce(
    store: RedisStore,
    s: Scenario,
    gate: Arc<tokio::sync::RwLock<()>>,
    ledger: PathBuf,
    created: Arc<AtomicU64>,
    retries: Arc<AtomicU64>,
    t0: Instant,
) -> anyhow::Result<()> {
    let w = &s.workload;
    // `ttl_ms` is the producer's TTL under `TtlPlan::Fixed`; a uniform plan draws each key's.
    let (ttl_ms, ttl) = match w.ttl {
        Ttl::Fixed { ms } => (ms, crate::workload::TtlPlan::Fixed),
        Ttl::Uniform { min_ms, max_ms } => {
            (min_ms, crate::workload::TtlPlan::Uniform { min_ms, max_ms, seed: s.seed ^ 0x5eed_77f1_0000_0001 })
        }
    };
    let cfg = crate::workload::WorkloadConfig {
        keys: w.keys,
        ttl_ms,
        delay_us: (1e6 / w.rate_per_s).round() as u64,
        payload_bytes: w.payload_bytes,
        batch: 64,
        writer: crate::workload::Writer::Library,
    };
    let extras = crate::workload::Extras {
        ttl: Some(ttl),
        gate: Some(gate),
        ledger_file: Some(ledger),
        retries: Some(retries),
        start: Some(t0),
    };
    crate::workload::produce_with(&store, &cfg, created, extras).await?;
    Ok(())
}

async fn progress(store: &RedisStore, s: &Scenario, t0: Instant, created: &AtomicU64, ctx: &Ctx) {
    let b = store.backlog().await.unwrap_or_default();
    let effected = store.list_len(&store.keys.effects).await.unwrap_or(0);
    let (fired, planned) = {
        let r = ctx.reports.lock().unwrap();
        (r.iter().map(|f| f.fired).sum::<u64>(), r.iter().map(|f| f.planned).sum::<u64>())
    };
    eprintln!(
        "  [{:>6.1}s] created {}/{} effected {} | tracked {} stream {} pending {} | faults fired {fired}/{planned}",
        t0.elapsed().as_secs_f64(),
        created.load(Ordering::Relaxed),
        s.workload.keys,
        effected,
        b.tracked,
        b.stream_len,
        b.pending
    );
}

/// The harness's witnesses: creations acknowledged to the producer (its local file) that
/// the oracle's created ledger no longer holds, and effects rolled back by restarts.
async fn acknowledged(store: &RedisStore, ledger: &std::path::Path, ctx: &Ctx) -> anyhow::Result<Acknowledged> {
    let local = std::fs::read_to_string(ledger).unwrap_or_default();
    let in_redis = store.read_list(&store.keys.created, "the oracle's created ledger").await?;
    let in_redis: std::collections::HashSet<Vec<u8>> = in_redis.into_iter().collect();
    let mut created = 0;
    let mut lost = 0;
    for line in local.lines().filter(|l| !l.is_empty()) {
        created += 1;
        if !in_redis.contains(line.as_bytes()) {
            lost += 1;
        }
    }
    let restarts = ctx.restarts.lock().unwrap().clone();
    let effects_rolled_back = restarts.iter().map(|r| r.effects_before.saturating_sub(r.effects_after)).sum();
    Ok(Acknowledged { created, lost, effects_rolled_back, restarts })
}
