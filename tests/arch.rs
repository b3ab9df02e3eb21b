//! The layering, checked: every `src/**/*.rs` file belongs to a top-level module, and may name
//! only the modules its row of [`LAYERS`] allows (`crate::<module>` in `use` lines and paths,
//! `use crate::{a::X, b::Y}` groups included; `expiry_stream::<module>` in the binary). A
//! second rule: only the store speaks Redis, so no `redis::` path and no `use redis` outside
//! `src/store/` (see [`SPEAKS_REDIS`]). Comments, strings and character literals are blanked
//! before the scan, so a doc link or a `redis://` URL is not an import.
//!
//! No Redis needed: it reads the sources. `just arch` runs it; `just verify` runs it first.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// Each top-level module, the modules it may import, and why. A module imports only below it:
/// `core` < `store` < `capture`, `consume` (with the utilities `fault`, `timer`) < `oracle` <
/// `workload` < the harnesses < `main`. A module not listed here fails the test: place it.
const LAYERS: &[(&str, &[&str], &str)] = &[
    // The pure protocol: decisions as data, no I/O, so property tests and fuzzers drive it alone.
    ("core", &[], "core is pure: it imports no other module of the crate"),
    // Small utilities under the pipeline's components; they know events, nothing else.
    ("fault", &["core"], "fault is a leaf utility: core only"),
    ("timer", &["core"], "timer is a leaf utility: core only"),
    // The only code that speaks Redis, with its in-memory twin (src/store/model), which runs
    // the same scripts.
    ("store", &["core"], "the store sits on the core alone"),
    // The pipeline's two sides. Siblings: neither imports the other.
    ("capture", &["core", "store", "fault", "timer"], "capture uses the store, never the consumer"),
    ("consume", &["core", "store", "fault", "timer"], "consume uses the store, never capture"),
    // The independent judge: it reads ledgers through the store and must not share code with
    // what it judges (a bug there would be a bug in the judge too). `timer` only paces its
    // handler's simulated work.
    ("oracle", &["core", "store", "timer"], "the oracle must not import the consumer or capture it judges"),
    // The paced producer records what it creates in the oracle's ledger.
    ("workload", &["core", "store", "oracle"], "workload is below the harnesses and above the oracle"),
    // Harnesses: whole runs, measurements, simulation, chaos. Each may use anything below the
    // harness layer; among themselves only `provision` (a server to run on) and `report` (the
    // one report model, which `run` produces: report never imports run).
    ("provision", BELOW_HARNESSES, "provision starts servers: nothing of the other harnesses"),
    ("report", BELOW_HARNESSES, "report holds the report model and renders it: it must not import run"),
    ("bench", WITH_SERVER_AND_REPORT, "bench is a harness: no other harness but provision and report"),
    ("sim", WITH_SERVER_AND_REPORT, "sim is a harness: no other harness but provision and report"),
    ("run", WITH_SERVER_AND_REPORT, "run is a harness: no other harness but provision and report"),
    ("scenario", WITH_SERVER_AND_REPORT, "scenario is a harness: no other harness but provision and report"),
    // The binary and the crate root sit on top of everything.
    ("main", ALL, "main is the top"),
    ("lib", ALL, "the crate root declares the modules"),
];

const BELOW_HARNESSES: &[&str] = &["core", "fault", "timer", "store", "capture", "consume", "oracle", "workload"];

const WITH_SERVER_AND_REPORT: &[&str] =
    &["core", "fault", "timer", "store", "capture", "consume", "oracle", "workload", "provision", "report"];

const ALL: &[&str] = &[
    "core",
    "fault",
    "timer",
    "store",
    "capture",
    "consume",
    "oracle",
    "workload",
    "provision",
    "report",
    "bench",
    "sim",
    "run",
    "scenario",
];

/// Modules other than the store that may name the `redis` crate, and why. Empty: every Redis
/// command goes through `store` (fault commands through `store::server::Server`).
const SPEAKS_REDIS: &[(&str, &str)] = &[];

/// One edge against the rules.
#[derive(Debug, PartialEq, Eq)]
struct Violation {
    file: String,
    line: usize,
    what: String,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}: {}", self.file, self.line, self.what)
    }
}

/// The top-level module a source file belongs to: `src/core/x.rs` -> `core`, `src/oracle.rs`
/// -> `oracle`, `src/main.rs` and `src/bin/*` -> `main`, `src/lib.rs` -> `lib`.
fn module_of(rel: &Path) -> String {
    let mut parts = rel.components().map(|c| c.as_os_str().to_string_lossy().into_owned());
    let first = parts.next().unwrap_or_default();
    let has_more = rel.components().count() > 1;
    if first == "bin" && has_more {
        return "main".into();
    }
    first.strip_suffix(".rs").unwrap_or(&first).to_string()
}

/// `src` with comments, string literals (raw and byte strings included) and character literals
/// replaced by spaces, newlines kept, so positions still give the right line.
fn blank_non_code(src: &str) -> String {
    let c: Vec<char> = src.chars().collect();
    let mut out: Vec<char> = Vec::with_capacity(c.len());
    let blank = |ch: char| if ch == '\n' { '\n' } else { ' ' };
    let is_ident = |ch: char| ch.is_alphanumeric() || ch == '_';
    let mut i = 0;
    while i < c.len() {
        let at_word_start = i == 0 || !is_ident(c[i - 1]);
        if c[i] == '/' && c.get(i + 1) == Some(&'/') {
            while i < c.len() && c[i] != '\n' {
                out.push(' ');
                i += 1;
            }
        } else if c[i] == '/' && c.get(i + 1) == Some(&'*') {
            let mut depth = 0;
            while i < c.len() {
                if c[i] == '/' && c.get(i + 1) == Some(&'*') {
                    depth += 1;
                    out.push(' ');
                    out.push(' ');
                    i += 2;
                } else if c[i] == '*' && c.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    out.push(' ');
                    out.push(' ');
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    out.push(blank(c[i]));
                    i += 1;
                }
            }
        } else if at_word_start && (c[i] == 'r' || (c[i] == 'b' && c.get(i + 1) == Some(&'r'))) && {
            let mut j = i + if c[i] == 'b' { 2 } else { 1 };
            while c.get(j) == Some(&'#') {
                j += 1;
            }
            c.get(j) == Some(&'"')
        } {
            // A raw string: r"..", r#".."#, br#".."#: ends at `"` followed by as many `#`.
            let mut j = i + if c[i] == 'b' { 2 } else { 1 };
            let mut hashes = 0;
            while c[j] == '#' {
                hashes += 1;
                j += 1;
            }
            j += 1;
            loop {
                if j >= c.len() {
                    break;
                }
                if c[j] == '"' && (1..=hashes).all(|k| c.get(j + k) == Some(&'#')) {
                    j += 1 + hashes;
                    break;
                }
                j += 1;
            }
            out.extend(c[i..j.min(c.len())].iter().map(|ch| blank(*ch)));
            i = j;
        } else if c[i] == '"' {
            out.push(' ');
            i += 1;
            while i < c.len() && c[i] != '"' {
                if c[i] == '\\' && i + 1 < c.len() {
                    out.push(' ');
                    i += 1;
                }
                out.push(blank(c[i]));
                i += 1;
            }
            out.push(' ');
            i += 1;
        } else if c[i] == '\'' {
            // A character literal ('x', '\n', '\u{..}'), or a lifetime ('a), which is code.
            let end = if c.get(i + 1) == Some(&'\\') {
                (i + 2..c.len()).find(|k| c[*k] == '\'').map(|k| k + 1)
            } else if c.get(i + 2) == Some(&'\'') {
                Some(i + 3)
            } else {
                None
            };
            match end {
                Some(e) => {
                    out.extend(c[i..e].iter().map(|ch| blank(*ch)));
                    i = e;
                }
                None => {
                    out.push('\'');
                    i += 1;
                }
            }
        } else {
            out.push(c[i]);
            i += 1;
        }
    }
    out.into_iter().collect()
}

fn line_at(code: &[char], pos: usize) -> usize {
    1 + code[..pos].iter().filter(|c| **c == '\n').count()
}

fn ident_at(code: &[char], pos: usize) -> Option<String> {
    let s: String = code[pos..].iter().take_while(|c| c.is_alphanumeric() || **c == '_').collect();
    (!s.is_empty()).then_some(s)
}

fn skip_ws(code: &[char], mut pos: usize) -> usize {
    while pos < code.len() && code[pos].is_whitespace() {
        pos += 1;
    }
    pos
}

/// Every crate module named after `root::` (`crate`, or `expiry_stream` in the binary), with
/// its line: `crate::store::X` gives `store`; `crate::{core::A, store::{B, C}}` gives `core`
/// and `store`.
fn crate_refs(code: &[char], root: &str) -> Vec<(usize, String)> {
    let pat: Vec<char> = format!("{root}::").chars().collect();
    let mut out = vec![];
    let mut i = 0;
    while i + pat.len() <= code.len() {
        let boundary = i == 0 || !(code[i - 1].is_alphanumeric() || code[i - 1] == '_' || code[i - 1] == ':');
        if !(boundary && code[i..i + pat.len()] == pat[..]) {
            i += 1;
            continue;
        }
        let mut j = skip_ws(code, i + pat.len());
        if code.get(j) == Some(&'{') {
            // A group: the first identifier of each item at depth 1.
            let mut depth = 0;
            let mut item_start = true;
            while j < code.len() {
                match code[j] {
                    '{' => {
                        depth += 1;
                        item_start = depth == 1;
                    }
                    '}' => {
                        depth -= 1;
                        if depth == 0 {
                            break;
                        }
                    }
                    ',' if depth == 1 => item_start = true,
                    ch if ch.is_whitespace() => {}
                    _ if item_start && depth == 1 => {
                        item_start = false;
                        if let Some(m) = ident_at(code, j) {
                            if m != "self" {
                                out.push((line_at(code, j), m.clone()));
                            }
                            j += m.len();
                            continue;
                        }
                    }
                    _ => {}
                }
                j += 1;
            }
        } else if let Some(m) = ident_at(code, j) {
            out.push((line_at(code, j), m));
        }
        i += pat.len();
    }
    out
}

/// Lines that name the `redis` crate: a `redis::` path (not a field such as `x.redis`), or
/// `use redis` / `extern crate redis`.
fn redis_refs(code: &[char]) -> Vec<usize> {
    let word: Vec<char> = "redis".chars().collect();
    let mut out = vec![];
    for i in 0..code.len().saturating_sub(word.len() - 1) {
        if code[i..i + word.len()] != word[..] {
            continue;
        }
        let before_ok = i == 0 || !(code[i - 1].is_alphanumeric() || code[i - 1] == '_');
        let after = code.get(i + word.len()).copied();
        let after_ok = !after.is_some_and(|c| c.is_alphanumeric() || c == '_');
        if !(before_ok && after_ok) {
            continue;
        }
        let prev: String = code[..i].iter().rev().skip_while(|c| c.is_whitespace()).take(5).collect();
        let prev: String = prev.chars().rev().collect();
        if prev.ends_with('.') {
            continue;
        }
        let next = skip_ws(code, i + word.len());
        let path = code.get(next) == Some(&':') && code.get(next + 1) == Some(&':');
        let used = prev.ends_with("use") || prev.ends_with("crate");
        if path || used {
            out.push(line_at(code, i));
        }
    }
    out.dedup();
    out
}

/// The violations in one file of module `module`.
fn check_source(module: &str, file: &str, src: &str) -> Vec<Violation> {
    let code: Vec<char> = blank_non_code(src).chars().collect();
    let mut out = vec![];
    let Some((_, allowed, why)) = LAYERS.iter().find(|(m, _, _)| *m == module) else {
        return vec![Violation {
            file: file.into(),
            line: 1,
            what: format!("module `{module}` is not in the layering table (tests/arch.rs LAYERS): place it"),
        }];
    };
    let mut refs = crate_refs(&code, "crate");
    if module == "main" {
        refs.extend(crate_refs(&code, "expiry_stream"));
    }
    for (line, target) in refs {
        if target == module || allowed.contains(&target.as_str()) {
            continue;
        }
        out.push(Violation {
            file: file.into(),
            line,
            what: format!("forbidden edge {module} -> {target} ({why}; {module} may import: {})", allowed.join(", ")),
        });
    }
    if module != "store" && !SPEAKS_REDIS.iter().any(|(m, _)| *m == module) {
        for line in redis_refs(&code) {
            out.push(Violation {
                file: file.into(),
                line,
                what: format!(
                    "forbidden edge {module} -> redis (only the store speaks Redis: add a RedisStore or store::server::Server method)"
                ),
            });
        }
    }
    out
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir).expect("read src").map(|e| e.expect("dir entry").path()).collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|e| e == "rs") {
            out.push(p);
        }
    }
}

#[test]
fn every_module_imports_only_below_it_and_only_the_store_speaks_redis() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let src = root.join("src");
    let mut files = vec![];
    rust_files(&src, &mut files);
    assert!(files.len() > 10, "found only {} files under {}", files.len(), src.display());
    let mut violations = vec![];
    let mut modules = BTreeSet::new();
    for f in &files {
        let rel = f.strip_prefix(&src).expect("under src");
        let module = module_of(rel);
        modules.insert(module.clone());
        let text = std::fs::read_to_string(f).expect("read source");
        let shown = f.strip_prefix(root).unwrap_or(f).display().to_string();
        violations.extend(check_source(&module, &shown, &text));
    }
    for (m, _, _) in LAYERS {
        if !modules.contains(*m) {
            violations.push(Violation {
                file: "tests/arch.rs".into(),
                line: 1,
                what: format!("LAYERS has a row for `{m}`, which has no source under src/: remove the row"),
            });
        }
    }
    let list: Vec<String> = violations.iter().map(|v| v.to_string()).collect();
    assert!(list.is_empty(), "{} layering violation(s):\n{}", list.len(), list.join("\n"));
}

/// The table itself: every allowed edge points at a module of the table and down, never at the
/// module itself, and no two modules may import each other (no cycles of two).
#[test]
fn the_table_is_a_layering() {
    let names: Vec<&str> = LAYERS.iter().map(|(m, _, _)| *m).collect();
    for (m, allowed, _) in LAYERS {
        for a in *allowed {
            assert!(names.contains(a), "{m} may import `{a}`, which is not in the table");
            assert_ne!(m, a, "{m} lists itself");
            let back = LAYERS.iter().find(|(n, _, _)| n == a).is_some_and(|(_, b, _)| b.contains(m));
            assert!(!back, "{m} and {a} may import each other");
        }
    }
    let core = LAYERS.iter().find(|(m, _, _)| *m == "core").expect("core row");
    assert!(core.1.is_empty(), "core must import nothing");
    let oracle = LAYERS.iter().find(|(m, _, _)| *m == "oracle").expect("oracle row");
    assert!(!oracle.1.contains(&"consume") && !oracle.1.contains(&"capture"), "the oracle must stay independent");
    let report = LAYERS.iter().find(|(m, _, _)| *m == "report").expect("report row");
    assert!(!report.1.contains(&"run"), "report must not import run");
}

/// The checker bites: a forbidden import in any of the forms the scan knows is reported with its
/// file, line and edge; allowed imports, comments, strings and fields are not.
#[test]
fn the_checker_reports_forbidden_imports_and_redis_calls() {
    let src = r##"//! The oracle, but wrong: crate::capture in a comment is fine.
use crate::core::Event;
use crate::consume::Handler;
use crate::{store::RedisStore, capture::{self, run_listener}};
/* crate::run in a block comment /* nested */ is fine */
fn f(s: &RedisStore) -> Result<(), redis::RedisError> {
    let _url = "redis://127.0.0.1/ and crate::run in a string";
    let _c = 'x';
    let _raw = r#"redis::cmd("PING") crate::run"#;
    let _field = s.redis.url;
    let _ = crate::workload::key_for(s, 1);
    Ok(())
}
use redis;
"##;
    let found = check_source("oracle", "src/oracle.rs", src);
    let got: Vec<(usize, String)> =
        found.iter().map(|v| (v.line, v.what.split(' ').take(5).collect::<Vec<_>>().join(" "))).collect();
    assert_eq!(
        got,
        vec![
            (3, "forbidden edge oracle -> consume".to_string()),
            (4, "forbidden edge oracle -> capture".to_string()),
            (11, "forbidden edge oracle -> workload".to_string()),
            (6, "forbidden edge oracle -> redis".to_string()),
            (14, "forbidden edge oracle -> redis".to_string()),
        ],
        "{found:#?}"
    );
    assert_eq!(found[0].to_string().split(": ").next(), Some("src/oracle.rs:3"), "file and line lead the message");
    // The same source is fine for the store (it may speak Redis), except its upward imports.
    let store = check_source("store", "src/store/x.rs", "use redis::Value;\nuse crate::core::Event;\n");
    assert_eq!(store, vec![]);
    // `report` must not import `run`; the binary is checked through `expiry_stream::`.
    let report = check_source("report", "src/report.rs", "use crate::run::{RunReport, Sample};\n");
    assert_eq!(report.len(), 1, "{report:?}");
    assert!(report[0].what.starts_with("forbidden edge report -> run"), "{report:?}");
    let main = check_source("main", "src/main.rs", "use expiry_stream::run;\nfn f() { redis::cmd(\"X\"); }\n");
    assert_eq!(main.len(), 1, "{main:?}");
    assert_eq!((main[0].line, main[0].what.starts_with("forbidden edge main -> redis")), (2, true));
    // A module missing from the table is reported, not skipped.
    assert!(check_source("newthing", "src/newthing.rs", "")[0].what.contains("not in the layering table"));
}

#[test]
fn modules_of_paths() {
    assert_eq!(module_of(Path::new("core/handler.rs")), "core");
    assert_eq!(module_of(Path::new("store/model/mod.rs")), "store");
    assert_eq!(module_of(Path::new("oracle.rs")), "oracle");
    assert_eq!(module_of(Path::new("main.rs")), "main");
    assert_eq!(module_of(Path::new("bin/tool.rs")), "main");
    assert_eq!(module_of(Path::new("lib.rs")), "lib");
}
