//! The seed's full run: 3,000,000 keys, 64 consumers, TTL 100 ms, creation delay 100 us,
//! 5 ms of work per key, one key at a time per consumer (handled one at a time; reads take
//! one key unless a backlog builds). `just full` runs it (release build);
//! it writes reports/seed-3m.{json,md,html} and checks the deterministic part of the report
//! against its snapshot. `FULL_KEYS=N` runs a smaller copy for a try-out (no snapshot check).

#[path = "../support/mod.rs"]
mod support;

use expiry_stream::run::{self, RunConfig};
use expiry_stream::workload::WorkloadConfig;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "the full 3M-key run: `just full`"]
async fn seed_3m() {
    let keys: u64 = std::env::var("FULL_KEYS").ok().and_then(|v| v.parse().ok()).unwrap_or(3_000_000);
    let ctx = support::Ctx::new("seed3m").await;
    let cfg = RunConfig {
        workload: WorkloadConfig { keys, ttl_ms: 100, delay_us: 100, ..WorkloadConfig::default() },
        consumers: 64,
        work_ms: 5,
        // One key per read while consumers keep up, up to 16 under a backlog (ADR 006).
        batch: 16,
        concurrency: 1,
        drain_timeout_s: 600,
        ..RunConfig::default()
    };
    let r = run::run(&ctx.store, &cfg, &ctx.server.backend).await.expect("run");
    println!("{}", r.summary());
    std::fs::create_dir_all("reports").unwrap();
    let name = if keys == 3_000_000 { "seed-3m".to_string() } else { format!("seed-{keys}") };
    std::fs::write(format!("reports/{name}.json"), serde_json::to_string_pretty(&r).unwrap()).unwrap();
    std::fs::write(format!("reports/{name}.md"), expiry_stream::report::markdown(&r)).unwrap();
    std::fs::write(format!("reports/{name}.html"), expiry_stream::report::html(&r)).unwrap();
    println!("reports/{name}.{{json,md,html}} written");
    // The oracle decides; the library's counters are only printed beside it.
    assert!(r.drained, "the pipeline did not drain");
    assert_eq!(r.oracle.created, keys);
    assert_eq!(r.oracle.effected, keys);
    assert_eq!(r.oracle.lost, 0);
    assert_eq!(r.oracle.duplicate_effects, 0);
    assert_eq!(r.oracle.unexpected_effects, 0);
    assert_eq!(r.per_consumer.consumers, 64, "every consumer took part");
    if keys == 3_000_000 {
        let deterministic = serde_json::json!({
            "workload": r.config.workload,
            "consumers": r.config.consumers,
            "work_ms": r.config.work_ms,
            "batch": r.config.batch,
            "oracle": r.oracle,
            "consumers_with_effects": r.per_consumer.consumers,
            "drained": r.drained,
        });
        insta::assert_json_snapshot!("seed_3m_report", deterministic);
    }
}
