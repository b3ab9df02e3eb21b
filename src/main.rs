//! The `expiry-stream` command: each piece a user deploys is a subcommand usable alone
//! against `--redis-url`; `run` starts them all in one process and judges the result.

use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};

use expiry_stream::capture::{self, SweeperConfig};
use expiry_stream::consume::{ConsumerConfig, Handler};
use expiry_stream::oracle::{self, RecordHandler};
use expiry_stream::provision::{Choice, RedisServer};
use expiry_stream::run::{self, RunConfig, Running};
use expiry_stream::store::Store;
use expiry_stream::workload::{self, WorkloadConfig};

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
}

#[derive(Args, Clone)]
struct Consumers {
    /// Consumers (tasks, each with its own connection).
    #[arg(long, default_value_t = 64)]
    consumers: usize,
    /// Simulated work per key, ms.
    #[arg(long, default_value_t = 5)]
    work_ms: u64,
    /// Entries per read and per commit.
    #[arg(long, default_value_t = 8)]
    batch: usize,
    /// Handlers running at once per consumer.
    #[arg(long, default_value_t = 1)]
    concurrency: usize,
    /// Idle time before another consumer may claim an entry, ms.
    #[arg(long, default_value_t = 5000)]
    claim_idle_ms: u64,
    /// Deliveries before an entry is dead-lettered.
    #[arg(long, default_value_t = 5)]
    max_deliveries: u64,
}

impl Consumers {
    fn config(&self) -> ConsumerConfig {
        ConsumerConfig {
            batch: self.batch.max(1),
            concurrency: self.concurrency.max(1),
            claim_idle: Duration::from_millis(self.claim_idle_ms),
            claim_interval: Duration::from_millis((self.claim_idle_ms / 4).clamp(50, 1000)),
            max_deliveries: self.max_deliveries.max(1),
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
        /// Run the capture step for every expired key of the db, not only the namespace's workload keys.
        #[arg(long)]
        all_keys: bool,
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
    /// The oracle over a namespace: created vs effected. Exits 1 on loss or duplicates.
    Check {
        #[command(flatten)]
        common: Common,
        /// Also write the verdict as JSON here.
        #[arg(long)]
        json: Option<PathBuf>,
    },
}

fn url(c: &Common) -> anyhow::Result<String> {
    c.redis_url.clone().context("--redis-url (or REDIS_URL) is required for this subcommand")
}

fn handler_named(name: &str, store: &Store, work_ms: u64) -> anyhow::Result<Arc<dyn Handler>> {
    match name {
        "record" => Ok(RecordHandler::new(store, Duration::from_millis(work_ms))),
        other => anyhow::bail!("unknown handler {other:?}; available: record"),
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Run { common, workload, consumers, listeners, sweepers, report, drain_timeout_s } => {
            let (server, url) = match &common.redis_url {
                Some(u) => (None, u.clone()),
                None => {
                    let s = RedisServer::start(Choice::from_env()?, &[]).await?;
                    eprintln!("redis: {} at {}", s.backend, s.url);
                    let u = s.url.clone();
                    (Some(s), u)
                }
            };
            let backend = server.as_ref().map(|s| s.backend.clone()).unwrap_or_else(|| format!("external {url}"));
            let store = Store::connect(&url, &common.ns, &common.group).await?;
            let cfg = RunConfig {
                workload: WorkloadConfig {
                    keys: workload.keys,
                    ttl_ms: workload.ttl_ms,
                    delay_us: workload.delay_us,
                    payload_bytes: workload.payload_bytes,
                    ..WorkloadConfig::default()
                },
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
            };
            eprintln!(
                "run: {} keys, ttl {} ms, delay {} us, {} consumers, {} ms work, {} listener(s), {} sweeper(s)",
                cfg.workload.keys, cfg.workload.ttl_ms, cfg.workload.delay_us, cfg.consumers, cfg.work_ms, listeners, sweepers
            );
            let r = run::run(&store, &cfg, &backend).await?;
            println!("{}", r.summary());
            if let Some(p) = report {
                if let Some(d) = p.parent() {
                    std::fs::create_dir_all(d).ok();
                }
                std::fs::write(&p, serde_json::to_string_pretty(&r)?)?;
                println!("report: {}", p.display());
            }
            if let Some(s) = server {
                s.stop().await;
            }
            if !(r.oracle.ok() && r.drained) {
                std::process::exit(1);
            }
        }
        Cmd::Produce { common, workload, wipe } => {
            let store = Store::connect(&url(&common)?, &common.ns, &common.group).await?;
            if wipe {
                store.wipe().await?;
            }
            store.ensure_group().await?;
            let w = WorkloadConfig {
                keys: workload.keys,
                ttl_ms: workload.ttl_ms,
                delay_us: workload.delay_us,
                payload_bytes: workload.payload_bytes,
                ..WorkloadConfig::default()
            };
            let r = workload::produce(&store, &w, Arc::new(AtomicU64::new(0))).await?;
            println!("{}", serde_json::to_string(&r)?);
        }
        Cmd::Capture { common, listeners, sweepers, all_keys } => {
            let store = Store::connect(&url(&common)?, &common.ns, &common.group).await?;
            store.ensure_group().await?;
            match capture::ensure_notifications(&store).await {
                capture::NotifyConfig::NotPermitted(e) => eprintln!("warning: {} ({e})", capture::NOTIFY_HELP),
                c => eprintln!("notifications: {c:?}"),
            }
            let db = store.client.get_connection_info().redis_settings().db();
            let mut r = Running::default();
            let prefix = (!all_keys).then(|| store.keys.key_prefix().into_bytes());
            r.listeners(&store, listeners, db, prefix);
            r.sweepers(&store, sweepers, SweeperConfig::default());
            eprintln!("capture: {listeners} listener(s), {sweepers} sweeper(s) on {}", store.keys.ns);
            r.until_signal().await?;
        }
        Cmd::Consume { common, consumers, handler, name } => {
            let store = Store::connect(&url(&common)?, &common.ns, &common.group).await?;
            store.ensure_group().await?;
            let h = handler_named(&handler, &store, consumers.work_ms)?;
            let mut r = Running::default();
            r.consumers(&store, consumers.consumers.max(1), &name, h, &consumers.config());
            eprintln!("consume: {} consumer(s), handler {handler}", consumers.consumers);
            r.until_signal().await?;
        }
        Cmd::Check { common, json } => {
            let store = Store::connect(&url(&common)?, &common.ns, &common.group).await?;
            let c = oracle::check(&store).await?;
            println!("{}", serde_json::to_string_pretty(&c)?);
            if let Some(p) = json {
                std::fs::write(p, serde_json::to_string_pretty(&c)?)?;
            }
            if !c.oracle.ok() {
                std::process::exit(1);
            }
        }
    }
    Ok(())
}
