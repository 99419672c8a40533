//! The status snapshot in the Prometheus text exposition format.

use std::fmt::Write as _;

use super::{LifecycleState, ManagerStatus, PluginStatus};

impl ManagerStatus {
    /// The status in the Prometheus text exposition format (version 0.0.4): `# HELP` and
    /// `# TYPE` before each family, label values escaped.
    pub fn prometheus(&self) -> String {
        let mut out = String::new();
        let mut family = |name: &str, kind: &str, help: &str, samples: Vec<(String, String)>| {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} {kind}");
            for (series, value) in samples {
                let _ = writeln!(out, "{series} {value}");
            }
        };
        let plugin_labels = |p: &PluginStatus| format!("plugin=\"{}\"", escape(&p.name));
        family(
            "calcplug_plugin_info",
            "gauge",
            "Managed plugins: version, library file and lifecycle state (value always 1).",
            self.plugins
                .iter()
                .map(|p| {
                    (
                        format!(
                            "calcplug_plugin_info{{{},version=\"{}\",path=\"{}\",state=\"{}\"}}",
                            plugin_labels(p),
                            escape(&p.version.to_string()),
                            escape(&p.source.display().to_string()),
                            p.state
                        ),
                        "1".to_owned(),
                    )
                })
                .collect(),
        );
        let per_plugin = |f: &dyn Fn(&PluginStatus) -> String| -> Vec<(String, String)> {
            self.plugins.iter().map(|p| (format!("{{{}}}", plugin_labels(p)), f(p))).collect()
        };
        let named = |name: &str, samples: Vec<(String, String)>| -> Vec<(String, String)> {
            samples.into_iter().map(|(labels, v)| (format!("{name}{labels}"), v)).collect()
        };
        family(
            "calcplug_plugin_up",
            "gauge",
            "1 if the plugin is serving calls (ready or processing), else 0.",
            named(
                "calcplug_plugin_up",
                per_plugin(&|p| {
                    u8::from(matches!(p.state, LifecycleState::Ready | LifecycleState::Processing))
                        .to_string()
                }),
            ),
        );
        family(
            "calcplug_plugin_uptime_seconds",
            "gauge",
            "Seconds since the serving library was loaded.",
            named("calcplug_plugin_uptime_seconds", per_plugin(&|p| float(p.uptime.as_secs_f64()))),
        );
        family(
            "calcplug_plugin_in_flight_calls",
            "gauge",
            "Calls running now.",
            named("calcplug_plugin_in_flight_calls", per_plugin(&|p| p.in_flight.to_string())),
        );
        family(
            "calcplug_plugin_reloads_total",
            "counter",
            "Successful hot reloads.",
            named("calcplug_plugin_reloads_total", per_plugin(&|p| p.reloads.to_string())),
        );
        family(
            "calcplug_plugin_reload_failures_total",
            "counter",
            "Replacement libraries that failed to load or initialize (the old one kept serving).",
            named(
                "calcplug_plugin_reload_failures_total",
                per_plugin(&|p| p.reload_failures.to_string()),
            ),
        );
        family(
            "calcplug_plugin_rejected_calls_total",
            "counter",
            "Calls refused by the manager (plugin not ready, or shutting down).",
            named("calcplug_plugin_rejected_calls_total", per_plugin(&|p| p.rejected.to_string())),
        );
        let mut calls = Vec::new();
        let mut errors = Vec::new();
        let mut retries = Vec::new();
        let mut latency = Vec::new();
        let mut latency_max = Vec::new();
        for p in &self.plugins {
            for op in &p.ops {
                let labels = format!("{},op=\"{}\"", plugin_labels(p), escape(op.op));
                calls.push((format!("calcplug_calls_total{{{labels}}}"), op.calls.to_string()));
                retries.push((
                    format!("calcplug_call_retries_total{{{labels}}}"),
                    op.retries.to_string(),
                ));
                for (code, n) in &op.errors {
                    errors.push((
                        format!("calcplug_call_errors_total{{{labels},code=\"{}\"}}", code.name()),
                        n.to_string(),
                    ));
                }
                if let Some(l) = &op.latency {
                    for (q, v) in [("0.5", l.p50), ("0.99", l.p99)] {
                        latency.push((
                            format!("calcplug_call_latency_seconds{{{labels},quantile=\"{q}\"}}"),
                            float(v.as_secs_f64()),
                        ));
                    }
                    latency.push((
                        format!("calcplug_call_latency_seconds_sum{{{labels}}}"),
                        float(l.sum.as_secs_f64()),
                    ));
                    latency.push((
                        format!("calcplug_call_latency_seconds_count{{{labels}}}"),
                        l.sampled.to_string(),
                    ));
                    latency_max.push((
                        format!("calcplug_call_latency_max_seconds{{{labels}}}"),
                        float(l.max.as_secs_f64()),
                    ));
                }
            }
        }
        family(
            "calcplug_calls_total",
            "counter",
            "Calls that reached the plugin, by operation (each retry counts).",
            calls,
        );
        family(
            "calcplug_call_errors_total",
            "counter",
            "Failed calls, by operation and error code.",
            errors,
        );
        family(
            "calcplug_call_retries_total",
            "counter",
            "Retries made by the retry policy, by operation.",
            retries,
        );
        family(
            "calcplug_call_latency_seconds",
            "summary",
            "Latency of the sampled calls (quantiles within 12.5%).",
            latency,
        );
        family("calcplug_call_latency_max_seconds", "gauge", "Slowest sampled call.", latency_max);
        family(
            "calcplug_refused_libraries",
            "gauge",
            "Library files (or directories) that are refused or shadowed.",
            vec![("calcplug_refused_libraries".to_owned(), self.problems.len().to_string())],
        );
        out
    }
}

/// Escapes a Prometheus label value: backslash, double quote and newline.
fn escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// A Prometheus float sample value.
fn float(value: f64) -> String {
    if value.is_finite() {
        format!("{value}")
    } else if value.is_nan() {
        "NaN".to_owned()
    } else if value > 0.0 {
        "+Inf".to_owned()
    } else {
        "-Inf".to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape("a\\b\"c\nd"), "a\\\\b\\\"c\\nd");
    }
}
