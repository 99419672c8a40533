//! `calcplug certs --out DIR [--name NAME]...`: a throwaway CA with a server and a client
//! certificate, to try `calcplug serve` with mutual TLS on one machine (and for the tests). A
//! fleet in production uses its own PKI (cert-manager, Vault, …).

use std::fs;
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};

/// The files written, relative to the output directory.
pub(crate) const FILES: [&str; 5] =
    ["ca.pem", "server.pem", "server.key", "client.pem", "client.key"];

/// `calcplug certs`.
pub(crate) fn certs(out: &Path, names: &[String]) -> anyhow::Result<ExitCode> {
    fs::create_dir_all(out).with_context(|| format!("{}: cannot create", out.display()))?;
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    // A name of its own, so that two throwaway CAs are never taken for each other.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let ca_name = format!("calcplug throwaway CA {:x}-{nanos:x}", std::process::id());
    ca.distinguished_name.push(DnType::CommonName, ca_name);
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate()?)?;

    let names = if names.is_empty() {
        vec!["localhost".to_owned(), "127.0.0.1".to_owned()]
    } else {
        names.to_vec()
    };
    let leaf = |common_name: &str, sans: Vec<String>, purpose: ExtendedKeyUsagePurpose| {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(sans)?;
        params.distinguished_name.push(DnType::CommonName, common_name);
        params.extended_key_usages = vec![purpose];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let cert = params.signed_by(&key, &ca)?;
        Ok::<_, rcgen::Error>((cert.pem(), key.serialize_pem()))
    };
    let (server, server_key) = leaf("calcplug serve", names, ExtendedKeyUsagePurpose::ServerAuth)?;
    let (client, client_key) =
        leaf("calcplug host", Vec::new(), ExtendedKeyUsagePurpose::ClientAuth)?;
    for (file, contents, secret) in [
        ("ca.pem", ca.pem(), false),
        ("server.pem", server, false),
        ("server.key", server_key, true),
        ("client.pem", client, false),
        ("client.key", client_key, true),
    ] {
        let path = out.join(file);
        let mut options = fs::OpenOptions::new();
        options.write(true).create(true).truncate(true).mode(if secret { 0o600 } else { 0o644 });
        options
            .open(&path)
            .and_then(|mut f| f.write_all(contents.as_bytes()))
            .with_context(|| format!("{}: cannot write", path.display()))?;
    }
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "wrote {} into {}", FILES.join(", "), out.display())?;
    Ok(ExitCode::SUCCESS)
}
