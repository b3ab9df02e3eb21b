//! One process running the whole pipeline against one Redis: producer, listeners, sweepers,
//! consumers; it drains, then asks the oracle. The `run` subcommand and the tests use it; the
//! separate subcommands start the same pieces alone.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;

use crate::capture::{self, Adoption, ListenerStats, ReconcileConfig, ReconcileStats, SweeperConfig, SweeperStats};
use crate::consume::{self, ConsumerConfig, ConsumerStats, Handler};
use crate::oracle::{self, Latency};
use crate::report::{Captured, RunReport, RunSettings, Sample};
use crate::store::RedisStore;
use crate::workload::{self, WorkloadConfig};

/// Handles of running pipeline pieces; `shutdown` stops them gracefully.
pub struct Running {
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<anyhow::Result<()>>>,
    pub listener_stats: Vec<Arc<ListenerStats>>,
    pub sweeper_stats: Vec<Arc<SweeperStats>>,
    pub consumer_stats: Vec<Arc<ConsumerStats>>,
    pub sweep_now: Arc<Notify>,
}

impl Default for Running {
    fn default() -> Self {
        Running {
            stop: watch::channel(false).0,
            tasks: vec![],
            listener_stats: vec![],
            sweeper_stats: vec![],
            consumer_stats: vec![],
            sweep_now: Arc::new(Notify::new()),
        }
    }
}

impl Running {
    /// Starts `n` listeners on db `db` (notifications must already be enabled).
    pub fn listeners(&mut self, store: &RedisStore, n: usize, db: i64, prefix: Option<Vec<u8>>) {
        self.adopting_listeners(store, n, db, prefix, Adoption::default());
    }
    /// [`Running::listeners`] that also adopt keys matching `adopt`'s patterns; the
    /// notification classes must include the adoption events (`capture::ensure_notifications_for`).
    pub fn adopting_listeners(
        &mut self,
        store: &RedisStore,
        n: usize,
        db: i64,
        prefix: Option<Vec<u8>>,
        adopt: Adoption,
    ) {
        for _ in 0..n {
            let s = Arc::new(ListenerStats::default());
            self.listener_stats.push(s.clone());
            let fut = capture::run_listener(
                store.clone(),
                db,
                prefix.clone(),
                adopt.clone(),
                self.sweep_now.clone(),
                s,
                self.stop.subscribe(),
            );
            self.tasks.push(tokio::spawn(fut));
        }
    }
    /// One reconcile scan per adoption pattern (see [`capture::run_reconciler`]).
    pub fn reconcilers(
        &mut self,
        store: &RedisStore,
        patterns: &[Vec<u8>],
        cfg: ReconcileConfig,
    ) -> Vec<Arc<ReconcileStats>> {
        let mut all = vec![];
        for p in patterns {
            let s = Arc::new(ReconcileStats::default());
            all.push(s.clone());
            let fut = capture::run_reconciler(
                store.clone(),
                p.clone(),
                cfg,
                self.sweep_now.clone(),
                s,
                self.stop.subscribe(),
            );
            self.tasks.push(tokio::spawn(fut));
        }
        all
    }
    pub fn sweepers(&mut self, store: &RedisStore, n: usize, cfg: SweeperConfig) {
        for _ in 0..n {
            let s = Arc::new(SweeperStats::default());
            self.sweeper_stats.push(s.clone());
            let fut = capture::run_sweeper(store.clone(), cfg, self.sweep_now.clone(), s, self.stop.subscribe());
            self.tasks.push(tokio::spawn(fut));
        }
    }
    pub fn consumers(
        &mut self,
        store: &RedisStore,
        n: usize,
        prefix: &str,
        handler: Arc<dyn Handler>,
        cfg: &ConsumerConfig,
    ) {
        let committer = consume::Committer::spawn(store.clone(), cfg.ledger, 1024);
        for i in 0..n {
            let s = Arc::new(ConsumerStats::default());
            self.consumer_stats.push(s.clone());
            let name = consume::consumer_name(prefix, i);
            let fut = consume::run_consumer(
                store.clone(),
                name,
                handler.clone(),
                cfg.clone(),
                s,
                committer.clone(),
                self.stop.subscribe(),
                i == 0,
            );
            self.tasks.push(tokio::spawn(fut));
        }
    }
    /// Signals every piece to stop and waits: consumers finish and commit what they started.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        let _ = self.stop.send(true);
        for t in self.tasks {
            t.await??;
        }
        Ok(())
    }
    /// Waits for SIGINT or SIGTERM, then shuts down.
    pub async fn until_signal(self) -> anyhow::Result<()> {
        wait_signal().await;
        eprintln!("signal received: finishing in-flight work");
        self.shutdown().await
    }
}

pub async fn wait_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending::<()>().await } } => {}
    }
}

#[derive(Clone, Debug)]
pub struct RunConfig {
    pub workload: WorkloadConfig,
    pub consumers: usize,
    pub work_ms: u64,
    pub listeners: usize,
    pub sweepers: usize,
    pub batch: usize,
    pub concurrency: usize,
    pub consumer: ConsumerConfig,
    pub sweeper: SweeperConfig,
    pub drain_timeout_s: u64,
    pub progress: bool,
}

impl RunConfig {
    /// What the report shows of this configuration.
    pub fn settings(&self) -> RunSettings {
        RunSettings {
            workload: self.workload.clone(),
            consumers: self.consumers,
            work_ms: self.work_ms,
            listeners: self.listeners,
            sweepers: self.sweepers,
            batch: self.batch,
            concurrency: self.concurrency,
            drain_timeout_s: self.drain_timeout_s,
        }
    }
}

impl Default for RunConfig {
    fn default() -> Self {
        RunConfig {
            workload: WorkloadConfig::default(),
            consumers: 64,
            work_ms: 5,
            listeners: 1,
            sweepers: 1,
            batch: 16,
            concurrency: 1,
            consumer: ConsumerConfig::default(),
            sweeper: SweeperConfig::default(),
            drain_timeout_s: 120,
            progress: true,
        }
    }
}

/// The server's peak memory (`used_memory_peak`), 0 when it cannot be read.
pub async fn peak_memory(store: &RedisStore) -> u64 {
    store.memory_info("used_memory_peak").await.unwrap_or(0).max(0) as u64
}

struct Progress {
    bar: Option<indicatif::ProgressBar>,
    last_line: Instant,
    total: u64,
}

impl Progress {
    fn new(total: u64, enabled: bool) -> Progress {
        let bar = (enabled && std::io::stderr().is_terminal()).then(|| {
            let b = indicatif::ProgressBar::new(total);
            b.set_style(
                indicatif::ProgressStyle::with_template(
                    "{elapsed_precise} [{bar:40.cyan/blue}] {pos}/{len} effected ({per_sec}) {msg}",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            b
        });
        Progress { bar, last_line: Instant::now(), total }
    }
    fn update(&mut self, s: &Sample, enabled: bool) {
        let msg = format!("created {} captured {} backlog {}", s.created, s.captured, s.backlog);
        if let Some(b) = &self.bar {
            b.set_position(s.effected);
            b.set_message(msg);
        } else if enabled && self.last_line.elapsed() >= Duration::from_secs(5) {
            self.last_line = Instant::now();
            eprintln!("[{:>6.1}s] effected {}/{} {msg}", s.t_s, s.effected, self.total);
        }
    }
    fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish();
        }
    }
}

/// Runs the whole pipeline on `store`'s namespace (wiped first) and judges it.
pub async fn run(store: &RedisStore, cfg: &RunConfig, backend: &str) -> anyhow::Result<RunReport> {
    store.wipe().await?;
    oracle::Witness::new(store).wipe().await?;
    store.ensure_group().await?;
    let plain = cfg.workload.writer == workload::Writer::Plain;
    let notify = capture::ensure_notifications_for(store, plain).await;
    if let capture::NotifyConfig::NotPermitted(e) = &notify {
        eprintln!("warning: {} ({e})", capture::NOTIFY_HELP);
    }
    let db = store.db();
    let mut running = Running::default();
    if plain {
        // The keys are written outside the library: the pipeline sees them only by adoption
        // (their `expire` events, and a reconcile scan for events nobody heard).
        let prefix = workload::plain_prefix(store);
        let pattern = format!("{prefix}*").into_bytes();
        let adoption = Adoption { patterns: vec![pattern.clone()], value_max: 0 };
        running.adopting_listeners(store, cfg.listeners, db, Some(prefix.into_bytes()), adoption);
        running.reconcilers(store, &[pattern], ReconcileConfig::default());
    } else {
        let prefix = Some(store.keys.key_prefix().into_bytes());
        running.listeners(store, cfg.listeners, db, prefix);
    }
    running.sweepers(store, cfg.sweepers, cfg.sweeper);
    let mut ccfg = cfg.consumer.clone();
    ccfg.batch = cfg.batch;
    ccfg.concurrency = cfg.concurrency;
    let handler = oracle::RecordHandler::new(store, Duration::from_millis(cfg.work_ms));
    running.consumers(store, cfg.consumers, "run", handler, &ccfg);

    let start = Instant::now();
    let start_wall = oracle::now_ms();
    let created = Arc::new(AtomicU64::new(0));
    let producer = {
        let (s, w, c) = (store.clone(), cfg.workload.clone(), created.clone());
        tokio::spawn(async move { workload::produce(&s, &w, c).await })
    };
    let mut progress = Progress::new(cfg.workload.keys, cfg.progress);
    let mut timeline: Vec<Sample> = vec![];
    let mut max_unexpired = 0u64;
    let mut produce_report = None;
    let mut drained_at: Option<Instant> = None;
    let mut last_sample = Instant::now() - Duration::from_secs(2);
    let mut producer = Some(producer);
    let mut producer_done_at: Option<Instant> = None;
    loop {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let backlog = store.backlog().await.unwrap_or_default();
        max_unexpired = max_unexpired.max(backlog.tracked);
        if let Some(p) = producer.as_ref() {
            if p.is_finished() {
                produce_report = Some(producer.take().unwrap().await??);
                producer_done_at = Some(Instant::now());
            }
        }
        let now = Instant::now();
        // A plain writer's last keys enter the index only when adopted: not drained before
        // they could have expired and been captured.
        let settled = !plain
            || producer_done_at
                .is_some_and(|t: Instant| t.elapsed() >= Duration::from_millis(cfg.workload.ttl_ms + 1000));
        let done = producer.is_none() && backlog.is_empty() && settled;
        if last_sample.elapsed() >= Duration::from_secs(1) || done {
            last_sample = now;
            let stats = store.stats().await.unwrap_or_default();
            let captured = ["captured_n", "captured_s", "captured_w"]
                .iter()
                .map(|k| stats.get(*k).copied().unwrap_or(0))
                .sum::<i64>() as u64;
            let s = Sample {
                t_s: start.elapsed().as_secs_f64(),
                created: created.load(Ordering::Relaxed),
                captured,
                effected: store.list_len(&store.keys.effects).await.unwrap_or(0),
                backlog: backlog.stream_len,
                unexpired: backlog.tracked,
                p99_ms: 0,
            };
            progress.update(&s, cfg.progress);
            timeline.push(s);
        }
        if done {
            drained_at = Some(now);
            break;
        }
        if producer.is_none()
            && start.elapsed()
                > Duration::from_secs(cfg.drain_timeout_s)
                    + Duration::from_secs_f64(produce_report.as_ref().map(|p| p.elapsed_s).unwrap_or(0.0))
        {
            eprintln!("drain timeout: backlog {backlog:?}");
            break;
        }
    }
    progress.finish();
    let wall = drained_at.unwrap_or_else(Instant::now).duration_since(start).as_secs_f64();
    running.shutdown().await?;
    let check = oracle::check(store).await?;
    let stats = store.stats().await?;
    fill_p99(&mut timeline, &check.effect_times, start_wall);
    Ok(RunReport {
        config: cfg.settings(),
        backend: backend.to_string(),
        rate_keys_per_s: check.oracle.created as f64 / wall.max(1e-9),
        wall_s: wall,
        drained: drained_at.is_some(),
        max_unexpired,
        per_consumer: check.per_consumer.clone(),
        deadline_to_capture_ms: check.deadline_to_capture_ms,
        deadline_to_effect_ms: check.deadline_to_effect_ms,
        captured: Captured {
            listener: stats.get("captured_n").copied().unwrap_or(0),
            sweeper: stats.get("captured_s").copied().unwrap_or(0),
            write: stats.get("captured_w").copied().unwrap_or(0),
        },
        library: stats.into_iter().collect(),
        redis_peak_memory_bytes: peak_memory(store).await,
        produce: produce_report.unwrap_or_default(),
        lost_sample: check.lost_sample.clone(),
        oracle: check.oracle,
        timeline,
    })
}

/// Per-second p99 of deadline-to-effect, bucketed by effect time relative to `t0`.
fn fill_p99(timeline: &mut [Sample], times: &[(i64, i64)], t0: i64) {
    let mut per: BTreeMap<usize, Vec<i64>> = BTreeMap::new();
    for (d, e) in times {
        let sec = ((e - t0).max(0) / 1000) as usize;
        per.entry(sec).or_default().push(e - d);
    }
    for (i, s) in timeline.iter_mut().enumerate() {
        if let Some(v) = per.remove(&i) {
            s.p99_ms = Latency::of(v).p99;
        }
    }
}
