//! The `expiry-stream` command: each piece a user deploys is a subcommand usable alone
//! against `--redis-url`; `run` starts them all in one process and judges the result.

use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};

use expiry_stream::bench;
use expiry_stream::capture::{self, SweeperConfig};
use expiry_stream::consume::{ConsumerConfig, Handler};
use expiry_stream::oracle::{self, RecordHandler};
use expiry_stream::provision::{Choice, RedisServer};
use expiry_stream::run::{self, RunConfig, Running};
use expiry_stream::store::server::Server;
use expiry_stream::store::{LedgerConfig, RedisStore};
use expiry_stream::workload::{self, WorkloadConfig, Writer};

#[derive(Parser)]
#[command(name = "expiry-stream", version, about = "Redis key expirations, processed exactly once, with the proof")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Args, Clone)]
struct Common {
    /// Redis to use, e.g. redis://127.0.0.1:6379/ (required except for `run`).
    #[arg(long, env = "REDIS_URL")]
    redis_url: Option<String>,
    /// Namespace: every key of the pipeline lives under the hash tag {NS}.
    #[arg(long, default_value = "es")]
    ns: String,
    /// Consumer group name.
    #[arg(long, default_value = "expiry")]
    group: String,
}

#[derive(Args, Clone)]
struct Workload {
    /// Keys to create.
    #[arg(long, default_value_t = 100_000)]
    keys: u64,
    /// TTL of each key, ms.
    #[arg(long, default_value_t = 100)]
    ttl_ms: u64,
    /// Delay between key creations, µs (0: as fast as possible).
    #[arg(long, default_value_t = 100)]
    delay_us: u64,
    /// Payload size per key, bytes.
    #[arg(long, default_value_t = 16)]
    payload_bytes: usize,
    /// Who writes the keys: `library` (`set_with_ttl`: tracked keys) or `plain` (plain `SET
    /// ... PXAT` as any other program would, captured only by adoption; `run` adopts them).
    #[arg(long, default_value = "library", value_parser = ["library", "plain"])]
    writer: String,
}

#[derive(Args, Clone)]
struct Consumers {
    /// Redis consumers in this process (each a dispatcher with its own connections and
    /// `--workers` workers). The seed's layout is `--consumers 64 --workers 1 --batch 1`.
    #[arg(long, default_value_t = 1)]
    consumers: usize,
    /// Simulated work per key, ms.
    #[arg(long, default_value_t = 5)]
    work_ms: u64,
    /// Most entries per read, and the most a consumer reads ahead of its idle workers (the
    /// read-ahead starts at one and grows toward this only under a backlog).
    #[arg(long, default_value_t = 16)]
    batch: usize,
    /// Workers per consumer: handlers running at once, each entry to the worker idle longest.
    #[arg(long = "workers", alias = "concurrency", default_value_t = 64)]
    concurrency: usize,
    /// Idle time before another consumer may claim an entry, ms.
    #[arg(long, default_value_t = 5000)]
    claim_idle_ms: u64,
    /// Deliveries before an entry is dead-lettered.
    #[arg(long, default_value_t = 5)]
    max_deliveries: u64,
    /// How long the ledger remembers an event id after its deadline's bucket, ms (replays
    /// older than this are not suppressed).
    #[arg(long, default_value_t = 3600 * 1000)]
    ledger_retention_ms: u64,
    /// Width of one ledger bucket (a set of event ids by deadline, expiring `retention` after
    /// the bucket ends), ms. With a short retention, a short bucket makes the ledger forget soon.
    #[arg(long, default_value_t = 60_000)]
    ledger_bucket_ms: u64,
}

impl Consumers {
    fn config(&self) -> ConsumerConfig {
        ConsumerConfig {
            batch: self.batch.max(1),
            concurrency: self.concurrency.max(1),
            claim_idle: Duration::from_millis(self.claim_idle_ms),
            claim_interval: Duration::from_millis((self.claim_idle_ms / 4).clamp(50, 1000)),
            max_deliveries: self.max_deliveries.max(1),
            ledger: LedgerConfig {
                retention: Duration::from_millis(self.ledger_retention_ms),
                bucket: Duration::from_millis(self.ledger_bucket_ms.max(1)),
                ..LedgerConfig::default()
            },
            ..ConsumerConfig::default()
        }
    }
}

#[derive(Subcommand)]
enum Cmd {
    /// Everything in one process against one Redis (provisioned if no --redis-url), then the oracle's verdict.
    Run {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        workload: Workload,
        #[command(flatten)]
        consumers: Consumers,
        /// Keyspace-notification listeners.
        #[arg(long, default_value_t = 1)]
        listeners: usize,
        /// Deadline-index sweepers.
        #[arg(long, default_value_t = 1)]
        sweepers: usize,
        /// Write the JSON report here.
        #[arg(long)]
        report: Option<PathBuf>,
        /// Seconds to wait for the pipeline to drain after the last key was created.
        #[arg(long, default_value_t = 120)]
        drain_timeout_s: u64,
    },
    /// The workload generator: creates tracked keys at a precise pace and records them in the oracle's created ledger.
    Produce {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        workload: Workload,
        /// Delete the namespace first.
        #[arg(long)]
        wipe: bool,
    },
    /// Listeners and sweepers until SIGINT/SIGTERM.
    Capture {
        #[command(flatten)]
        common: Common,
        #[arg(long, default_value_t = 1)]
        listeners: usize,
        #[arg(long, default_value_t = 1)]
        sweepers: usize,
        /// Only run the capture step for the namespace's workload keys (`{NS}:k:*`, what `produce`
        /// writes), as `run` does; by default every expired key of the db is checked against
        /// the deadline index, so keys tracked under any name are captured.
        #[arg(long)]
        workload_only: bool,
        /// Adopt keys written by any program that match PATTERN (a Redis glob pattern, as for
        /// `SCAN MATCH`; repeatable): a key that gets a TTL is put into the deadline index (from
        /// its `expire`, `set` or `rename_to` event, and from a reconcile scan for events nobody
        /// heard) and from then on captured exactly once like a tracked key. Needs the `g` and
        /// `$` notification classes (set here when CONFIG is allowed).
        #[arg(long = "adopt", value_name = "PATTERN")]
        adopt: Vec<String>,
        /// The reconcile scan's pace: at most this many keys examined per second, per pattern.
        #[arg(long, default_value_t = 100_000, value_name = "KEYS_PER_S")]
        scan_rate: u64,
        /// Copy an adopted key's string value, when at most BYTES long, so that its event
        /// carries it (Redis deletes the value before it publishes `expired`); updated when the
        /// key is written again while adopted. 0: no copy (the payload is empty).
        #[arg(long, default_value_t = 0, value_name = "BYTES")]
        adopt_value_max: usize,
    },
    /// N consumers with a named handler until SIGINT/SIGTERM.
    Consume {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        consumers: Consumers,
        /// Handler: `record` (the oracle's effect ledger).
        #[arg(long, default_value = "record")]
        handler: String,
        /// Consumer name prefix.
        #[arg(long, default_value = "consumer")]
        name: String,
    },
    /// Side by side on one Redis: the server's own expire-and-notify rate, the pipeline with no pacing and no work, deadline precision, both consumer layouts, the seed's own protocol, memory.
    Bench {
        #[command(flatten)]
        common: Common,
        /// Keys for each of the two measurements.
        #[arg(long, default_value_t = 1_000_000)]
        keys: u64,
        /// TTL of each key, ms.
        #[arg(long, default_value_t = 100)]
        ttl_ms: u64,
        #[command(flatten)]
        consumers: Consumers,
        /// Entries per read in the throughput run (overrides --batch there).
        #[arg(long, default_value_t = 16)]
        bench_batch: usize,
        /// Tracked short-TTL keys in the deadline-precision runs.
        #[arg(long, default_value_t = 10_000)]
        precision_keys: u64,
        /// Long-lived (one hour) keys beside them.
        #[arg(long, default_value_t = 1_000_000)]
        background_keys: u64,
        /// Keys of each consumer-layout run (10,000/s offered, `--work-ms` work): the
        /// dispatcher (`--consumers`, `--workers`, `--batch`) and the seed's (64 x 1, reads of
        /// 1); and of the seed's own protocol run beside them (`seed_peer` in the report).
        #[arg(long, default_value_t = 50_000)]
        layout_keys: u64,
        /// Write the JSON report here.
        #[arg(long)]
        report: Option<PathBuf>,
    },
    /// Deterministic simulation over the in-memory model (seeded, virtual time, faults).
    Sim(expiry_stream::sim::SimArgs),
    /// Chaos scenarios against real Redis: `scenario run FILE`.
    Scenario(expiry_stream::scenario::ScenarioArgs),
    /// What a namespace holds now: backlog, dead letters by reason, the library's counters
    /// (deleted_while_pending, effects_refused, ...). Reads only; exits 0.
    Status {
        #[command(flatten)]
        common: Common,
    },
    /// The oracle over a namespace: created vs effected, and the witnesses outside the commit
    /// path. Exits 1 on loss, duplicates, a disagreeing witness, or dead letters other than expected.
    Check {
        #[command(flatten)]
        common: Common,
        /// Dead-lettered events the faults of this run legitimately cause (dead letters are not success).
        #[arg(long, default_value_t = 0)]
        expect_dead_letters: u64,
        /// Also write the verdict as JSON here.
        #[arg(long)]
        json: Option<PathBuf>,
    },
}

fn url(c: &Common) -> anyhow::Result<String> {
    c.redis_url.clone().context("--redis-url (or REDIS_URL) is required for this subcommand")
}

/// The Redis to use: `--redis-url`, or one provisioned by `EXPIRY_STREAM_REDIS` (auto:
/// container, else process).
async fn provision(common: &Common) -> anyhow::Result<(Option<RedisServer>, String)> {
    Ok(match &common.redis_url {
        Some(u) => (None, u.clone()),
        None => {
            let s = RedisServer::start(Choice::from_env()?, &[]).await?;
            eprintln!("redis: {} at {}", s.backend, s.url);
            let u = s.url.clone();
            (Some(s), u)
        }
    })
}

fn server_desc(server: &Option<RedisServer>, url: &str) -> String {
    server.as_ref().map(|s| s.backend.clone()).unwrap_or_else(|| format!("external {url}"))
}

fn run_config(consumers: &Consumers, listeners: usize, sweepers: usize, drain_timeout_s: u64) -> RunConfig {
    RunConfig {
        consumers: consumers.consumers.max(1),
        work_ms: consumers.work_ms,
        listeners,
        sweepers,
        batch: consumers.batch.max(1),
        concurrency: consumers.concurrency.max(1),
        consumer: consumers.config(),
        sweeper: SweeperConfig::default(),
        drain_timeout_s,
        progress: true,
        ..RunConfig::default()
    }
}

fn write_json(p: &std::path::Path, v: &impl serde::Serialize) -> anyhow::Result<()> {
    if let Some(d) = p.parent() {
        std::fs::create_dir_all(d).ok();
    }
    std::fs::write(p, serde_json::to_string_pretty(v)?)?;
    println!("report: {}", p.display());
    Ok(())
}

fn handler_named(name: &str, store: &RedisStore, work_ms: u64) -> anyhow::Result<Arc<dyn Handler>> {
    match name {
        "record" => Ok(RecordHandler::new(store, Duration::from_millis(work_ms))),
        other => anyhow::bail!("unknown handler {other:?}; available: record"),
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    expiry_stream::fault::init_from_env().map_err(|e| anyhow::anyhow!("EXPIRY_STREAM_FAULTS: {e}"))?;
    match cli.cmd {
        Cmd::Run { common, workload, consumers, listeners, sweepers, report, drain_timeout_s } => {
            let (server, url) = provision(&common).await?;
            let store = RedisStore::connect(&url, &common.ns, &common.group).await?;
            let mut cfg = run_config(&consumers, listeners, sweepers, drain_timeout_s);
            cfg.workload = WorkloadConfig {
                keys: workload.keys,
                ttl_ms: workload.ttl_ms,
                delay_us: workload.delay_us,
                payload_bytes: workload.payload_bytes,
                writer: if workload.writer == "plain" { Writer::Plain } else { Writer::Library },
                ..WorkloadConfig::default()
            };
            eprintln!(
                "run: {} keys, ttl {} ms, delay {} us, {} consumers, {} ms work, {} listener(s), {} sweeper(s)",
                cfg.workload.keys,
                cfg.workload.ttl_ms,
                cfg.workload.delay_us,
                cfg.consumers,
                cfg.work_ms,
                listeners,
                sweepers
            );
            let r = run::run(&store, &cfg, &server_desc(&server, &url)).await?;
            println!("{}", r.summary());
            if let Some(p) = report {
                write_json(&p, &r)?;
                std::fs::write(p.with_extension("md"), expiry_stream::report::markdown(&r))?;
                std::fs::write(p.with_extension("html"), expiry_stream::report::html(&r))?;
                println!(
                    "report: also {} and {} (charts)",
                    p.with_extension("md").display(),
                    p.with_extension("html").display()
                );
            }
            if let Some(s) = server {
                s.stop().await;
            }
            if !(r.oracle.ok() && r.drained) {
                std::process::exit(1);
            }
        }
        Cmd::Produce { common, workload, wipe } => {
            let u = url(&common)?;
            // Once connected, produce rides out connection loss (workload::produce retries);
            // at start-up there is nothing to resume, so say plainly where it could not connect
            // (the password, if the URL has one, left out).
            let shown = match (u.find("://"), u.rfind('@')) {
                (Some(s), Some(at)) if at > s => format!("{}***{}", &u[..s + 3], &u[at..]),
                _ => u.clone(),
            };
            let store = RedisStore::connect(&u, &common.ns, &common.group)
                .await
                .with_context(|| format!("produce: cannot connect to Redis at {shown}"))?;
            if wipe {
                store.wipe().await?;
                oracle::Witness::new(&store).wipe().await?;
            }
            store.ensure_group().await?;
            let w = WorkloadConfig {
                keys: workload.keys,
                ttl_ms: workload.ttl_ms,
                delay_us: workload.delay_us,
                payload_bytes: workload.payload_bytes,
                writer: if workload.writer == "plain" { Writer::Plain } else { Writer::Library },
                ..WorkloadConfig::default()
            };
            let r = workload::produce(&store, &w, Arc::new(AtomicU64::new(0))).await?;
            println!("{}", serde_json::to_string(&r)?);
        }
        Cmd::Capture { common, listeners, sweepers, workload_only, adopt, scan_rate, adopt_value_max } => {
            if scan_rate == 0 && !adopt.is_empty() {
                anyhow::bail!("--scan-rate must be at least 1 key per second");
            }
            let store = RedisStore::connect(&url(&common)?, &common.ns, &common.group).await?;
            store.ensure_group().await?;
            match capture::ensure_notifications_for(&store, !adopt.is_empty()).await {
                capture::NotifyConfig::NotPermitted(e) => eprintln!("warning: {} ({e})", capture::NOTIFY_HELP),
                c => eprintln!("notifications: {c:?}"),
            }
            let db = store.db();
            let mut r = Running::default();
            let prefix = workload_only.then(|| store.keys.key_prefix().into_bytes());
            let patterns: Vec<Vec<u8>> = adopt.iter().map(|p| p.clone().into_bytes()).collect();
            let adoption = capture::Adoption { patterns: patterns.clone(), value_max: adopt_value_max };
            r.adopting_listeners(&store, listeners, db, prefix, adoption);
            r.sweepers(&store, sweepers, SweeperConfig::default());
            let cfg = capture::ReconcileConfig {
                keys_per_s: scan_rate,
                value_max: adopt_value_max,
                ..capture::ReconcileConfig::default()
            };
            r.reconcilers(&store, &patterns, cfg);
            let adopting = if adopt.is_empty() { String::new() } else { format!(", adopting {}", adopt.join(" ")) };
            eprintln!("capture: {listeners} listener(s), {sweepers} sweeper(s) on {}{adopting}", store.keys.ns);
            r.until_signal().await?;
        }
        Cmd::Consume { common, consumers, handler, name } => {
            let store = RedisStore::connect(&url(&common)?, &common.ns, &common.group).await?;
            store.ensure_group().await?;
            let h = handler_named(&handler, &store, consumers.work_ms)?;
            let mut r = Running::default();
            r.consumers(&store, consumers.consumers.max(1), &name, h, &consumers.config());
            eprintln!("consume: {} consumer(s), handler {handler}", consumers.consumers);
            r.until_signal().await?;
        }
        Cmd::Bench {
            common,
            keys,
            ttl_ms,
            mut consumers,
            bench_batch,
            precision_keys,
            background_keys,
            layout_keys,
            report,
        } => {
            let (server, url) = provision(&common).await?;
            let desc = server_desc(&server, &url);
            let admin = Server::connect(&url).await?;
            eprintln!("bench (a) 1/2: the server's own expire-and-notify rate for {keys} keys (PX {ttl_ms})");
            let own = bench::redis_expire_notify(&url, keys, ttl_ms).await?;
            admin.flushall().await?;
            eprintln!("bench (a) 2/2: the pipeline, {keys} keys, no pacing, no work, reads of {bench_batch}");
            let work_ms = consumers.work_ms;
            consumers.work_ms = 0;
            let mut throughput = consumers.clone();
            throughput.batch = bench_batch.max(1);
            let store = RedisStore::connect(&url, &common.ns, &common.group).await?;
            let mut cfg = run_config(&throughput, 1, 1, 120);
            cfg.workload = WorkloadConfig { keys, ttl_ms, delay_us: 0, ..WorkloadConfig::default() };
            let (cpu0, client0) = (admin.cpu().await?, bench::process_cpu_us());
            let r = run::run(&store, &cfg, &desc).await?;
            let (cpu1, client1) = (admin.cpu().await?, bench::process_cpu_us());
            let cost = bench::Cost::between(&cpu0, &cpu1, (client0, client1), r.oracle.created);
            println!("{}", r.summary());
            println!("(a) cost: {}", cost.line());
            let ratio = r.rate_keys_per_s / own.rate_keys_per_s.max(1e-9);
            println!(
                "(a) redis expire+notify: {:.0} keys/s ({} of {} notifications in {:.2} s); pipeline end-to-end: {:.0} keys/s; ratio pipeline/redis: {:.2}",
                own.rate_keys_per_s, own.received, own.keys, own.elapsed_s, r.rate_keys_per_s, ratio
            );
            let mut precision = vec![];
            for sweepers in [1usize, 0] {
                admin.flushall().await?;
                eprintln!("bench (b): {precision_keys} tracked keys (TTL 1 s) among {background_keys} one-hour keys, {sweepers} sweeper(s)");
                bench::load_background(&url, background_keys).await?;
                let mut cfg = run_config(&consumers, 1, sweepers, 30);
                cfg.workload =
                    WorkloadConfig { keys: precision_keys, ttl_ms: 1000, delay_us: 100, ..WorkloadConfig::default() };
                let p = run::run(&store, &cfg, &desc).await?;
                println!(
                    "(b) {}: captured {} of {} within the window; deadline->capture p50 {} p99 {} max {} ms; deadline->effect p50 {} p99 {} max {} ms",
                    if sweepers > 0 { "with the sweeper" } else { "notifications alone" },
                    p.oracle.effected, p.oracle.created,
                    p.deadline_to_capture_ms.p50, p.deadline_to_capture_ms.p99, p.deadline_to_capture_ms.max,
                    p.deadline_to_effect_ms.p50, p.deadline_to_effect_ms.p99, p.deadline_to_effect_ms.max
                );
                precision.push(serde_json::json!({
                    "sweepers": sweepers, "created": p.oracle.created, "effected": p.oracle.effected,
                    "deadline_to_capture_ms": p.deadline_to_capture_ms, "deadline_to_effect_ms": p.deadline_to_effect_ms,
                    "captured": p.captured,
                }));
            }
            let mut layouts = vec![];
            let seed_layout = Consumers { consumers: 64, concurrency: 1, batch: 1, ..consumers.clone() };
            for (name, layout) in [("dispatcher", consumers.clone()), ("seed", seed_layout)] {
                admin.flushall().await?;
                let layout = Consumers { work_ms, ..layout };
                eprintln!(
                    "bench (d) {name}: {layout_keys} keys at 10,000/s, {} consumer(s) x {} worker(s), reads of at most {}, {work_ms} ms work",
                    layout.consumers, layout.concurrency, layout.batch
                );
                let mut cfg = run_config(&layout, 1, 1, 120);
                cfg.workload =
                    WorkloadConfig { keys: layout_keys, ttl_ms: 100, delay_us: 100, ..WorkloadConfig::default() };
                let (cpu0, client0) = (admin.cpu().await?, bench::process_cpu_us());
                let l = run::run(&store, &cfg, &desc).await?;
                let (cpu1, client1) = (admin.cpu().await?, bench::process_cpu_us());
                let cost = bench::Cost::between(&cpu0, &cpu1, (client0, client1), l.oracle.created);
                println!(
                    "(d) {name}: {} x {}: {:.0} keys/s, spread {:.2}% over {} workers, deadline->effect p50 {} p99 {} ms, {}; verdict {}",
                    layout.consumers, layout.concurrency, l.rate_keys_per_s, l.per_consumer.spread_pct, l.per_consumer.consumers,
                    l.deadline_to_effect_ms.p50, l.deadline_to_effect_ms.p99, cost.line(),
                    if l.oracle.ok() && l.drained { "PASS" } else { "FAIL" }
                );
                layouts.push(serde_json::json!({
                    "layout": name, "consumers": layout.consumers, "workers": layout.concurrency, "batch": layout.batch,
                    "work_ms": work_ms, "rate_keys_per_s": l.rate_keys_per_s, "per_consumer": l.per_consumer,
                    "deadline_to_capture_ms": l.deadline_to_capture_ms, "deadline_to_effect_ms": l.deadline_to_effect_ms,
                    "redis_cpu_us_per_event": cost.redis_cpu_us_per_event, "client_cpu_us_per_event": cost.client_cpu_us_per_event,
                    "oracle": l.oracle, "drained": l.drained,
                }));
            }
            admin.flushall().await?;
            eprintln!("bench (e): the seed's own protocol (pub/sub bridge, SET NX PX 500 lock, processed set), {layout_keys} keys at 10,000/s, 64 consumers, {work_ms} ms work");
            let peer = bench::seed_peer(
                &url,
                layout_keys,
                Duration::from_millis(100),
                100,
                64,
                Duration::from_millis(work_ms),
            )
            .await?;
            let seed_layout_rate =
                layouts.iter().find(|l| l["layout"] == "seed").and_then(|l| l["rate_keys_per_s"].as_f64());
            println!(
                "(e) seed peer: processed {} of {} keys, {:.0} keys/s, redis CPU {:.1} us/event (the pipeline at the seed's layout: {:.0} keys/s)",
                peer.processed, peer.keys, peer.rate_keys_per_s, peer.redis_cpu_us_per_event, seed_layout_rate.unwrap_or(0.0)
            );
            eprintln!("bench (c): Redis memory per tracked key, in-flight event and ledger id (100,000 each)");
            let mem = bench::memory(&url, 100_000).await?;
            let hour_ids = 10_000.0 * (3600.0 + 60.0);
            println!(
                "(c) memory: tracked key {:.0} B, stream entry {:.0} B, pending entry {:.0} B, ledger id {:.0} B (the default 1 h retention at 10,000 events/s: {:.1} GiB)",
                mem.per_tracked_key_bytes, mem.per_stream_entry_bytes, mem.per_pending_entry_bytes, mem.per_ledger_id_bytes,
                hour_ids * mem.per_ledger_id_bytes / 1073741824.0
            );
            if let Some(p) = report {
                // The pipeline's report with its cost beside its rate (`pipeline.redis_cpu_us_per_event`).
                let mut pipeline = serde_json::to_value(&r)?;
                pipeline["redis_cpu_us_per_event"] = serde_json::json!(cost.redis_cpu_us_per_event);
                pipeline["client_cpu_us_per_event"] = serde_json::json!(cost.client_cpu_us_per_event);
                pipeline["cost"] = serde_json::to_value(&cost)?;
                let v = serde_json::json!({ "redis_expire_notify": own, "pipeline": pipeline, "ratio": ratio, "precision": precision, "memory": mem, "layouts": layouts, "seed_peer": peer });
                write_json(&p, &v)?;
            }
            if let Some(s) = server {
                s.stop().await;
            }
            if !(r.oracle.ok() && r.drained) {
                std::process::exit(1);
            }
        }
        Cmd::Sim(args) => std::process::exit(expiry_stream::sim::main(args).await?),
        Cmd::Scenario(args) => std::process::exit(expiry_stream::scenario::main(args).await?),
        Cmd::Status { common } => {
            let store = RedisStore::connect(&url(&common)?, &common.ns, &common.group).await?;
            let b = store.backlog().await?;
            println!(
                "namespace {}: tracked keys {}, stream entries {}, pending {}",
                common.ns, b.tracked, b.stream_len, b.pending
            );
            let dead = store.dead_letter_kinds().await?;
            println!("dead letters: {}", dead.values().sum::<u64>());
            for (kind, n) in &dead {
                println!("  {n:>8}  {kind}");
            }
            let stats: std::collections::BTreeMap<String, i64> = store.stats().await?.into_iter().collect();
            let line: Vec<String> = stats.iter().map(|(k, v)| format!("{k} {v}")).collect();
            println!("library counters: {}", line.join(", "));
            let deleted = stats.get("deleted_while_pending").copied().unwrap_or(0);
            if deleted > 0 {
                println!("WARNING: {deleted} pending entries were deleted from the stream by another program (see the dead letters)");
            }
        }
        Cmd::Check { common, expect_dead_letters, json } => {
            let store = RedisStore::connect(&url(&common)?, &common.ns, &common.group).await?;
            let c = oracle::check(&store).await?;
            println!("{}", serde_json::to_string_pretty(&c)?);
            if let Some(p) = json {
                std::fs::write(p, serde_json::to_string_pretty(&c)?)?;
            }
            println!("{}", c.oracle.line());
            let problems = c.oracle.problems(expect_dead_letters);
            if problems.is_empty() {
                println!("verdict: PASS");
            } else {
                println!("verdict: FAIL: {}", problems.join("; "));
                std::process::exit(1);
            }
        }
    }
    Ok(())
}
