//! The CLI's `tracing` subscriber: log lines on stderr, and OpenTelemetry traces over OTLP when
//! `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) says where.

use std::env;
use std::io::{self, IsTerminal};

use anyhow::Context;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// Flushes the spans not yet exported when dropped: keep it until `main` returns.
pub(crate) struct Telemetry {
    exporting: Option<(SdkTracerProvider, tokio::runtime::Runtime)>,
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some((provider, runtime)) = self.exporting.take() {
            // Spans still batched go out now (the exporter's own timeout bounds it).
            if let Err(err) = provider.shutdown() {
                tracing::warn!(error = %err, "OpenTelemetry: spans not exported at exit");
            }
            runtime.shutdown_background();
        }
    }
}

/// Installs the subscriber. `verbose` is the `-v` count; `$CALCPLUG_LOG` (any `tracing` filter)
/// wins over it. Traces are exported when the standard `OTEL_EXPORTER_OTLP_*` variables name an
/// endpoint, as service `$OTEL_SERVICE_NAME` (default `calcplug`); calls to and from other
/// machines then carry the W3C `traceparent`.
pub(crate) fn init(verbose: u8) -> Telemetry {
    let filter = match env::var("CALCPLUG_LOG") {
        Ok(filter) => EnvFilter::new(filter),
        Err(_) => EnvFilter::new(match verbose {
            0 => "error",
            1 => "warn",
            2 => "info",
            3 => "debug",
            _ => "trace",
        }),
    };
    // Colour only for a person at a terminal, and never under NO_COLOR (no-color.org).
    let colour = io::stderr().is_terminal() && env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let log = tracing_subscriber::fmt::layer()
        .with_writer(io::stderr)
        .with_ansi(colour)
        .with_filter(filter);
    let wanted = ["OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"]
        .iter()
        .any(|var| env::var_os(var).is_some_and(|v| !v.is_empty()));
    let (exporting, problem) = match wanted.then(exporter).transpose() {
        Ok(exporting) => (exporting, None),
        Err(err) => (None, Some(err)),
    };
    // The calls' spans, and nothing of the libraries below.
    let traces = exporting.as_ref().map(|(provider, _)| {
        tracing_opentelemetry::layer()
            .with_tracer(provider.tracer("calcplug"))
            .with_filter(EnvFilter::new(format!("{}=debug", host::fleet::TRACE_TARGET)))
    });
    tracing_subscriber::registry().with(log).with(traces).init();
    if let Some(err) = problem {
        tracing::error!(error = format!("{err:#}"), "OpenTelemetry: not exporting traces");
    }
    Telemetry { exporting }
}

/// The OTLP/gRPC exporter (tonic, on a runtime of its own) and the W3C propagator.
fn exporter() -> anyhow::Result<(SdkTracerProvider, tokio::runtime::Runtime)> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("calcplug-otlp")
        .enable_all()
        .build()
        .context("a runtime for the OTLP exporter")?;
    // tonic's channel is made on this runtime, and driven by it.
    let _entered = runtime.enter();
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .build()
        .context("the OTLP exporter (OTEL_EXPORTER_OTLP_ENDPOINT)")?;
    let name = env::var("OTEL_SERVICE_NAME").unwrap_or_else(|_| "calcplug".to_owned());
    let resource = opentelemetry_sdk::Resource::builder().with_service_name(name).build();
    let provider =
        SdkTracerProvider::builder().with_batch_exporter(exporter).with_resource(resource).build();
    opentelemetry::global::set_text_map_propagator(
        opentelemetry_sdk::propagation::TraceContextPropagator::new(),
    );
    Ok((provider, runtime))
}
