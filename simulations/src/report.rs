//! What a run writes: a per-host CSV, an SVG plot of completions over time, and a
//! Markdown summary. Nothing in them depends on the wall clock, so the same scenario
//! and seed give the same files, byte for byte.

use std::fmt::Write as _;

use crate::{
    Bound, Stats,
    swarm::{Kind, Outcome},
};

/// One run of a multi-seed table ([`seeds_table`]).
#[derive(Debug, Clone, Copy)]
pub struct SeedRow<'a> {
    /// The scenario's seed for this run.
    pub seed: u64,
    /// Its summary.
    pub stats: &'a Stats,
    /// Its lower bound.
    pub bound: &'a Bound,
    /// The model's size in bytes.
    pub model_bytes: u64,
}

/// A Markdown table of the same scenario run with several seeds: a row per seed, then
/// the mean and the worst of each column. Wall times are left out, so the table is
/// the same for the same seeds, byte for byte.
pub fn seeds_table(name: &str, rows: &[SeedRow<'_>]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# {name}, {} seeds
",
        rows.len()
    );
    let _ = writeln!(
        out,
        "| seed | lower bound s | p50 s | p99 s | max s | p99 / p50 | last / lower bound | seeds uploaded (x model) | incomplete |\n\
         |---|---|---|---|---|---|---|---|---|"
    );
    let cols = |r: &SeedRow<'_>| {
        [
            r.bound.seconds,
            r.stats.p50,
            r.stats.p99,
            r.stats.max,
            r.stats.p99 / r.stats.p50,
            r.stats.last / r.bound.seconds,
            r.stats.seed_upload as f64 / r.model_bytes.max(1) as f64,
        ]
    };
    let row = |label: &str, c: [f64; 7], incomplete: String| {
        format!(
            "| {label} | {:.2} | {:.2} | {:.2} | {:.2} | {:.3} | {:.3} | {:.2} | {incomplete} |",
            c[0], c[1], c[2], c[3], c[4], c[5], c[6]
        )
    };
    for r in rows {
        let _ = writeln!(
            out,
            "{}",
            row(&r.seed.to_string(), cols(r), r.stats.incomplete.to_string())
        );
    }
    if rows.len() > 1 {
        let n = rows.len() as f64;
        let mut mean = [0.0; 7];
        let mut worst = [f64::MIN; 7];
        for r in rows {
            for (k, v) in cols(r).into_iter().enumerate() {
                mean[k] += v / n;
                worst[k] = worst[k].max(v);
            }
        }
        let incomplete: usize = rows.iter().map(|r| r.stats.incomplete).sum();
        let _ = writeln!(out, "{}", row("mean", mean, String::new()));
        let _ = writeln!(out, "{}", row("worst", worst, incomplete.to_string()));
    }
    if let Some(r) = rows.first() {
        let _ = writeln!(out, "\nLower bound of seed {}: {}.", r.seed, r.bound.reason);
    }
    out
}

/// The per-host CSV.
pub fn csv(o: &Outcome) -> String {
    let mut out = String::from(
        "host,kind,rack,up_bytes_per_s,down_bytes_per_s,arrive_s,done_s,duration_s,left,corrupt,uploaded_bytes,downloaded_bytes,verified_bytes,banned_peers\n",
    );
    for (i, h) in o.hosts.iter().enumerate() {
        let kind = match h.spec.kind {
            Kind::Seed => "seed",
            Kind::Origin => "origin",
            Kind::Fetcher => "fetcher",
        };
        let rack = if h.spec.rack == u32::MAX {
            "-".to_owned()
        } else {
            h.spec.rack.to_string()
        };
        let arrive = h.spec.arrive as f64 / 1e9;
        let (done, dur) = match h.done {
            Some(d) => (
                format!("{:.3}", d as f64 / 1e9),
                format!("{:.3}", (d - h.spec.arrive) as f64 / 1e9),
            ),
            None => (String::new(), String::new()),
        };
        let _ = writeln!(
            out,
            "{i},{kind},{rack},{:.0},{:.0},{arrive:.3},{done},{dur},{},{},{},{},{},{}",
            h.spec.up,
            h.spec.down,
            h.left,
            h.spec.corrupt,
            h.uploaded,
            h.downloaded,
            h.verified,
            h.banned
        );
    }
    out
}

/// A Markdown summary of the run.
pub fn summary(name: &str, o: &Outcome, s: &Stats, bound: &Bound) -> String {
    let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
    let f = o.model_bytes;
    let mut out = String::new();
    let _ = writeln!(out, "# {name}\n");
    let _ = writeln!(
        out,
        "| quantity | value |\n|---|---|\n\
| model | {:.2} GiB |\n\
| fetchers (honest, staying) | {} ({} finished) |\n\
| completion p50 / p99 / max | {:.2} s / {:.2} s / {:.2} s |\n\
| p99 / p50 | {:.3} |\n\
| last completion (after first arrival) | {:.2} s |\n\
| lower bound | {:.2} s ({}) |\n\
| last / lower bound | {:.3} |\n\
| seeds uploaded | {:.2} GiB ({:.2}x the model) |\n\
| origin uploaded | {:.2} GiB ({:.2}x the model) |\n\
| requests complete hosts pointed elsewhere | {} |\n\
| rack uplinks carried | {:.2} GiB |\n\
| largest upload share of one fetcher | {:.4} |\n\
| hosts without every byte exactly once | {} |\n\
| events / rate recomputations / peak flows | {} / {} / {} |",
        gib(f),
        s.hosts,
        s.finished,
        s.p50,
        s.p99,
        s.max,
        s.p99 / s.p50,
        s.last,
        bound.seconds,
        bound.reason,
        s.last / bound.seconds,
        gib(s.seed_upload),
        s.seed_upload as f64 / f as f64,
        gib(s.origin_upload),
        s.origin_upload as f64 / f as f64,
        o.pointed_elsewhere,
        gib(o.rack_uplink_bytes),
        s.max_fetcher_share,
        s.incomplete,
        o.events,
        o.recomputations,
        o.peak_flows,
    );
    out
}

/// An SVG plot: honest fetchers finished over time, with the lower bound marked.
pub fn svg(name: &str, o: &Outcome, bound: &Bound) -> String {
    let first = o.first_arrival();
    let mut done: Vec<f64> = o
        .hosts
        .iter()
        .filter(|h| h.is_counted())
        .filter_map(|h| h.done.map(|d| (d - first) as f64 / 1e9))
        .collect();
    done.sort_by(f64::total_cmp);
    let mut arrived: Vec<f64> = o
        .hosts
        .iter()
        .filter(|h| h.is_counted())
        .map(|h| (h.spec.arrive - first) as f64 / 1e9)
        .collect();
    arrived.sort_by(f64::total_cmp);
    let n = arrived.len().max(1) as f64;
    let t_max = done
        .last()
        .copied()
        .unwrap_or(1.0)
        .max(bound.seconds)
        .max(arrived.last().copied().unwrap_or(0.0))
        * 1.05;
    let (w, h, left, bottom, top, right) = (720.0, 420.0, 70.0, 50.0, 40.0, 20.0);
    let x = |t: f64| left + t / t_max * (w - left - right);
    let y = |k: f64| h - bottom - k / n * (h - bottom - top);
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="{w}" height="{h}" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{}" y="22" text-anchor="middle" font-size="14">{name}: fetchers finished over time</text>"#,
        w / 2.0
    );
    // Axes and ticks.
    let _ = writeln!(
        s,
        r#"<line x1="{left}" y1="{}" x2="{}" y2="{}" stroke="black"/><line x1="{left}" y1="{top}" x2="{left}" y2="{}" stroke="black"/>"#,
        h - bottom,
        w - right,
        h - bottom,
        h - bottom
    );
    let step = nice_step(t_max);
    let mut t = 0.0;
    while t <= t_max {
        let _ = writeln!(
            s,
            r#"<line x1="{0:.1}" y1="{1}" x2="{0:.1}" y2="{2}" stroke="black"/><text x="{0:.1}" y="{3}" text-anchor="middle">{4}</text>"#,
            x(t),
            h - bottom,
            h - bottom + 5.0,
            h - bottom + 18.0,
            trim(t)
        );
        t += step;
    }
    for k in 0..=4 {
        let v = n * f64::from(k) / 4.0;
        let _ = writeln!(
            s,
            r#"<line x1="{}" y1="{1:.1}" x2="{left}" y2="{1:.1}" stroke="black"/><text x="{2}" y="{3:.1}" text-anchor="end">{4}</text>"#,
            left - 5.0,
            y(v),
            left - 8.0,
            y(v) + 4.0,
            v.round()
        );
    }
    let _ = writeln!(
        s,
        r#"<text x="{}" y="{}" text-anchor="middle">seconds after the first arrival</text><text x="16" y="{}" text-anchor="middle" transform="rotate(-90 16 {})">hosts</text>"#,
        (left + w - right) / 2.0,
        h - 12.0,
        h / 2.0,
        h / 2.0
    );
    // Lower bound.
    let _ = writeln!(
        s,
        r#"<line x1="{0:.1}" y1="{top}" x2="{0:.1}" y2="{1}" stroke="gray" stroke-dasharray="5,4"/><text x="{2:.1}" y="{3}" fill="gray">lower bound {4:.1} s</text>"#,
        x(bound.seconds),
        h - bottom,
        x(bound.seconds) + 4.0,
        top + 12.0,
        bound.seconds
    );
    // Arrivals (when staggered) and completions, as step curves.
    if arrived.last().copied().unwrap_or(0.0) > 0.0 {
        let _ = writeln!(s, "{}", step_curve(&arrived, &x, &y, "#bbbbbb"));
    }
    let _ = writeln!(s, "{}", step_curve(&done, &x, &y, "#1f5fbf"));
    let _ = writeln!(s, "</svg>");
    s
}

fn step_curve(
    times: &[f64],
    x: &dyn Fn(f64) -> f64,
    y: &dyn Fn(f64) -> f64,
    color: &str,
) -> String {
    // At most ~2000 points: thin large runs evenly.
    let stride = (times.len() / 2000).max(1);
    let mut points = format!("{:.1},{:.1}", x(0.0), y(0.0));
    let mut k = 0usize;
    while k < times.len() {
        let t = times[k];
        let _ = write!(
            points,
            " {:.1},{:.1} {:.1},{:.1}",
            x(t),
            y(k as f64),
            x(t),
            y((k + 1) as f64)
        );
        k += stride;
    }
    if let Some(&t) = times.last() {
        let _ = write!(points, " {:.1},{:.1}", x(t), y(times.len() as f64));
    }
    format!(r#"<polyline fill="none" stroke="{color}" stroke-width="2" points="{points}"/>"#)
}

fn nice_step(max: f64) -> f64 {
    let raw = max / 8.0;
    let mag = 10f64.powf(raw.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * mag)
}

fn trim(t: f64) -> String {
    let s = format!("{t:.2}");
    s.trim_end_matches('0').trim_end_matches('.').to_owned()
}
