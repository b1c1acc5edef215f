//! A latency-by-percentile plot as a standalone SVG, in the style of HdrHistogram's plotter:
//! the x axis is `1/(1-percentile)` on a log scale, labelled 0%, 90%, 99%, ... 99.999%, so the
//! tail gets as much room as the body; the y axis is latency, linear, in us or ms.
//! Written by hand: a few dozen SVG elements do not need a plotting library.

use std::fmt::Write;

use hdrhistogram::Histogram;

const W: f64 = 960.0;
const H: f64 = 540.0;
const LEFT: f64 = 80.0;
const RIGHT: f64 = 30.0;
const TOP: f64 = 60.0;
const BOTTOM: f64 = 70.0;
/// Decades of 1/(1-p) shown: 0% .. 99.999%.
const DECADES: f64 = 5.0;
const COLORS: [&str; 4] = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728"];

/// Renders the series (name, histogram in ns) as an SVG document.
pub fn svg(title: &str, series: &[(&str, &Histogram<u64>)]) -> String {
    let max_ns = series
        .iter()
        .map(|(_, h)| h.max())
        .max()
        .unwrap_or(0)
        .max(1);
    let (unit, per_unit) = if max_ns >= 10_000_000 {
        ("ms", 1e6)
    } else {
        ("us", 1e3)
    };
    let y_max = nice_ceiling(max_ns as f64 / per_unit);
    let plot_w = W - LEFT - RIGHT;
    let plot_h = H - TOP - BOTTOM;
    let x_of = |q: f64| {
        let d = (1.0 / (1.0 - q.min(1.0 - 1e-5)))
            .log10()
            .clamp(0.0, DECADES);
        LEFT + d / DECADES * plot_w
    };
    let y_of = |v: f64| TOP + plot_h - (v / y_max).min(1.0) * plot_h;

    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="13">"#
    );
    let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{}" y="30" text-anchor="middle" font-size="16">{}</text>"#,
        W / 2.0,
        escape(title)
    );
    // Grid and axis labels.
    let labels = ["0%", "90%", "99%", "99.9%", "99.99%", "99.999%"];
    for (i, label) in labels.iter().enumerate() {
        let x = LEFT + i as f64 / DECADES * plot_w;
        let _ = writeln!(
            s,
            r##"<line x1="{x:.1}" y1="{TOP}" x2="{x:.1}" y2="{:.1}" stroke="#ddd"/><text x="{x:.1}" y="{:.1}" text-anchor="middle">{label}</text>"##,
            TOP + plot_h,
            TOP + plot_h + 20.0
        );
    }
    let step = y_max / 5.0;
    for i in 0..=5 {
        let v = step * i as f64;
        let y = y_of(v);
        let _ = writeln!(
            s,
            r##"<line x1="{LEFT}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
            LEFT + plot_w,
            LEFT - 8.0,
            y + 4.0,
            trim(v)
        );
    }
    let _ = writeln!(
        s,
        r##"<rect x="{LEFT}" y="{TOP}" width="{plot_w:.1}" height="{plot_h:.1}" fill="none" stroke="#444"/>"##
    );
    let _ = writeln!(
        s,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">percentile</text>"#,
        LEFT + plot_w / 2.0,
        H - 20.0
    );
    let _ = writeln!(
        s,
        r#"<text transform="translate(22 {:.1}) rotate(-90)" text-anchor="middle">latency ({unit})</text>"#,
        TOP + plot_h / 2.0
    );
    // One polyline per series, plus its legend entry.
    for (i, (name, h)) in series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let mut points = String::new();
        if !h.is_empty() {
            for v in h.iter_quantiles(5) {
                let x = x_of(v.quantile_iterated_to());
                let y = y_of(v.value_iterated_to() as f64 / per_unit);
                let _ = write!(points, "{x:.1},{y:.1} ");
            }
        }
        let dash = if i == 0 {
            ""
        } else {
            r#" stroke-dasharray="6 4""#
        };
        let _ = writeln!(
            s,
            r#"<polyline points="{}" fill="none" stroke="{color}" stroke-width="2"{dash}/>"#,
            points.trim_end()
        );
        let ly = TOP + 18.0 + 20.0 * i as f64;
        let summary = if h.is_empty() {
            "no samples".to_string()
        } else {
            format!(
                "p50 {} / p99 {} / max {} {unit}",
                trim(h.value_at_quantile(0.5) as f64 / per_unit),
                trim(h.value_at_quantile(0.99) as f64 / per_unit),
                trim(h.max() as f64 / per_unit)
            )
        };
        let _ = writeln!(
            s,
            r#"<line x1="{:.1}" y1="{ly:.1}" x2="{:.1}" y2="{ly:.1}" stroke="{color}" stroke-width="2"{dash}/><text x="{:.1}" y="{:.1}">{} ({})</text>"#,
            LEFT + 14.0,
            LEFT + 44.0,
            LEFT + 52.0,
            ly + 4.0,
            escape(name),
            escape(&summary)
        );
    }
    s.push_str("</svg>\n");
    s
}

/// The smallest 1, 2 or 5 times a power of ten that is at least `v`.
fn nice_ceiling(v: f64) -> f64 {
    if v <= 0.0 {
        return 1.0;
    }
    let p = 10f64.powf(v.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * p)
        .find(|&c| c >= v)
        .unwrap_or(10.0 * p)
}

/// A number without needless decimals.
fn trim(v: f64) -> String {
    if v >= 100.0 || v.fract() == 0.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::new_histogram;

    #[test]
    fn nice_ceilings() {
        assert_eq!(nice_ceiling(0.7), 1.0);
        assert_eq!(nice_ceiling(130.0), 200.0);
        assert_eq!(nice_ceiling(4100.0), 5000.0);
        assert_eq!(nice_ceiling(900.0), 1000.0);
    }

    #[test]
    fn svg_has_a_line_per_series_and_escapes_text() {
        let mut a = new_histogram();
        let mut b = new_histogram();
        for v in 1..1000u64 {
            a.record(v * 1_000).unwrap();
            b.record(v * 500).unwrap();
        }
        let doc = svg("a <b> & c", &[("corrected", &a), ("uncorrected", &b)]);
        assert!(doc.starts_with("<svg") && doc.ends_with("</svg>\n"));
        assert_eq!(doc.matches("<polyline").count(), 2);
        assert!(doc.contains("a &lt;b&gt; &amp; c"));
        assert!(doc.contains("99.999%") && doc.contains("latency (us)"));
        // Empty histograms still give a valid document.
        assert!(svg("empty", &[("x", &new_histogram())]).contains("no samples"));
    }
}
