//! Chaos scenarios against real Redis (`just chaos`). Every file in `scenarios/` is run with
//! the pipeline as separate OS processes of the `expiry-stream` binary; the oracle must find
//! nothing lost and nothing duplicated, and the deterministic part of its report must match the
//! snapshot beside it (`scenarios/snapshots/NAME.snap`). A snapshot with no scenario is an
//! error. The unsafe-switch tests prove the scenarios bite: with the fence or the ledger off,
//! the oracle reports duplicates.
//!
//! Scenarios run one at a time (a lock), since each is timed against a 2-core machine.
//! `CHAOS_ONLY=name1,name2` restricts the snapshot test to some scenarios while iterating.

use std::path::{Path, PathBuf};

use expiry_stream::provision::Choice;
use expiry_stream::scenario::{self, Report, RunOptions};

/// A tokio mutex: it is held across the awaits of a whole scenario run.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn scenario_files() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(root().join("scenarios"))
        .expect("scenarios/")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    v.sort();
    v
}

fn options(name: &str, file: &Path, consumer_env: &[(&str, &str)]) -> RunOptions {
    let tag = consumer_env.iter().map(|(_, v)| v.replace(',', "+")).collect::<Vec<_>>().join("-");
    let dir = if tag.is_empty() { name.to_string() } else { format!("{name}.{tag}") };
    RunOptions {
        exe: PathBuf::from(env!("CARGO_BIN_EXE_expiry-stream")),
        redis: Choice::from_env().expect("EXPIRY_STREAM_REDIS"),
        work_dir: PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("chaos").join(dir),
        consumer_env: consumer_env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        progress: false,
        file: file.strip_prefix(root()).unwrap_or(file).display().to_string(),
    }
}

async fn run(file: &Path, consumer_env: &[(&str, &str)]) -> Report {
    let s = scenario::load(file).unwrap_or_else(|e| panic!("{e}"));
    let opts = options(&s.name, file, consumer_env);
    let r = scenario::run(&s, &opts).await.unwrap_or_else(|e| panic!("scenario {} could not run: {e:#}", s.name));
    let path = opts.work_dir.join("report.json");
    scenario::write_report(&r, &path).expect("write report");
    eprintln!("{}\n  report: {}", r.summary(), path.with_extension("md").display());
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_scenario_passes_and_matches_its_snapshot() {
    let _one = ONE_AT_A_TIME.lock().await;
    let only: Option<Vec<String>> =
        std::env::var("CHAOS_ONLY").ok().map(|v| v.split(',').map(|s| s.trim().to_string()).collect());
    let files = scenario_files();
    assert!(files.len() >= 12, "expected at least 12 scenarios, found {}", files.len());
    let mut failures = vec![];
    let mut ran = 0;
    for file in files {
        let stem = file.file_stem().unwrap().to_string_lossy().into_owned();
        if only.as_ref().is_some_and(|o| !o.contains(&stem)) {
            continue;
        }
        let r = run(&file, &[]).await;
        ran += 1;
        assert_eq!(r.scenario, stem, "{}: `name` must match the file name (it names the snapshot)", file.display());
        if !r.passed() {
            failures.push(format!("{stem}: {}\n  run again: {}", r.summary(), r.replay));
        }
        let snap = r.snapshot();
        let mut settings = insta::Settings::clone_current();
        settings.set_snapshot_path("../../scenarios/snapshots");
        settings.set_prepend_module_to_snapshot(false);
        settings.set_omit_expression(true);
        settings.set_description(format!("deterministic part of the report of scenarios/{stem}.toml"));
        let matched = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            settings.bind(|| insta::assert_json_snapshot!(stem.clone(), snap));
        }));
        if matched.is_err() {
            failures.push(format!("{stem}: report does not match scenarios/snapshots/{stem}.snap"));
        }
    }
    assert!(ran > 0, "CHAOS_ONLY matched no scenario");
    // The recipe prints this file last when the suite fails: a CI log that keeps only the head
    // and the tail of the output (a backtrace is long) still names the failing scenario.
    let summary = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("chaos/FAILED.txt");
    let _ = std::fs::create_dir_all(summary.parent().unwrap());
    if failures.is_empty() {
        let _ = std::fs::remove_file(&summary);
    } else {
        let _ = std::fs::write(&summary, failures.join("\n") + "\n");
    }
    assert!(failures.is_empty(), "{} scenario(s) failed:\n{}", failures.len(), failures.join("\n"));
}

/// CI rejects unreferenced snapshots: each one must belong to a scenario file.
#[test]
fn every_snapshot_belongs_to_a_scenario() {
    let dir = root().join("scenarios/snapshots");
    let names: Vec<String> =
        scenario_files().iter().map(|f| f.file_stem().unwrap().to_string_lossy().into_owned()).collect();
    let mut orphans = vec![];
    for e in std::fs::read_dir(&dir).expect("scenarios/snapshots/") {
        let p = e.unwrap().path();
        let file = p.file_name().unwrap().to_string_lossy().into_owned();
        match file.strip_suffix(".snap") {
            Some(stem) if names.iter().any(|n| n == stem) => {}
            _ => orphans.push(file),
        }
    }
    assert!(
        orphans.is_empty(),
        "unreferenced files in scenarios/snapshots (delete them or add their scenario): {orphans:?}"
    );
    for n in &names {
        assert!(dir.join(format!("{n}.snap")).exists(), "scenario {n} has no snapshot: run `just chaos-accept`");
    }
}

fn unsafe_run_has_duplicates(r: &Report, switch: &str) {
    assert!(
        r.oracle.duplicate_effects > 0,
        "with EXPIRY_STREAM_UNSAFE={switch} the oracle must see duplicates in {}; it saw none: {}",
        r.scenario,
        r.summary()
    );
    assert_eq!(r.verdict, "FAIL", "{}", r.summary());
    assert!(r.faults.iter().all(|f| f.fired == f.planned), "the faults must still have fired: {}", r.summary());
}

/// The pause scenario's ledger forgets within about a second, so only the fence stops the
/// stale commit of the consumer that wakes after its batch was reclaimed and committed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_fence_the_pause_scenario_duplicates() {
    let _one = ONE_AT_A_TIME.lock().await;
    let r = run(&root().join("scenarios/pause-consumer.toml"), &[("EXPIRY_STREAM_UNSAFE", "no-fence")]).await;
    unsafe_run_has_duplicates(&r, "no-fence");
}

/// Late acks, the same way: the fence alone refuses them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_fence_the_delayed_acks_scenario_duplicates() {
    let _one = ONE_AT_A_TIME.lock().await;
    let r = run(&root().join("scenarios/delay-acks.toml"), &[("EXPIRY_STREAM_UNSAFE", "no-fence")]).await;
    unsafe_run_has_duplicates(&r, "no-fence");
}

/// Re-added copies of effected entries are new stream entries: only the ledger recognises them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_ledger_the_replay_scenario_duplicates() {
    let _one = ONE_AT_A_TIME.lock().await;
    let r = run(&root().join("scenarios/replay.toml"), &[("EXPIRY_STREAM_UNSAFE", "no-ledger")]).await;
    unsafe_run_has_duplicates(&r, "no-ledger");
}

/// The runnable example of docs/SCENARIOS.md: the TOML block after `<!-- example: runnable -->`.
fn doc_example() -> String {
    let doc = std::fs::read_to_string(root().join("docs/SCENARIOS.md")).expect("docs/SCENARIOS.md");
    let at = doc.find("<!-- example: runnable -->").expect("docs/SCENARIOS.md has no runnable example marker");
    let rest = &doc[at..];
    let start = rest.find("```toml\n").expect("a ```toml block after the marker") + "```toml\n".len();
    let end = rest[start..].find("```").expect("closing ```") + start;
    rest[start..end].to_string()
}

/// A scenario written from the document alone runs, and passes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_documented_example_runs() {
    let _one = ONE_AT_A_TIME.lock().await;
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("chaos");
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("doc-example.toml");
    std::fs::write(&file, doc_example()).unwrap();
    let r = run(&file, &[]).await;
    assert!(r.passed(), "{}", r.summary());
    assert!(!r.faults.is_empty() && r.faults.iter().all(|f| f.fired == f.planned && f.fired > 0), "{}", r.summary());
}

/// Every other TOML block of the document is a valid scenario fragment or says it is not.
#[test]
fn every_documented_toml_block_parses() {
    let doc = std::fs::read_to_string(root().join("docs/SCENARIOS.md")).unwrap();
    let example = doc_example();
    scenario::parse("docs example", &example).unwrap_or_else(|e| panic!("{e}"));
    let mut n = 0;
    for block in doc.split("```toml\n").skip(1) {
        let body = &block[..block.find("```").unwrap()];
        n += 1;
        if body.starts_with("# refused") {
            assert!(scenario::parse("docs", body).is_err(), "block {n} is marked refused but parses:\n{body}");
            continue;
        }
        // Fragments are completed with the example's head so that each field is checked.
        let whole = if body.contains("[workload]") { body.to_string() } else { format!("{example}\n{body}") };
        scenario::parse(&format!("docs/SCENARIOS.md block {n}"), &whole).unwrap_or_else(|e| panic!("{e}"));
    }
    assert!(n >= 3);
}

/// A malformed file is refused, naming the field and the line, by the library and by the CLI
/// (exit code 2, before any Redis is started).
#[test]
fn a_malformed_scenario_is_refused_with_field_and_line() {
    let cases = [
        ("fixtures/unknown-field.toml", 13, "workload.ttl_ms", "unknown field `ttl_ms`"),
        ("fixtures/bad-type.toml", 10, "topology.consumer_processes", "invalid type"),
        ("fixtures/bad-fault.toml", 12, "fault[0].delay_ms", "takes no `delay_ms`"),
        ("fixtures/unknown-kind.toml", 13, "fault[1].kind", "unknown variant `kill_everything`"),
    ];
    for (f, line, field, msg) in cases {
        let path = root().join("tests/chaos").join(f);
        let e = scenario::load(&path).expect_err(f);
        assert_eq!(e.line, Some(line), "{f}: {e}");
        assert_eq!(e.field.as_deref(), Some(field), "{f}: {e}");
        assert!(e.message.contains(msg), "{f}: {e}");
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_expiry-stream"))
            .args(["scenario", "run"])
            .arg(&path)
            .args(["--redis", "redis://127.0.0.1:1/"])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{f}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(&format!("line {line}")) && stderr.contains(&format!("`{field}`")), "{f}: {stderr}");
    }
}
