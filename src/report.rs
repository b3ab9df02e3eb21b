//! Reports people read or look at: Markdown for the numbers, a self-contained HTML page with
//! SVG charts for what happened over time (created, captured, effected per second; backlog;
//! p99 deadline-to-effect). No JavaScript, no external assets: it opens from disk anywhere.
//!
//! The report model ([`RunReport`]) is defined here, beside its renderers, and `run` produces
//! it: a renderer never depends on the code that ran the pipeline.

use std::collections::BTreeMap;
use std::fmt::Write;

use serde::Serialize;

use crate::oracle::{Latency, Spread, Verdict};
use crate::workload::{ProduceReport, WorkloadConfig};

/// One second of the run.
#[derive(Clone, Debug, Serialize)]
pub struct Sample {
    pub t_s: f64,
    pub created: u64,
    pub captured: u64,
    pub effected: u64,
    /// Captured but not yet effected (stream length).
    pub backlog: u64,
    /// Tracked keys not yet captured.
    pub unexpired: u64,
    /// p99 deadline-to-effect of effects completed in this second (filled after the run).
    pub p99_ms: i64,
}

/// Events captured per path, by the library's own counters.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Captured {
    pub listener: i64,
    pub sweeper: i64,
    pub write: i64,
}

/// What a run was asked to do, as its report shows it (the run's own configuration, less what
/// only steers it: consumer and sweeper tuning, the progress display).
#[derive(Clone, Debug, Serialize)]
pub struct RunSettings {
    pub workload: WorkloadConfig,
    pub consumers: usize,
    pub work_ms: u64,
    pub listeners: usize,
    pub sweepers: usize,
    pub batch: usize,
    pub concurrency: usize,
    pub drain_timeout_s: u64,
}

/// Everything one run measured and the oracle's verdict on it: `run` fills it in, the
/// renderers below ([`markdown`], [`html`], [`RunReport::summary`]) and the JSON file show it.
#[derive(Clone, Debug, Serialize)]
pub struct RunReport {
    pub config: RunSettings,
    pub backend: String,
    pub oracle: Verdict,
    pub rate_keys_per_s: f64,
    pub wall_s: f64,
    pub drained: bool,
    pub max_unexpired: u64,
    pub per_consumer: Spread,
    pub deadline_to_capture_ms: Latency,
    pub deadline_to_effect_ms: Latency,
    pub captured: Captured,
    pub library: BTreeMap<String, i64>,
    pub redis_peak_memory_bytes: u64,
    pub produce: ProduceReport,
    pub lost_sample: Vec<String>,
    pub timeline: Vec<Sample>,
}

impl RunReport {
    /// The human summary printed at the end of a run.
    pub fn summary(&self) -> String {
        let o = &self.oracle;
        format!(
            "oracle: created {} effected {} lost {} duplicate_effects {} (unexpected {}, dead-lettered {}; library suppressed {} replays)\n\
             witnesses: handler_runs {} redeliveries {} capture_duplicates {} (stream entries unseen {}) external_duplicates {} (applied {} repeated {} fenced {} missing {}) deleted_while_pending {}\n\
             rate: {:.0} keys/s over {:.1} s (drained: {})   max unexpired keys: {}\n\
             consumers: {} min {} max {} mean {:.1} spread {:.2}%\n\
             deadline->capture ms p50 {} p99 {} max {}   deadline->effect ms p50 {} p99 {} max {}\n\
             captured by listener {} sweeper {} write {}   redis peak memory {:.1} MiB\n\
             verdict: {}",
            o.created, o.effected, o.lost, o.duplicate_effects, o.unexpected_effects, o.dead_lettered, o.duplicates_suppressed,
            o.handler_runs, o.redeliveries, o.capture_duplicates, o.stream_entries_unseen, o.external_duplicates,
            o.external_applied, o.external_repeated, o.external_fenced, o.external_missing, o.deleted_while_pending,
            self.rate_keys_per_s, self.wall_s, self.drained, self.max_unexpired,
            self.per_consumer.consumers, self.per_consumer.min, self.per_consumer.max, self.per_consumer.mean, self.per_consumer.spread_pct,
            self.deadline_to_capture_ms.p50, self.deadline_to_capture_ms.p99, self.deadline_to_capture_ms.max,
            self.deadline_to_effect_ms.p50, self.deadline_to_effect_ms.p99, self.deadline_to_effect_ms.max,
            self.captured.listener, self.captured.sweeper, self.captured.write,
            self.redis_peak_memory_bytes as f64 / 1048576.0,
            self.verdict(),
        )
    }
}

impl RunReport {
    /// The run as the one report model ([`Doc`]): what [`markdown`] and [`html`] render.
    pub fn doc(&self) -> Doc {
        let w = &self.config.workload;
        let p = &self.per_consumer;
        let (c, e) = (&self.deadline_to_capture_ms, &self.deadline_to_effect_ms);
        let figure = |name: &str, value: String| vec![name.to_string(), value];
        let perf = Table {
            header: vec!["figure".into(), "value".into()],
            numeric: vec![false, true],
            rows: vec![
                figure("wall time (first create to drained)", format!("{:.1} s", self.wall_s)),
                figure("rate", format!("{:.0} keys/s", self.rate_keys_per_s)),
                figure("offered rate", format!("{:.0} keys/s", self.produce.offered_rate)),
                figure("max unexpired keys", self.max_unexpired.to_string()),
                figure("per consumer min / max / mean", format!("{} / {} / {:.1}", p.min, p.max, p.mean)),
                figure("spread (max-min)/mean", format!("{:.2}%", p.spread_pct)),
                figure("deadline to capture p50 / p99 / max", format!("{} / {} / {} ms", c.p50, c.p99, c.max)),
                figure("deadline to effect p50 / p99 / max", format!("{} / {} / {} ms", e.p50, e.p99, e.max)),
                figure(
                    "captured by listener / sweeper / write",
                    format!("{} / {} / {}", self.captured.listener, self.captured.sweeper, self.captured.write),
                ),
                figure("Redis peak memory", format!("{:.1} MiB", self.redis_peak_memory_bytes as f64 / 1048576.0)),
            ],
        };
        let mut sections = oracle_sections(&self.oracle);
        sections.push(Section::new("Performance", vec![Block::Table(perf)]));
        Doc {
            title: "expiry-stream run report".into(),
            paragraphs: vec![
                format!("Verdict: {}", self.verdict()),
                format!("Backend: {}", self.backend),
                format!(
                    "Workload: {} keys, TTL {} ms, creation delay {} us, {} consumers, {} ms work, batch {}, {} listener(s), {} sweeper(s)",
                    w.keys,
                    w.ttl_ms,
                    w.delay_us,
                    self.config.consumers,
                    self.config.work_ms,
                    self.config.batch,
                    self.config.listeners,
                    self.config.sweepers
                ),
            ],
            facts: vec![],
            sections,
        }
    }

    /// PASS or FAIL with the reasons, from the oracle and the drain alone.
    pub fn verdict(&self) -> String {
        if self.oracle.ok() && self.drained {
            "PASS (0 lost, 0 duplicate effects, 0 dead-lettered events, witnesses agree)".to_string()
        } else {
            let mut p = self.oracle.problems(0);
            if !self.drained {
                p.push("did not drain".into());
            }
            format!("FAIL: {}", p.join("; "))
        }
    }
}

/// The report as Markdown.
pub fn markdown(r: &RunReport) -> String {
    r.doc().markdown()
}

// ------------------------------------------------------------------ the one report model

/// The one report model every harness fills: a run ([`RunReport::doc`]) and a chaos scenario
/// (`scenario::report::Report::doc`) are documents of sections holding tables, lists and text;
/// [`Doc::markdown`] and [`Doc::html`] render any of them, and the oracle's sections are built
/// once ([`oracle_sections`]), so every report shows the verdict the same way.
#[derive(Clone, Debug, Default)]
pub struct Doc {
    pub title: String,
    /// Paragraphs under the title.
    pub paragraphs: Vec<String>,
    /// A list of facts under the paragraphs (file, seed, backend...).
    pub facts: Vec<String>,
    pub sections: Vec<Section>,
}

#[derive(Clone, Debug, Default)]
pub struct Section {
    pub title: String,
    pub blocks: Vec<Block>,
}

#[derive(Clone, Debug)]
pub enum Block {
    Table(Table),
    List(Vec<String>),
    Text(String),
}

/// A table; `numeric` columns are right-aligned. Cells may hold `**bold**` and `` `code` ``.
#[derive(Clone, Debug, Default)]
pub struct Table {
    pub header: Vec<String>,
    pub numeric: Vec<bool>,
    pub rows: Vec<Vec<String>>,
}

impl Table {
    /// A table of `(header, numeric)` columns.
    pub fn new(cols: &[(&str, bool)]) -> Table {
        Table {
            header: cols.iter().map(|c| c.0.to_string()).collect(),
            numeric: cols.iter().map(|c| c.1).collect(),
            rows: vec![],
        }
    }

    pub fn row(mut self, cells: Vec<String>) -> Table {
        self.rows.push(cells);
        self
    }
}

impl Section {
    pub fn new(title: &str, blocks: Vec<Block>) -> Section {
        Section { title: title.to_string(), blocks }
    }
}

impl Doc {
    /// Markdown (GitHub tables).
    pub fn markdown(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "# {}\n", self.title);
        for p in &self.paragraphs {
            let _ = writeln!(s, "{}\n", p.trim());
        }
        for f in &self.facts {
            let _ = writeln!(s, "- {f}");
        }
        if !self.facts.is_empty() {
            s.push('\n');
        }
        for sec in &self.sections {
            let _ = writeln!(s, "## {}\n", sec.title);
            for b in &sec.blocks {
                match b {
                    Block::Table(t) => {
                        let _ = writeln!(s, "| {} |", t.header.join(" | "));
                        let align: Vec<&str> = t.numeric.iter().map(|n| if *n { "---:" } else { "---" }).collect();
                        let _ = writeln!(s, "|{}|", align.join("|"));
                        for r in &t.rows {
                            let _ = writeln!(s, "| {} |", r.join(" | "));
                        }
                        s.push('\n');
                    }
                    Block::List(items) => {
                        for i in items {
                            let _ = writeln!(s, "- {i}");
                        }
                        s.push('\n');
                    }
                    Block::Text(t) => {
                        let _ = writeln!(s, "{}\n", t.trim());
                    }
                }
            }
        }
        s
    }

    /// The body of an HTML page (no `<html>` around it): the same content as [`Doc::markdown`],
    /// with real tables; `extra` (charts) goes right after the facts.
    pub fn html_body(&self, extra: &str) -> String {
        let mut s = String::new();
        let _ = write!(s, "<h1>{}</h1>", inline_html(&self.title));
        for p in &self.paragraphs {
            let _ = write!(s, "<p>{}</p>", inline_html(p.trim()));
        }
        if !self.facts.is_empty() {
            s.push_str("<ul>");
            for f in &self.facts {
                let _ = write!(s, "<li>{}</li>", inline_html(f));
            }
            s.push_str("</ul>");
        }
        s.push_str(extra);
        for sec in &self.sections {
            let _ = write!(s, "<h2>{}</h2>", inline_html(&sec.title));
            for b in &sec.blocks {
                match b {
                    Block::Table(t) => {
                        s.push_str("<table><tr>");
                        for h in &t.header {
                            let _ = write!(s, "<th>{}</th>", inline_html(h));
                        }
                        s.push_str("</tr>");
                        for r in &t.rows {
                            s.push_str("<tr>");
                            for (i, c) in r.iter().enumerate() {
                                let num = t.numeric.get(i).copied().unwrap_or(false);
                                let _ =
                                    write!(s, "<td{}>{}</td>", if num { " class=\"n\"" } else { "" }, inline_html(c));
                            }
                            s.push_str("</tr>");
                        }
                        s.push_str("</table>");
                    }
                    Block::List(items) => {
                        s.push_str("<ul>");
                        for i in items {
                            let _ = write!(s, "<li>{}</li>", inline_html(i));
                        }
                        s.push_str("</ul>");
                    }
                    Block::Text(t) => {
                        let _ = write!(s, "<p>{}</p>", inline_html(t.trim()));
                    }
                }
            }
        }
        s
    }

    /// A self-contained HTML page: no JavaScript, no external assets.
    pub fn html(&self, extra: &str) -> String {
        format!(
            "<!doctype html><html><head><meta charset=\"utf-8\"><title>{}</title><style>{}</style></head><body>{}</body></html>\n",
            escape_html(&self.title),
            "body{font-family:sans-serif;max-width:1000px;margin:2em auto}table{border-collapse:collapse;margin:1em 0}\
             td,th{border:1px solid #ccc;padding:3px 8px}td.n{text-align:right}th{background:#f3f3f3}",
            self.html_body(extra)
        )
    }
}

fn escape_html(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// Escapes `s` and turns its `**bold**` and `` `code` `` spans into tags.
fn inline_html(s: &str) -> String {
    let mut out = String::new();
    let (mut bold, mut code) = (false, false);
    let mut rest = s;
    while let Some(c) = rest.chars().next() {
        if !code && rest.starts_with("**") {
            out.push_str(if bold { "</b>" } else { "<b>" });
            bold = !bold;
            rest = &rest[2..];
            continue;
        }
        if c == '`' {
            out.push_str(if code { "</code>" } else { "<code>" });
            code = !code;
        } else {
            out.push_str(&escape_html(&c.to_string()));
        }
        rest = &rest[c.len_utf8()..];
    }
    if code {
        out.push_str("</code>");
    }
    if bold {
        out.push_str("</b>");
    }
    out
}

/// The oracle's two sections, the same in every report: the verdict from the created and
/// effected ledgers, and the witnesses outside the commit path (ADR 009).
pub fn oracle_sections(o: &Verdict) -> Vec<Section> {
    let verdict = Table::new(&[
        ("created", true),
        ("effected", true),
        ("lost", true),
        ("duplicate effects", true),
        ("unexpected", true),
        ("dead-lettered", true),
        ("library: suppressed replays", true),
    ])
    .row(vec![
        o.created.to_string(),
        o.effected.to_string(),
        format!("**{}**", o.lost),
        format!("**{}**", o.duplicate_effects),
        o.unexpected_effects.to_string(),
        o.dead_lettered.to_string(),
        o.duplicates_suppressed.to_string(),
    ]);
    let witnesses = Table::new(&[
        ("handler runs", true),
        ("redeliveries", true),
        ("capture duplicates", true),
        ("stream entries unseen", true),
        ("external applied", true),
        ("external repeated", true),
        ("external fenced", true),
        ("external duplicates", true),
        ("external missing", true),
        ("effects without run", true),
        ("deleted while pending", true),
    ])
    .row(vec![
        o.handler_runs.to_string(),
        o.redeliveries.to_string(),
        format!("**{}**", o.capture_duplicates),
        o.stream_entries_unseen.to_string(),
        o.external_applied.to_string(),
        o.external_repeated.to_string(),
        o.external_fenced.to_string(),
        format!("**{}**", o.external_duplicates),
        o.external_missing.to_string(),
        o.effects_without_run.to_string(),
        o.deleted_while_pending.to_string(),
    ]);
    vec![
        Section::new("Oracle (created vs effected ledgers)", vec![Block::Table(verdict)]),
        Section::new("Witnesses outside the commit path (ADR 009)", vec![Block::Table(witnesses)]),
    ]
}

fn polyline(points: &[(f64, f64)], x_max: f64, y_max: f64, w: f64, h: f64, color: &str) -> String {
    let mut d = String::new();
    for (x, y) in points {
        let px = 50.0 + x / x_max.max(1e-9) * (w - 60.0);
        let py = h - 30.0 - y / y_max.max(1e-9) * (h - 50.0);
        let _ = write!(d, "{px:.1},{py:.1} ");
    }
    format!(r#"<polyline fill="none" stroke="{color}" stroke-width="1.8" points="{d}"/>"#)
}

/// A chart's series: its label, its colour and its (x, y) points.
type Series<'a> = (&'a str, &'a str, Vec<(f64, f64)>);

/// One SVG chart of several series over time.
fn chart(title: &str, unit: &str, series: &[Series<'_>]) -> String {
    let (w, h) = (900.0, 300.0);
    let x_max = series.iter().flat_map(|s| s.2.iter().map(|p| p.0)).fold(0.0, f64::max);
    let y_max = series.iter().flat_map(|s| s.2.iter().map(|p| p.1)).fold(0.0, f64::max).max(1.0) * 1.05;
    let mut svg = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif" font-size="12">"#
    );
    let _ = write!(svg, r#"<text x="50" y="16" font-size="14" font-weight="bold">{title}</text>"#);
    let _ = write!(svg, r##"<line x1="50" y1="{0}" x2="{1}" y2="{0}" stroke="#888"/>"##, h - 30.0, w - 10.0);
    let _ = write!(svg, r##"<line x1="50" y1="20" x2="50" y2="{}" stroke="#888"/>"##, h - 30.0);
    for i in 0..=4 {
        let y = y_max * i as f64 / 4.0;
        let py = h - 30.0 - (h - 50.0) * i as f64 / 4.0;
        let _ = write!(svg, r##"<text x="46" y="{:.1}" text-anchor="end" fill="#444">{:.0}</text>"##, py + 4.0, y);
        let _ = write!(svg, r##"<line x1="50" y1="{py:.1}" x2="{}" y2="{py:.1}" stroke="#eee"/>"##, w - 10.0);
        let x = x_max * i as f64 / 4.0;
        let px = 50.0 + (w - 60.0) * i as f64 / 4.0;
        let _ = write!(svg, r##"<text x="{px:.1}" y="{}" text-anchor="middle" fill="#444">{x:.0} s</text>"##, h - 12.0);
    }
    let _ = write!(svg, r##"<text x="{}" y="16" text-anchor="end" fill="#444">{unit}</text>"##, w - 10.0);
    for (i, (name, color, pts)) in series.iter().enumerate() {
        svg.push_str(&polyline(pts, x_max, y_max, w, h, color));
        let lx = 400.0 + 150.0 * i as f64;
        let _ = write!(
            svg,
            r#"<rect x="{lx}" y="7" width="12" height="3" fill="{color}"/><text x="{}" y="13">{name}</text>"#,
            lx + 16.0
        );
    }
    svg.push_str("</svg>");
    svg
}

/// Per-second rates from cumulative samples.
fn rates(t: &[Sample], f: impl Fn(&Sample) -> u64) -> Vec<(f64, f64)> {
    t.windows(2)
        .map(|w| {
            let dt = (w[1].t_s - w[0].t_s).max(1e-6);
            (w[1].t_s, (f(&w[1]).saturating_sub(f(&w[0]))) as f64 / dt)
        })
        .collect()
}

/// The report as a self-contained HTML page with charts.
pub fn html(r: &RunReport) -> String {
    let t = &r.timeline;
    let throughput = chart(
        "Throughput",
        "keys/s",
        &[
            ("created", "#1f77b4", rates(t, |s| s.created)),
            ("captured (expired)", "#ff7f0e", rates(t, |s| s.captured)),
            ("effected", "#2ca02c", rates(t, |s| s.effected)),
        ],
    );
    let backlog = chart(
        "Backlog",
        "entries",
        &[
            ("stream backlog", "#d62728", t.iter().map(|s| (s.t_s, s.backlog as f64)).collect()),
            ("unexpired tracked keys", "#9467bd", t.iter().map(|s| (s.t_s, s.unexpired as f64)).collect()),
        ],
    );
    let latency = chart(
        "Deadline to effect, p99 per second",
        "ms",
        &[("p99", "#8c564b", t.iter().filter(|s| s.p99_ms > 0).map(|s| (s.t_s, s.p99_ms as f64)).collect())],
    );
    let charts = format!("<h2>Over time</h2>{throughput}{backlog}{latency}");
    r.doc().html(&charts)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc() -> Doc {
        Doc {
            title: "Scenario `x`: PASS".into(),
            paragraphs: vec!["Kills <consumers> & more.".into()],
            facts: vec!["seed 7".into()],
            sections: vec![Section::new(
                "Faults",
                vec![
                    Block::Table(
                        Table::new(&[("kind", false), ("fired", true)]).row(vec!["kill".into(), "**3**".into()]),
                    ),
                    Block::List(vec!["a `b`".into()]),
                    Block::Text("done".into()),
                ],
            )],
        }
    }

    #[test]
    fn markdown_renders_every_block_with_aligned_tables() {
        let md = doc().markdown();
        assert_eq!(
            md,
            "# Scenario `x`: PASS\n\nKills <consumers> & more.\n\n- seed 7\n\n## Faults\n\n\
             | kind | fired |\n|---|---:|\n| kill | **3** |\n\n- a `b`\n\ndone\n\n"
        );
    }

    #[test]
    fn html_escapes_text_and_turns_bold_and_code_into_tags() {
        let h = doc().html("<svg/>");
        assert!(h.contains("<h1>Scenario <code>x</code>: PASS</h1>"), "{h}");
        assert!(h.contains("<p>Kills &lt;consumers&gt; &amp; more.</p>"), "{h}");
        assert!(h.contains("<td class=\"n\"><b>3</b></td>"), "{h}");
        assert!(h.contains("<li>a <code>b</code></li>"), "{h}");
        // The charts go after the facts, before the sections.
        assert!(h.find("<svg/>").unwrap() < h.find("<h2>Faults</h2>").unwrap(), "{h}");
        // An unclosed span is closed: the page stays well-formed.
        assert_eq!(inline_html("**a `b"), "<b>a <code>b</code></b>");
    }
}
