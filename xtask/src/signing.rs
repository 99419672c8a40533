//! Keys, signatures and SHA-256 manifests for the host's integrity checks (`[security]`).
//!
//! Formats, shared with `host::security`: a secret key file holds the 32-byte ed25519 seed as
//! 64 hex digits; a public key file holds the public key as 64 hex digits (the value for
//! `trusted_keys`); a signature is `<library>.sig` holding the 64-byte signature of the
//! library's bytes as 128 hex digits; a manifest is `sha256sum` output (`<hex>  <file name>`).

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use ed25519_dalek::Signer;
pub use ed25519_dalek::SigningKey;
use sha2::{Digest, Sha256};

/// A newly generated key pair's files.
#[derive(Debug)]
pub struct KeyFiles {
    /// The secret key (mode 0600).
    pub secret: PathBuf,
    /// The public key, to list in `[security] trusted_keys`.
    pub public: PathBuf,
    /// The public key as hex.
    pub public_hex: String,
}

/// Generates an ed25519 key pair into `dir` as `<name>.key` and `<name>.pub`, refusing to
/// overwrite an existing key.
///
/// # Errors
///
/// If the files exist or cannot be written, or the system has no randomness.
pub fn keygen(dir: &Path, name: &str) -> anyhow::Result<KeyFiles> {
    fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let secret = dir.join(format!("{name}.key"));
    let public = dir.join(format!("{name}.pub"));
    for path in [&secret, &public] {
        if path.exists() {
            bail!("{} already exists; remove it first to make a new key", path.display());
        }
    }
    let mut seed = [0u8; 32];
    getrandom::getrandom(&mut seed)
        .map_err(|err| anyhow::anyhow!("cannot get random bytes for the key: {err}"))?;
    let key = SigningKey::from_bytes(&seed);
    write_private(&secret, &format!("{}\n", hex::encode(seed)))?;
    let public_hex = hex::encode(key.verifying_key().as_bytes());
    fs::write(&public, format!("{public_hex}\n"))
        .with_context(|| format!("cannot write {}", public.display()))?;
    Ok(KeyFiles { secret, public, public_hex })
}

/// Reads a secret key file written by [`keygen`].
///
/// # Errors
///
/// If it cannot be read or is not 64 hex digits.
pub fn read_secret_key(path: &Path) -> anyhow::Result<SigningKey> {
    let text =
        fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut seed = [0u8; 32];
    hex::decode_to_slice(text.trim(), &mut seed)
        .with_context(|| format!("{}: a secret key is 64 hex digits", path.display()))?;
    Ok(SigningKey::from_bytes(&seed))
}

/// Signs `library` with `key`, writing `<library>.sig`; returns its path.
///
/// # Errors
///
/// If the library cannot be read or the signature written.
pub fn sign(key: &SigningKey, library: &Path) -> anyhow::Result<PathBuf> {
    let bytes = fs::read(library).with_context(|| format!("cannot read {}", library.display()))?;
    let signature = key.sign(&bytes);
    let mut sig = library.as_os_str().to_owned();
    sig.push(".sig");
    let sig = PathBuf::from(sig);
    fs::write(&sig, format!("{}\n", hex::encode(signature.to_bytes())))
        .with_context(|| format!("cannot write {}", sig.display()))?;
    Ok(sig)
}

/// The `sha256sum`-format manifest of `libraries` (file names only), sorted by name.
///
/// # Errors
///
/// If a library cannot be read.
pub fn manifest(libraries: &[PathBuf]) -> anyhow::Result<String> {
    let mut lines = Vec::new();
    for library in libraries {
        let bytes =
            fs::read(library).with_context(|| format!("cannot read {}", library.display()))?;
        let name = library
            .file_name()
            .with_context(|| format!("{} has no file name", library.display()))?
            .to_string_lossy()
            .into_owned();
        lines.push(format!("{}  {name}", hex::encode(Sha256::digest(&bytes))));
    }
    lines.sort_by(|a, b| a[66..].cmp(&b[66..]));
    Ok(lines.iter().map(|line| format!("{line}\n")).collect())
}

#[cfg(unix)]
fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    file.write_all(text.as_bytes()).with_context(|| format!("cannot write {}", path.display()))
}

#[cfg(not(unix))]
fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keygen_sign_and_manifest_round_trip() {
        let dir = std::env::temp_dir().join(format!("xtask-signing-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let keys = keygen(&dir, "test").unwrap();
        assert!(keygen(&dir, "test").is_err(), "never overwrite a key");
        let key = read_secret_key(&keys.secret).unwrap();
        assert_eq!(hex::encode(key.verifying_key().as_bytes()), keys.public_hex);
        let library = dir.join("libx.so");
        fs::write(&library, b"bytes").unwrap();
        let sig = sign(&key, &library).unwrap();
        assert_eq!(fs::read_to_string(&sig).unwrap().trim().len(), 128);
        let manifest = manifest(&[library]).unwrap();
        assert_eq!(
            manifest,
            "a0e6e5aa8ab1f6a6c6e7b6a3f5a8fe1ba6c76e2d2d85ab1e1f4dbfe0e4cc4e3c  libx.so\n".replace(
                "a0e6e5aa8ab1f6a6c6e7b6a3f5a8fe1ba6c76e2d2d85ab1e1f4dbfe0e4cc4e3c",
                &hex::encode(Sha256::digest(b"bytes"))
            )
        );
        fs::remove_dir_all(&dir).unwrap();
    }
}
