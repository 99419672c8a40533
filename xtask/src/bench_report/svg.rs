//! The report's two bar charts, written as SVG by hand (see the parent module on why).

use std::fmt::Write as _;

pub(super) const FLOOR: &str = "#9aa5b1";
pub(super) const IN_PROCESS: &str = "#2b6cb0";
pub(super) const IPC: &str = "#c05621";

pub(super) struct Bar {
    pub(super) label: String,
    pub(super) value: Option<f64>,
    pub(super) text: String,
    pub(super) colour: &'static str,
}

/// A row label short enough for the chart's label column: without its parenthesised detail,
/// and without the part after the first comma if it is still long.
pub(super) fn chart_label(label: &str) -> String {
    let short = label.split(" (").next().unwrap_or(label);
    if short.chars().count() > 40 {
        short.split(", ").next().unwrap_or(short).to_owned()
    } else {
        short.to_owned()
    }
}

/// A horizontal bar chart on a log scale, as SVG.
pub(super) fn bar_chart(title: &str, rows: &[Bar]) -> String {
    const LABEL_W: f64 = 330.0;
    const PLOT_W: f64 = 420.0;
    const ROW_H: f64 = 22.0;
    const TOP: f64 = 40.0;
    let values: Vec<f64> = rows.iter().filter_map(|r| r.value).filter(|v| *v > 0.0).collect();
    let lo = values.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = values.iter().copied().fold(0.0, f64::max);
    let (lo_exp, hi_exp) = if values.is_empty() {
        (0, 1)
    } else {
        (lo.log10().floor() as i32, (hi.log10().ceil() as i32).max(lo.log10().floor() as i32 + 1))
    };
    let x =
        |v: f64| LABEL_W + (v.log10() - f64::from(lo_exp)) / f64::from(hi_exp - lo_exp) * PLOT_W;
    let height = TOP + ROW_H * rows.len() as f64 + 30.0;
    let width = LABEL_W + PLOT_W + 110.0;
    let mut svg = String::new();
    let s = &mut svg;
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="10" y="20" font-size="14" font-weight="bold">{}</text>"#,
        escape(title)
    );
    for exp in lo_exp..=hi_exp {
        let gx = x(10f64.powi(exp));
        let bottom = TOP + ROW_H * rows.len() as f64;
        let _ = writeln!(
            s,
            r##"<line x1="{gx:.1}" y1="{TOP}" x2="{gx:.1}" y2="{bottom}" stroke="#dddddd"/><text x="{gx:.1}" y="{:.1}" text-anchor="middle" fill="#555555">1e{exp}</text>"##,
            bottom + 16.0
        );
    }
    for (i, row) in rows.iter().enumerate() {
        let y = TOP + ROW_H * i as f64;
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"#,
            LABEL_W - 8.0,
            y + 15.0,
            escape(&row.label)
        );
        match row.value.filter(|v| *v > 0.0) {
            Some(v) => {
                let end = x(v).max(LABEL_W + 1.0);
                let _ = writeln!(
                    s,
                    r#"<rect x="{LABEL_W}" y="{:.1}" width="{:.1}" height="{:.1}" fill="{}"/><text x="{:.1}" y="{:.1}">{}</text>"#,
                    y + 3.0,
                    end - LABEL_W,
                    ROW_H - 6.0,
                    row.colour,
                    end + 4.0,
                    y + 15.0,
                    escape(&row.text)
                );
            }
            None => {
                let _ = writeln!(
                    s,
                    r##"<text x="{:.1}" y="{:.1}" fill="#888888" font-style="italic">{}</text>"##,
                    LABEL_W + 4.0,
                    y + 15.0,
                    escape(&row.text)
                );
            }
        }
    }
    let _ = writeln!(s, "</svg>");
    svg
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('`', "")
}
