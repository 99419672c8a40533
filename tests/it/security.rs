//! Integrity (SHA-256 allowlist, ed25519 signatures), permissions, symlinks, probing, and a
//! corpus of hostile files next to a good plugin.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use host::security::{load_with, Enforcement, LoadPolicy, Manifest, ProbeSettings, TrustedKey};
use host::{Error, LIBRARY_SUFFIX};

use crate::util::{artifacts, copy_as, scratch};

/// A private plugin directory holding a copy of `basic`.
fn plugin_dir() -> (tempfile::TempDir, PathBuf) {
    let dir = scratch();
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o700)).unwrap();
    let library =
        copy_as(&artifacts().library("basic"), dir.path(), &tests::library_file_name("basic"));
    fs::set_permissions(&library, fs::Permissions::from_mode(0o644)).unwrap();
    (dir, library)
}

fn enforce() -> LoadPolicy {
    LoadPolicy { enforcement: Enforcement::Enforce, ..LoadPolicy::development() }
}

/// A fresh key pair in `dir`: the signing key and the trusted public key.
fn keys(dir: &Path) -> (xtask::signing::SigningKey, TrustedKey) {
    let files = xtask::signing::keygen(dir, "test").unwrap();
    let secret = xtask::signing::read_secret_key(&files.secret).unwrap();
    (secret, TrustedKey::from_hex(&files.public_hex).unwrap())
}

fn flip_one_byte(path: &Path) {
    let mut bytes = fs::read(path).unwrap();
    // A byte in the middle of the file: inside code or read-only data, not the headers.
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x01;
    fs::write(path, bytes).unwrap();
}

/// Whether `library` is mapped into this process: from its file, or from the sealed in-memory
/// copy the loader names after it (`/memfd:calcplug:<file name>`).
fn mapped(library: &Path) -> bool {
    mapped_from_file(library) || mapped_from_memory(library)
}

fn mapped_from_file(library: &Path) -> bool {
    maps().lines().any(|line| line.ends_with(&*library.to_string_lossy()))
}

fn mapped_from_memory(library: &Path) -> bool {
    let name = library.file_name().unwrap().to_string_lossy();
    let memfd = format!("/memfd:calcplug:{name} (deleted)");
    maps().lines().any(|line| line.ends_with(&memfd))
}

fn maps() -> String {
    fs::read_to_string("/proc/self/maps").unwrap()
}

#[test]
fn enforce_loads_a_signed_plugin_and_refuses_tampered_unsigned_and_foreign_ones() {
    let (dir, library) = plugin_dir();
    let (secret, trusted) = keys(dir.path());
    xtask::signing::sign(&secret, &library).unwrap();
    let policy = LoadPolicy { trusted_keys: vec![trusted.clone()], ..enforce() };

    let plugin = load_with(&library, &policy).expect("a signed plugin loads");
    plugin.initialize(&host::Config::new()).unwrap();
    assert_eq!(plugin.add(2.0, 3.0).unwrap(), 5.0);
    assert_eq!(
        plugin.identity().path(),
        library,
        "errors and listings name the file, not the memory image"
    );
    assert!(!mapped_from_file(&library), "the verified bytes are mapped, not the file");
    assert!(mapped_from_memory(&library), "the verified bytes are mapped from memory");

    // Tampered: one byte flipped after signing.
    let tampered = copy_as(&library, dir.path(), &tests::library_file_name("tampered"));
    fs::copy(signature_of(&library), signature_of(&tampered)).unwrap();
    flip_one_byte(&tampered);
    let err = load_with(&tampered, &policy).unwrap_err();
    assert!(matches!(err.without_path(), Error::Integrity { .. }), "{err:?}");
    assert!(err.to_string().contains("bad signature"), "{err}");
    assert!(!mapped(&tampered), "a refused library is never mapped");

    // Unsigned.
    let unsigned = copy_as(&library, dir.path(), &tests::library_file_name("unsigned"));
    let err = load_with(&unsigned, &policy).unwrap_err();
    assert!(err.to_string().contains("unsigned: no signature file"), "{err}");
    assert!(!mapped(&unsigned), "a refused library is never mapped");

    // Signed by a key the host does not trust.
    let other_dir = scratch();
    let (other_secret, _) = keys(other_dir.path());
    let foreign = copy_as(&library, dir.path(), &tests::library_file_name("foreign"));
    xtask::signing::sign(&other_secret, &foreign).unwrap();
    let err = load_with(&foreign, &policy).unwrap_err();
    assert!(err.to_string().contains("bad signature"), "{err}");
    assert!(!mapped(&foreign), "a refused library is never mapped");

    // `warn` loads it anyway (and logs); `off` does not check.
    let warn = LoadPolicy { enforcement: Enforcement::Warn, ..policy.clone() };
    assert!(load_with(&unsigned, &warn).is_ok());
    assert!(mapped_from_memory(&unsigned), "the check would see a mapping");
    assert!(load_with(&unsigned, &LoadPolicy::development()).is_ok());
}

fn signature_of(library: &Path) -> PathBuf {
    host::security::signature_path(library)
}

#[test]
fn enforce_checks_the_sha256_allowlist() {
    let (dir, library) = plugin_dir();
    let text = xtask::signing::manifest(std::slice::from_ref(&library)).unwrap();
    let manifest = Manifest::parse(&text, Path::new("SHA256SUMS")).unwrap();
    let policy = LoadPolicy { manifest: Some(manifest), ..enforce() };
    assert!(load_with(&library, &policy).is_ok());

    let unlisted = copy_as(&library, dir.path(), &tests::library_file_name("unlisted"));
    let err = load_with(&unlisted, &policy).unwrap_err();
    assert!(err.to_string().contains("not in the SHA-256 allowlist"), "{err}");

    flip_one_byte(&library);
    let err = load_with(&library, &policy).unwrap_err();
    assert!(matches!(err.without_path(), Error::Integrity { .. }), "{err:?}");
    assert!(err.to_string().contains("SHA-256 mismatch"), "{err}");

    let err = load_with(&library, &enforce()).unwrap_err();
    assert!(err.to_string().contains("no manifest and no trusted key"), "{err}");
}

#[test]
fn permissions_and_symlinks_are_checked() {
    let (dir, library) = plugin_dir();
    let policy = LoadPolicy { check_permissions: true, ..LoadPolicy::development() };
    assert!(load_with(&library, &policy).is_ok());

    fs::set_permissions(&library, fs::Permissions::from_mode(0o666)).unwrap();
    let err = load_with(&library, &policy).unwrap_err();
    assert!(matches!(err.without_path(), Error::InsecurePermissions { .. }), "{err:?}");
    assert!(err.to_string().contains("writable by everyone"), "{err}");
    let fix = format!("(mode 666); fix: chmod go-w {}", library.display());
    assert!(err.to_string().ends_with(&fix), "{err}");
    fs::set_permissions(&library, fs::Permissions::from_mode(0o644)).unwrap();

    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o770)).unwrap();
    let err = load_with(&library, &policy).unwrap_err();
    assert!(err.to_string().contains("plugin directory is writable by its group"), "{err}");
    let fix = format!("(mode 770); fix: chmod go-w {}", dir.path().display());
    assert!(err.to_string().ends_with(&fix), "{err}");
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o700)).unwrap();

    // A symlink inside the directory is fine; one that leaves it is not.
    let inside = dir.path().join(tests::library_file_name("alias"));
    std::os::unix::fs::symlink(&library, &inside).unwrap();
    assert!(load_with(&inside, &policy).is_ok());
    let elsewhere = scratch();
    let outside = copy_as(&library, elsewhere.path(), "libelsewhere.so");
    let link = dir.path().join(tests::library_file_name("escape"));
    std::os::unix::fs::symlink(&outside, &link).unwrap();
    let err = load_with(&link, &policy).unwrap_err();
    assert!(matches!(err.without_path(), Error::SymlinkEscape { .. }), "{err:?}");

    // Owned by another user: only root can give a file away to arrange it, so this test runs
    // as root (CI does) and fails otherwise rather than check less.
    assert!(
        rustix::process::geteuid().is_root(),
        "this test must run as root: it gives the library and its directory away to another \
         user (uid 65534) to check that they are refused"
    );
    let give_away = |path: &Path, uid: u32| {
        let uid = rustix::fs::Uid::from_raw(uid);
        rustix::fs::chown(path, Some(uid), None)
            .unwrap_or_else(|err| panic!("chown {}: {err}", path.display()));
    };
    give_away(&library, 65534);
    let err = load_with(&library, &policy).unwrap_err();
    assert!(matches!(err.without_path(), Error::InsecurePermissions { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        format!(
            "{}: insecure: the library is owned by another user (uid 65534, this process runs \
             as uid 0); fix: chown 0 {0}",
            library.display()
        )
    );
    give_away(&library, 0);
    assert!(load_with(&library, &policy).is_ok());
    give_away(dir.path(), 65534);
    let err = load_with(&library, &policy).unwrap_err();
    assert!(matches!(err.without_path(), Error::InsecurePermissions { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        format!(
            "{}: insecure: the plugin directory is owned by another user (uid 65534, this \
             process runs as uid 0); fix: chown 0 {0}",
            dir.path().display()
        )
    );
    give_away(dir.path(), 0);
    assert!(load_with(&library, &policy).is_ok());
}

#[test]
fn probe_refuses_a_library_whose_constructor_crashes_and_the_host_lives_on() {
    let policy = LoadPolicy {
        probe: Some(ProbeSettings {
            runner: Some(artifacts().runner.clone()),
            timeout: std::time::Duration::from_secs(10),
        }),
        ..LoadPolicy::development()
    };
    let hostile = artifacts().library("hostile-ctor-crash");
    let err = load_with(&hostile, &policy).unwrap_err();
    assert!(matches!(err.without_path(), Error::ProbeFailed { .. }), "{err:?}");
    assert!(err.to_string().contains("SIGSEGV"), "{err}");
    assert!(!mapped(&hostile), "the crashing library was never mapped here");

    // A good library passes the probe and loads.
    let plugin = load_with(artifacts().library("basic"), &policy).unwrap();
    plugin.initialize(&host::Config::new()).unwrap();
    assert_eq!(plugin.multiply(6.0, 7.0).unwrap(), 42.0);
}

/// Whether an error is of the expected variant.
type Check = fn(&Error) -> bool;

#[test]
fn a_corpus_of_hostile_files_is_refused_one_by_one_while_the_good_plugin_loads() {
    let (dir, _) = plugin_dir();
    let d = dir.path();
    let real = fs::read(artifacts().library("basic")).unwrap();
    let name = |stem: &str| d.join(format!("lib{stem}{LIBRARY_SUFFIX}"));
    fs::write(name("empty"), b"").unwrap();
    fs::write(
        name("random"),
        (0..8192u32).map(|i| (i.wrapping_mul(2654435761) >> 7) as u8).collect::<Vec<_>>(),
    )
    .unwrap();
    fs::write(name("text"), b"this is a text file, not a library\n").unwrap();
    fs::write(name("truncated"), &real[..real.len() * 2 / 3]).unwrap();
    fs::create_dir(name("directory")).unwrap();
    std::os::unix::fs::symlink(name("loop-b"), name("loop-a")).unwrap();
    std::os::unix::fs::symlink(name("loop-a"), name("loop-b")).unwrap();
    copy_as(&artifacts().library("not-a-plugin"), d, &tests::library_file_name("not-a-plugin"));
    copy_as(&artifacts().library("bad-cookie"), d, &tests::library_file_name("bad-cookie"));

    let found = host::discover(&[d.to_owned()]);
    let outcome = |stem: &str| {
        let path = name(stem);
        found
            .iter()
            .find(|f| f.path == path)
            .unwrap_or_else(|| panic!("{stem} not scanned"))
            .outcome
            .as_ref()
    };
    assert_eq!(outcome("basic").unwrap().identity().name(), "basic");
    let expectations: [(&str, Check, &str); 9] = [
        ("empty", |e| matches!(e.without_path(), Error::NotALibrary { .. }), "the file is empty"),
        (
            "random",
            |e| matches!(e.without_path(), Error::NotALibrary { .. }),
            "unrecognized file format",
        ),
        (
            "text",
            |e| matches!(e.without_path(), Error::NotALibrary { .. }),
            "unrecognized file format",
        ),
        ("truncated", |e| matches!(e.without_path(), Error::NotALibrary { .. }), "truncated"),
        ("directory", |e| matches!(e.without_path(), Error::NotAFile { .. }), "not a regular file"),
        ("loop-a", |e| matches!(e.without_path(), Error::Io { .. }), "symbolic links"),
        ("loop-b", |e| matches!(e.without_path(), Error::Io { .. }), "symbolic links"),
        (
            "not_a_plugin",
            |e| matches!(e.without_path(), Error::MissingRootModule { .. }),
            "not a calcplug plugin",
        ),
        (
            "bad_cookie",
            |e| matches!(e.without_path(), Error::BadCookie { .. }),
            "wrong magic cookie",
        ),
    ];
    for (stem, is_expected, text) in expectations {
        let err = outcome(stem).expect_err(stem);
        assert!(is_expected(err), "{stem}: {err:?}");
        assert!(err.to_string().contains(text), "{stem}: {err}");
        assert!(err.to_string().starts_with(&*name(stem).to_string_lossy()), "{stem}: {err}");
    }
    // A plugin whose initialize fails is reported, and the others keep serving.
    let basic = outcome("basic").unwrap();
    let err = basic.initialize(&host::Config::new().with("precision", "99")).unwrap_err();
    assert_eq!(err.code(), Some(host::ErrorCode::InvalidInput));
    basic.initialize(&host::Config::new()).unwrap();
    assert_eq!(basic.add(1.0, 1.0).unwrap(), 2.0);
}

#[test]
fn security_and_isolation_config_errors_name_the_key_and_line() {
    let cases = [
        ("[security]\nintegrity = \"strict\"\n", 2, "security.integrity"),
        ("[security]\nintegrity = \"enforce\"\n", 1, "security.integrity"),
        ("[security]\ntrusted_keys = [\"abc\"]\n", 2, "security.trusted_keys"),
        ("[security]\non_panic = \"explode\"\n", 2, "security.on_panic"),
        ("[isolation]\nmode = \"sideways\"\n", 2, "isolation.mode"),
        ("\n[plugins.basic]\nmode = \"elsewhere\"\n", 3, "plugins.basic.mode"),
    ];
    for (text, line, key) in cases {
        let err = host::ManagerConfig::parse(text, Path::new("calcplug.toml")).unwrap_err();
        match &err {
            Error::Config { line: got, key: got_key, .. } => {
                assert_eq!((*got, got_key.as_str()), (line, key), "{text}: {err}");
            }
            other => panic!("{text}: expected a config error, got {other:?}"),
        }
    }
}

#[test]
fn the_manager_enforces_signatures_from_the_config() {
    let (dir, library) = plugin_dir();
    let (secret, trusted) = keys(dir.path());
    let unsigned = copy_as(&library, dir.path(), &tests::library_file_name("unsigned"));
    let _ = unsigned;
    xtask::signing::sign(&secret, &library).unwrap();
    let toml =
        format!("[security]\nintegrity = \"enforce\"\ntrusted_keys = [\"{}\"]\n", trusted.to_hex());
    let config = host::ManagerConfig::parse(&toml, &dir.path().join("calcplug.toml")).unwrap();
    let manager = host::PluginManager::start(config.with_paths(&[dir.path().to_owned()])).unwrap();
    assert_eq!(manager.get("basic").unwrap().add(1.0, 2.0).unwrap(), 3.0);
    let status = manager.status();
    let refused: Vec<_> = status.problems.iter().map(|p| p.reason.clone()).collect();
    assert!(refused.iter().any(|r| r.contains("unsigned: no signature file")), "{refused:?}");
}
