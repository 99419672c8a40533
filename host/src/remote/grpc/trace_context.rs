//! The caller's trace across a gRPC hop: the W3C `traceparent` (and `tracestate`) in the
//! request's metadata, written and read by whichever propagator the application installed with
//! `opentelemetry::global::set_text_map_propagator` (none: nothing is sent, nothing is read).
//! The `calcplug` CLI installs the W3C one when it exports traces (`OTEL_EXPORTER_OTLP_ENDPOINT`).
//!
//! Spans are `tracing` spans at debug level with the target [`TARGET`]; `tracing-opentelemetry`
//! makes them OpenTelemetry spans when the application's layer takes that target, and they cost
//! a disabled callsite check when nobody listens (a server logging at info does not make them).

use opentelemetry::propagation::{Extractor, Injector};
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The target of the calls' spans: what a subscriber's filter names to trace them.
pub const TARGET: &str = "calcplug::trace";

/// Writes the current span's context into `metadata`.
pub(crate) fn inject(metadata: &mut tonic::metadata::MetadataMap) {
    let context = tracing::Span::current().context();
    opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.inject_context(&context, &mut MetadataInjector(metadata));
    });
}

/// The span a client call runs in: `plugin.op` towards `peer`.
pub(crate) fn client_span(plugin: &str, op: &str, peer: &str) -> tracing::Span {
    tracing::debug_span!(
        target: TARGET,
        "calcplug.call",
        otel.name = %format_args!("calcplug.v1.Calculator/{op}"),
        otel.kind = "client",
        rpc.system = "grpc",
        calcplug.plugin = %plugin,
        server.address = %peer,
    )
}

/// The span a served request runs in, a child of the caller's span when the request carries
/// its context; none for the health service (probed every fraction of a second, it would bury
/// the calls).
pub(crate) fn server_span(request: &tonic::codegen::http::Request<()>) -> tracing::Span {
    let path = request.uri().path();
    if path.starts_with("/grpc.health.v1.") {
        return tracing::Span::none();
    }
    let plugin = request
        .headers()
        .get(crate::fleet::PLUGIN_METADATA)
        .and_then(|value| value.to_str().ok())
        .unwrap_or("");
    let span = tracing::debug_span!(
        target: TARGET,
        "calcplug.serve",
        otel.name = %path.trim_start_matches('/'),
        otel.kind = "server",
        rpc.system = "grpc",
        calcplug.plugin = %plugin,
    );
    let parent = opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.extract(&HeaderExtractor(request.headers()))
    });
    // Without the OpenTelemetry layer there is nothing to parent: the span stays a root.
    let _ = span.set_parent(parent);
    span
}

/// The span of a plugin's own work on a served call.
pub(crate) fn plugin_span(plugin: &str, op: &str) -> tracing::Span {
    tracing::debug_span!(target: TARGET, "calcplug.plugin", otel.name = %format_args!("{plugin}.{op}"), calcplug.plugin = %plugin)
}

struct MetadataInjector<'a>(&'a mut tonic::metadata::MetadataMap);

impl Injector for MetadataInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        let key = tonic::metadata::MetadataKey::from_bytes(key.as_bytes());
        let value = tonic::metadata::MetadataValue::try_from(value);
        if let (Ok(key), Ok(value)) = (key, value) {
            self.0.insert(key, value);
        }
    }
}

struct HeaderExtractor<'a>(&'a tonic::codegen::http::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|value| value.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(tonic::codegen::http::HeaderName::as_str).collect()
    }
}
