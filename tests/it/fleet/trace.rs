//! One trace across the hop: a host's call, `calcplug serve`'s handling of it and the plugin's
//! work, exported by both processes over OTLP to a receiver in this test.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use opentelemetry_proto::tonic::trace::v1::Span;

use super::{certs, mutual, tls_args, Serve};
use crate::util::{artifacts, calcplug, scratch};

/// Every span received, with the `service.name` of the process that sent it.
#[derive(Clone, Default)]
struct Receiver(Arc<Mutex<Vec<(String, Span)>>>);

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut received = self.0.lock().unwrap();
        for resource_spans in request.into_inner().resource_spans {
            let service = resource_spans
                .resource
                .iter()
                .flat_map(|resource| &resource.attributes)
                .find(|attribute| attribute.key == "service.name")
                .and_then(|attribute| match attribute.value.as_ref()?.value.as_ref()? {
                    Value::StringValue(name) => Some(name.clone()),
                    _ => None,
                })
                .unwrap_or_default();
            for scope in resource_spans.scope_spans {
                received.extend(scope.spans.into_iter().map(|span| (service.clone(), span)));
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse { partial_success: None }))
    }
}

impl Receiver {
    /// Starts an OTLP/gRPC receiver on 127.0.0.1; its URL.
    fn start(&self, runtime: &tokio::runtime::Runtime) -> String {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let service = TraceServiceServer::new(self.clone());
        runtime.spawn(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
                .await
                .unwrap();
        });
        url
    }

    /// The first span `service` sent named `name`, within 30 s.
    fn wait_for(&self, service: &str, name: &str) -> Span {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let received = self.0.lock().unwrap();
            if let Some((_, span)) =
                received.iter().find(|(s, span)| s == service && span.name == name)
            {
                return span.clone();
            }
            let seen: BTreeMap<&str, &str> =
                received.iter().map(|(s, span)| (span.name.as_str(), s.as_str())).collect();
            assert!(
                Instant::now() < deadline,
                "no span {name:?} from {service} in 30 s; spans: {seen:?}"
            );
            drop(received);
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

#[test]
fn one_trace_shows_the_host_call_the_served_call_and_the_plugin_work() {
    let runtime =
        tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let receiver = Receiver::default();
    let otlp = receiver.start(&runtime);

    // `calcplug serve` with mutual TLS, exporting its spans.
    let dir = scratch();
    certs(dir.path());
    let mut command = calcplug();
    command.arg("--plugin-dir").arg(&artifacts().plugin_dir);
    command.args(["serve", "--listen", "127.0.0.1:0"]).args(tls_args(dir.path()));
    command.env("OTEL_EXPORTER_OTLP_ENDPOINT", &otlp).env("OTEL_SERVICE_NAME", "calcplug-serve");
    let mut serve = Serve::spawn(command);

    // A host calling `basic` through the fleet, exporting its spans too.
    let tls = mutual(dir.path());
    let (ca, (cert, key)) = (tls.ca, tls.identity.expect("a client certificate"));
    let toml = dir.path().join("host.toml");
    std::fs::write(
        &toml,
        format!(
            "[plugins.basic]\nendpoints = [\"{}\"]\ntls_ca = {ca:?}\ntls_cert = {cert:?}\ntls_key = {key:?}\n",
            serve.url("https")
        ),
    )
    .unwrap();
    let out = calcplug()
        .arg("--config")
        .arg(&toml)
        .args(["status", "--call", "basic:add:20:22"])
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", &otlp)
        .env("OTEL_SERVICE_NAME", "calcplug-host")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // The status says where the plugin runs.
    let text = String::from_utf8_lossy(&out.stdout);
    let first = text.lines().next().unwrap_or_default();
    assert!(first.starts_with("basic ") && first.contains(" remote "), "{text}");
    assert!(
        text.contains("\n  transport: gRPC to `calcplug serve` instances, balanced\n"),
        "{text}"
    );

    // The server flushes its spans as it exits.
    let pid = rustix::process::Pid::from_raw(serve.child.id() as i32).expect("a pid");
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).expect("SIGTERM");
    assert!(serve.child.wait().unwrap().success());

    let host = receiver.wait_for("calcplug-host", "calcplug.v1.Calculator/add");
    let served = receiver.wait_for("calcplug-serve", "calcplug.v1.Calculator/Add");
    let plugin = receiver.wait_for("calcplug-serve", "basic.add");
    assert_eq!(host.kind, SpanKind::Client as i32);
    assert_eq!(served.kind, SpanKind::Server as i32);
    assert_eq!(host.trace_id.len(), 16);
    assert_eq!(served.trace_id, host.trace_id, "the server's span is in the host's trace");
    assert_eq!(served.parent_span_id, host.span_id, "the host's call is the server span's parent");
    assert_eq!(plugin.trace_id, host.trace_id);
    assert_eq!(
        plugin.parent_span_id, served.span_id,
        "the plugin's work is inside the served call"
    );
    // And the health probes, every 250 ms, are not in it.
    let received = receiver.0.lock().unwrap();
    assert!(
        !received.iter().any(|(_, span)| span.name.contains("grpc.health")),
        "health checks traced"
    );
}
