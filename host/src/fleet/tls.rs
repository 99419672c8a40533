//! TLS from PEM files, for `calcplug serve` and the hosts that call it: rustls with aws-lc-rs,
//! TLS 1.2 and 1.3, HTTP/2 by ALPN.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::RootCertStore;

use super::ServerTls;
use crate::remote::grpc_mtls_provider as provider;
use crate::Error;

/// A host's TLS settings for a fleet endpoint: the CA the servers' certificates chain to, and
/// for mutual TLS the host's own certificate and key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientTls {
    /// PEM file of the CA certificates that sign the servers' certificates.
    pub ca: PathBuf,
    /// PEM files of the host's certificate chain and private key, when the servers ask for one.
    pub identity: Option<(PathBuf, PathBuf)>,
    /// The name the servers' certificates must be for; the endpoint's host when `None`.
    pub server_name: Option<String>,
}

fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, Error> {
    let certificates = CertificateDer::pem_file_iter(path)
        .and_then(Iterator::collect::<Result<Vec<_>, _>>)
        .map_err(|err| Error::Tls { reason: format!("cannot read certificates: {err}") })
        .map_err(|err| err.with_path(path.to_owned()))?;
    if certificates.is_empty() {
        return Err(Error::Tls { reason: "no PEM certificate in the file".to_owned() }
            .with_path(path.to_owned()));
    }
    Ok(certificates)
}

fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>, Error> {
    PrivateKeyDer::from_pem_file(path).map_err(|err| {
        Error::Tls { reason: format!("cannot read a PEM private key: {err}") }
            .with_path(path.to_owned())
    })
}

fn roots(path: &Path) -> Result<Arc<RootCertStore>, Error> {
    let mut roots = RootCertStore::empty();
    for certificate in certificates(path)? {
        roots.add(certificate).map_err(|err| {
            Error::Tls { reason: format!("not a usable CA certificate: {err}") }
                .with_path(path.to_owned())
        })?;
    }
    Ok(Arc::new(roots))
}

/// The server's configuration: its certificate and key, and with a client CA, a verifier that
/// refuses clients without a certificate that CA signed.
pub(crate) fn server_config(files: &ServerTls) -> Result<Arc<rustls::ServerConfig>, Error> {
    let chain = certificates(&files.cert)?;
    let key = private_key(&files.key)?;
    let provider = provider();
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|err| Error::Tls { reason: err.to_string() })?;
    let builder = match &files.client_ca {
        Some(ca) => {
            let verifier =
                rustls::server::WebPkiClientVerifier::builder_with_provider(roots(ca)?, provider)
                    .build()
                    .map_err(|err| {
                        Error::Tls { reason: format!("cannot verify clients with it: {err}") }
                            .with_path(ca.clone())
                    })?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_single_cert(chain, key).map_err(|err| {
        Error::Tls { reason: format!("the key does not fit the certificate: {err}") }
            .with_path(files.key.clone())
    })?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// A host's configuration for servers whose certificates `tls.ca` signed.
pub(crate) fn client_config(tls: &ClientTls) -> Result<Arc<rustls::ClientConfig>, Error> {
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|err| Error::Tls { reason: err.to_string() })?
        .with_root_certificates(roots(&tls.ca)?);
    let mut config = match &tls.identity {
        Some((cert, key)) => builder
            .with_client_auth_cert(certificates(cert)?, private_key(key)?)
            .map_err(|err| {
                Error::Tls { reason: format!("the key does not fit the certificate: {err}") }
                    .with_path(key.clone())
            })?,
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}
