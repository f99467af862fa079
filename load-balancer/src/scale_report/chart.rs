//! `--chart FILE.svg`: one panel per trace, over time: the users (grey
//! area), each policy's serving capacity (a line), and each policy's
//! unserved users (a thin line along the bottom band). Plain SVG, no script.

use std::fmt::Write as _;

use super::Run;

const WIDTH: f64 = 960.0;
const PANEL: f64 = 260.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 150.0;
const TOP: f64 = 30.0;
/// The unserved band under each panel's main plot.
const BAND: f64 = 60.0;
/// Points drawn per series at most.
const POINTS: usize = 600;
const COLOURS: [&str; 4] = ["#1f77b4", "#d62728", "#ff7f0e", "#2ca02c"];

/// The SVG document for `runs`.
pub fn svg(runs: &[Run]) -> String {
    let height = TOP + runs.len() as f64 * (PANEL + BAND + 50.0);
    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(out, r#"<rect width="100%" height="100%" fill="white"/>"#);
    for (i, run) in runs.iter().enumerate() {
        panel(&mut out, run, TOP + i as f64 * (PANEL + BAND + 50.0));
    }
    out.push_str("</svg>\n");
    out
}

fn panel(out: &mut String, run: &Run, y0: f64) {
    let plot_w = WIDTH - LEFT - RIGHT;
    let seconds = run.trace.samples.len().max(2);
    let users: Vec<f64> = run.trace.samples.iter().map(|s| s.users).collect();
    let top = run
        .policies
        .iter()
        .flat_map(|(_, _, capacity, _)| capacity.iter().copied())
        .chain(users.iter().copied())
        .fold(1.0, f64::max);
    let worst = run.policies.iter().flat_map(|(_, _, _, u)| u.iter().copied()).fold(1.0, f64::max);
    let x = |t: usize| LEFT + plot_w * t as f64 / (seconds - 1) as f64;
    let y = |v: f64| y0 + PANEL - PANEL * v / top;
    let band_y = |v: f64| y0 + PANEL + 10.0 + BAND - BAND * v / worst;
    let step = seconds.div_ceil(POINTS).max(1);
    let points = |series: &[f64], to_y: &dyn Fn(f64) -> f64| {
        let mut s = String::new();
        for t in (0..series.len()).step_by(step) {
            // The largest value of each stretch, so a short spike shows.
            let v = series[t..(t + step).min(series.len())].iter().copied().fold(0.0, f64::max);
            let _ = write!(s, "{:.1},{:.1} ", x(t), to_y(v));
        }
        s
    };

    let _ = writeln!(out, r#"<text x="{LEFT}" y="{:.1}" font-weight="bold">{}</text>"#, y0 - 8.0, run.trace.name);
    let _ = writeln!(
        out,
        r##"<rect x="{LEFT}" y="{y0:.1}" width="{plot_w:.1}" height="{PANEL}" fill="none" stroke="#ccc"/>"##
    );
    // Axis labels: users at the top, minutes along the bottom.
    let _ = writeln!(out, r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{top:.0}</text>"#, LEFT - 4.0, y0 + 10.0);
    let _ = writeln!(out, r#"<text x="{:.1}" y="{:.1}" text-anchor="end">0</text>"#, LEFT - 4.0, y0 + PANEL);
    let minutes = (seconds - 1) / 60;
    let _ = writeln!(
        out,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{minutes} min</text>"#,
        LEFT + plot_w,
        y0 + PANEL + BAND + 24.0
    );
    let area = format!("{:.1},{:.1} {}{:.1},{:.1}", x(0), y(0.0), points(&users, &y), x(seconds - 1), y(0.0));
    let _ = writeln!(out, r##"<polygon points="{area}" fill="#ddd"/>"##);
    let _ = writeln!(
        out,
        r#"<text x="{:.1}" y="{:.1}" fill="grey">unserved users</text>"#,
        LEFT + plot_w + 10.0,
        y0 + PANEL + 10.0 + BAND / 2.0
    );
    let _ = writeln!(
        out,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{worst:.0}</text>"#,
        LEFT - 4.0,
        y0 + PANEL + 20.0
    );
    for (i, (name, _, capacity, unserved)) in run.policies.iter().enumerate() {
        let colour = COLOURS[i % COLOURS.len()];
        // Every other policy dashed, so equal lines still both show.
        let dash = if i % 2 == 1 { r#" stroke-dasharray="6 4""# } else { "" };
        let _ = writeln!(
            out,
            r#"<polyline points="{}" fill="none" stroke="{colour}" stroke-width="1.5"{dash}/>"#,
            points(capacity, &y)
        );
        let _ = writeln!(
            out,
            r#"<polyline points="{}" fill="none" stroke="{colour}" stroke-width="1"/>"#,
            points(unserved, &band_y)
        );
        let _ = writeln!(
            out,
            r#"<text x="{:.1}" y="{:.1}" fill="{colour}">{name}</text>"#,
            LEFT + plot_w + 10.0,
            y0 + 20.0 + 16.0 * i as f64
        );
    }
    let _ = writeln!(
        out,
        r#"<text x="{:.1}" y="{:.1}" fill="grey">users (area)</text>"#,
        LEFT + plot_w + 10.0,
        y0 + 20.0 + 16.0 * run.policies.len() as f64
    );
}
