//! Calling a plugin executable over go-plugin's gRPC protocol.
//!
//! Like the runner's socket transport, a [`GrpcLink`] keeps a pool of connections, and a call
//! takes one for itself. Each connection carries its own single-threaded `tokio` runtime, which
//! the calling thread drives for the length of the call: the request is written and the answer
//! read on the caller's own thread, with no hop to a runtime thread and back.

use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use interface::{Op, OpCode};
use parking_lot::Mutex;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::service::Interceptor;
use tonic::transport::{Channel, Endpoint, Uri};

use super::handshake::Address;
use super::pb::calculator_client::CalculatorClient;
use super::{error_from_pb, go_plugin, pb, HEALTH_SERVICE};
use crate::remote::io::Io;
use crate::remote::process::Transport;
use crate::remote::wire::{Request, Response, WireMetadata, WireStatus};

/// The `calcplug.v1` client, each request naming its plugin when it goes to a fleet server.
pub(crate) type Client = CalculatorClient<InterceptedService<Channel, Naming>>;

/// Adds the plugin's name to every request for a fleet server (`calcplug serve`; nothing for a
/// plugin process, which serves one plugin) and the call's deadline as `grpc-timeout`.
#[derive(Debug, Clone, Default)]
pub(crate) struct Naming {
    /// The plugin's name, for a fleet server.
    pub(crate) name: Option<MetadataValue<Ascii>>,
    /// The call's deadline.
    pub(crate) timeout: Option<Duration>,
}

impl Interceptor for Naming {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(name) = &self.name {
            request.metadata_mut().insert(crate::fleet::PLUGIN_METADATA, name.clone());
        }
        if let Some(timeout) = self.timeout {
            request.set_timeout(timeout);
        }
        super::trace_context::inject(request.metadata_mut());
        Ok(request)
    }
}

/// Where a [`GrpcLink`] connects and as what.
#[derive(Debug, Clone)]
pub(crate) struct Peer {
    pub(crate) address: Address,
    /// The TLS configuration: a plugin's automatic mutual TLS, or a fleet endpoint's.
    pub(crate) tls: Option<Arc<rustls::ClientConfig>>,
    /// The name the server's certificate must be for.
    pub(crate) server_name: String,
    /// The `grpc.health.v1` service asked at connection: `plugin` for go-plugin, the plugin's
    /// name for a fleet server.
    pub(crate) health_service: String,
    pub(crate) naming: Naming,
    /// Whether to wait, after a TLS handshake, for the server's first bytes (its HTTP/2
    /// settings) before using the connection: a server that refuses the host's certificate
    /// does so after the handshake (TLS 1.3), and only a read shows its alert (`UnknownCA`,
    /// `CertificateRequired`); a write first would only see a broken pipe.
    pub(crate) await_preface: bool,
}

/// The connections to one plugin process.
#[derive(Debug)]
pub(crate) struct GrpcLink {
    peer: Peer,
    io: Io,
    pool: Mutex<Vec<Connection>>,
    /// The interface version of the last metadata answer, for [`GrpcLink::interface`].
    interface_version: Mutex<Option<String>>,
}

/// One HTTP/2 connection, driven by the library's I/O runtime.
struct Connection {
    channel: Channel,
    calculator: Client,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection").finish_non_exhaustive()
    }
}

impl GrpcLink {
    /// Connects to the plugin at `address` (go-plugin's way: `localhost` in its certificate,
    /// health asked for `plugin`) and asks its health service whether it serves.
    pub(in crate::remote) fn connect(
        address: Address,
        tls: Option<Arc<rustls::ClientConfig>>,
        timeout: Duration,
    ) -> Result<Self, String> {
        GrpcLink::connect_to(
            Peer {
                address,
                tls,
                server_name: super::mtls::SERVER_NAME.to_owned(),
                health_service: HEALTH_SERVICE.to_owned(),
                naming: Naming::default(),
                await_preface: false,
            },
            timeout,
        )
    }

    /// Connects to `peer` and asks its health service whether it serves.
    pub(crate) fn connect_to(peer: Peer, timeout: Duration) -> Result<Self, String> {
        let io = Io::shared()?;
        let link = GrpcLink {
            peer,
            io,
            pool: Mutex::new(Vec::new()),
            interface_version: Mutex::new(None),
        };
        let connection = link.open().map_err(|err| format!("cannot connect: {err}"))?;
        let channel = connection.channel.clone();
        let service = link.peer.health_service.clone();
        let health = link.io.block_on(async move {
            let mut client = tonic_health::pb::health_client::HealthClient::new(channel);
            let request = tonic_health::pb::HealthCheckRequest { service };
            tokio::time::timeout(timeout, client.check(request)).await
        });
        let service = &link.peer.health_service;
        match health {
            Ok(Ok(answer)) if answer.get_ref().status == 1 => {}
            Ok(Ok(answer)) => {
                return Err(format!(
                    "its health service says `{service}` is not serving (status {})",
                    answer.get_ref().status
                ))
            }
            Ok(Err(status)) if status.code() == tonic::Code::NotFound => {
                return Err(format!(
                    "it serves no `{service}` (its health service does not know it)"
                ))
            }
            Ok(Err(status)) => {
                return Err(format!("its health service did not answer: {}", with_causes(&status)))
            }
            Err(_) => return Err(format!("its health service did not answer within {timeout:?}")),
        }
        link.pool.lock().push(connection);
        Ok(link)
    }

    /// Whether the peer's health service reports `service` as `SERVING`.
    pub(crate) fn serving(&self, service: &str, timeout: Duration) -> Result<bool, String> {
        let pooled = self.pool.lock().pop();
        let connection = match pooled {
            Some(connection) => connection,
            None => self.open()?,
        };
        let channel = connection.channel.clone();
        let request = tonic_health::pb::HealthCheckRequest { service: service.to_owned() };
        let answer = self.io.block_on(async move {
            let mut client = tonic_health::pb::health_client::HealthClient::new(channel);
            tokio::time::timeout(timeout, client.check(request)).await
        });
        match answer {
            Ok(Ok(reply)) => {
                self.pool.lock().push(connection);
                Ok(reply.get_ref().status == 1)
            }
            Ok(Err(status)) if status.code() == tonic::Code::NotFound => {
                self.pool.lock().push(connection);
                Ok(false)
            }
            Ok(Err(status)) => Err(with_causes(&status)),
            Err(_) => Err(format!("no answer within {timeout:?}")),
        }
    }

    /// The interface version the plugin implements and the extension groups that gives it:
    /// what its metadata says, or for a plugin that leaves it empty, 1.1.0 when it lists a
    /// scientific operation and 1.0.0 otherwise.
    pub(in crate::remote) fn interface(
        &self,
        timeout: Duration,
    ) -> Result<(String, Vec<String>), String> {
        let metadata = match self.roundtrip(&Request::Metadata, timeout) {
            Ok(Response::Metadata(metadata)) => metadata,
            Ok(Response::Error { message, .. }) => return Err(format!("GetMetadata: {message}")),
            Ok(other) => return Err(format!("unexpected answer to GetMetadata: {other:?}")),
            Err(err) => return Err(format!("GetMetadata failed: {err:?}")),
        };
        let scientific =
            Op::SCIENTIFIC.iter().any(|op| metadata.operations.iter().any(|o| o == op.name()));
        let version = match self.interface_version.lock().take() {
            Some(version) if !version.is_empty() => version,
            _ if scientific => "1.1.0".to_owned(),
            _ => "1.0.0".to_owned(),
        };
        let minor = semver::Version::parse(&version).map_or(0, |v| v.minor);
        let extensions = if minor >= 1 {
            vec![crate::Extension::Scientific.name().to_owned()]
        } else {
            Vec::new()
        };
        Ok((version, extensions))
    }

    fn open(&self) -> Result<Connection, String> {
        let channel = self.io.block_on(connect_channel(&self.peer))?;
        // go-plugin hosts lift gRPC's 4 MiB message limit too: batches are large.
        let calculator =
            CalculatorClient::with_interceptor(channel.clone(), self.peer.naming.clone())
                .max_decoding_message_size(usize::MAX)
                .max_encoding_message_size(usize::MAX);
        Ok(Connection { channel, calculator })
    }

    /// Drops the idle connections (the process is gone or going).
    pub(in crate::remote) fn clear(&self) {
        self.pool.lock().clear();
    }

    /// One request and its answer, within `timeout`.
    pub(crate) fn roundtrip(
        &self,
        request: &Request,
        timeout: Duration,
    ) -> Result<Response, Transport> {
        let pooled = self.pool.lock().pop();
        let mut connection = match pooled {
            Some(connection) => connection,
            None => self.open().map_err(|_| Transport::Closed)?,
        };
        let calculator = &mut connection.calculator;
        let interface_version = &self.interface_version;
        let answer = self.io.block_on(async {
            tokio::time::timeout(timeout, exchange(calculator, request, interface_version)).await
        });
        let response = match answer {
            Ok(result) => result?,
            Err(_) => return Err(Transport::Timeout),
        };
        self.pool.lock().push(connection);
        Ok(response)
    }

    /// Asks the plugin process to exit (go-plugin's controller), waiting at most `timeout`.
    pub(in crate::remote) fn shutdown(&self, timeout: Duration) {
        let Some(connection) = self.pool.lock().pop() else { return };
        let channel = connection.channel.clone();
        let _ = self.io.block_on(async move {
            let mut controller =
                go_plugin::grpc_controller_client::GrpcControllerClient::new(channel);
            tokio::time::timeout(timeout, controller.shutdown(go_plugin::Empty {})).await
        });
    }
}

async fn connect_channel(peer: &Peer) -> Result<Channel, String> {
    let (address, tls) = (&peer.address, peer.tls.clone());
    let peer_preface = peer.await_preface;
    let server_name = rustls::pki_types::ServerName::try_from(peer.server_name.clone())
        .map_err(|err| format!("`{}` is not a TLS server name: {err}", peer.server_name))?;
    let shown = match address {
        Address::Unix(path) => path.display().to_string(),
        Address::Tcp(addr) => addr.to_string(),
    };
    let address = address.clone();
    // The URI is not used: the connector dials the address itself.
    Endpoint::from_static("http://plugin.invalid")
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let (address, tls, name) = (address.clone(), tls.clone(), server_name.clone());
            let preface = peer_preface;
            async move {
                let stream: Box<dyn Stream> = match &address {
                    Address::Unix(path) => Box::new(tokio::net::UnixStream::connect(path).await?),
                    Address::Tcp(addr) => {
                        let stream = tokio::net::TcpStream::connect(addr).await?;
                        stream.set_nodelay(true)?;
                        Box::new(stream)
                    }
                };
                let stream: Box<dyn Stream> = match tls {
                    None => stream,
                    Some(config) => {
                        let stream =
                            tokio_rustls::TlsConnector::from(config).connect(name, stream).await?;
                        if preface {
                            Box::new(Prefetched::first_read(stream).await?)
                        } else {
                            Box::new(stream)
                        }
                    }
                };
                Ok::<_, std::io::Error>(TokioIo::new(stream))
            }
        }))
        .await
        .map_err(|err| {
            let cause =
                std::error::Error::source(&err).map_or_else(String::new, |c| format!(": {c}"));
            format!("{shown}: {err}{cause}")
        })
}

/// Why the TLS server at `authority` (`HOST:PORT`) refuses a client with `config`, told the way
/// [`Peer::await_preface`] tells it: the handshake, then the server's first bytes, which are its
/// alert when it refused the client's certificate. `None` when it cannot be reached at all or
/// accepts the client.
pub(crate) async fn tls_refusal(
    authority: &str,
    config: std::sync::Arc<rustls::ClientConfig>,
    name: &str,
) -> Option<String> {
    let name = rustls::pki_types::ServerName::try_from(name.to_owned()).ok()?;
    let stream = tokio::net::TcpStream::connect(authority).await.ok()?;
    match tokio_rustls::TlsConnector::from(config).connect(name, stream).await {
        Ok(stream) => Prefetched::first_read(stream).await.err().map(|err| err.to_string()),
        Err(err) => Some(err.to_string()),
    }
}

/// A TLS connection whose first bytes from the server were read at connection time (see
/// [`Peer::await_preface`]), then handed on before anything else.
struct Prefetched<S> {
    first: Vec<u8>,
    at: usize,
    inner: S,
}

impl<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin> Prefetched<S> {
    /// Waits for the server's first bytes; its alert, if it refused the handshake, is the error.
    async fn first_read(mut inner: S) -> std::io::Result<Self> {
        use tokio::io::AsyncReadExt;
        let mut first = vec![0; 16 * 1024];
        let n = tokio::time::timeout(Duration::from_secs(10), inner.read(&mut first))
            .await
            .map_err(|_| {
                std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "the server sent nothing after the TLS handshake within 10 s",
                )
            })??;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::ConnectionAborted,
                "the server closed the connection right after the TLS handshake",
            ));
        }
        first.truncate(n);
        Ok(Prefetched { first, at: 0, inner })
    }
}

impl<S: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Prefetched<S> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let this = &mut *self;
        if this.at < this.first.len() {
            let n = buf.remaining().min(this.first.len() - this.at);
            buf.put_slice(&this.first[this.at..this.at + n]);
            this.at += n;
            if this.at == this.first.len() {
                this.first = Vec::new();
                this.at = 0;
            }
            return std::task::Poll::Ready(Ok(()));
        }
        std::pin::Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<S: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Prefetched<S> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// A status's message followed by its chain of causes (a refused TLS handshake is only
/// "transport error" on its own), each cause once.
pub(crate) fn with_causes(status: &tonic::Status) -> String {
    let mut text = status.message().to_owned();
    let mut cause = std::error::Error::source(status);
    while let Some(err) = cause {
        let shown = err.to_string();
        if !text.contains(&shown) {
            text.push_str(": ");
            text.push_str(&shown);
        }
        cause = err.source();
    }
    text
}

/// A connection to the plugin, plain or TLS.
trait Stream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static {}

impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static> Stream for T {}

/// Does one request over `calculator`: the wire request as the `calcplug.v1` call it means.
pub(crate) async fn exchange(
    calculator: &mut Client,
    request: &Request,
    interface_version: &Mutex<Option<String>>,
) -> Result<Response, Transport> {
    let outcome = |error| match error_from_pb(error) {
        None => Response::Done,
        Some((code, message)) => Response::Error { code: code.as_u8(), message },
    };
    Ok(match request {
        // The socket transport's greeting; a gRPC plugin greets through its handshake line.
        Request::Hello { .. } => {
            return Err(Transport::Malformed("no Hello over gRPC".to_owned()));
        }
        Request::AttachLane { .. } => {
            return Err(Transport::Malformed("no shared-memory lane over gRPC".to_owned()));
        }
        Request::Metadata => {
            let m = match calculator.get_metadata(pb::Empty {}).await {
                Ok(answer) => answer.into_inner(),
                Err(err) => return failed(err, "metadata"),
            };
            *interface_version.lock() = Some(m.interface_version.clone());
            Response::Metadata(WireMetadata {
                name: m.name,
                version: m.version,
                description: m.description,
                operations: m.operations,
                config: m
                    .config
                    .into_iter()
                    .map(|key| (key.key, key.default_value, key.description))
                    .collect(),
            })
        }
        Request::Initialize(entries) => {
            let config = entries.iter().cloned().collect();
            match calculator.initialize(pb::InitializeRequest { config }).await {
                Ok(answer) => outcome(answer.into_inner().error),
                Err(err) => return failed(err, "initialize"),
            }
        }
        Request::Shutdown => match calculator.shutdown(pb::Empty {}).await {
            Ok(answer) => outcome(answer.into_inner().error),
            Err(err) => return failed(err, "shutdown"),
        },
        Request::Status => {
            let s = match calculator.get_status(pb::Empty {}).await {
                Ok(answer) => answer.into_inner(),
                Err(err) => return failed(err, "status"),
            };
            Response::Status(WireStatus {
                state: super::state_from_pb(s.state) as u8,
                message: s.message,
                started_at_unix_nanos: u64::try_from(s.started_at_unix_nanos)
                    .ok()
                    .filter(|nanos| *nanos > 0),
                uptime_nanos: s.uptime_nanos,
                request_count: s.request_count,
                average_latency_nanos: Some(s.average_latency_nanos).filter(|nanos| *nanos > 0),
            })
        }
        Request::Call { op, a, b } => {
            let Some(op) = OpCode::from_u8(*op).op() else {
                return Ok(Response::Error {
                    code: interface::ErrorCode::Unsupported.as_u8(),
                    message: format!("unknown operation code {op}"),
                });
            };
            let answer = call(calculator, op, pb::Operands { a: *a, b: *b }).await;
            match answer {
                Ok(result) => {
                    let result = result.into_inner();
                    match error_from_pb(result.error) {
                        None => Response::Value(result.value),
                        Some((code, message)) => Response::Error { code: code.as_u8(), message },
                    }
                }
                Err(err) => return failed(err, op.name()),
            }
        }
        Request::Batch(items) => {
            let items = items.iter().map(|&(op, a, b)| pb::BatchItem { op: op.into(), a, b });
            let request = pb::BatchRequest { items: items.collect() };
            match calculator.process_batch(request).await {
                Ok(answer) => Response::Batch(
                    answer
                        .into_inner()
                        .results
                        .into_iter()
                        .map(|item| {
                            let code = u8::try_from(item.code).unwrap_or(u8::MAX);
                            (code, item.value)
                        })
                        .collect(),
                ),
                Err(err) => return failed(err, "process_batch"),
            }
        }
        Request::SetAngleUnit(unit) => {
            let request = pb::AngleUnitMessage { unit: i32::from(*unit), error: None };
            match calculator.set_angle_unit(request).await {
                Ok(answer) => outcome(answer.into_inner().error),
                Err(err) => return failed(err, "set_angle_unit"),
            }
        }
        Request::AngleUnit => match calculator.get_angle_unit(pb::Empty {}).await {
            Ok(answer) => {
                let answer = answer.into_inner();
                match error_from_pb(answer.error) {
                    None => Response::AngleUnit(u8::try_from(answer.unit).unwrap_or(u8::MAX)),
                    Some((code, message)) => Response::Error { code: code.as_u8(), message },
                }
            }
            Err(err) => return failed(err, "angle_unit"),
        },
    })
}

/// The `calcplug.v1` call of each operation, from the table of operations.
macro_rules! call_by_op {
    ($( [$kind:ident $variant:ident $method:ident $code:literal ($($arg:ident: $ty:ident),*) $doc:literal $minor:literal] )*) => {
        async fn call(
            calculator: &mut Client,
            op: Op,
            operands: pb::Operands,
        ) -> Result<tonic::Response<pb::Result>, tonic::Status> {
            match op {
                $(Op::$variant => calculator.$method(operands).await,)*
                _ => Err(tonic::Status::unimplemented(format!("this host has no call for `{op}`"))),
            }
        }
    };
}

interface::calculator_ops!(flat call_by_op);

/// What a call that ended in a gRPC status means.
///
/// `UNIMPLEMENTED` is a plugin built against an older `calcplug.v1` that does not have the call:
/// the operation is unsupported. A broken or refused connection, a deadline or a cancellation is
/// the transport failing (the process is gone or stuck), which the supervisor handles. Any other
/// status is the plugin failing the call (a Python exception is `UNKNOWN`, say): an `Internal`
/// error, and the plugin keeps serving.
fn failed(err: tonic::Status, op: &str) -> Result<Response, Transport> {
    let error = |code: interface::ErrorCode, message: String| {
        Ok(Response::Error { code: code.as_u8(), message })
    };
    match err.code() {
        tonic::Code::Unimplemented => error(
            interface::ErrorCode::Unsupported,
            format!("the plugin does not implement `{op}` (gRPC UNIMPLEMENTED)"),
        ),
        tonic::Code::DeadlineExceeded => Err(Transport::Timeout),
        tonic::Code::Unavailable | tonic::Code::Cancelled => Err(Transport::Closed),
        // A status made here from a broken connection carries the I/O or HTTP/2 error as its
        // source; one the plugin sent has none.
        _ if std::error::Error::source(&err).is_some() => Err(Transport::Closed),
        code => error(
            interface::ErrorCode::Internal,
            format!("gRPC status {code:?}: {}", err.message()),
        ),
    }
}
