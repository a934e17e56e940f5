//! Grouped bar charts as plain SVG: a few hundred bytes of markup per chart, readable in
//! any browser and on GitHub, no plotting dependency.

use std::fmt::Write as _;

pub struct Series {
    pub name: String,
    pub color: &'static str,
    /// One value per group; None leaves a gap.
    pub values: Vec<Option<f64>>,
}

pub struct BarChart {
    pub title: String,
    pub y_label: String,
    pub groups: Vec<String>,
    pub series: Vec<Series>,
    /// A dashed horizontal line (the limit), with its label.
    pub reference: Option<(String, f64)>,
    /// Logarithmic y axis (for quantities spanning orders of magnitude).
    pub log: bool,
    pub format: fn(f64) -> String,
}

pub const COLORS: [&str; 6] = [
    "#2b6cb0", "#dd6b20", "#38a169", "#805ad5", "#718096", "#c53030",
];

const WIDTH: f64 = 780.0;
const HEIGHT: f64 = 420.0;
const LEFT: f64 = 80.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 50.0;
const BOTTOM: f64 = 100.0;

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A "nice" step (1, 2 or 5 times a power of ten) giving about five ticks up to `max`.
fn nice_step(max: f64) -> f64 {
    let raw = max / 5.0;
    let magnitude = 10f64.powf(raw.log10().floor());
    let normalized = raw / magnitude;
    let nice = if normalized <= 1.0 {
        1.0
    } else if normalized <= 2.0 {
        2.0
    } else if normalized <= 5.0 {
        5.0
    } else {
        10.0
    };
    nice * magnitude
}

/// Compact numbers for labels: 71234 → 71.2k, 0.0123 → 0.0123.
pub fn compact(value: f64) -> String {
    let abs = value.abs();
    if abs >= 1e6 {
        format!("{:.2}M", value / 1e6)
    } else if abs >= 1e4 {
        format!("{:.1}k", value / 1e3)
    } else if abs >= 100.0 {
        format!("{value:.0}")
    } else if abs >= 10.0 {
        format!("{value:.1}")
    } else if abs >= 1.0 {
        format!("{value:.2}")
    } else {
        format!("{value:.3}")
    }
}

pub fn bar_chart(chart: &BarChart) -> String {
    let values: Vec<f64> = chart
        .series
        .iter()
        .flat_map(|s| s.values.iter().flatten().copied())
        .chain(chart.reference.iter().map(|(_, v)| *v))
        .filter(|v| v.is_finite() && *v > 0.0)
        .collect();
    let max = values.iter().copied().fold(0.0, f64::max).max(1e-9);
    let min = values.iter().copied().fold(f64::INFINITY, f64::min);
    let plot_w = WIDTH - LEFT - RIGHT;
    let plot_h = HEIGHT - TOP - BOTTOM;
    let (ticks, y_of): (Vec<f64>, Box<dyn Fn(f64) -> f64>) = if chart.log {
        let lo = if min.is_finite() { min } else { max / 10.0 };
        let lo_exp = lo.log10().floor() as i32;
        let hi_exp = max.log10().ceil().max(f64::from(lo_exp) + 1.0) as i32;
        let ticks = (lo_exp..=hi_exp).map(|e| 10f64.powi(e)).collect();
        let (a, b) = (f64::from(lo_exp), f64::from(hi_exp));
        (
            ticks,
            Box::new(move |v: f64| TOP + plot_h - (v.max(1e-12).log10() - a) / (b - a) * plot_h),
        )
    } else {
        let step = nice_step(max * 1.1);
        let top = (max * 1.1 / step).ceil() * step;
        let ticks = (0..=((top / step).round() as usize))
            .map(|i| i as f64 * step)
            .collect();
        (
            ticks,
            Box::new(move |v: f64| TOP + plot_h - v / top * plot_h),
        )
    };
    let baseline = TOP + plot_h;
    let mut svg = String::new();
    let _ = writeln!(
        svg,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{WIDTH}\" height=\"{HEIGHT}\" viewBox=\"0 0 {WIDTH} {HEIGHT}\" font-family=\"Helvetica, Arial, sans-serif\">"
    );
    let _ = writeln!(svg, "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>");
    let _ = writeln!(
        svg,
        "<text x=\"{}\" y=\"24\" font-size=\"16\" font-weight=\"bold\" text-anchor=\"middle\">{}</text>",
        WIDTH / 2.0,
        escape(&chart.title)
    );
    for tick in &ticks {
        let y = y_of(*tick);
        let _ = writeln!(
            svg,
            "<line x1=\"{LEFT}\" x2=\"{}\" y1=\"{y:.1}\" y2=\"{y:.1}\" stroke=\"#e2e8f0\"/><text x=\"{}\" y=\"{:.1}\" font-size=\"11\" text-anchor=\"end\" fill=\"#4a5568\">{}</text>",
            WIDTH - RIGHT,
            LEFT - 6.0,
            y + 4.0,
            escape(&(chart.format)(*tick))
        );
    }
    let _ = writeln!(
        svg,
        "<text x=\"16\" y=\"{:.1}\" font-size=\"12\" text-anchor=\"middle\" transform=\"rotate(-90 16 {:.1})\" fill=\"#2d3748\">{}</text>",
        TOP + plot_h / 2.0,
        TOP + plot_h / 2.0,
        escape(&chart.y_label)
    );
    let groups = chart.groups.len().max(1) as f64;
    let group_w = plot_w / groups;
    let series = chart.series.len().max(1) as f64;
    let bar_w = (group_w * 0.8 / series).min(60.0);
    for (g, group) in chart.groups.iter().enumerate() {
        let start = LEFT + g as f64 * group_w + (group_w - bar_w * series) / 2.0;
        for (s, serie) in chart.series.iter().enumerate() {
            let Some(Some(value)) = serie.values.get(g) else {
                continue;
            };
            let x = start + s as f64 * bar_w;
            let y = y_of(*value).min(baseline);
            let _ = writeln!(
                svg,
                "<rect x=\"{x:.1}\" y=\"{y:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"{}\"><title>{}: {}</title></rect>",
                bar_w - 2.0,
                baseline - y,
                serie.color,
                escape(&serie.name),
                escape(&(chart.format)(*value))
            );
            let _ = writeln!(
                svg,
                "<text x=\"{:.1}\" y=\"{:.1}\" font-size=\"10\" text-anchor=\"middle\" fill=\"#2d3748\">{}</text>",
                x + (bar_w - 2.0) / 2.0,
                y - 3.0,
                escape(&(chart.format)(*value))
            );
        }
        let _ = writeln!(
            svg,
            "<text x=\"{:.1}\" y=\"{:.1}\" font-size=\"12\" text-anchor=\"middle\" fill=\"#2d3748\">{}</text>",
            LEFT + (g as f64 + 0.5) * group_w,
            baseline + 18.0,
            escape(group)
        );
    }
    let _ = writeln!(
        svg,
        "<line x1=\"{LEFT}\" x2=\"{}\" y1=\"{baseline}\" y2=\"{baseline}\" stroke=\"#2d3748\"/>",
        WIDTH - RIGHT
    );
    if let Some((label, value)) = &chart.reference {
        let y = y_of(*value);
        let _ = writeln!(
            svg,
            "<line x1=\"{LEFT}\" x2=\"{}\" y1=\"{y:.1}\" y2=\"{y:.1}\" stroke=\"#c53030\" stroke-dasharray=\"6 4\"/><text x=\"{}\" y=\"{:.1}\" font-size=\"11\" text-anchor=\"end\" fill=\"#c53030\">{}</text>",
            WIDTH - RIGHT,
            WIDTH - RIGHT - 4.0,
            y - 4.0,
            escape(label)
        );
    }
    // Legend, below the groups, wrapping.
    let (mut x, mut y) = (LEFT, baseline + 44.0);
    for serie in &chart.series {
        let width = 26.0 + serie.name.len() as f64 * 6.6;
        if x + width > WIDTH - RIGHT {
            x = LEFT;
            y += 20.0;
        }
        let _ = writeln!(
            svg,
            "<rect x=\"{x:.1}\" y=\"{:.1}\" width=\"12\" height=\"12\" fill=\"{}\"/><text x=\"{:.1}\" y=\"{y:.1}\" font-size=\"12\" fill=\"#2d3748\">{}</text>",
            y - 10.0,
            serie.color,
            x + 17.0,
            escape(&serie.name)
        );
        x += width + 14.0;
    }
    svg.push_str("</svg>\n");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chart(log: bool) -> BarChart {
        BarChart {
            title: "requests/s <keep-alive>".into(),
            y_label: "requests/s".into(),
            groups: vec!["1".into(), "1,000".into()],
            series: vec![
                Series {
                    name: "Berth eBPF".into(),
                    color: COLORS[0],
                    values: vec![Some(70_000.0), Some(69_000.0)],
                },
                Series {
                    name: "iptables".into(),
                    color: COLORS[1],
                    values: vec![Some(50_000.0), None],
                },
            ],
            reference: Some(("direct".into(), 72_000.0)),
            log,
            format: compact,
        }
    }

    #[test]
    fn draws_one_bar_per_value_and_escapes_text() {
        for log in [false, true] {
            let svg = bar_chart(&chart(log));
            assert!(svg.starts_with("<svg"));
            assert!(svg.trim_end().ends_with("</svg>"));
            assert_eq!(svg.matches("<title>").count(), 3);
            assert!(svg.contains("&lt;keep-alive&gt;"));
            assert!(svg.contains("stroke-dasharray"));
            assert!(!svg.contains("NaN") && !svg.contains("inf"));
        }
    }

    #[test]
    fn compact_numbers() {
        assert_eq!(compact(71_234.0), "71.2k");
        assert_eq!(compact(512.4), "512");
        assert_eq!(compact(1.234), "1.23");
        assert_eq!(compact(0.0123), "0.012");
    }

    #[test]
    fn nice_steps() {
        assert_eq!(nice_step(100.0), 20.0);
        assert_eq!(nice_step(80_000.0), 20_000.0);
    }
}
