//! [`Endpoint`]: one plugin of a `calcplug serve` instance, called over gRPC on TCP.

use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Duration;

use interface::{ErrorCode, Op, Status};

use super::grpc::client::{GrpcLink, Naming, Peer};
use super::grpc::handshake::Address;
use super::process::Transport;
use super::wire::{Request, Response};
use crate::fleet::ClientTls;
use crate::Error;

/// A plugin served by a `calcplug serve` instance ([`crate::fleet::Server`]), called with the
/// answers and errors a local call would give.
///
/// The address is `https://HOST:PORT` (TLS: `tls` names the CA, and for mutual TLS the host's
/// certificate) or `http://HOST:PORT` (plaintext, only when the server was started with
/// `--insecure`).
#[derive(Debug)]
pub struct Endpoint {
    link: GrpcLink,
    url: String,
    plugin: String,
    timeout: Duration,
}

impl Endpoint {
    /// Connects to `url` and checks, with its health service, that it serves `plugin`.
    ///
    /// # Errors
    ///
    /// [`Error::Fleet`] naming the endpoint for a URL that does not parse or resolve, a
    /// connection or TLS handshake that fails (the reason says which), or a server that does not
    /// serve `plugin`; [`Error::Tls`] naming the file for unusable TLS material.
    pub fn connect(
        url: &str,
        plugin: &str,
        tls: Option<&ClientTls>,
        timeout: Duration,
    ) -> Result<Endpoint, Error> {
        let fleet = |reason: String| Error::Fleet { peer: url.to_owned(), reason };
        let Some(Url { secure, authority, host }) = split_url(url) else {
            return Err(fleet("the address must start with https:// or http://".to_owned()));
        };
        let address: SocketAddr = authority
            .to_socket_addrs()
            .map_err(|err| fleet(format!("cannot resolve: {err}")))?
            .next()
            .ok_or_else(|| fleet("the name resolves to no address".to_owned()))?;
        let server_name =
            tls.and_then(|tls| tls.server_name.clone()).unwrap_or_else(|| host.to_owned());
        let tls = match (secure, tls) {
            (true, Some(tls)) => Some(crate::fleet::tls_client_config(tls)?),
            (true, None) => {
                return Err(fleet(
                    "an https:// endpoint needs TLS settings (the CA at least)".into(),
                ))
            }
            (false, _) => None,
        };
        let naming = tonic::metadata::MetadataValue::try_from(plugin)
            .map_err(|err| fleet(format!("`{plugin}` cannot be sent as a plugin name: {err}")))?;
        let peer = Peer {
            address: Address::Tcp(address),
            tls,
            server_name,
            health_service: plugin.to_owned(),
            naming: Naming { name: Some(naming), timeout: Some(timeout) },
            await_preface: true,
        };
        let link =
            GrpcLink::connect_to(peer, timeout).map_err(|err| fleet(explain(err, secure)))?;
        Ok(Endpoint { link, url: url.to_owned(), plugin: plugin.to_owned(), timeout })
    }

    /// The plugin's name.
    pub fn plugin(&self) -> &str {
        &self.plugin
    }

    /// The address, as given.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Whether the server reports the plugin `SERVING` now (`grpc.health.v1`); `false` for
    /// any other status, a drain included.
    ///
    /// # Errors
    ///
    /// [`Error::Fleet`] when the server does not answer.
    pub fn serving(&self) -> Result<bool, Error> {
        self.link.serving(&self.plugin, self.timeout).map_err(|reason| Error::Fleet {
            peer: self.url.clone(),
            reason: format!("health: {reason}"),
        })
    }

    /// `op(a, b)` on the served plugin.
    ///
    /// # Errors
    ///
    /// The plugin's [`Error::Call`]; [`Error::Fleet`] when the endpoint fails (no connection,
    /// no answer within the timeout, a broken answer).
    pub fn call(&self, op: Op, a: f64, b: f64) -> Result<f64, Error> {
        match self.roundtrip(op.name(), &Request::Call { op: op.code().as_u8(), a, b })? {
            Response::Value(value) => Ok(value),
            Response::Error { code, message } => Err(self.call_error(op.name(), code, message)),
            other => Err(self.unexpected(op.name(), &other)),
        }
    }

    /// The served plugin's own status.
    ///
    /// # Errors
    ///
    /// As [`Endpoint::call`].
    pub fn status(&self) -> Result<Status, Error> {
        match self.roundtrip("status", &Request::Status)? {
            Response::Status(raw) => Ok(raw.into_status()),
            Response::Error { code, message } => Err(self.call_error("status", code, message)),
            other => Err(self.unexpected("status", &other)),
        }
    }

    fn roundtrip(&self, op: &str, request: &Request) -> Result<Response, Error> {
        let span = super::grpc::trace_context::client_span(&self.plugin, op, &self.url);
        let _entered = span.enter();
        self.link.roundtrip(request, self.timeout).map_err(|err| Error::Fleet {
            peer: self.url.clone(),
            reason: match err {
                Transport::Closed => format!("{op}: the connection failed or was refused"),
                Transport::Timeout => format!("{op}: no answer within {:?}", self.timeout),
                Transport::Malformed(reason) => format!("{op}: a broken answer: {reason}"),
            },
        })
    }

    #[cold]
    fn call_error(&self, op: &'static str, code: u8, message: String) -> Error {
        let code = ErrorCode::from_u8(code).unwrap_or(ErrorCode::Internal);
        Error::Call { plugin: self.plugin.clone(), op, code, message }
    }

    #[cold]
    fn unexpected(&self, op: &str, response: &Response) -> Error {
        Error::Fleet {
            peer: self.url.clone(),
            reason: format!("unexpected answer to {op}: {response:?}"),
        }
    }
}

/// The parts of an instance's URL, `https://HOST:PORT` or `http://HOST:PORT`.
pub(super) struct Url<'a> {
    /// `https://`.
    pub(super) secure: bool,
    /// `HOST:PORT`.
    pub(super) authority: &'a str,
    /// `HOST`, without the brackets of an IPv6 address.
    pub(super) host: &'a str,
}

/// `url`'s parts; `None` for a scheme other than `https://` and `http://`.
pub(super) fn split_url(url: &str) -> Option<Url<'_>> {
    let (secure, rest) = match url.strip_prefix("https://") {
        Some(rest) => (true, rest),
        None => (false, url.strip_prefix("http://")?),
    };
    let authority = rest.trim_end_matches('/');
    let host = authority.rsplit_once(':').map_or(authority, |(host, _)| host);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    Some(Url { secure, authority, host })
}

/// A connection failure, with what the common TLS refusals mean in plain words.
pub(super) fn explain(reason: String, secure: bool) -> String {
    let meaning = if reason.contains("CertificateRequired") {
        "the server requires a client certificate (mutual TLS) and none is configured"
    } else if reason.contains("alert: UnknownCA") || reason.contains("alert: BadCertificate") {
        "the server does not accept this host's certificate (not signed by the CA it trusts)"
    } else if ["UnknownIssuer", "NotValidForName", "not valid for name"]
        .iter()
        .any(|sign| reason.contains(sign))
    {
        "the server's certificate is not signed by the configured CA, or not for this name"
    } else if secure && reason.contains("connection closed") {
        "the server closed the connection during or right after the TLS handshake: does it \
         require a client certificate this host does not send, or one from another CA?"
    } else if !secure
        && ["broken pipe", "reset", "h2 protocol error", "connection closed"]
            .iter()
            .any(|sign| reason.contains(sign))
    {
        "the server closed a plaintext connection: is it a TLS port (https://)?"
    } else {
        return reason;
    };
    format!("{reason} ({meaning})")
}
