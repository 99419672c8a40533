//! go-plugin's automatic mutual TLS (`AutoMTLS`): the host makes a fresh certificate and key,
//! passes the certificate to the plugin in `PLUGIN_CLIENT_CERT` (PEM); the plugin makes its own
//! and returns it in the handshake line's last field (DER, base64 without padding). Each side
//! then accepts exactly the other's certificate, pinned byte for byte, and nothing else; the
//! handshake signatures are checked with the certificate's key as usual.
//!
//! Certificates are self-signed and single-use, so there is no chain to build: a CA-style
//! verifier would refuse go-plugin's own (which are marked as CAs) and gains nothing here.
//! go-plugin's Go side makes ECDSA P-521 keys; `aws-lc-rs` verifies them.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, SignatureScheme};

/// The environment variable that carries the host's certificate to the plugin.
pub(crate) const CLIENT_CERT_ENV: &str = "PLUGIN_CLIENT_CERT";

/// The name both sides' certificates are for, as go-plugin's are.
pub(crate) const SERVER_NAME: &str = "localhost";

/// One side's certificate and key, made for one plugin process.
pub(crate) struct Credentials {
    certificate: CertificateDer<'static>,
    key: PrivateKeyDer<'static>,
    pem: String,
}

impl Credentials {
    /// A fresh self-signed ECDSA P-256 certificate for `localhost`, for both client and server
    /// authentication.
    pub(crate) fn generate() -> Result<Credentials, String> {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .map_err(|err| format!("cannot make a TLS key: {err}"))?;
        let mut params = rcgen::CertificateParams::new(vec![SERVER_NAME.to_owned()])
            .map_err(|err| format!("cannot make a TLS certificate: {err}"))?;
        params.distinguished_name.push(rcgen::DnType::CommonName, SERVER_NAME);
        params.distinguished_name.push(rcgen::DnType::OrganizationName, "calcplug");
        params.extended_key_usages = vec![
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
            rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::DigitalSignature,
            rcgen::KeyUsagePurpose::KeyEncipherment,
            rcgen::KeyUsagePurpose::KeyAgreement,
        ];
        let certificate = params
            .self_signed(&key)
            .map_err(|err| format!("cannot sign the TLS certificate: {err}"))?;
        Ok(Credentials {
            pem: certificate.pem(),
            certificate: certificate.der().clone(),
            key: PrivateKeyDer::try_from(key.serialize_der())
                .map_err(|err| format!("cannot encode the TLS key: {err}"))?,
        })
    }

    /// The certificate, PEM (what `PLUGIN_CLIENT_CERT` carries).
    pub(crate) fn pem(&self) -> &str {
        &self.pem
    }

    /// The certificate, DER (what the handshake line carries).
    pub(crate) fn der(&self) -> &[u8] {
        &self.certificate
    }
}

pub(crate) fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// The host's TLS configuration for a plugin that sent `theirs` (DER) in its handshake.
pub(crate) fn client_config(
    ours: &Credentials,
    theirs: Vec<u8>,
) -> Result<Arc<rustls::ClientConfig>, String> {
    let provider = provider();
    let pinned = Pinned { expected: CertificateDer::from(theirs), provider: provider.clone() };
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|err| err.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(pinned))
        .with_client_auth_cert(vec![ours.certificate.clone()], ours.key.clone_key())
        .map_err(|err| format!("cannot use the TLS certificate: {err}"))?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// The plugin's TLS configuration for a host that sent `theirs_pem` in `PLUGIN_CLIENT_CERT`.
pub(crate) fn server_config(
    ours: &Credentials,
    theirs_pem: &str,
) -> Result<Arc<rustls::ServerConfig>, String> {
    let theirs = CertificateDer::from_pem_slice(theirs_pem.as_bytes())
        .map_err(|err| format!("{CLIENT_CERT_ENV} is not a PEM certificate: {err}"))?;
    let provider = provider();
    let pinned = Pinned { expected: theirs, provider: provider.clone() };
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|err| err.to_string())?
        .with_client_cert_verifier(Arc::new(pinned))
        .with_single_cert(vec![ours.certificate.clone()], ours.key.clone_key())
        .map_err(|err| format!("cannot use the TLS certificate: {err}"))?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// Accepts exactly one certificate: the peer's, received out of band.
#[derive(Debug)]
struct Pinned {
    expected: CertificateDer<'static>,
    provider: Arc<CryptoProvider>,
}

impl Pinned {
    fn check(&self, presented: &CertificateDer<'_>) -> Result<(), rustls::Error> {
        if presented.as_ref() == self.expected.as_ref() {
            Ok(())
        } else {
            Err(rustls::Error::InvalidCertificate(CertificateError::ApplicationVerificationFailure))
        }
    }

    fn tls12(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn tls13(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.check(end_entity).map(|()| ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.tls12(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.tls13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.schemes()
    }
}

impl ClientCertVerifier for Pinned {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.check(end_entity).map(|()| ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.tls12(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.tls13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs a TLS handshake between the two configurations in memory; the first error either
    /// side reports.
    fn handshake(
        client: Arc<rustls::ClientConfig>,
        server: Arc<rustls::ServerConfig>,
    ) -> Result<(), rustls::Error> {
        let name = ServerName::try_from(SERVER_NAME).unwrap();
        let mut client = rustls::ClientConnection::new(client, name)?;
        let mut server = rustls::ServerConnection::new(server)?;
        for _ in 0..10 {
            let mut wire = Vec::new();
            while client.wants_write() {
                client.write_tls(&mut wire).unwrap();
            }
            let mut reader = &wire[..];
            while !reader.is_empty() {
                server.read_tls(&mut reader).unwrap();
                server.process_new_packets()?;
            }
            let mut wire = Vec::new();
            while server.wants_write() {
                server.write_tls(&mut wire).unwrap();
            }
            let mut reader = &wire[..];
            while !reader.is_empty() {
                client.read_tls(&mut reader).unwrap();
                client.process_new_packets()?;
            }
            if !client.is_handshaking() && !server.is_handshaking() {
                return Ok(());
            }
        }
        panic!("the handshake did not finish");
    }

    #[test]
    fn each_side_accepts_exactly_the_certificate_it_was_given() {
        let (host, plugin, stranger) = (
            Credentials::generate().unwrap(),
            Credentials::generate().unwrap(),
            Credentials::generate().unwrap(),
        );
        let server = server_config(&plugin, host.pem()).unwrap();
        // The certificates exchanged through the environment and the handshake line.
        handshake(client_config(&host, plugin.der().to_vec()).unwrap(), server.clone()).unwrap();
        // A server presenting another certificate than the handshake line announced.
        let err = handshake(client_config(&host, stranger.der().to_vec()).unwrap(), server.clone())
            .unwrap_err();
        assert_eq!(
            err,
            rustls::Error::InvalidCertificate(CertificateError::ApplicationVerificationFailure)
        );
        // A client with another certificate than the one in PLUGIN_CLIENT_CERT.
        let err = handshake(client_config(&stranger, plugin.der().to_vec()).unwrap(), server)
            .unwrap_err();
        assert_eq!(
            err,
            rustls::Error::InvalidCertificate(CertificateError::ApplicationVerificationFailure)
        );
    }

    #[test]
    fn only_the_pinned_certificate_is_accepted() {
        let ours = Credentials::generate().unwrap();
        let other = Credentials::generate().unwrap();
        assert!(ours.pem().starts_with("-----BEGIN CERTIFICATE-----"));
        let pinned =
            Pinned { expected: CertificateDer::from(ours.der().to_vec()), provider: provider() };
        assert!(pinned.check(&CertificateDer::from(ours.der().to_vec())).is_ok());
        assert!(pinned.check(&CertificateDer::from(other.der().to_vec())).is_err());
        assert!(server_config(&ours, other.pem()).is_ok());
        assert!(server_config(&ours, "not pem").unwrap_err().contains("PLUGIN_CLIENT_CERT"));
        assert!(client_config(&ours, other.der().to_vec()).is_ok());
    }
}
