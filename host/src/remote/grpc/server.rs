//! Serving a calcplug library to a go-plugin host: `calcplug-runner --grpc LIBRARY`.
//!
//! The runner loads the library with every check of [`crate::load`], listens on a Unix socket
//! (in `PLUGIN_UNIX_SOCKET_DIR`, else the temporary directory), prints go-plugin's handshake line
//! and serves `calcplug.v1.Calculator`, `grpc.health.v1.Health` (`plugin` is serving),
//! go-plugin's controller (whose `Shutdown` ends the process) and broker (answered, relaying
//! nothing) until the host shuts it down or kills it. When the host sends its certificate in
//! `PLUGIN_CLIENT_CERT`, every connection is mutual TLS ([`super::mtls`]).

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::UNIX_EPOCH;

use interface::{AngleUnit, BatchOp, BatchResult, Config, Op, OpCode, PROTOCOL_VERSION};
use tokio::sync::Notify;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

use super::handshake::{self, Address};
use super::mtls;
use super::pb::calculator_server::{Calculator, CalculatorServer};
use super::{angle_unit_to_pb, error_to_pb, go_plugin, pb, state_to_pb, HEALTH_SERVICE};
use crate::{Error, Plugin};

/// Serves the library at `library` until the host asks the process to stop; the error is one
/// line for the host's log.
pub(crate) fn serve(library: &Path) -> Result<(), String> {
    let app = handshake::negotiate(
        &[PROTOCOL_VERSION],
        std::env::var(handshake::PROTOCOL_VERSIONS_ENV).ok().as_deref(),
    );
    let plugin = Arc::new(crate::load(library).map_err(|err| err.to_string())?);
    // One thread serves: a call then wakes one thread, not one for the connection and another
    // for the call (the plugin's calls take nanoseconds; `initialize` and `shutdown` run on the
    // blocking pool).
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|err| format!("cannot start a runtime: {err}"))?;
    runtime.block_on(serve_plugin(plugin, app))
}

async fn serve_plugin(plugin: Arc<Plugin>, app: u32) -> Result<(), String> {
    let dir = std::env::var_os(handshake::UNIX_SOCKET_DIR_ENV)
        .map_or_else(std::env::temp_dir, PathBuf::from);
    let nanos = std::time::SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    let socket = dir.join(format!("calcplug-plugin-{}-{nanos:x}.sock", std::process::id()));
    let listener = tokio::net::UnixListener::bind(&socket)
        .map_err(|err| format!("{}: cannot listen: {err}", socket.display()))?;
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o600))
        .map_err(|err| format!("{}: cannot restrict permissions: {err}", socket.display()))?;

    let stop = Arc::new(Notify::new());
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_service_status(HEALTH_SERVICE, tonic_health::ServingStatus::Serving).await;
    health.set_service_status("", tonic_health::ServingStatus::Serving).await;
    let calculator = CalculatorServer::new(Served { resolve: plugin.clone() })
        .max_decoding_message_size(usize::MAX)
        .max_encoding_message_size(usize::MAX);
    let controller =
        go_plugin::grpc_controller_server::GrpcControllerServer::new(Controller(stop.clone()));
    let broker = go_plugin::grpc_broker_server::GrpcBrokerServer::new(Broker);

    // go-plugin's automatic mutual TLS, when the host asks for it.
    let tls = match std::env::var(mtls::CLIENT_CERT_ENV) {
        Ok(client) if !client.trim().is_empty() => {
            let ours = mtls::Credentials::generate()?;
            let config = mtls::server_config(&ours, &client)?;
            Some((ours, tokio_rustls::TlsAcceptor::from(config)))
        }
        _ => None,
    };
    let line = handshake::format(
        app,
        &Address::Unix(socket.clone()),
        tls.as_ref().map(|(ours, _)| ours.der()),
    );
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{line}")
        .and_then(|()| stdout.flush())
        .map_err(|err| format!("cannot write the handshake: {err}"))?;
    drop(stdout);
    tracing::info!(plugin = plugin.name(), socket = %socket.display(), "serving over gRPC");

    let router = tonic::transport::Server::builder()
        .add_service(health_service)
        .add_service(calculator)
        .add_service(controller)
        .add_service(broker);
    let stopped = async move { stop.notified().await };
    let incoming = tokio_stream::wrappers::UnixListenerStream::new(listener);
    let served = match tls {
        None => router.serve_with_incoming_shutdown(incoming, stopped).await,
        Some((_, acceptor)) => {
            let incoming = incoming.then(move |stream| {
                let acceptor = acceptor.clone();
                async move { TlsConnection::accept(&acceptor, stream?, "the host").await }
            });
            router.serve_with_incoming_shutdown(incoming, stopped).await
        }
    };
    let _ = std::fs::remove_file(&socket);
    if let Err(err) = plugin.shutdown() {
        tracing::warn!(error = %err, "shutdown failed");
    }
    served.map_err(|err| format!("serving failed: {err}"))
}

/// One accepted TLS connection, as tonic's server takes it.
pub(crate) struct TlsConnection<S = tokio::net::UnixStream>(
    pub(crate) tokio_rustls::server::TlsStream<S>,
);

impl<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin> TlsConnection<S> {
    /// One TLS handshake with `peer` on `stream`, within 10 s. A refusal (no client certificate,
    /// one from another CA, plaintext on this port, no handshake in time) is a warning that
    /// names the peer and the reason; a peer that closes the connection during the handshake (a
    /// client that exits, a TCP probe) is not refused anything, and is only logged at debug.
    pub(crate) async fn accept(
        acceptor: &tokio_rustls::TlsAcceptor,
        stream: S,
        peer: &str,
    ) -> std::io::Result<TlsConnection<S>> {
        let handshake = acceptor.accept(stream);
        match tokio::time::timeout(std::time::Duration::from_secs(10), handshake).await {
            Ok(Ok(stream)) => Ok(TlsConnection(stream)),
            Ok(Err(err)) if err.kind() == std::io::ErrorKind::UnexpectedEof => {
                tracing::debug!(%peer, "a connection closed during its TLS handshake");
                Err(err)
            }
            Ok(Err(err)) => {
                let hint = if err.to_string().contains("InvalidContentType") {
                    " (plaintext on this TLS port?)"
                } else {
                    ""
                };
                if let Some(unlogged) = REFUSALS.to_log(peer, &err.to_string()) {
                    tracing::warn!(%peer, error = %err, "refused a connection: TLS handshake failed{hint}{}", unlogged_note(unlogged));
                }
                Err(err)
            }
            Err(_) => {
                if let Some(unlogged) = REFUSALS.to_log(peer, "timeout") {
                    tracing::warn!(%peer, "refused a connection: no TLS handshake within 10 s{}", unlogged_note(unlogged));
                }
                Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "TLS handshake timed out"))
            }
        }
    }
}

/// How often the same refusal of the same address is logged: a misconfigured client that
/// keeps trying is one warning per interval, with a count, not one per attempt.
const REFUSAL_LOG_INTERVAL: std::time::Duration = std::time::Duration::from_secs(10);

/// The refusals logged lately, by address (without the port, which changes with each
/// connection) and reason.
static REFUSALS: RefusalLog = RefusalLog(parking_lot::Mutex::new(None));

struct RefusalLog(parking_lot::Mutex<Option<Refusals>>);

/// (address, reason) → when it was last logged, and how many of it were not logged since.
type Refusals = std::collections::HashMap<(String, String), (std::time::Instant, u64)>;

impl RefusalLog {
    /// Whether this refusal of `peer` for `reason` is to be logged: `Some(n)` with the number
    /// of the same refusals not logged since the last line, `None` within the interval.
    fn to_log(&self, peer: &str, reason: &str) -> Option<u64> {
        let address = peer.rsplit_once(':').map_or(peer, |(address, _)| address);
        let now = std::time::Instant::now();
        let mut log = self.0.lock();
        let log = log.get_or_insert_with(Default::default);
        // Forget what is past its interval, so that many addresses cannot grow it for good.
        if log.len() >= 1024 {
            log.retain(|_, (since, _)| now.duration_since(*since) < REFUSAL_LOG_INTERVAL);
        }
        match log.get_mut(&(address.to_owned(), reason.to_owned())) {
            Some((since, unlogged)) if now.duration_since(*since) < REFUSAL_LOG_INTERVAL => {
                *unlogged += 1;
                tracing::debug!(%peer, %reason, "refused a connection again");
                None
            }
            Some((since, unlogged)) => {
                let earlier = *unlogged;
                (*since, *unlogged) = (now, 0);
                Some(earlier)
            }
            None => {
                log.insert((address.to_owned(), reason.to_owned()), (now, 0));
                Some(0)
            }
        }
    }
}

/// `; refused N more times since the last warning`, or nothing.
fn unlogged_note(unlogged: u64) -> String {
    match unlogged {
        0 => String::new(),
        1 => " (once more from this address since the last such warning)".to_owned(),
        n => format!(" ({n} more times from this address since the last such warning)"),
    }
}

impl<S> tonic::transport::server::Connected for TlsConnection<S> {
    type ConnectInfo = ();

    fn connect_info(&self) -> Self::ConnectInfo {}
}

impl<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin> tokio::io::AsyncRead
    for TlsConnection<S>
{
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite
    for TlsConnection<S>
{
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

/// What `calcplug.v1.Calculator` serves a call with: the runner's one library, or a plugin a
/// manager serves (`calcplug serve`, [`crate::fleet`]).
pub(crate) trait Target: Send + Sync + 'static {
    /// Whether a call may block for long (an out-of-process plugin, a retry's pause): then it
    /// runs with `block_in_place`, which needs the multi-threaded runtime (and costs a hand-off
    /// of the runtime's other work to another thread, so calls that take nanoseconds skip it).
    fn may_block(&self) -> bool;
    fn name(&self) -> String;
    fn identity(&self) -> crate::Identity;
    fn initialize(&self, config: &Config) -> Result<(), Error>;
    fn shutdown(&self) -> Result<(), Error>;
    fn status(&self) -> Result<interface::Status, Error>;
    fn call(&self, op: Op, a: f64, b: f64) -> Result<f64, Error>;
    fn process_batch(&self, ops: &[BatchOp], results: &mut [BatchResult]) -> Result<(), Error>;
    fn set_angle_unit(&self, unit: AngleUnit) -> Result<(), Error>;
    fn angle_unit(&self) -> Result<AngleUnit, Error>;
}

/// Finds the plugin a request is for.
pub(crate) trait Resolve: Send + Sync + 'static {
    type Target: Target;
    /// The target of a request with this metadata, or the status to answer with.
    #[allow(clippy::result_large_err)]
    fn resolve(&self, metadata: &tonic::metadata::MetadataMap) -> Result<Self::Target, Status>;
}

impl Target for Arc<Plugin> {
    fn may_block(&self) -> bool {
        false
    }
    fn name(&self) -> String {
        Plugin::identity(self).name().to_owned()
    }
    fn identity(&self) -> crate::Identity {
        Plugin::identity(self).clone()
    }
    fn initialize(&self, config: &Config) -> Result<(), Error> {
        Plugin::initialize(self, config)
    }
    fn shutdown(&self) -> Result<(), Error> {
        Plugin::shutdown(self)
    }
    fn status(&self) -> Result<interface::Status, Error> {
        Plugin::status(self)
    }
    fn call(&self, op: Op, a: f64, b: f64) -> Result<f64, Error> {
        Plugin::call(self, op, a, b)
    }
    fn process_batch(&self, ops: &[BatchOp], results: &mut [BatchResult]) -> Result<(), Error> {
        Plugin::process_batch(self, ops, results)
    }
    fn set_angle_unit(&self, unit: AngleUnit) -> Result<(), Error> {
        Plugin::set_angle_unit(self, unit)
    }
    fn angle_unit(&self) -> Result<AngleUnit, Error> {
        Plugin::angle_unit(self)
    }
}

/// The runner serves its one library, whatever the request names.
impl Resolve for Arc<Plugin> {
    type Target = Arc<Plugin>;
    fn resolve(&self, _: &tonic::metadata::MetadataMap) -> Result<Arc<Plugin>, Status> {
        Ok(self.clone())
    }
}

/// The `calcplug.v1.Calculator` service over the plugins `R` finds.
pub(crate) struct Served<R> {
    pub(crate) resolve: R,
}

impl<R: Resolve> Served<R> {
    #[allow(clippy::result_large_err)]
    fn target<M>(&self, request: &Request<M>) -> Result<R::Target, Status> {
        self.resolve.resolve(request.metadata())
    }
}

/// Runs `call` on `target`, letting the runtime move its other tasks away first if it may
/// block.
fn run<T: Target, V>(target: &T, call: impl FnOnce() -> V) -> V {
    if target.may_block() {
        tokio::task::block_in_place(call)
    } else {
        call()
    }
}

/// A `calcplug.v1` error from a host error: the plugin's own code and message for a call
/// error, `Internal` and the whole message otherwise.
pub(crate) fn error(err: Error) -> pb::Error {
    match err {
        Error::Call { code, message, .. } => error_to_pb(code, message),
        other => error_to_pb(interface::ErrorCode::Internal, other.to_string()),
    }
}

fn outcome(result: Result<(), Error>) -> Response<pb::Outcome> {
    Response::new(pb::Outcome { error: result.err().map(error) })
}

fn value(result: Result<f64, Error>) -> Response<pb::Result> {
    Response::new(match result {
        Ok(value) => pb::Result { value, error: None },
        Err(err) => pb::Result { value: 0.0, error: Some(error(err)) },
    })
}

/// The `calcplug.v1.Calculator` service: the non-operation calls, then one call per row of the
/// table of operations.
macro_rules! calculator_service {
    ($( [$kind:ident $variant:ident $method:ident $code:literal ($($arg:ident: $ty:ident),*) $doc:literal $minor:literal] )*) => {
        #[tonic::async_trait]
        impl<R: Resolve> Calculator for Served<R> {
            async fn initialize(
                &self,
                request: Request<pb::InitializeRequest>,
            ) -> Result<Response<pb::Outcome>, Status> {
                let config: Config = request
                    .get_ref()
                    .config
                    .iter()
                    .map(|(key, value)| (key.as_str(), value.as_str()))
                    .collect();
                let plugin = self.target(&request)?;
                let result = tokio::task::spawn_blocking(move || plugin.initialize(&config))
                    .await
                    .map_err(|err| Status::internal(err.to_string()))?;
                Ok(outcome(result))
            }

            async fn shutdown(&self, request: Request<pb::Empty>) -> Result<Response<pb::Outcome>, Status> {
                let plugin = self.target(&request)?;
                let result = tokio::task::spawn_blocking(move || plugin.shutdown())
                    .await
                    .map_err(|err| Status::internal(err.to_string()))?;
                Ok(outcome(result))
            }

            async fn get_status(
                &self,
                request: Request<pb::Empty>,
            ) -> Result<Response<pb::StatusResponse>, Status> {
                let plugin = self.target(&request)?;
                let status = plugin.status().map_err(|err| Status::internal(err.to_string()))?;
                let nanos = |d: std::time::Duration| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
                Ok(Response::new(pb::StatusResponse {
                    state: state_to_pb(status.state),
                    message: status.message,
                    started_at_unix_nanos: status
                        .started_at
                        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)),
                    uptime_nanos: nanos(status.uptime),
                    request_count: status.request_count,
                    average_latency_nanos: status.average_latency.map_or(0, nanos),
                }))
            }

            async fn get_metadata(
                &self,
                request: Request<pb::Empty>,
            ) -> Result<Response<pb::MetadataResponse>, Status> {
                let identity = self.target(&request)?.identity();
                let metadata = identity.metadata();
                Ok(Response::new(pb::MetadataResponse {
                    name: metadata.name.clone(),
                    version: metadata.version.clone(),
                    description: metadata.description.clone(),
                    operations: metadata.operations.clone(),
                    config: metadata
                        .config
                        .iter()
                        .map(|key| pb::ConfigKey {
                            key: key.key.clone(),
                            default_value: key.default.clone(),
                            description: key.description.clone(),
                        })
                        .collect(),
                    interface_version: identity.interface_version().to_string(),
                }))
            }

            async fn process_batch(
                &self,
                request: Request<pb::BatchRequest>,
            ) -> Result<Response<pb::BatchResponse>, Status> {
                let plugin = self.target(&request)?;
                let ops: Vec<BatchOp> = request
                    .into_inner()
                    .items
                    .into_iter()
                    .map(|item| BatchOp {
                        // A number beyond any op code reads as code 0: no operation, unsupported.
                        op: OpCode::from_u8(u8::try_from(item.op).unwrap_or(0)),
                        a: item.a,
                        b: item.b,
                    })
                    .collect();
                let mut results = vec![BatchResult::PENDING; ops.len()];
                run(&plugin, || plugin.process_batch(&ops, &mut results))
                    .map_err(|err| Status::internal(err.to_string()))?;
                let results = results
                    .iter()
                    .map(|result| match result.result() {
                        Ok(value) => pb::BatchItemResult { value, code: 0 },
                        Err(code) => pb::BatchItemResult { value: 0.0, code: code.as_u8().into() },
                    })
                    .collect();
                Ok(Response::new(pb::BatchResponse { results }))
            }

            async fn set_angle_unit(
                &self,
                request: Request<pb::AngleUnitMessage>,
            ) -> Result<Response<pb::Outcome>, Status> {
                let plugin = self.target(&request)?;
                let raw = request.get_ref().unit;
                let Some(unit) = u8::try_from(raw).ok().and_then(AngleUnit::from_u8) else {
                    return Ok(Response::new(pb::Outcome {
                        error: Some(error_to_pb(
                            interface::ErrorCode::InvalidInput,
                            format!("unknown angle unit code {raw}"),
                        )),
                    }));
                };
                Ok(outcome(run(&plugin, || plugin.set_angle_unit(unit))))
            }

            async fn get_angle_unit(
                &self,
                request: Request<pb::Empty>,
            ) -> Result<Response<pb::AngleUnitMessage>, Status> {
                let plugin = self.target(&request)?;
                Ok(Response::new(match run(&plugin, || plugin.angle_unit()) {
                    Ok(unit) => pb::AngleUnitMessage { unit: angle_unit_to_pb(unit), error: None },
                    Err(err) => pb::AngleUnitMessage { unit: 0, error: Some(error(err)) },
                }))
            }

            $(
                async fn $method(
                    &self,
                    request: Request<pb::Operands>,
                ) -> Result<Response<pb::Result>, Status> {
                    let plugin = self.target(&request)?;
                    let pb::Operands { a, b } = request.into_inner();
                    Ok(value(run(&plugin, || plugin.call(Op::$variant, a, b))))
                }
            )*
        }
    };
}

interface::calculator_ops!(flat calculator_service);

/// go-plugin's controller: `Shutdown` ends serving, then the process.
struct Controller(Arc<Notify>);

#[tonic::async_trait]
impl go_plugin::grpc_controller_server::GrpcController for Controller {
    async fn shutdown(
        &self,
        _: Request<go_plugin::Empty>,
    ) -> Result<Response<go_plugin::Empty>, Status> {
        tracing::info!("the host asked the plugin to shut down");
        self.0.notify_one();
        Ok(Response::new(go_plugin::Empty {}))
    }
}

/// go-plugin's broker: the host opens its stream at start; calcplug relays no connection over
/// it, so the answer stream stays open, silent, until the host closes its side.
struct Broker;

type ConnInfoStream = Pin<Box<dyn Stream<Item = Result<go_plugin::ConnInfo, Status>> + Send>>;

#[tonic::async_trait]
impl go_plugin::grpc_broker_server::GrpcBroker for Broker {
    type StartStreamStream = ConnInfoStream;

    async fn start_stream(
        &self,
        request: Request<Streaming<go_plugin::ConnInfo>>,
    ) -> Result<Response<ConnInfoStream>, Status> {
        let mut incoming = request.into_inner();
        let (sender, receiver) = tokio::sync::mpsc::channel(1);
        tokio::spawn(async move {
            // Holds the sender (keeping the answer stream open) until the host's side ends.
            while let Ok(Some(info)) = incoming.message().await {
                tracing::debug!(service = info.service_id, "broker connection info ignored");
            }
            drop(sender);
        });
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(receiver))))
    }
}
