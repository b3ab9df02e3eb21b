//! Bad input from outside the process: every row of docs/BAD_INPUT.md is one of these tests
//! (or a unit test named there). Nothing panics, nothing is lost silently: a clear error, or a
//! dead-letter entry with the reason.

#[path = "../support/mod.rs"]
mod support;

use std::process::Command;
use std::time::Duration;

use expiry_stream::capture::SweeperConfig;
use expiry_stream::consume::ConsumerConfig;
use expiry_stream::oracle::{self, RecordHandler};
use expiry_stream::run::Running;
use support::{field_str, Ctx};

const WAIT: Duration = Duration::from_secs(30);

fn consumers() -> ConsumerConfig {
    ConsumerConfig {
        claim_idle: Duration::from_millis(300),
        claim_interval: Duration::from_millis(50),
        block: Duration::from_millis(100),
        max_payload: 1024,
        ..ConsumerConfig::default()
    }
}

async fn drain(ctx: &Ctx) {
    let mut run = Running::default();
    run.sweepers(&ctx.store, 1, SweeperConfig::default());
    run.consumers(&ctx.store, 2, "c", RecordHandler::new(&ctx.store, Duration::ZERO), &consumers());
    ctx.until("drained", WAIT, || ctx.drained()).await;
    run.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_utf8_keys_are_processed_exactly_once() {
    let ctx = Ctx::new("nonutf8").await;
    let key = b"bin:\xff\xfe\x00key".to_vec();
    let dl = ctx.store.write_batch(&[(key.clone(), b"v".to_vec(), Duration::from_millis(10))]).await.unwrap();
    oracle::record_created(&ctx.store, &[(key.as_slice(), dl[0])]).await.unwrap();
    drain(&ctx).await;
    let c = oracle::check(&ctx.store).await.unwrap();
    assert_eq!((c.oracle.created, c.oracle.effected, c.oracle.lost, c.oracle.duplicate_effects), (1, 1, 0, 0), "{c:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_payloads_are_dead_lettered_with_the_sizes() {
    let ctx = Ctx::new("oversized").await;
    let big = vec![b'x'; 4 * 1024 * 1024];
    let spec = [
        (b"big:1".to_vec(), big, Duration::from_millis(10)),
        (b"small:1".to_vec(), b"v".to_vec(), Duration::from_millis(10)),
    ];
    let dls = ctx.store.write_batch(&spec).await.unwrap();
    let recs: Vec<(&[u8], i64)> = spec.iter().zip(&dls).map(|((k, _, _), d)| (k.as_slice(), *d)).collect();
    oracle::record_created(&ctx.store, &recs).await.unwrap();
    drain(&ctx).await;
    let c = oracle::check(&ctx.store).await.unwrap();
    assert_eq!(
        (c.oracle.lost, c.oracle.duplicate_effects, c.oracle.dead_lettered, c.oracle.effected),
        (0, 0, 1, 1),
        "{c:?}"
    );
    let dead = ctx.dead().await;
    assert_eq!(
        field_str(&dead[0], "reason"),
        "malformed entry: payload of 4194304 bytes exceeds the limit of 1024 bytes"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_and_foreign_entries_are_dead_lettered_with_reasons() {
    let ctx = Ctx::new("truncated").await;
    let mut c = ctx.store.conn.clone();
    let s = &ctx.store.keys.stream;
    // A truncated capture entry (fields cut after `d`), and one with a field repeated.
    let _: String =
        redis::cmd("XADD").arg(s).arg("*").arg("k").arg("a").arg("d").arg("5").query_async(&mut c).await.unwrap();
    let _: String =
        redis::cmd("XADD").arg(s).arg("*").arg("k").arg("a").arg("k").arg("b").query_async(&mut c).await.unwrap();
    drain(&ctx).await;
    let mut reasons: Vec<String> = ctx.dead().await.iter().map(|e| field_str(e, "reason")).collect();
    reasons.sort();
    assert_eq!(reasons, vec!["malformed entry: field `k` appears twice", "malformed entry: missing field `id`"]);
}

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_expiry-stream"))
}

#[test]
fn bad_command_line_values_are_refused_with_the_flag_named() {
    let out = bin().args(["run", "--keys", "many"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("invalid value 'many' for '--keys <KEYS>'"), "{err}");
}

#[test]
fn a_bad_fault_spec_is_refused_at_startup() {
    let out = bin()
        .args(["check", "--redis-url", "redis://127.0.0.1:1/"])
        .env("EXPIRY_STREAM_FAULTS", "consume::nowhere=abort")
        .output()
        .unwrap();
    assert_ne!(out.status.code(), Some(0));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("EXPIRY_STREAM_FAULTS") && err.contains("unknown point \"consume::nowhere\""), "{err}");
}

#[test]
fn a_bad_backend_choice_is_refused_with_the_choices() {
    let out = bin().args(["run", "--keys", "1"]).env("EXPIRY_STREAM_REDIS", "docker").output().unwrap();
    assert_ne!(out.status.code(), Some(0));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("EXPIRY_STREAM_REDIS=\"docker\" is not one of container, process, auto"), "{err}");
}

#[test]
fn an_unreachable_redis_is_a_clear_error() {
    let out = bin().args(["check", "--redis-url", "redis://127.0.0.1:1/"]).output().unwrap();
    assert_ne!(out.status.code(), Some(0));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.to_lowercase().contains("connection refused"), "{err}");
}
