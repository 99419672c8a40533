//! The status snapshot in the Prometheus text exposition format (0.0.4), written by the
//! `prometheus-client` crate: a collector turns one [`ManagerStatus`] into metric families.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};

use super::{Latency, LifecycleState, ManagerStatus, PluginStatus};

/// The `Content-Type` of [`ManagerStatus::prometheus`]'s text.
pub(crate) const PROMETHEUS_CONTENT_TYPE: &str =
    prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

impl ManagerStatus {
    /// The status in the Prometheus text exposition format (version 0.0.4): per plugin its
    /// state, uptime, calls in flight, reloads and refused calls; per plugin and operation its
    /// calls, errors by code, retries and a latency histogram of the sampled calls.
    pub fn prometheus(&self) -> String {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(Snapshot(self.clone())));
        let mut out = String::new();
        // Writing into a `String` cannot fail.
        let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, &registry);
        out
    }
}

/// One status, as metric families.
#[derive(Debug)]
struct Snapshot(ManagerStatus);

type Labels = Vec<(&'static str, String)>;

fn plugin_labels(p: &PluginStatus) -> Labels {
    vec![("plugin", p.name.clone())]
}

/// One family: a descriptor, then one sample per label set.
fn family<M: EncodeMetric>(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    kind: MetricType,
    samples: impl IntoIterator<Item = (Labels, M)>,
) -> Result<(), std::fmt::Error> {
    let mut metric = encoder.encode_descriptor(name, help, unit, kind)?;
    for (labels, value) in samples {
        value.encode(metric.encode_family(&labels)?)?;
    }
    Ok(())
}

/// A latency histogram sample.
#[derive(Debug)]
struct Histogram(Latency);

impl prometheus_client::metrics::TypedMetric for Histogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for Histogram {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::MetricEncoder<'_>,
    ) -> Result<(), std::fmt::Error> {
        // The encoder takes each bucket's own count and accumulates them itself.
        let mut below = 0;
        let mut buckets: Vec<(f64, u64)> = Latency::BOUNDS
            .iter()
            .zip(self.0.buckets)
            .map(|(bound, cumulative)| {
                let own = cumulative - below;
                below = cumulative;
                (*bound, own)
            })
            .collect();
        buckets.push((f64::INFINITY, self.0.sampled - below));
        encoder.encode_histogram::<prometheus_client::encoding::NoLabelSet>(
            self.0.sum.as_secs_f64(),
            self.0.sampled,
            &buckets,
            None,
        )
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

impl Collector for Snapshot {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let plugins = &self.0.plugins;
        let per_plugin = |value: fn(&PluginStatus) -> i64| {
            plugins.iter().map(move |p| (plugin_labels(p), ConstGauge::new(value(p))))
        };
        let counter = |value: fn(&PluginStatus) -> u64| {
            plugins.iter().map(move |p| (plugin_labels(p), ConstCounter::new(value(p))))
        };
        family(
            &mut encoder,
            "calcplug_plugin_info",
            "Managed plugins: version, source, transport and lifecycle state (value always 1)",
            None,
            MetricType::Gauge,
            plugins.iter().map(|p| {
                let mut labels = plugin_labels(p);
                labels.push(("version", p.version.to_string()));
                labels.push(("path", p.source.display().to_string()));
                labels.push(("transport", p.transport.to_owned()));
                labels.push(("state", p.state.to_string()));
                (labels, ConstGauge::new(1i64))
            }),
        )?;
        family(
            &mut encoder,
            "calcplug_plugin_up",
            "1 if the plugin is serving calls (ready or processing), else 0",
            None,
            MetricType::Gauge,
            per_plugin(|p| {
                i64::from(matches!(p.state, LifecycleState::Ready | LifecycleState::Processing))
            }),
        )?;
        family(
            &mut encoder,
            "calcplug_plugin_circuit_open",
            "1 while the plugin's circuit breaker is open or trying (out of process), else 0",
            None,
            MetricType::Gauge,
            per_plugin(|p| {
                i64::from(p.circuit.is_some_and(|c| !matches!(c, crate::remote::Circuit::Closed)))
            }),
        )?;
        family(
            &mut encoder,
            "calcplug_plugin_uptime_seconds",
            "Seconds since the serving library was loaded",
            None,
            MetricType::Gauge,
            plugins.iter().map(|p| (plugin_labels(p), ConstGauge::new(p.uptime.as_secs_f64()))),
        )?;
        family(
            &mut encoder,
            "calcplug_plugin_in_flight_calls",
            "Calls running now",
            None,
            MetricType::Gauge,
            per_plugin(|p| i64::try_from(p.in_flight).unwrap_or(i64::MAX)),
        )?;
        family(
            &mut encoder,
            "calcplug_plugin_reloads",
            "Successful hot reloads",
            None,
            MetricType::Counter,
            counter(|p| p.reloads),
        )?;
        family(
            &mut encoder,
            "calcplug_plugin_reload_failures",
            "Replacement libraries that failed to load or initialize (the old one kept serving)",
            None,
            MetricType::Counter,
            counter(|p| p.reload_failures),
        )?;
        family(
            &mut encoder,
            "calcplug_plugin_rejected_calls",
            "Calls refused by the manager (plugin not ready, or shutting down)",
            None,
            MetricType::Counter,
            counter(|p| p.rejected),
        )?;
        let ops = || {
            plugins.iter().flat_map(|p| {
                p.ops.iter().map(move |op| {
                    let mut labels = plugin_labels(p);
                    labels.push(("op", op.op.to_owned()));
                    (labels, op)
                })
            })
        };
        family(
            &mut encoder,
            "calcplug_calls",
            "Calls that reached the plugin, by operation (each retry counts)",
            None,
            MetricType::Counter,
            ops().map(|(labels, op)| (labels, ConstCounter::new(op.calls))),
        )?;
        family(
            &mut encoder,
            "calcplug_call_errors",
            "Failed calls, by operation and error code (the plugin's, or PluginCrashed, \
             CallTimeout, CircuitOpen, Transport)",
            None,
            MetricType::Counter,
            ops().flat_map(|(labels, op)| {
                op.failed_by_kind().map(move |(code, n)| {
                    let mut labels = labels.clone();
                    labels.push(("code", code.to_owned()));
                    (labels, ConstCounter::new(n))
                })
            }),
        )?;
        family(
            &mut encoder,
            "calcplug_call_retries",
            "Retries, by operation: by the retry policy, and of calls whose runner or plugin process died, on a new one",
            None,
            MetricType::Counter,
            ops().map(|(labels, op)| (labels, ConstCounter::new(op.retries))),
        )?;
        family(
            &mut encoder,
            "calcplug_call_latency",
            "Latency of the timed calls (in process 1 in metrics.sample_every, else all), by operation",
            Some(&Unit::Seconds),
            MetricType::Histogram,
            ops().filter_map(|(labels, op)| op.latency.map(|l| (labels, Histogram(l)))),
        )?;
        family(
            &mut encoder,
            "calcplug_refused_libraries",
            "Library files (or directories) that are refused or shadowed",
            None,
            MetricType::Gauge,
            [(
                Vec::new(),
                ConstGauge::new(i64::try_from(self.0.problems.len()).unwrap_or(i64::MAX)),
            )],
        )?;
        Ok(())
    }
}
