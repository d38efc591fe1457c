//! `metrics.html`: the metrics of `metrics.jsonl` as line plots against tokens, in one
//! self-contained page (inline SVG and style, no script, no external fonts or files),
//! as the pages of the `viz` module are self-contained.

use std::fmt::Write as _;
use std::path::Path;

use hooklens_core::{Error, Result};
use serde_json::Value;

use super::METRICS_FILE;

/// The page [`train`](super::train) writes in its output folder at each metrics step
/// and at the end.
pub const METRICS_HTML_FILE: &str = "metrics.html";

/// The metrics plotted, in order: the key in `metrics.jsonl` and the plot's title. A
/// metric no line holds (the cross-entropy one without a model) gets no plot.
const PLOTTED: [(&str, &str); 5] = [
    ("mse_loss", "MSE loss"),
    ("explained_variance", "Explained variance"),
    ("l0", "L0 (features firing per token)"),
    ("dead_fraction", "Dead fraction"),
    ("ce_loss_score", "Cross-entropy loss recovered"),
];

const WIDTH: f64 = 640.0;
const HEIGHT: f64 = 260.0;
const LEFT: f64 = 80.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 16.0;
const BOTTOM: f64 = 40.0;

/// A number for an axis label: short, and exact enough to tell ticks apart.
fn label(v: f64) -> String {
    let a = v.abs();
    if a != 0.0 && !(1e-3..1e6).contains(&a) {
        format!("{v:.3e}")
    } else if a >= 100.0 || v == v.round() {
        format!("{v:.0}")
    } else {
        format!("{v:.4}")
    }
}

/// The page for the lines of a `metrics.jsonl` (`jsonl`; lines that are not JSON
/// objects are skipped), headed with `title`: one plot per metric (MSE, explained
/// variance, L0, dead fraction, and the cross-entropy loss recovered) that some line
/// holds, its finite values against `n_training_samples`.
pub fn metrics_html(title: &str, jsonl: &str) -> String {
    let lines: Vec<Value> = jsonl
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(Value::is_object)
        .collect();
    let mut html = String::new();
    let title = crate::html::escape_html(title);
    let _ = write!(
        html,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <title>Training metrics: {title}</title>\n<style>\n\
         body {{ font-family: system-ui, sans-serif; margin: 24px; color: #222; }}\n\
         section {{ margin-bottom: 24px; }}\n\
         h2 {{ font-size: 16px; margin: 0 0 4px; }}\n\
         svg {{ background: #fafafa; border: 1px solid #ddd; }}\n\
         .axis {{ stroke: #888; stroke-width: 1; }}\n\
         .grid {{ stroke: #e4e4e4; stroke-width: 1; }}\n\
         .line {{ fill: none; stroke: #1f6fb4; stroke-width: 1.5; }}\n\
         .dot {{ fill: #1f6fb4; }}\n\
         text {{ font-size: 11px; fill: #555; }}\n\
         </style>\n</head>\n<body>\n<h1>Training metrics: {title}</h1>\n"
    );
    let last_tokens = lines.last().and_then(|l| l["n_training_samples"].as_f64());
    let _ = writeln!(
        html,
        "<p>{} metrics steps{}.</p>",
        lines.len(),
        last_tokens.map_or(String::new(), |t| format!(", the last at {} tokens", label(t)))
    );
    for (key, name) in PLOTTED {
        if !lines.iter().any(|l| l.get(key).is_some_and(|v| !v.is_null())) {
            continue;
        }
        let points: Vec<(f64, f64)> = lines
            .iter()
            .filter_map(|l| Some((l["n_training_samples"].as_f64()?, l[key].as_f64()?)))
            .filter(|(x, y)| x.is_finite() && y.is_finite())
            .collect();
        plot(&mut html, key, name, &points);
    }
    html.push_str("</body>\n</html>\n");
    html
}

/// One metric's section: its title and an SVG line plot of `points` (x: tokens).
fn plot(html: &mut String, key: &str, name: &str, points: &[(f64, f64)]) {
    let range = |vals: &mut dyn Iterator<Item = f64>| {
        let (lo, hi) = vals.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| (lo.min(v), hi.max(v)));
        if !lo.is_finite() {
            (0.0, 1.0)
        } else if lo == hi {
            (lo - 0.5 * lo.abs().max(1.0), hi + 0.5 * hi.abs().max(1.0))
        } else {
            (lo, hi)
        }
    };
    let (x0, x1) = range(&mut points.iter().map(|p| p.0));
    let (y0, y1) = range(&mut points.iter().map(|p| p.1));
    let (pw, ph) = (WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM);
    let sx = |x: f64| LEFT + (x - x0) / (x1 - x0) * pw;
    let sy = |y: f64| TOP + (1.0 - (y - y0) / (y1 - y0)) * ph;
    let _ = write!(
        html,
        "<section class=\"plot\" data-metric=\"{key}\">\n<h2>{}</h2>\n\
         <svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{WIDTH}\" height=\"{HEIGHT}\" \
         viewBox=\"0 0 {WIDTH} {HEIGHT}\" role=\"img\" aria-label=\"{} against tokens\">\n",
        crate::html::escape_html(name),
        crate::html::escape_html(name)
    );
    let right = WIDTH - RIGHT;
    let bottom = TOP + ph;
    for i in 0..=4 {
        let y = y0 + (y1 - y0) * i as f64 / 4.0;
        let (py, ly, lx) = (sy(y), sy(y) + 4.0, LEFT - 6.0);
        let text = crate::html::escape_html(&label(y));
        let _ = writeln!(
            html,
            "<line class=\"grid\" x1=\"{LEFT}\" x2=\"{right:.1}\" y1=\"{py:.1}\" y2=\"{py:.1}\"/>\
             <text x=\"{lx:.1}\" y=\"{ly:.1}\" text-anchor=\"end\">{text}</text>"
        );
    }
    for i in 0..=2 {
        let x = x0 + (x1 - x0) * i as f64 / 2.0;
        let (px, ly) = (sx(x), bottom + 16.0);
        let text = crate::html::escape_html(&label(x));
        let _ = writeln!(
            html,
            "<text x=\"{px:.1}\" y=\"{ly:.1}\" text-anchor=\"middle\">{text}</text>"
        );
    }
    let (mid, ly) = (LEFT + pw / 2.0, HEIGHT - 6.0);
    let _ = writeln!(
        html,
        "<line class=\"axis\" x1=\"{LEFT}\" x2=\"{LEFT}\" y1=\"{TOP}\" y2=\"{bottom:.1}\"/>\
         <line class=\"axis\" x1=\"{LEFT}\" x2=\"{right:.1}\" y1=\"{bottom:.1}\" y2=\"{bottom:.1}\"/>\
         <text x=\"{mid:.1}\" y=\"{ly:.1}\" text-anchor=\"middle\">tokens</text>"
    );
    let coords: Vec<String> = points
        .iter()
        .map(|&(x, y)| format!("{:.2},{:.2}", sx(x), sy(y)))
        .collect();
    let _ = writeln!(html, "<polyline class=\"line\" points=\"{}\"/>", coords.join(" "));
    if points.len() == 1 {
        let _ = writeln!(
            html,
            "<circle class=\"dot\" cx=\"{:.2}\" cy=\"{:.2}\" r=\"3\"/>",
            sx(points[0].0),
            sy(points[0].1)
        );
    }
    html.push_str("</svg>\n</section>\n");
}

/// Writes `out/metrics.html` from `out/metrics.jsonl` (atomically), titled `title`.
pub(crate) fn write_metrics_html(out: &Path, title: &str) -> Result<()> {
    let path = out.join(METRICS_FILE);
    let jsonl = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(Error::io(&path, e)),
    };
    super::export::write_atomic(&out.join(METRICS_HTML_FILE), metrics_html(title, &jsonl).as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(step: u64, ce: Option<f64>) -> String {
        let mut v = serde_json::json!({
            "step": step,
            "n_training_samples": step * 256,
            "mse_loss": 1.0 / step as f64,
            "explained_variance": 1.0 - 1.0 / step as f64,
            "l0": 8.0,
            "dead_fraction": 0.0,
            "lr": 1e-3,
        });
        if let Some(ce) = ce {
            v["ce_loss_score"] = serde_json::json!(ce);
        }
        v.to_string()
    }

    fn points_of(html: &str, metric: &str) -> usize {
        let at = html
            .find(&format!("data-metric=\"{metric}\""))
            .unwrap_or_else(|| panic!("no plot of {metric}"));
        let rest = &html[at..];
        let start = rest.find("points=\"").unwrap() + 8;
        let end = start + rest[start..].find('"').unwrap();
        rest[start..end].split(' ').filter(|p| !p.is_empty()).count()
    }

    #[test]
    fn one_plot_per_metric_with_a_point_per_line() {
        let jsonl: String = (1..=5).map(|s| line(s, None) + "\n").collect();
        let html = metrics_html("blocks.0 <b>&", &jsonl);
        assert_eq!(html.matches("<svg").count(), 4, "{html}");
        for m in ["mse_loss", "explained_variance", "l0", "dead_fraction"] {
            assert_eq!(points_of(&html, m), 5, "{m}");
        }
        assert!(!html.contains("ce_loss_score"));
        assert!(html.contains("blocks.0 &lt;b&gt;&amp;") && !html.contains("<b>"));
        // Self-contained: no script, no link, nothing fetched.
        assert!(!html.contains("<script") && !html.contains("<link") && !html.contains("src="));
        // A constant metric still plots, inside the picture.
        assert!(!html.contains("NaN") && !html.contains("inf"), "{html}");

        // With the cross-entropy metric: a fifth plot; a NaN score is left out.
        // json! writes a NaN as null: that point is left out.
        let jsonl: String = [line(1, Some(0.5)), line(2, Some(f64::NAN)), line(3, Some(0.9))]
            .iter()
            .map(|l| l.clone() + "\n")
            .collect();
        assert!(jsonl.contains("\"ce_loss_score\":null"), "{jsonl}");
        let html = metrics_html("t", &jsonl);
        assert_eq!(html.matches("<svg").count(), 5);
        assert_eq!(points_of(&html, "ce_loss_score"), 2);
        assert_eq!(points_of(&html, "mse_loss"), 3);
        assert!(html.contains("3 metrics steps, the last at 768 tokens"), "{html}");
    }
}
