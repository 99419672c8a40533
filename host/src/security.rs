//! Knowing what is loaded before it runs: integrity checks (a SHA-256 allowlist, ed25519
//! signatures), file-permission and symlink checks, and probing a library in a child process.
//!
//! In-process plugins run with all of the host's rights, and mapping a library runs its
//! initializers. So under a [`LoadPolicy`] that verifies anything, the host reads the file
//! **once** into memory, checks those bytes, and maps exactly those bytes (from a sealed
//! in-memory file on Linux, a private copy elsewhere): replacing the file after the check
//! cannot change what runs. A library refused under [`Enforcement::Enforce`] is never mapped.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Once;
use std::time::Duration;

use ed25519_dalek::{Signature, Verifier, VerifyingKey};
use sha2::{Digest, Sha256};

use crate::Error;

/// What happens when an integrity check fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Enforcement {
    /// No integrity check (for development; a warning is logged once per process).
    Off,
    /// Checks run; a failure is logged as a warning and the library loads anyway.
    Warn,
    /// Checks run; a failing library is refused and never mapped.
    Enforce,
}

impl Enforcement {
    /// The mode's name in config: `off`, `warn` or `enforce`.
    pub const fn name(self) -> &'static str {
        match self {
            Enforcement::Off => "off",
            Enforcement::Warn => "warn",
            Enforcement::Enforce => "enforce",
        }
    }

    /// The mode named `name`.
    pub fn from_name(name: &str) -> Option<Enforcement> {
        [Enforcement::Off, Enforcement::Warn, Enforcement::Enforce]
            .into_iter()
            .find(|e| e.name() == name)
    }
}

/// A SHA-256 allowlist: library file name → expected digest, in `sha256sum` format
/// (`<64 hex digits>  <file name>` per line), as `cargo xtask manifest` writes it.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Manifest {
    digests: HashMap<String, [u8; 32]>,
}

impl fmt::Debug for Manifest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut names: Vec<_> = self.digests.keys().collect();
        names.sort();
        f.debug_struct("Manifest").field("files", &names).finish()
    }
}

impl Manifest {
    /// Parses a manifest's text; `origin` names it in errors.
    ///
    /// # Errors
    ///
    /// [`Error::Integrity`] naming the line that is not `<sha256 hex>  <file name>`.
    pub fn parse(text: &str, origin: &Path) -> Result<Manifest, Error> {
        let mut digests = HashMap::new();
        for (number, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let bad = |why: &str| {
                Error::Integrity { reason: format!("manifest line {}: {why}", number + 1) }
                    .with_path(origin.to_owned())
            };
            let Some((digest, name)) = line.split_once(char::is_whitespace) else {
                return Err(bad("expected `<sha256 hex>  <file name>`"));
            };
            let name = name.trim_start().trim_start_matches('*');
            let digest =
                decode_hex::<32>(digest).ok_or_else(|| bad("not a 64-digit hex SHA-256"))?;
            if name.is_empty() || name.contains('/') {
                return Err(bad("expected a bare file name"));
            }
            digests.insert(name.to_owned(), digest);
        }
        Ok(Manifest { digests })
    }

    /// Reads and parses the manifest file at `path`.
    ///
    /// # Errors
    ///
    /// [`Error::Io`] if it cannot be read, [`Error::Integrity`] if it does not parse.
    pub fn read(path: &Path) -> Result<Manifest, Error> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| Error::Io { error: source }.with_path(path.to_owned()))?;
        Manifest::parse(&text, path)
    }

    /// The expected digest of the file named `name`.
    pub fn digest(&self, name: &str) -> Option<&[u8; 32]> {
        self.digests.get(name)
    }

    /// How many files it lists.
    pub fn len(&self) -> usize {
        self.digests.len()
    }

    /// Whether it lists no file.
    pub fn is_empty(&self) -> bool {
        self.digests.is_empty()
    }
}

/// An ed25519 public key whose signatures the host trusts.
#[derive(Clone, PartialEq, Eq)]
pub struct TrustedKey(VerifyingKey);

impl fmt::Debug for TrustedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TrustedKey({})", encode_hex(self.0.as_bytes()))
    }
}

impl TrustedKey {
    /// A key from its 64 hex digits (what `cargo xtask keygen` writes to the `.pub` file).
    ///
    /// # Errors
    ///
    /// A message saying what is wrong with the text.
    pub fn from_hex(text: &str) -> Result<TrustedKey, String> {
        let bytes = decode_hex::<32>(text.trim())
            .ok_or_else(|| "an ed25519 public key is 64 hex digits".to_owned())?;
        VerifyingKey::from_bytes(&bytes)
            .map(TrustedKey)
            .map_err(|err| format!("not a valid ed25519 public key: {err}"))
    }

    /// The key as 64 hex digits.
    pub fn to_hex(&self) -> String {
        encode_hex(self.0.as_bytes())
    }
}

/// How to run the probe: the runner binary and how long the library may take.
#[derive(Debug, Clone)]
pub struct ProbeSettings {
    /// The runner binary (`None`: found as for the out-of-process mode).
    pub runner: Option<PathBuf>,
    /// How long the probe may take before the library is declared hung.
    pub timeout: Duration,
}

/// What a library must pass before it is mapped into this process.
#[derive(Debug, Clone)]
pub struct LoadPolicy {
    /// What an integrity failure does.
    pub enforcement: Enforcement,
    /// If set, the library's file name must be listed with the digest of its bytes.
    pub manifest: Option<Manifest>,
    /// If not empty, `<library>.sig` must hold a signature of its bytes by one of these keys.
    pub trusted_keys: Vec<TrustedKey>,
    /// Refuse libraries and directories writable by group or others, or owned by another
    /// non-root user, and symlinks that leave the library's directory.
    pub check_permissions: bool,
    /// If set, load the library in a short-lived child process first; a library that crashes,
    /// hangs or fails the handshake there is refused without ever being mapped here.
    pub probe: Option<ProbeSettings>,
}

impl LoadPolicy {
    /// No integrity check, no permission check, no probe: what [`crate::load`] does.
    pub fn development() -> LoadPolicy {
        LoadPolicy {
            enforcement: Enforcement::Off,
            manifest: None,
            trusted_keys: Vec::new(),
            check_permissions: false,
            probe: None,
        }
    }

    pub(crate) fn verifies(&self) -> bool {
        self.enforcement != Enforcement::Off
            && (self.manifest.is_some() || !self.trusted_keys.is_empty())
    }
}

/// Loads the plugin library at `path` under `policy`.
///
/// # Errors
///
/// Everything [`crate::load`] can return, plus [`Error::Integrity`],
/// [`Error::InsecurePermissions`], [`Error::SymlinkEscape`] and [`Error::ProbeFailed`].
pub fn load_with(path: impl AsRef<Path>, policy: &LoadPolicy) -> Result<crate::Plugin, Error> {
    load_with_policy(path.as_ref(), policy)
}

fn load_with_policy(path: &Path, policy: &LoadPolicy) -> Result<crate::Plugin, Error> {
    let _span = tracing::info_span!("load_with", path = %path.display(), enforcement = policy.enforcement.name()).entered();
    let nothing_to_check = policy.enforcement == Enforcement::Off
        && !policy.check_permissions
        && policy.probe.is_none();
    if nothing_to_check {
        warn_if_off(policy);
        return crate::loader::load_path(path);
    }
    load_from_memory(path, policy)
}

/// Checks `path` under `policy` (everything but the probe) and returns the bytes that passed.
///
/// # Errors
///
/// As [`load_with`], but nothing is loaded.
pub(crate) fn checked_bytes(path: &Path, policy: &LoadPolicy) -> Result<Vec<u8>, Error> {
    if policy.enforcement == Enforcement::Enforce
        && policy.manifest.is_none()
        && policy.trusted_keys.is_empty()
    {
        return Err(Error::Integrity {
            reason: "integrity is `enforce` but no manifest and no trusted key is configured"
                .to_owned(),
        }
        .with_path(path.to_owned()));
    }
    if policy.check_permissions {
        check_permissions(path)?;
    }
    // Read once; everything below works on these bytes, and these bytes are what gets mapped.
    let bytes = std::fs::read(path).map_err(|source| {
        if source.kind() == std::io::ErrorKind::NotFound {
            Error::NotFound.with_path(path.to_owned())
        } else {
            Error::Io { error: source }.with_path(path.to_owned())
        }
    })?;
    if policy.verifies() {
        match verify(path, &bytes, policy) {
            Ok(()) => tracing::info!("integrity verified"),
            Err(err) if policy.enforcement == Enforcement::Warn => {
                tracing::warn!(error = %err, "integrity check failed; loading anyway (integrity = warn)");
            }
            Err(err) => return Err(err),
        }
    } else {
        warn_if_off(policy);
    }
    Ok(bytes)
}

/// Loads `path` under `policy`, always from an in-memory image of the checked bytes: each call
/// maps a new copy (what the plugin manager needs so that a rebuilt library's new code loads),
/// and rewriting the file afterwards cannot affect it.
///
/// # Errors
///
/// As [`load_with`].
pub(crate) fn load_from_memory(path: &Path, policy: &LoadPolicy) -> Result<crate::Plugin, Error> {
    if let Some(probe) = &policy.probe {
        run_probe(path, probe)?;
    }
    let bytes = checked_bytes(path, policy)?;
    crate::loader::load_bytes(path, bytes)
}

fn warn_if_off(policy: &LoadPolicy) {
    if policy.enforcement == Enforcement::Off {
        static WARNED: Once = Once::new();
        WARNED.call_once(|| {
            tracing::warn!("plugin integrity checks are off: any library in the plugin directories will run with this process's rights");
        });
    }
}

/// Checks `bytes` (the content of `path`) against the manifest and the trusted keys.
fn verify(path: &Path, bytes: &[u8], policy: &LoadPolicy) -> Result<(), Error> {
    let fail = |reason: String| Error::Integrity { reason }.with_path(path.to_owned());
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    if let Some(manifest) = &policy.manifest {
        let Some(expected) = manifest.digest(&name) else {
            return Err(fail(format!("`{name}` is not in the SHA-256 allowlist")));
        };
        let actual: [u8; 32] = Sha256::digest(bytes).into();
        if &actual != expected {
            return Err(fail(format!(
                "SHA-256 mismatch: the allowlist says {}, the file is {}",
                encode_hex(expected),
                encode_hex(&actual)
            )));
        }
    }
    if !policy.trusted_keys.is_empty() {
        let sig_path = signature_path(path);
        let text = match std::fs::read_to_string(&sig_path) {
            Ok(text) => text,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                return Err(fail(format!(
                    "unsigned: no signature file {} (sign it with `cargo xtask sign`)",
                    sig_path.display()
                )));
            }
            Err(source) => return Err(Error::Io { error: source }.with_path(sig_path)),
        };
        let signature =
            decode_hex::<64>(text.trim()).map(|bytes| Signature::from_bytes(&bytes)).ok_or_else(
                || fail(format!("{}: not a 128-digit hex ed25519 signature", sig_path.display())),
            )?;
        let trusted = policy.trusted_keys.iter().any(|key| key.0.verify(bytes, &signature).is_ok());
        if !trusted {
            return Err(fail(
                "bad signature: not signed by a trusted key, or modified after signing".to_owned(),
            ));
        }
    }
    Ok(())
}

/// Where the detached signature of `library` lives: `<library>.sig`.
pub fn signature_path(library: &Path) -> PathBuf {
    let mut name = library.as_os_str().to_owned();
    name.push(".sig");
    PathBuf::from(name)
}

/// Refuses a library (or its directory) others could replace, and symlinks that leave the
/// directory.
fn check_permissions(path: &Path) -> Result<(), Error> {
    use std::os::unix::fs::MetadataExt;

    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let link = std::fs::symlink_metadata(path)
        .map_err(|source| Error::Io { error: source }.with_path(path.to_owned()))?;
    if link.file_type().is_symlink() {
        let target = std::fs::canonicalize(path)
            .map_err(|source| Error::Io { error: source }.with_path(path.to_owned()))?;
        let real_dir = std::fs::canonicalize(dir)
            .map_err(|source| Error::Io { error: source }.with_path(dir.to_owned()))?;
        if target.parent() != Some(real_dir.as_path()) {
            return Err(Error::SymlinkEscape { target }.with_path(path.to_owned()));
        }
    }
    let me = rustix::process::geteuid().as_raw();
    for (what, checked) in [("library", path), ("plugin directory", dir)] {
        let meta = std::fs::metadata(checked)
            .map_err(|source| Error::Io { error: source }.with_path(checked.to_owned()))?;
        let mode = meta.mode() & 0o7777;
        if mode & 0o022 != 0 {
            return Err(Error::InsecurePermissions {
                reason: format!(
                    "the {what} is writable by {} (mode {mode:o}); fix: chmod go-w {}",
                    if mode & 0o002 != 0 { "everyone" } else { "its group" },
                    checked.display()
                ),
            }
            .with_path(checked.to_owned()));
        }
        if meta.uid() != me && meta.uid() != 0 {
            return Err(Error::InsecurePermissions {
                reason: format!(
                    "the {what} is owned by another user (uid {}, this process runs as uid {me}); fix: chown {me} {}",
                    meta.uid(),
                    checked.display()
                ),
            }.with_path(checked.to_owned()));
        }
    }
    Ok(())
}

fn run_probe(path: &Path, probe: &ProbeSettings) -> Result<(), Error> {
    let _span = tracing::info_span!("probe").entered();
    let options = crate::remote::RemoteOptions {
        runner: probe.runner.clone(),
        start_timeout: probe.timeout,
        call_timeout: probe.timeout,
        retries: 0,
        ..crate::remote::RemoteOptions::default()
    };
    match crate::remote::RemotePlugin::spawn(path, options) {
        // The runner loaded it, passed the handshake and answered; dropping it ends the probe.
        Ok(probe) => {
            tracing::debug!(plugin = probe.identity().name(), "probe passed");
            Ok(())
        }
        Err(err) => match err.without_path() {
            Error::RunnerFailed { reason } => {
                Err(Error::ProbeFailed { reason: reason.clone() }.with_path(path.to_owned()))
            }
            _ => Err(err),
        },
    }
}

fn decode_hex<const N: usize>(text: &str) -> Option<[u8; N]> {
    let mut out = [0u8; N];
    hex::decode_to_slice(text, &mut out).ok()?;
    Some(out)
}

fn encode_hex(bytes: &[u8]) -> String {
    hex::encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        #[test]
        fn fuzz_manifests_and_keys_never_panic(text in "\\PC{0,300}") {
            let _ = Manifest::parse(&text, Path::new("SHA256SUMS"));
            let _ = TrustedKey::from_hex(&text);
        }

        /// Manifests of well-formed lines (digest, one or two spaces or ` *`, a file name),
        /// comments and blank lines, with at most one broken line: every entry is read back
        /// exactly, or the broken line's number is named.
        #[test]
        fn fuzz_manifest_lines_are_read_back_or_blamed_by_number(
            entries in proptest::collection::btree_map("[a-z]{1,8}\\.so", proptest::prelude::any::<[u8; 32]>(), 0..6),
            separators in proptest::collection::vec("(  | \\*| )", 6),
            broken in proptest::option::of((0usize..8, "[ -~]{0,70}")),
        ) {
            let mut lines: Vec<String> = vec!["# sha256sum output".to_owned(), String::new()];
            for (i, (name, digest)) in entries.iter().enumerate() {
                lines.push(format!("{}{}{name}", encode_hex(digest), separators[i]));
            }
            let mut broken_line = None;
            if let Some((at, text)) = &broken {
                let well_formed = text.split_once(char::is_whitespace).is_some_and(|(d, n)| {
                    let n = n.trim_start().trim_start_matches('*');
                    decode_hex::<32>(d).is_some() && !n.is_empty() && !n.contains('/')
                });
                let at = (*at).min(lines.len());
                if !well_formed && !text.trim().is_empty() && !text.trim().starts_with('#') {
                    broken_line = Some(at + 1);
                    lines.insert(at, text.clone());
                }
            }
            match (Manifest::parse(&lines.join("\n"), Path::new("SHA256SUMS")), broken_line) {
                (Ok(manifest), None) => {
                    proptest::prop_assert_eq!(manifest.len(), entries.len());
                    for (name, digest) in &entries {
                        proptest::prop_assert_eq!(manifest.digest(name), Some(digest));
                    }
                }
                (Err(err), Some(line)) => {
                    let needle = format!("manifest line {line}: ");
                    proptest::prop_assert!(err.to_string().contains(&needle), "{err}");
                }
                (got, expected) => proptest::prop_assert!(false, "{lines:?}: {expected:?} but {got:?}"),
            }
        }
    }

    #[test]
    fn a_manifest_file_is_read_and_an_unreadable_one_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("SHA256SUMS");
        std::fs::write(&path, format!("{}  libbasic.so\n", "cd".repeat(32))).unwrap();
        let manifest = Manifest::read(&path).unwrap();
        assert!(!manifest.is_empty());
        assert_eq!(manifest.digest("libbasic.so"), Some(&[0xcd; 32]));
        assert!(Manifest::parse("# only a comment\n", &path).unwrap().is_empty());
        let missing = dir.path().join("absent");
        let err = Manifest::read(&missing).unwrap_err();
        assert!(matches!(err.without_path(), Error::Io { .. }), "{err:?}");
        assert_eq!(err.path(), Some(missing.as_path()));
    }

    #[test]
    fn manifest_parses_sha256sum_format_and_names_bad_lines() {
        let digest = "ab".repeat(32);
        let text = format!("# comment\n{digest}  libbasic.so\n{digest} *libother.so\n\n");
        let manifest = Manifest::parse(&text, Path::new("SHA256SUMS")).unwrap();
        assert_eq!(manifest.len(), 2);
        assert_eq!(manifest.digest("libbasic.so"), Some(&[0xab; 32]));
        assert_eq!(manifest.digest("libother.so"), Some(&[0xab; 32]));
        let err = Manifest::parse("xyz  libbasic.so\n", Path::new("SHA256SUMS")).unwrap_err();
        assert!(err.to_string().contains("manifest line 1"), "{err}");
        let err = Manifest::parse(&format!("{digest}  ../evil.so"), Path::new("S")).unwrap_err();
        assert!(err.to_string().contains("bare file name"), "{err}");
    }

    #[test]
    fn keys_parse_from_hex_or_say_why_not() {
        assert!(TrustedKey::from_hex("zz").unwrap_err().contains("64 hex digits"));
        let key = ed25519_dalek::SigningKey::from_bytes(&[7; 32]).verifying_key();
        let hex = encode_hex(key.as_bytes());
        assert_eq!(TrustedKey::from_hex(&hex).unwrap().to_hex(), hex);
    }

    #[test]
    fn enforcement_names_round_trip() {
        for e in [Enforcement::Off, Enforcement::Warn, Enforcement::Enforce] {
            assert_eq!(Enforcement::from_name(e.name()), Some(e));
        }
        assert_eq!(Enforcement::from_name("strict"), None);
    }
}
