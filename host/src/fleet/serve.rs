//! [`Server`]: a manager's plugins over gRPC on TCP, plaintext or TLS, with health by plugin.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use interface::{AngleUnit, BatchOp, BatchResult, Config, ErrorCode, Op};
use tokio::sync::Notify;
use tokio_stream::StreamExt;
use tonic::Status;
use tonic_health::ServingStatus;

use crate::manager::Handle;
use crate::remote::trace_context::plugin_span;
use crate::remote::{CalculatorServer, Resolve, Served, Target, TlsConnection};
use crate::{Error, LifecycleState, PluginManager};

/// The gRPC metadata key a request names its plugin in.
pub const PLUGIN_METADATA: &str = "calcplug-plugin";

/// The service name `grpc.health.v1` answers for the server as a whole, besides "": `NOT_SERVING`
/// from the start of a drain (a readiness check).
pub const CALCULATOR_SERVICE: &str = "calcplug.v1.Calculator";

/// The service name `grpc.health.v1` answers `SERVING` for as long as the process serves, drain
/// included (a liveness check).
pub const LIVENESS_SERVICE: &str = "calcplug.v1.Liveness";

/// The server's TLS material, PEM files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerTls {
    /// The server's certificate chain.
    pub cert: PathBuf,
    /// The server's private key.
    pub key: PathBuf,
    /// The CA a client's certificate must chain to: mutual TLS. `None` accepts clients without
    /// a certificate.
    pub client_ca: Option<PathBuf>,
}

/// How a [`Server`] serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServeOptions {
    /// The address to listen on, `IP:PORT` (port 0 picks a free one: see
    /// [`Server::local_addr`]).
    pub listen: String,
    /// TLS, or `None` for plaintext.
    pub tls: Option<ServerTls>,
    /// How long calls in flight may take to finish once the listener has closed.
    pub drain_timeout: Duration,
    /// How long the server keeps accepting calls after it reports `NOT_SERVING` on a stop, so
    /// that load balancers and `Fleet` clients, which probe its health, move away first.
    pub drain_grace: Duration,
    /// How often each plugin's health is read from the manager.
    pub health_interval: Duration,
    /// Where to serve `GET /metrics` (Prometheus text format, HTTP/1, plaintext), `IP:PORT`;
    /// `None` for no metrics endpoint.
    pub metrics_listen: Option<String>,
    /// Where to serve `grpc.health.v1` alone, plaintext, `IP:PORT`: for probes that cannot
    /// present a client certificate (Kubernetes' native gRPC probes). `None` for none.
    pub health_listen: Option<String>,
}

/// Stops a running [`Server`] (from a signal handler, another thread, a test).
#[derive(Debug, Clone)]
pub struct Stopper(Arc<StopState>);

#[derive(Debug, Default)]
struct StopState {
    stopped: AtomicBool,
    notify: Notify,
}

impl Stopper {
    /// Asks the server to drain and return; later calls do nothing more.
    pub fn stop(&self) {
        if !self.0.stopped.swap(true, Ordering::SeqCst) {
            self.0.notify.notify_waiters();
        }
    }

    async fn stopped(&self) {
        let notified = self.0.notify.notified();
        if self.0.stopped.load(Ordering::SeqCst) {
            return;
        }
        notified.await;
    }
}

/// A bound, not yet running, fleet server.
pub struct Server {
    runtime: tokio::runtime::Runtime,
    listener: tokio::net::TcpListener,
    local_addr: SocketAddr,
    metrics: Option<(tokio::net::TcpListener, SocketAddr)>,
    health: Option<(tokio::net::TcpListener, SocketAddr)>,
    manager: Arc<PluginManager>,
    tls: Option<Arc<rustls::ServerConfig>>,
    options: ServeOptions,
    stopper: Stopper,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("local_addr", &self.local_addr)
            .field("tls", &self.tls.is_some())
            .finish_non_exhaustive()
    }
}

impl Server {
    /// Reads the TLS material and binds the listening socket.
    ///
    /// # Errors
    ///
    /// [`Error::Tls`] naming the file for unusable TLS material; [`Error::Fleet`] for an
    /// address that does not parse or cannot be listened on.
    pub fn bind(manager: Arc<PluginManager>, options: ServeOptions) -> Result<Server, Error> {
        let fleet = |reason: String| Error::Fleet { peer: options.listen.clone(), reason };
        let address: SocketAddr = options
            .listen
            .parse()
            .map_err(|err| fleet(format!("not an address to listen on (IP:PORT): {err}")))?;
        let tls = options.tls.as_ref().map(super::tls::server_config).transpose()?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .thread_name("calcplug-serve")
            .build()
            .map_err(|err| fleet(format!("cannot start a runtime: {err}")))?;
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind(address))
            .map_err(|err| fleet(format!("cannot listen: {err}")))?;
        let local_addr = listener.local_addr().map_err(|err| fleet(err.to_string()))?;
        let side = |listen: &Option<String>, what: &str| match listen {
            None => Ok(None),
            Some(listen) => {
                let fail = |reason: String| Error::Fleet { peer: listen.clone(), reason };
                let address: SocketAddr = listen.parse().map_err(|err| {
                    fail(format!("not an address to serve {what} on (IP:PORT): {err}"))
                })?;
                let listener = runtime
                    .block_on(tokio::net::TcpListener::bind(address))
                    .map_err(|err| fail(format!("cannot listen: {err}")))?;
                let bound = listener.local_addr().map_err(|err| fail(err.to_string()))?;
                Ok(Some((listener, bound)))
            }
        };
        let metrics = side(&options.metrics_listen, "metrics")?;
        let health = side(&options.health_listen, "health checks")?;
        Ok(Server {
            runtime,
            listener,
            local_addr,
            metrics,
            health,
            manager,
            tls,
            options,
            stopper: Stopper(Arc::default()),
        })
    }

    /// The address the server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The address the plaintext health service is served on, if it is.
    pub fn health_addr(&self) -> Option<SocketAddr> {
        self.health.as_ref().map(|(_, address)| *address)
    }

    /// The address `/metrics` is served on, if it is.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics.as_ref().map(|(_, address)| *address)
    }

    /// What stops the server.
    pub fn stopper(&self) -> Stopper {
        self.stopper.clone()
    }

    /// Serves until the [`Stopper`] says stop, then drains: every health status turns
    /// `NOT_SERVING`, the listener closes, and the calls in flight get up to the drain timeout
    /// to finish.
    ///
    /// # Errors
    ///
    /// [`Error::Fleet`] if serving fails.
    pub fn run(self) -> Result<(), Error> {
        let Server {
            runtime,
            listener,
            local_addr,
            metrics,
            health: health_listener,
            manager,
            tls,
            options,
            stopper,
        } = self;
        let peer = local_addr.to_string();
        runtime.block_on(async move {
            let (health, health_service) = tonic_health::server::health_reporter();
            health.set_service_status("", ServingStatus::Serving).await;
            health.set_service_status(CALCULATOR_SERVICE, ServingStatus::Serving).await;
            health.set_service_status(LIVENESS_SERVICE, ServingStatus::Serving).await;
            // Every plugin has its status before the first call can ask.
            update_health(&manager, &health, &stopper).await;
            let watcher = tokio::spawn(watch_health(
                manager.clone(),
                health.clone(),
                options.health_interval,
                stopper.clone(),
            ));
            let exporter = metrics.map(|(listener, address)| {
                tracing::info!(%address, "serving /metrics");
                tokio::spawn(serve_metrics(listener, manager.clone(), stopper.clone()))
            });
            let prober = health_listener.map(|(listener, address)| {
                tracing::info!(%address, "serving plaintext health checks");
                let service = health_service.clone();
                let stopped = stopper.clone();
                tokio::spawn(async move {
                    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
                    // It closes with the process, not with the drain: liveness stays answered.
                    let _ = tonic::transport::Server::builder()
                        .add_service(service)
                        .serve_with_incoming_shutdown(incoming, async move {
                            stopped.stopped().await;
                            std::future::pending::<()>().await;
                        })
                        .await;
                })
            });
            let calculator = CalculatorServer::new(Served { resolve: ByName(manager.clone()) })
                .max_decoding_message_size(usize::MAX)
                .max_encoding_message_size(usize::MAX);
            let router = tonic::transport::Server::builder()
                .trace_fn(crate::remote::trace_context::server_span)
                .add_service(health_service)
                .add_service(calculator);
            let draining = {
                let (stopper, health, manager) = (stopper.clone(), health.clone(), manager.clone());
                let grace = options.drain_grace;
                async move {
                    stopper.stopped().await;
                    tracing::info!(?grace, "draining: reporting NOT_SERVING, then closing the listener");
                    health.set_service_status("", ServingStatus::NotServing).await;
                    health.set_service_status(CALCULATOR_SERVICE, ServingStatus::NotServing).await;
                    for name in manager.names() {
                        health.set_service_status(&name, ServingStatus::NotServing).await;
                    }
                    tokio::time::sleep(grace).await;
                    tracing::info!("closing the listener; waiting for the calls in flight");
                }
            };
            tracing::info!(address = %local_addr, tls = tls.is_some(), mutual = options.tls.as_ref().is_some_and(|t| t.client_ca.is_some()), "serving plugins");
            let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
            let served = match tls {
                None => {
                    let incoming = incoming.map(|stream| {
                        let stream = stream?;
                        stream.set_nodelay(true)?;
                        Ok::<_, std::io::Error>(stream)
                    });
                    drain(router.serve_with_incoming_shutdown(incoming, draining), &stopper, options.drain_grace, options.drain_timeout).await
                }
                Some(config) => {
                    let acceptor = tokio_rustls::TlsAcceptor::from(config);
                    let incoming = incoming.then(move |stream| {
                        let acceptor = acceptor.clone();
                        async move { accept(&acceptor, stream?).await }
                    });
                    // A refused handshake ends that connection, not the server.
                    let incoming = incoming.filter(Result::is_ok);
                    drain(router.serve_with_incoming_shutdown(incoming, draining), &stopper, options.drain_grace, options.drain_timeout).await
                }
            };
            watcher.abort();
            for task in [exporter, prober].into_iter().flatten() {
                task.abort();
            }
            served.map_err(|reason| Error::Fleet { peer, reason })
        })
    }
}

/// Waits for `serving`, which returns once the stop has drained the calls in flight; gives up
/// on calls still running `drain_timeout` after the stop.
async fn drain(
    serving: impl std::future::Future<Output = Result<(), tonic::transport::Error>>,
    stopper: &Stopper,
    drain_grace: Duration,
    drain_timeout: Duration,
) -> Result<(), String> {
    let mut serving = std::pin::pin!(serving);
    let result = tokio::select! {
        result = &mut serving => result,
        () = stopper.stopped() => match tokio::time::timeout(drain_grace + drain_timeout, &mut serving).await {
            Ok(result) => result,
            Err(_) => {
                tracing::warn!(?drain_timeout, "calls still running after the drain timeout: stopping anyway");
                Ok(())
            }
        },
    };
    result.map_err(|err| format!("serving failed: {err}"))
}

/// One TLS handshake with a client ([`TlsConnection::accept`]).
async fn accept(
    acceptor: &tokio_rustls::TlsAcceptor,
    stream: tokio::net::TcpStream,
) -> Result<TlsConnection<tokio::net::TcpStream>, std::io::Error> {
    stream.set_nodelay(true)?;
    let peer = stream.peer_addr().map_or_else(|_| "?".to_owned(), |a| a.to_string());
    TlsConnection::accept(acceptor, stream, &peer).await
}

/// Answers `GET /metrics` with the manager's metrics in the Prometheus text format (and 404 to
/// anything else) until the server stops.
async fn serve_metrics(
    listener: tokio::net::TcpListener,
    manager: Arc<PluginManager>,
    stopper: Stopper,
) {
    use http_body_util::Full;
    use hyper::body::Bytes;
    use hyper::{Response, StatusCode};
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = stopper.stopped() => return,
        };
        let Ok((stream, _)) = accepted else { continue };
        let manager = manager.clone();
        let service =
            hyper::service::service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
                let manager = manager.clone();
                async move {
                    let response = if request.uri().path() == "/metrics" {
                        let text = tokio::task::block_in_place(|| manager.status().prometheus());
                        Response::builder()
                            .header(
                                hyper::header::CONTENT_TYPE,
                                crate::manager::prometheus::PROMETHEUS_CONTENT_TYPE,
                            )
                            .body(Full::new(Bytes::from(text)))
                    } else {
                        Response::builder()
                            .status(StatusCode::NOT_FOUND)
                            .body(Full::new(Bytes::from_static(b"only /metrics here\n")))
                    };
                    response.map_err(|err| std::io::Error::other(err.to_string()))
                }
            });
        tokio::spawn(async move {
            let io = hyper_util::rt::TokioIo::new(stream);
            if let Err(err) =
                hyper::server::conn::http1::Builder::new().serve_connection(io, service).await
            {
                tracing::debug!(error = %err, "a /metrics connection failed");
            }
        });
    }
}

/// Keeps each plugin's health status in step with the manager until the server stops.
async fn watch_health(
    manager: Arc<PluginManager>,
    health: tonic_health::server::HealthReporter,
    every: Duration,
    stopper: Stopper,
) {
    loop {
        if stopper.0.stopped.load(Ordering::SeqCst) {
            return;
        }
        update_health(&manager, &health, &stopper).await;
        tokio::select! {
            () = tokio::time::sleep(every) => {}
            () = stopper.stopped() => return,
        }
    }
}

/// Sets each plugin's health status from the manager's state (unless the server is stopping).
async fn update_health(
    manager: &PluginManager,
    health: &tonic_health::server::HealthReporter,
    stopper: &Stopper,
) {
    let status = tokio::task::block_in_place(|| manager.status());
    for plugin in status.plugins {
        let open = plugin.circuit.is_some_and(|c| !matches!(c, crate::remote::Circuit::Closed));
        let serving =
            matches!(plugin.state, LifecycleState::Ready | LifecycleState::Processing) && !open;
        let status = if serving { ServingStatus::Serving } else { ServingStatus::NotServing };
        if stopper.0.stopped.load(Ordering::SeqCst) {
            return;
        }
        health.set_service_status(&plugin.name, status).await;
    }
}

/// Finds the managed plugin a request names in [`PLUGIN_METADATA`].
struct ByName(Arc<PluginManager>);

impl Resolve for ByName {
    type Target = Handle;

    fn resolve(&self, metadata: &tonic::metadata::MetadataMap) -> Result<Handle, Status> {
        let served = || self.0.names().join(", ");
        let Some(name) = metadata.get(PLUGIN_METADATA).and_then(|v| v.to_str().ok()) else {
            return Err(Status::invalid_argument(format!(
                "name the plugin in the `{PLUGIN_METADATA}` metadata key (served here: {})",
                served()
            )));
        };
        self.0.get(name).ok_or_else(|| {
            Status::not_found(format!("no plugin `{name}` is served here (served: {})", served()))
        })
    }
}

/// What a remote host may not do to a served plugin: its configuration is the server's.
fn not_remotely(handle: &Handle, op: &'static str) -> Error {
    Error::Call {
        plugin: handle.name().to_owned(),
        op,
        code: ErrorCode::Unsupported,
        message: "a plugin served by `calcplug serve` is configured by the server's \
                  calcplug.toml, not by its callers"
            .to_owned(),
    }
}

impl Target for Handle {
    fn may_block(&self) -> bool {
        self.is_isolated()
    }

    fn name(&self) -> String {
        Handle::name(self).to_owned()
    }

    fn identity(&self) -> crate::Identity {
        Handle::identity(self)
    }

    fn initialize(&self, _: &Config) -> Result<(), Error> {
        Err(not_remotely(self, "initialize"))
    }

    fn shutdown(&self) -> Result<(), Error> {
        Err(not_remotely(self, "shutdown"))
    }

    fn status(&self) -> Result<interface::Status, Error> {
        let health = self.health();
        health.status.ok_or_else(|| Error::Call {
            plugin: health.name,
            op: "status",
            code: ErrorCode::Internal,
            message: health.problem.unwrap_or_else(|| "no status".to_owned()),
        })
    }

    fn call(&self, op: Op, a: f64, b: f64) -> Result<f64, Error> {
        plugin_span(self.name(), op.name()).in_scope(|| Handle::call(self, op, a, b))
    }

    fn process_batch(&self, ops: &[BatchOp], results: &mut [BatchResult]) -> Result<(), Error> {
        plugin_span(self.name(), "process_batch")
            .in_scope(|| Handle::process_batch(self, ops, results))
    }

    fn set_angle_unit(&self, _: AngleUnit) -> Result<(), Error> {
        Err(not_remotely(self, "set_angle_unit"))
    }

    fn angle_unit(&self) -> Result<AngleUnit, Error> {
        Err(not_remotely(self, "angle_unit"))
    }
}
