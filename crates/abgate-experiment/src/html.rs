//! The report as one self-contained HTML page: inline CSS and inline SVG charts, no
//! script, no external stylesheet, font or image, so that it reads the same offline.
//! Every string that comes from the configuration or the decision log is escaped.

use std::fmt::Write as _;

use crate::estimate::Metric;
use crate::fmt;
use crate::report::{estimate_cell, metric_value, Report};
use crate::split::percentages;

/// Chart size, in SVG user units.
const WIDTH: f64 = 760.0;
const HEIGHT: f64 = 220.0;
const LEFT: f64 = 64.0;
const RIGHT: f64 = 16.0;
const TOP: f64 = 12.0;
const BOTTOM: f64 = 28.0;

/// Colour-blind-safe series colours (Okabe-Ito), one per variant in order.
const COLOURS: [&str; 8] = [
    "#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000",
];

const STYLE: &str = "body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;margin:2em auto;max-width:60em;padding:0 1em;color:#222}\
table{border-collapse:collapse;margin:1em 0;font-size:.9em}td,th{border:1px solid #ccc;padding:.25em .5em;text-align:left;vertical-align:top}\
th{background:#f4f4f4}svg{display:block;margin:.5em 0 1.5em;background:#fff;border:1px solid #ddd}\
.axis{stroke:#888;stroke-width:1}.grid{stroke:#eee;stroke-width:1}.label{font-size:11px;fill:#555}\
.series{fill:none;stroke-width:2}.band{stroke:none;opacity:.18}.decision{stroke:#b00;stroke-width:1;stroke-dasharray:4 3}\
.decision-label{font-size:10px;fill:#b00}.legend span{display:inline-block;margin-right:1.2em}.swatch{display:inline-block;width:.9em;height:.9em;margin-right:.3em;vertical-align:middle}\
.reason{font-size:.85em}";

/// `s` with `& < > " '` escaped, safe in HTML text and attribute values.
pub(crate) fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Maps times and values onto one chart's area.
struct Frame {
    t0: u64,
    t1: u64,
    y0: f64,
    y1: f64,
}

impl Frame {
    fn x(&self, t: u64) -> f64 {
        let span = self.t1.saturating_sub(self.t0).max(1) as f64;
        LEFT + (WIDTH - LEFT - RIGHT) * (t.saturating_sub(self.t0) as f64 / span).min(1.0)
    }

    fn y(&self, v: f64) -> f64 {
        let span = (self.y1 - self.y0).max(f64::MIN_POSITIVE);
        let f = ((v - self.y0) / span).clamp(0.0, 1.0);
        HEIGHT - BOTTOM - (HEIGHT - TOP - BOTTOM) * f
    }

    /// Axes, a few horizontal grid lines with their values, and the time at each end.
    fn axes(&self, svg: &mut String, value: &dyn Fn(f64) -> String) {
        for i in 0..=4 {
            let v = self.y0 + (self.y1 - self.y0) * f64::from(i) / 4.0;
            let y = self.y(v);
            let _ = write!(
                svg,
                r#"<line class="grid" x1="{LEFT}" x2="{:.1}" y1="{y:.1}" y2="{y:.1}"/><text class="label" x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"#,
                WIDTH - RIGHT,
                LEFT - 4.0,
                y + 4.0,
                escape(&value(v))
            );
        }
        let _ = write!(
            svg,
            r#"<line class="axis" x1="{LEFT}" x2="{LEFT}" y1="{TOP}" y2="{:.1}"/><line class="axis" x1="{LEFT}" x2="{:.1}" y1="{:.1}" y2="{:.1}"/>"#,
            HEIGHT - BOTTOM,
            WIDTH - RIGHT,
            HEIGHT - BOTTOM,
            HEIGHT - BOTTOM
        );
        let _ = write!(
            svg,
            r#"<text class="label" x="{LEFT}" y="{:.1}">t+0s</text><text class="label" x="{:.1}" y="{:.1}" text-anchor="end">t+{}</text>"#,
            HEIGHT - 8.0,
            WIDTH - RIGHT,
            HEIGHT - 8.0,
            fmt::duration(self.t1.saturating_sub(self.t0))
        );
    }
}

impl Report {
    /// The report as one self-contained HTML page: the summary and verdict, weights over
    /// time, each metric per variant over time with its 95% band (one line per period:
    /// estimates are never pooled across splits), the decisions on every chart's
    /// timeline (their reasons as tooltips), the comparisons and the decision log.
    pub fn to_html(&self) -> String {
        let mut h = String::new();
        let names: Vec<&str> = self.variants.iter().map(|v| v.variant.as_str()).collect();
        let _ = write!(
            h,
            "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width\"><title>Experiment {}</title><style>{STYLE}</style></head><body>\n",
            escape(&self.experiment_id)
        );
        let _ = writeln!(h, "<h1>Experiment {}</h1>", escape(&self.experiment_id));
        if let Some(d) = &self.description {
            let _ = writeln!(h, "<p>{}</p>", escape(d));
        }
        let weights: Vec<u32> = self.final_weights.iter().map(|w| w.weight).collect();
        let rows = [
            ("Host", self.host.clone()),
            ("Strategy", self.strategy.clone()),
            ("Policy", self.policy.clone()),
            ("Phase", self.phase.to_string()),
            (
                "Winner",
                self.winner.clone().unwrap_or_else(|| "none".to_owned()),
            ),
            ("Final weights", fmt::split(&names, &weights)),
            ("Started", fmt::iso(self.started_at)),
            ("Last decision", fmt::iso(self.updated_at)),
            ("Planned duration", fmt::duration(self.planned_duration_ms)),
        ];
        h.push_str("<table>");
        for (k, v) in rows {
            let _ = write!(h, "<tr><th>{k}</th><td>{}</td></tr>", escape(&v));
        }
        h.push_str("</table>\n");
        let _ = writeln!(
            h,
            "<h2>Verdict</h2><p class=\"reason\">{}</p>",
            escape(&self.verdict)
        );
        if !self.recommendations.is_empty() {
            h.push_str("<ul>");
            for r in &self.recommendations {
                let _ = write!(h, "<li>{}</li>", escape(r));
            }
            h.push_str("</ul>\n");
        }

        h.push_str("<p class=\"legend\">");
        for (i, n) in names.iter().enumerate() {
            let _ = write!(
                h,
                "<span><span class=\"swatch\" style=\"background:{}\"></span>{}{}</span>",
                colour(i),
                escape(n),
                if self.variants[i].baseline {
                    " (baseline)"
                } else {
                    ""
                }
            );
        }
        h.push_str("</p>\n");

        let t0 = self.started_at;
        let t1 = [
            self.updated_at,
            self.timeline.last().map_or(0, |p| p.at),
            self.traffic.last().map_or(0, |p| p.at),
            self.decisions.last().map_or(0, |d| d.at),
        ]
        .into_iter()
        .max()
        .unwrap_or(t0)
        .max(t0 + 1);

        h.push_str("<h2>Weights over time</h2>\n");
        h.push_str(&self.weights_chart(t0, t1));
        for metric in Metric::ALL {
            if let Some(svg) = self.metric_chart(metric, t0, t1) {
                let _ = writeln!(h, "<h2>{} per variant</h2>", escape(metric.label()));
                h.push_str(&svg);
            }
        }

        h.push_str("<h2>Metrics, last period</h2>\n");
        if self.comparisons.is_empty() {
            h.push_str("<p>No comparison yet: the last period has too little data.</p>\n");
        } else {
            let _ = writeln!(
                h,
                "<p>Each candidate against the baseline: effects with always-valid intervals at α {}; the variants' own values with 95% intervals.</p>",
                fmt::num(self.comparison_alpha, 4)
            );
            h.push_str("<table><tr><th>Metric</th><th>Candidate</th><th>Candidate [95%]</th><th>Baseline [95%]</th><th>Absolute effect [interval]</th><th>Relative effect [interval]</th><th>p-value</th><th>Verdict</th></tr>");
            for c in &self.comparisons {
                let relative = if c.relative.is_finite() {
                    format!(
                        "{} [{}, {}]",
                        fmt::signed_pct(c.relative),
                        fmt::signed_pct(c.relative_interval[0]),
                        fmt::signed_pct(c.relative_interval[1])
                    )
                } else {
                    "—".to_owned()
                };
                let _ = write!(
                    h,
                    "<tr data-comparison=\"{}:{}\"><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{} [{}, {}]</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                    c.metric.key(),
                    escape(&c.candidate),
                    escape(c.metric.label()),
                    escape(&c.candidate),
                    escape(&estimate_cell(c.metric, &c.candidate_value)),
                    escape(&estimate_cell(c.metric, &c.baseline_value)),
                    escape(&metric_value(c.metric, c.absolute, true)),
                    escape(&metric_value(c.metric, c.absolute_interval[0], true)),
                    escape(&metric_value(c.metric, c.absolute_interval[1], true)),
                    escape(&relative),
                    fmt::pval(c.p_value),
                    escape(&c.verdict)
                );
            }
            h.push_str("</table>\n");
        }

        h.push_str("<h2>Decision log</h2>\n");
        if self.decisions.is_empty() {
            h.push_str("<p>No decision yet.</p>\n");
        } else {
            h.push_str("<table><tr><th>#</th><th>At</th><th>Summary</th><th>Period</th><th>Decision</th><th>Split before → after</th><th>Reason</th></tr>");
            let split = |w: &[u32]| {
                percentages(w)
                    .iter()
                    .map(u32::to_string)
                    .collect::<Vec<_>>()
                    .join("/")
            };
            for (i, d) in self.decisions.iter().enumerate() {
                let _ = write!(
                    h,
                    "<tr><td>{}</td><td>t+{}</td><td>{}</td><td>{}</td><td>{}</td><td>{} → {}</td><td class=\"reason\">{}</td></tr>",
                    i + 1,
                    fmt::duration(d.at.saturating_sub(t0)),
                    escape(d.headline()),
                    d.period,
                    escape(&d.kind),
                    split(&d.weights_before),
                    split(&d.weights_after),
                    escape(&d.reason)
                );
            }
            h.push_str("</table>\n");
        }
        h.push_str("</body></html>\n");
        h
    }

    /// Decisions that did something (not holds) as dashed vertical lines, each with its
    /// kind and its reason as a tooltip.
    fn decision_marks(&self, frame: &Frame, svg: &mut String) {
        for d in self.decisions.iter().filter(|d| d.kind != "hold") {
            let x = frame.x(d.at);
            // A label near the right edge goes to the left of its line, inside the chart.
            let (label_x, anchor) = if x > WIDTH - RIGHT - 90.0 {
                (x - 3.0, "end")
            } else {
                (x + 3.0, "start")
            };
            let _ = write!(
                svg,
                r#"<g data-decision="{}"><title>{} at t+{}: {}</title><line class="decision" x1="{x:.1}" x2="{x:.1}" y1="{TOP}" y2="{:.1}"/><text class="decision-label" x="{:.1}" y="{:.1}" text-anchor="{}">{}</text></g>"#,
                escape(&d.kind),
                escape(&d.kind),
                fmt::duration(d.at.saturating_sub(self.started_at)),
                escape(&d.reason),
                HEIGHT - BOTTOM,
                label_x,
                TOP + 10.0,
                anchor,
                escape(&d.kind)
            );
        }
    }

    fn weights_chart(&self, t0: u64, t1: u64) -> String {
        let frame = Frame {
            t0,
            t1,
            y0: 0.0,
            y1: 100.0,
        };
        let mut svg = svg_open("weights", "Each variant's share of traffic, percent");
        frame.axes(&mut svg, &|v| format!("{}%", fmt::num(v, 0)));
        for (i, v) in self.variants.iter().enumerate() {
            let mut d = String::new();
            let mut last: Option<f64> = None;
            for p in &self.traffic {
                let (x, y) = (frame.x(p.at), frame.y(f64::from(p.weights[i])));
                match last {
                    None => {
                        let _ = write!(d, "M{x:.1},{y:.1}");
                    }
                    Some(_) => {
                        let _ = write!(d, " H{x:.1} V{y:.1}");
                    }
                }
                last = Some(y);
            }
            let _ = write!(d, " H{:.1}", frame.x(t1));
            let _ = write!(
                svg,
                r#"<path class="series" data-series="weight:{}" stroke="{}" d="{d}"><title>{}</title></path>"#,
                escape(&v.variant),
                colour(i),
                escape(&v.variant)
            );
        }
        self.decision_marks(&frame, &mut svg);
        svg.push_str("</svg>\n");
        svg
    }

    fn metric_chart(&self, metric: Metric, t0: u64, t1: u64) -> Option<String> {
        let points: Vec<(u64, u32, usize, f64, f64, f64)> = self
            .timeline
            .iter()
            .flat_map(|p| {
                p.estimates.iter().enumerate().filter_map(move |(i, e)| {
                    e.get(metric)
                        .filter(|e| e.value.is_finite() && e.se.is_finite())
                        .map(|e| (p.at, p.period, i, e.value, e.lower(), e.upper()))
                })
            })
            .collect();
        if points.is_empty() {
            return None;
        }
        let lo = points.iter().map(|p| p.4).fold(f64::INFINITY, f64::min);
        let hi = points.iter().map(|p| p.5).fold(f64::NEG_INFINITY, f64::max);
        let pad = ((hi - lo) * 0.05).max(hi.abs() * 1e-3).max(1e-9);
        let (mut y0, mut y1) = (lo - pad, hi + pad);
        if metric == Metric::SuccessRate {
            y1 = y1.min(1.0);
        } else {
            y0 = y0.max(0.0);
        }
        let frame = Frame { t0, t1, y0, y1 };
        let mut svg = svg_open(
            metric.key(),
            &format!("{} per variant over time, with 95% bands", metric.label()),
        );
        frame.axes(&mut svg, &|v| metric_value(metric, v, false));
        for (i, v) in self.variants.iter().enumerate() {
            // One run of points per period: a new split starts a new estimate.
            let mut runs: Vec<Vec<(u64, f64, f64, f64)>> = Vec::new();
            let mut current: Option<u32> = None;
            for &(at, period, _, value, lower, upper) in points.iter().filter(|p| p.2 == i) {
                if current != Some(period) {
                    runs.push(Vec::new());
                    current = Some(period);
                }
                if let Some(run) = runs.last_mut() {
                    run.push((at, value, lower, upper));
                }
            }
            let mut line = String::new();
            for run in &runs {
                let mut upper = String::new();
                let mut lower = String::new();
                for (j, &(at, value, lo, hi)) in run.iter().enumerate() {
                    let x = frame.x(at);
                    let _ = write!(
                        line,
                        "{}{x:.1},{:.1}",
                        if j == 0 { " M" } else { " L" },
                        frame.y(value)
                    );
                    let _ = write!(upper, "{x:.1},{:.1} ", frame.y(hi));
                    lower.insert_str(0, &format!("{x:.1},{:.1} ", frame.y(lo)));
                }
                let _ = write!(
                    svg,
                    r#"<polygon class="band" data-band="{}:{}" fill="{}" points="{}{}"/>"#,
                    metric.key(),
                    escape(&v.variant),
                    colour(i),
                    upper,
                    lower.trim_end()
                );
            }
            if !line.is_empty() {
                let _ = write!(
                    svg,
                    r#"<path class="series" data-series="{}:{}" stroke="{}" d="{}"><title>{}</title></path>"#,
                    metric.key(),
                    escape(&v.variant),
                    colour(i),
                    line.trim_start(),
                    escape(&v.variant)
                );
            }
        }
        self.decision_marks(&frame, &mut svg);
        svg.push_str("</svg>\n");
        Some(svg)
    }
}

fn colour(i: usize) -> &'static str {
    COLOURS[i % COLOURS.len()]
}

fn svg_open(id: &str, label: &str) -> String {
    format!(
        r#"<svg id="chart-{}" role="img" aria-label="{}" viewBox="0 0 {WIDTH} {HEIGHT}" width="{WIDTH}" height="{HEIGHT}">"#,
        escape(id),
        escape(label)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_covers_markup_and_quotes() {
        assert_eq!(
            escape(r#"<script>alert("x")</script> & 'y'"#),
            "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; &#39;y&#39;"
        );
    }
}
