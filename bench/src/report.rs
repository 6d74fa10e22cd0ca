//! The human report: a table on the terminal and a self-contained HTML page
//! with inline SVG charts (medians with min–max whiskers per metric, the
//! flotilla/peer ratios on a log scale, and the ratio history across runs).
//!
//! What it must never do: load anything from the network (no scripts, no
//! fonts, no styles from elsewhere), or draw a bar for a skipped peer.

use std::fmt::Write as _;

use crate::model::{Metric, Results};

/// Bar colours; the screenshot check counts pixels of exactly these.
pub const FLOTILLA_RGB: (u8, u8, u8) = (0x1f, 0x77, 0xb4);
pub const WIN_RGB: (u8, u8, u8) = (0x2c, 0xa0, 0x2c);
pub const LOSE_RGB: (u8, u8, u8) = (0xd6, 0x27, 0x28);
const PEER_COLOURS: &[&str] = &["#ff7f0e", "#9467bd", "#8c564b", "#e377c2"];
const SERIES_COLOURS: &[&str] = &[
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
    "#bcbd22", "#17becf",
];

fn hex((r, g, b): (u8, u8, u8)) -> String {
    format!("#{r:02x}{g:02x}{b:02x}")
}

fn fmt_value(v: f64, unit: &str) -> String {
    if unit == "KiB" {
        if v >= 10240.0 {
            format!("{:.1} MiB", v / 1024.0)
        } else {
            format!("{v:.0} KiB")
        }
    } else if unit == "µs" {
        format!("{v:.0} µs")
    } else if unit.ends_with("/s") {
        format!("{} {unit}", thousands(v))
    } else if v >= 10_000.0 {
        format!("{:.2} s", v / 1000.0)
    } else if v >= 100.0 {
        format!("{v:.0} ms")
    } else {
        format!("{v:.1} ms")
    }
}

/// A rate rounded to a whole number with thousands separators: 13,018.
fn thousands(v: f64) -> String {
    let digits = format!("{:.0}", v.max(0.0));
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn fmt_ratio(r: f64, higher_is_better: bool) -> String {
    match (higher_is_better, r < 1.0) {
        (false, true) => format!("{r:.2}× ({:.1}× faster/smaller)", 1.0 / r),
        (false, false) => format!("{r:.2}× ({r:.1}× slower/larger)"),
        (true, true) => format!("{r:.2}× ({:.1}× lower rate)", 1.0 / r),
        (true, false) => format!("{r:.2}× ({r:.1}× higher rate)"),
    }
}

/// The terminal table.
pub fn table(r: &Results) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<46} {:<26} {:>12} {:>12} {:>12}  flotilla/peer",
        "metric", "who", "median", "min", "max"
    );
    let _ = writeln!(out, "{}", "-".repeat(130));
    for m in &r.metrics {
        let name = format!("{}: {}", m.group, m.name);
        let row = |who: &str, s: Option<&crate::util::Stats>, extra: &str| match s {
            Some(s) => format!(
                "{:<46} {:<26} {:>12} {:>12} {:>12}  {extra}",
                name,
                who,
                fmt_value(s.median, &m.unit),
                fmt_value(s.min, &m.unit),
                fmt_value(s.max, &m.unit)
            ),
            None => format!("{name:<46} {who:<26} {extra}"),
        };
        match &m.flotilla {
            Some(s) => {
                let _ = writeln!(out, "{}", row("flotilla", Some(s), ""));
            }
            None => {
                let _ = writeln!(out, "{}", row("flotilla", None, "not measured"));
            }
        }
        for p in &m.peers {
            let extra = match (&p.skipped, p.ratio) {
                (Some(why), _) => format!("SKIPPED: {why}"),
                (None, Some(ratio)) => fmt_ratio(ratio, m.higher_is_better),
                (None, None) => "no ratio".into(),
            };
            let _ = writeln!(out, "{}", row(&p.name, p.stats.as_ref(), &extra));
        }
        if let (Some(g), Some(gap)) = (&m.goal, m.goal_gap()) {
            let verdict = if gap <= 1.0 { "met" } else { "MISSED" };
            let _ = writeln!(
                out,
                "{:<46} goal: {} — {verdict} ({gap:.2}× the limit)",
                "", g.text
            );
        }
    }
    out
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A horizontal bar chart of one metric: a bar per runner (median) with a
/// min–max whisker.
fn metric_chart(m: &Metric) -> String {
    struct Row<'a> {
        who: &'a str,
        s: &'a crate::util::Stats,
        colour: String,
    }
    let mut rows = Vec::new();
    if let Some(s) = &m.flotilla {
        rows.push(Row {
            who: "flotilla",
            s,
            colour: hex(FLOTILLA_RGB),
        });
    }
    for (i, p) in m.peers.iter().enumerate() {
        if let Some(s) = &p.stats {
            rows.push(Row {
                who: &p.name,
                s,
                colour: PEER_COLOURS[i % PEER_COLOURS.len()].into(),
            });
        }
    }
    let max = rows
        .iter()
        .map(|r| r.s.max)
        .fold(0.0_f64, f64::max)
        .max(1e-9);
    let (label_w, bar_w, row_h) = (190.0, 420.0, 26.0);
    let h = 30.0 + row_h * rows.len() as f64;
    let mut svg = format!(
        r#"<svg class="chart metric" xmlns="http://www.w3.org/2000/svg" width="{}" height="{h}" role="img"><title>{}</title>"#,
        label_w + bar_w + 150.0,
        esc(&m.name)
    );
    let _ = write!(
        svg,
        r#"<text x="0" y="16" font-size="13" font-weight="bold">{} ({})</text>"#,
        esc(&m.name),
        esc(&m.unit)
    );
    for (i, r) in rows.iter().enumerate() {
        let y = 26.0 + row_h * i as f64;
        let w = (r.s.median / max * bar_w).max(1.0);
        let (x0, x1) = (
            label_w + r.s.min / max * bar_w,
            label_w + r.s.max / max * bar_w,
        );
        let _ = write!(
            svg,
            r##"<text x="{}" y="{}" font-size="12" text-anchor="end">{}</text><rect class="bar" x="{label_w}" y="{y}" width="{w:.1}" height="18" fill="{}"/><line x1="{x0:.1}" x2="{x1:.1}" y1="{}" y2="{}" stroke="#333" stroke-width="1.5"/><text x="{}" y="{}" font-size="12">{}</text>"##,
            label_w - 6.0,
            y + 13.0,
            esc(r.who),
            r.colour,
            y + 9.0,
            y + 9.0,
            label_w + bar_w + 6.0,
            y + 13.0,
            esc(&fmt_value(r.s.median, &m.unit))
        );
    }
    svg.push_str("</svg>");
    svg
}

/// Maps a ratio to x on a log scale from 1/100 to 100 around 1.
fn log_x(r: f64, center: f64, half: f64) -> f64 {
    let l = r.clamp(0.01, 100.0).log10() / 2.0;
    center + l * half
}

/// Every flotilla/peer ratio on one log-scale chart: green where flotilla
/// is ahead (left of 1 for times and sizes, right of 1 for rates), red
/// where it is behind.
fn ratio_chart(r: &Results) -> String {
    let rows: Vec<(String, f64, bool)> = r
        .metrics
        .iter()
        .flat_map(|m| {
            m.peers.iter().filter_map(move |p| {
                p.ratio.map(|ratio| {
                    let dir = if m.higher_is_better { " (rate)" } else { "" };
                    (
                        format!("{} — {}{dir} vs {}", m.group, m.name, p.name),
                        ratio,
                        m.ahead(ratio),
                    )
                })
            })
        })
        .collect();
    let (label_w, half, row_h) = (600.0, 230.0, 22.0);
    let center = label_w + half;
    let h = 50.0 + row_h * rows.len() as f64;
    let mut svg = format!(
        r#"<svg class="chart ratios" xmlns="http://www.w3.org/2000/svg" width="{}" height="{h}" role="img"><title>flotilla / peer</title>"#,
        label_w + 2.0 * half + 80.0
    );
    for (tick, label) in [
        (0.01, "1/100"),
        (0.1, "1/10"),
        (1.0, "1"),
        (10.0, "10×"),
        (100.0, "100×"),
    ] {
        let x = log_x(tick, center, half);
        let _ = write!(
            svg,
            r##"<line x1="{x:.1}" x2="{x:.1}" y1="20" y2="{}" stroke="{}" stroke-width="1"/><text x="{x:.1}" y="14" font-size="11" text-anchor="middle">{label}</text>"##,
            h - 10.0,
            if tick == 1.0 { "#000" } else { "#ccc" }
        );
    }
    for (i, (label, ratio, ahead)) in rows.iter().enumerate() {
        let y = 26.0 + row_h * i as f64;
        let x = log_x(*ratio, center, half);
        let (x0, w) = if x < center {
            (x, center - x)
        } else {
            (center, x - center)
        };
        let colour = if *ahead { WIN_RGB } else { LOSE_RGB };
        let _ = write!(
            svg,
            r#"<text x="{}" y="{}" font-size="11" text-anchor="end">{}</text><rect class="bar" x="{x0:.1}" y="{y}" width="{:.1}" height="15" fill="{}"/><text x="{}" y="{}" font-size="11">{ratio:.2}×</text>"#,
            label_w - 6.0,
            y + 12.0,
            esc(label),
            w.max(1.0),
            hex(colour),
            label_w + 2.0 * half + 6.0,
            y + 12.0
        );
    }
    svg.push_str("</svg>");
    svg
}

/// The ratio of each metric/peer across runs (oldest first), log scale.
fn history_chart(history: &[Results]) -> Option<String> {
    if history.len() < 2 {
        return None;
    }
    let mut series: Vec<(String, Vec<(usize, f64)>)> = Vec::new();
    for (i, run) in history.iter().enumerate() {
        for m in &run.metrics {
            for p in &m.peers {
                let Some(ratio) = p.ratio else { continue };
                let name = format!("{} vs {}", m.key, p.name);
                match series.iter_mut().find(|s| s.0 == name) {
                    Some(s) => s.1.push((i, ratio)),
                    None => series.push((name, vec![(i, ratio)])),
                }
            }
        }
    }
    let (w, h, left, top) = (760.0, 300.0, 50.0, 20.0);
    let n = history.len() as f64;
    let x = |i: usize| left + (i as f64 + 0.5) / n * w;
    let y = |r: f64| top + h / 2.0 - r.clamp(0.01, 100.0).log10() / 2.0 * (h / 2.0);
    let legend_h = 16.0 * series.len() as f64;
    let mut svg = format!(
        r#"<svg class="chart history" xmlns="http://www.w3.org/2000/svg" width="{}" height="{}" role="img"><title>history</title>"#,
        left + w + 20.0,
        top + h + 40.0 + legend_h
    );
    for (tick, label) in [
        (0.01, "1/100"),
        (0.1, "1/10"),
        (1.0, "1"),
        (10.0, "10×"),
        (100.0, "100×"),
    ] {
        let _ = write!(
            svg,
            r##"<line x1="{left}" x2="{}" y1="{y:.1}" y2="{y:.1}" stroke="{}"/><text x="{}" y="{:.1}" font-size="11" text-anchor="end">{label}</text>"##,
            left + w,
            if tick == 1.0 { "#000" } else { "#ddd" },
            left - 4.0,
            y(tick) + 4.0,
            y = y(tick)
        );
    }
    for (i, run) in history.iter().enumerate() {
        let _ = write!(
            svg,
            r#"<text x="{:.1}" y="{}" font-size="10" text-anchor="middle">{}</text>"#,
            x(i),
            top + h + 14.0,
            esc(run.started_at.get(..16).unwrap_or(&run.started_at))
        );
    }
    for (k, (name, pts)) in series.iter().enumerate() {
        let colour = SERIES_COLOURS[k % SERIES_COLOURS.len()];
        let points: Vec<String> = pts
            .iter()
            .map(|(i, r)| format!("{:.1},{:.1}", x(*i), y(*r)))
            .collect();
        let _ = write!(
            svg,
            r#"<polyline fill="none" stroke="{colour}" stroke-width="2" points="{}"/>"#,
            points.join(" ")
        );
        for (i, r) in pts {
            let _ = write!(
                svg,
                r#"<circle cx="{:.1}" cy="{:.1}" r="3" fill="{colour}"/>"#,
                x(*i),
                y(*r)
            );
        }
        let ly = top + h + 34.0 + 16.0 * k as f64;
        let _ = write!(
            svg,
            r#"<rect x="{left}" y="{}" width="12" height="10" fill="{colour}"/><text x="{}" y="{ly}" font-size="11">{}</text>"#,
            ly - 9.0,
            left + 18.0,
            esc(name)
        );
    }
    svg.push_str("</svg>");
    Some(svg)
}

/// The whole page, and the height (px) a screenshot needs to show it all.
pub fn html(r: &Results, history: &[Results]) -> (String, u32) {
    let mut body = String::new();
    let mut height = 400.0;
    let _ = write!(
        body,
        "<h1>Flotilla performance lab</h1><p>{} → {}{}. Command: <code>{}</code></p>",
        esc(&r.started_at),
        esc(&r.finished_at),
        if r.quick {
            " (quick mode: fewer repetitions)"
        } else {
            ""
        },
        esc(&r.command)
    );
    let m = &r.machine;
    let _ = write!(
        body,
        "<p class=machine>{} — {} — {} × {} — {:.1} GiB RAM — kernel {} — {} — load at start {} — flotilla {}</p>",
        esc(&m.hostname),
        esc(&m.os),
        m.cpus,
        esc(&m.cpu),
        m.mem_total_kib as f64 / 1048576.0,
        esc(&m.kernel),
        esc(&m.cgroups),
        esc(&m.load_avg_at_start),
        esc(&m.flotilla_commit)
    );
    body.push_str(
        "<h2>flotilla / peer (lower is better except for rates; green: flotilla ahead)</h2>",
    );
    let ratios = ratio_chart(r);
    height += 80.0 + 22.0 * r.metrics.iter().map(|m| m.peers.len()).sum::<usize>() as f64;
    body.push_str(&ratios);
    let mut group = "";
    body.push_str("<div class=grid>");
    for m in &r.metrics {
        if m.group != group {
            group = &m.group;
            let _ = write!(body, "</div><h2>{}</h2><div class=grid>", esc(group));
            height += 60.0;
        }
        let _ = write!(body, "<div class=cell>{}</div>", metric_chart(m));
        height += 60.0 + 26.0 * (1 + m.peers.len()) as f64;
    }
    body.push_str("</div>");
    if let Some(h) = history_chart(history) {
        let _ = write!(
            body,
            "<h2>History: flotilla / peer across {} runs</h2>{h}",
            history.len()
        );
        height += 420.0 + 16.0 * 40.0;
    }
    height += 24.0 * r.metrics.iter().map(|m| 1 + m.peers.len()).sum::<usize>() as f64
        + 40.0 * (r.skipped.len() + r.notes.len() + 8) as f64;
    body.push_str("<h2>All figures</h2><table><tr><th>metric</th><th>who</th><th>median</th><th>min</th><th>max</th><th>n</th><th>flotilla/peer</th></tr>");
    for m in &r.metrics {
        let cell = |who: &str, s: Option<&crate::util::Stats>, extra: &str| {
            match s {
            Some(s) => format!(
                "<tr><td>{} — {}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                esc(&m.group),
                esc(&m.name),
                esc(who),
                fmt_value(s.median, &m.unit),
                fmt_value(s.min, &m.unit),
                fmt_value(s.max, &m.unit),
                s.samples.len(),
                esc(extra)
            ),
            None => format!(
                "<tr><td>{} — {}</td><td>{}</td><td colspan=5>{}</td></tr>",
                esc(&m.group),
                esc(&m.name),
                esc(who),
                esc(extra)
            ),
        }
        };
        body.push_str(&cell("flotilla", m.flotilla.as_ref(), ""));
        for p in &m.peers {
            let extra = match (&p.skipped, p.ratio) {
                (Some(why), _) => format!("skipped: {why}"),
                (None, Some(x)) => fmt_ratio(x, m.higher_is_better),
                _ => String::new(),
            };
            body.push_str(&cell(&p.name, p.stats.as_ref(), &extra));
        }
    }
    body.push_str("</table>");
    if !r.skipped.is_empty() {
        body.push_str("<h2>Skipped</h2><ul>");
        for s in &r.skipped {
            let _ = write!(body, "<li>{}</li>", esc(s));
        }
        body.push_str("</ul>");
    }
    if !r.notes.is_empty() {
        body.push_str("<h2>Notes</h2><ul>");
        for s in &r.notes {
            let _ = write!(body, "<li>{}</li>", esc(s));
        }
        body.push_str("</ul>");
    }
    body.push_str("<h2>Versions</h2><ul>");
    for (k, v) in &r.versions {
        let _ = write!(body, "<li>{}: {}</li>", esc(k), esc(v));
    }
    body.push_str("</ul>");
    let page = format!(
        "<!doctype html><html><head><meta charset=utf-8><title>Flotilla performance</title><style>body{{font-family:sans-serif;margin:20px;background:#fff}}.grid{{display:flex;flex-wrap:wrap;gap:12px}}.cell{{border:1px solid #eee;padding:6px}}table{{border-collapse:collapse;font-size:12px}}td,th{{border:1px solid #ccc;padding:2px 6px}}.machine{{color:#555}}</style></head><body>{body}</body></html>"
    );
    (page, height as u32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Machine, Metric};
    use crate::util::Stats;

    fn results(ratio_peer: f64) -> Results {
        let mut m = Metric::new("start", "Container start", "true", "ms");
        m.flotilla = Stats::from_samples(vec![10.0, 12.0]);
        m.peer("runc", Stats::from_samples(vec![ratio_peer]));
        m.skip("docker", "not installed");
        Results {
            format: 1,
            started_at: "2026-01-01T00:00:00Z".into(),
            finished_at: "2026-01-01T00:01:00Z".into(),
            quick: true,
            command: "x".into(),
            machine: Machine::default(),
            versions: Default::default(),
            skipped: vec!["docker: not installed".into()],
            notes: vec![],
            metrics: vec![m],
        }
    }

    #[test]
    fn page_has_charts_and_no_bar_for_a_skipped_peer() {
        let r = results(5.0);
        let (page, h) = html(&r, &[results(4.0), r.clone()]);
        assert!(h > 400);
        assert!(page.contains("class=\"chart ratios\""));
        assert!(page.contains("class=\"chart history\""));
        // flotilla + runc in the metric chart, one ratio bar; none for docker.
        assert_eq!(page.matches("<rect class=\"bar\"").count(), 3);
        assert!(page.contains("skipped: not installed"));
        assert!(!page.contains("http://") || !page.contains("<script"));
        let t = table(&r);
        assert!(t.contains("SKIPPED: not installed") && t.contains("2.20×"));
    }
}
