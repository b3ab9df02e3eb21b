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
            if o.ok() && self.drained {
                "PASS (0 lost, 0 duplicate effects, 0 dead-lettered events, witnesses agree)".to_string()
            } else {
                let mut p = o.problems(0);
                if !self.drained {
                    p.push("did not drain".into());
                }
                format!("FAIL: {}", p.join("; "))
            },
        )
    }
}

/// The report as Markdown.
pub fn markdown(r: &RunReport) -> String {
    let o = &r.oracle;
    let mut s = String::new();
    let _ = writeln!(s, "# expiry-stream run report\n");
    let _ = writeln!(s, "Backend: {}\n", r.backend);
    let _ = writeln!(
        s,
        "Workload: {} keys, TTL {} ms, creation delay {} us, {} consumers, {} ms work, batch {}, {} listener(s), {} sweeper(s)\n",
        r.config.workload.keys,
        r.config.workload.ttl_ms,
        r.config.workload.delay_us,
        r.config.consumers,
        r.config.work_ms,
        r.config.batch,
        r.config.listeners,
        r.config.sweepers
    );
    let _ = writeln!(s, "## Oracle (created vs effected ledgers)\n");
    let _ = writeln!(
        s,
        "| created | effected | lost | duplicate effects | unexpected | dead-lettered | library: suppressed replays |"
    );
    let _ = writeln!(s, "|---:|---:|---:|---:|---:|---:|---:|");
    let _ = writeln!(
        s,
        "| {} | {} | **{}** | **{}** | {} | {} | {} |\n",
        o.created,
        o.effected,
        o.lost,
        o.duplicate_effects,
        o.unexpected_effects,
        o.dead_lettered,
        o.duplicates_suppressed
    );
    let _ = writeln!(s, "## Witnesses outside the commit path (ADR 009)\n");
    let _ = writeln!(s, "{}", o.witness_table());
    let _ = writeln!(s, "## Performance\n");
    let _ = writeln!(s, "| figure | value |\n|---|---:|");
    let _ = writeln!(s, "| wall time (first create to drained) | {:.1} s |", r.wall_s);
    let _ = writeln!(s, "| rate | {:.0} keys/s |", r.rate_keys_per_s);
    let _ = writeln!(s, "| offered rate | {:.0} keys/s |", r.produce.offered_rate);
    let _ = writeln!(s, "| max unexpired keys | {} |", r.max_unexpired);
    let p = &r.per_consumer;
    let _ = writeln!(s, "| per consumer min / max / mean | {} / {} / {:.1} |", p.min, p.max, p.mean);
    let _ = writeln!(s, "| spread (max-min)/mean | {:.2}% |", p.spread_pct);
    let (c, e) = (&r.deadline_to_capture_ms, &r.deadline_to_effect_ms);
    let _ = writeln!(s, "| deadline to capture p50 / p99 / max | {} / {} / {} ms |", c.p50, c.p99, c.max);
    let _ = writeln!(s, "| deadline to effect p50 / p99 / max | {} / {} / {} ms |", e.p50, e.p99, e.max);
    let _ = writeln!(
        s,
        "| captured by listener / sweeper / write | {} / {} / {} |",
        r.captured.listener, r.captured.sweeper, r.captured.write
    );
    let _ = writeln!(s, "| Redis peak memory | {:.1} MiB |", r.redis_peak_memory_bytes as f64 / 1048576.0);
    s
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
    let md = markdown(r);
    let table: String = md.lines().map(|l| format!("{}\n", l.replace('&', "&amp;").replace('<', "&lt;"))).collect();
    format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>expiry-stream run report</title>\
         <style>body{{font-family:sans-serif;max-width:960px;margin:2em auto}}pre{{background:#f6f6f6;padding:1em;overflow:auto}}</style>\
         </head><body><h1>expiry-stream run</h1><p><b>Verdict:</b> {}</p>{throughput}{backlog}{latency}<pre>{table}</pre></body></html>\n",
        if r.oracle.ok() && r.drained {
            "PASS: 0 lost, 0 duplicate effects, 0 dead-lettered events (by the oracle), witnesses agree".to_string()
        } else {
            format!("FAIL: {}", r.oracle.problems(0).join("; "))
        }
    )
}
