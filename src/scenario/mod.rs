//! Chaos scenarios against real Redis: files users write (`scenarios/*.toml`, format in
//! `docs/SCENARIOS.md`), a runner that starts the pipeline as separate OS processes of this
//! binary, injects the faults of the file's timeline, drains, and judges with the oracle, and
//! a report (JSON and Markdown) whose deterministic part is snapshotted beside each scenario.
//!
//! - [`spec`]: the file format, its parser and checks (errors name the field and the line).
//! - [`runner`]: provisioning, processes, producer, drain, verdict.
//! - [`faults`]: the fault plan (from the seed) and one injector per fault kind.
//! - [`procs`]: the pipeline's processes, signals, restarts.
//! - [`proxy`]: the TCP fault proxy between processes and Redis.
//! - [`report`]: the report, its Markdown, its deterministic snapshot.

pub mod faults;
pub mod procs;
pub mod proxy;
pub mod report;
pub mod runner;
pub mod spec;

use std::path::{Path, PathBuf};

pub use report::Report;
pub use runner::{run, RunOptions};
pub use spec::{load, parse, Scenario, SpecError};

use crate::provision::Choice;

/// `expiry-stream scenario ...`
#[derive(clap::Args, Debug)]
pub struct ScenarioArgs {
    #[command(subcommand)]
    pub cmd: ScenarioCmd,
}

#[derive(clap::Subcommand, Debug)]
pub enum ScenarioCmd {
    /// Run a scenario file against real Redis; exit 0 when every expectation holds, 1 when
    /// one fails, 2 when the file is refused.
    Run {
        /// The scenario file (TOML; see docs/SCENARIOS.md).
        file: PathBuf,
        /// Redis: `container`, `process`, `auto`, or a redis:// URL (default: EXPIRY_STREAM_REDIS, else auto).
        #[arg(long)]
        redis: Option<String>,
        /// Write the JSON report here (the Markdown and HTML reports go beside it, as .md and .html).
        /// Default: reports/scenarios/NAME.json.
        #[arg(long)]
        report: Option<PathBuf>,
        /// No progress lines.
        #[arg(long)]
        quiet: bool,
    },
    /// Parse and check a scenario file, and print its fault plan (targets drawn from the seed), without running it.
    Check { file: PathBuf },
}

/// Writes the JSON report at `path` and, beside it, the same report model rendered as
/// Markdown (`.md`) and as an HTML page (`.html`).
pub fn write_report(report: &Report, path: &Path) -> anyhow::Result<PathBuf> {
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d)?;
    }
    std::fs::write(path, serde_json::to_string_pretty(report)?)?;
    let doc = report.doc();
    let md = path.with_extension("md");
    std::fs::write(&md, doc.markdown())?;
    std::fs::write(path.with_extension("html"), doc.html(""))?;
    Ok(md)
}

/// Runs the `scenario` subcommand; returns the process exit code.
pub async fn main(args: ScenarioArgs) -> anyhow::Result<i32> {
    match args.cmd {
        ScenarioCmd::Check { file } => match load(&file) {
            Ok(s) => {
                println!("{}: ok: scenario {:?}, seed {}, {} fault(s)", file.display(), s.name, s.seed, s.faults.len());
                for f in faults::plan(&s) {
                    println!("  {} #{} at {} ms, targets {:?}", f.kind, f.n, f.at_ms, f.targets);
                }
                Ok(0)
            }
            Err(e) => {
                eprintln!("error: {e}");
                Ok(2)
            }
        },
        ScenarioCmd::Run { file, redis, report, quiet } => {
            let s = match load(&file) {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("error: {e}");
                    return Ok(2);
                }
            };
            let choice = match redis {
                Some(r) => Choice::parse(&r)?,
                None => Choice::from_env()?,
            };
            let report_path = report.unwrap_or_else(|| PathBuf::from(format!("reports/scenarios/{}.json", s.name)));
            let work_dir = report_path.with_extension("run");
            let opts = RunOptions {
                exe: std::env::current_exe()?,
                redis: choice,
                work_dir,
                consumer_env: vec![],
                progress: !quiet,
                file: file.display().to_string(),
            };
            let r = run(&s, &opts).await?;
            let md = write_report(&r, &report_path)?;
            println!("{}", r.summary());
            println!("report: {}, {} and {}", report_path.display(), md.display(), md.with_extension("html").display());
            Ok(if r.passed() { 0 } else { 1 })
        }
    }
}
