//! Loading real libraries: the good plugin, each wrong fixture and broken files.

use std::fs;
use std::path::Path;

use host::{Error, LIBRARY_SUFFIX};

use crate::util::{artifacts, copy_as, load, scratch};

#[test]
fn basic_plugin_loads_with_its_metadata() {
    let plugin = load("basic");
    assert_eq!(plugin.identity().name(), "basic");
    assert_eq!(plugin.identity().version(), &semver::Version::new(1, 0, 0));
    assert_eq!(plugin.identity().interface_version().to_string(), interface::INTERFACE_VERSION);
    let meta = plugin.identity().metadata();
    assert_eq!(meta.operations, ["add", "subtract", "multiply", "divide"]);
    let keys: Vec<_> = meta.config.iter().map(|k| k.key.as_str()).collect();
    assert_eq!(keys, ["precision", "max_value"]);
    assert!(plugin.identity().path().is_absolute());
    assert_eq!(plugin.status().unwrap().state, host::PluginState::Uninitialized);
}

#[test]
fn loading_the_same_library_twice_gives_independent_instances() {
    let first = load("basic");
    let second = load("basic");
    first.initialize(&host::Config::new()).unwrap();
    assert_eq!(first.add(1.0, 1.0).unwrap(), 2.0);
    let err = second.add(1.0, 1.0).unwrap_err();
    assert_eq!(err.code(), Some(host::ErrorCode::NotInitialized));
}

/// Loads `path`, expects an error, checks it names the file and returns it.
#[track_caller]
fn refused(path: &Path) -> Error {
    let err = host::load(path).expect_err("the library should be refused");
    let shown = err.to_string();
    assert!(
        shown.starts_with(&path.display().to_string()),
        "message does not name the file: {shown}"
    );
    assert_eq!(err.path(), Some(path), "{shown}");
    assert!(!shown.contains('\n'), "message is not one line: {shown}");
    // Render the Debug form too, so it cannot rot.
    let _ = format!("{err:?}");
    err
}

#[track_caller]
fn refused_fixture(package: &str) -> Error {
    let path = artifacts().library(package);
    let err = host::load(&path).expect_err("the fixture should be refused");
    let shown = err.to_string();
    assert!(shown.contains(&*path.to_string_lossy()), "message does not name the file: {shown}");
    err
}

#[test]
fn wrong_magic_cookie_is_refused() {
    let err = refused_fixture("bad-cookie");
    assert!(
        matches!(err.without_path(), Error::BadCookie { found_value, .. } if found_value == "SOME_OTHER_APPLICATION"),
        "{err:?}"
    );
    assert!(err.to_string().contains("wrong magic cookie"), "{err}");
}

#[test]
fn wrong_protocol_version_is_refused() {
    let err = refused_fixture("bad-protocol");
    assert!(
        matches!(err.without_path(), Error::ProtocolMismatch { host: 1, plugin: 2, .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("host speaks protocol 1, the plugin speaks 2"), "{err}");
}

#[test]
fn other_interface_major_version_is_refused() {
    let err = refused_fixture("major-two");
    match err.without_path() {
        Error::IncompatibleVersion { host, found } => {
            assert_eq!(host.to_string(), interface::INTERFACE_VERSION);
            assert_eq!(found, &semver::Version::new(2, 0, 0));
        }
        other => panic!("expected IncompatibleVersion, got {other:?}"),
    }
    assert!(err.to_string().contains("built against interface 2.0.0"), "{err}");
}

#[test]
fn shared_library_without_root_module_is_refused() {
    let err = refused_fixture("not-a-plugin");
    assert!(matches!(err.without_path(), Error::MissingRootModule { .. }), "{err:?}");
    assert!(err.to_string().contains("not a calcplug plugin"), "{err}");
}

#[test]
fn missing_file_is_refused() {
    let dir = scratch();
    let err = refused(&dir.path().join(format!("libnothing{LIBRARY_SUFFIX}")));
    assert!(matches!(err.without_path(), Error::NotFound), "{err:?}");
}

#[test]
fn directory_named_like_a_library_is_refused() {
    let dir = scratch();
    let path = dir.path().join(format!("libdir{LIBRARY_SUFFIX}"));
    fs::create_dir(&path).unwrap();
    let err = refused(&path);
    assert!(matches!(err.without_path(), Error::NotAFile { found: "directory", .. }), "{err:?}");
}

#[test]
fn file_without_library_suffix_is_refused() {
    let dir = scratch();
    let path = copy_as(&artifacts().library("basic"), dir.path(), "libbasic.txt");
    let err = refused(&path);
    assert!(
        matches!(err.without_path(), Error::WrongExtension { expected: LIBRARY_SUFFIX, .. }),
        "{err:?}"
    );
}

#[test]
fn non_libraries_named_like_libraries_are_refused_with_a_reason() {
    let dir = scratch();
    let real = fs::read(artifacts().library("basic")).unwrap();
    let cases: [(&str, Vec<u8>, &str); 5] = [
        ("empty", Vec::new(), "the file is empty"),
        ("text", b"#!/bin/sh\necho not a library\n".to_vec(), "unrecognized file format"),
        (
            "random",
            (0..4096u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect(),
            "unrecognized file format",
        ),
        ("half", real[..real.len() / 2].to_vec(), "truncated"),
        ("headers-only", real[..4096].to_vec(), "truncated"),
    ];
    for (name, bytes, reason) in cases {
        let path = dir.path().join(format!("lib{name}{LIBRARY_SUFFIX}"));
        fs::write(&path, bytes).unwrap();
        let err = refused(&path);
        assert!(matches!(err.without_path(), Error::NotALibrary { .. }), "{name}: {err:?}");
        assert!(err.to_string().contains(reason), "{name}: {err}");
    }
}

/// The lines of this process's memory map (`/proc/self/maps`) that map `path`.
fn mappings_of(path: &Path) -> Vec<String> {
    let maps = fs::read_to_string("/proc/self/maps").expect("read /proc/self/maps");
    let path = path.to_str().expect("a UTF-8 path");
    maps.lines().filter(|line| line.contains(path)).map(str::to_owned).collect()
}

#[test]
fn a_library_truncated_at_any_point_is_refused_not_mapped() {
    // An interrupted copy: if any of these reached `dlopen`, the process would die of SIGBUS,
    // or map a library it then refuses (a library once mapped stays mapped). The copies that
    // miss the least come first: the system loader would map those without a fault.
    let dir = scratch();
    let real = fs::read(artifacts().library("basic")).unwrap();
    let path = dir.path().join(format!("libcut{LIBRARY_SUFFIX}"));
    for cut in [real.len() - 1, real.len() - 4096, real.len() / 3, real.len() / 10, 1000, 64] {
        fs::write(&path, &real[..cut]).unwrap();
        let err = host::load(&path).expect_err("a truncated copy must be refused");
        assert!(matches!(err.without_path(), Error::NotALibrary { .. }), "cut at {cut}: {err:?}");
        assert_eq!(mappings_of(&path), Vec::<String>::new(), "cut at {cut}: mapped");
    }
    // The whole file, from the same path, loads, and the map shows it.
    fs::write(&path, &real).unwrap();
    let plugin = host::load(&path).unwrap_or_else(|err| panic!("the whole file: {err}"));
    assert_eq!(plugin.identity().name(), "basic");
    assert_ne!(mappings_of(&path), Vec::<String>::new(), "a loaded library is not in the map");
}

#[test]
fn discovery_reports_every_file_and_keeps_the_good_ones() {
    let dir = scratch();
    let a = artifacts();
    for package in ["basic", "bad-cookie", "bad-protocol", "major-two", "not-a-plugin"] {
        let from = a.library(package);
        copy_as(&from, dir.path(), &from.file_name().unwrap().to_string_lossy());
    }
    fs::write(dir.path().join(format!("libjunk{LIBRARY_SUFFIX}")), b"junk").unwrap();
    fs::write(dir.path().join("README.txt"), b"not named like a library").unwrap();
    let missing = dir.path().join("no-such-dir");
    let found = host::discover(&[dir.path().to_owned(), missing.clone()]);
    let loaded: Vec<_> =
        found.iter().filter_map(|f| f.outcome.as_ref().ok()).map(|p| p.identity().name()).collect();
    assert_eq!(loaded, ["basic"]);
    assert_eq!(found.len(), 7, "6 libraries and 1 missing directory: {found:#?}");
    let last = found.last().unwrap();
    assert_eq!(last.path, missing);
    let err = last.outcome.as_ref().unwrap_err();
    assert!(matches!(err.without_path(), Error::NotFound), "{err:?}");
    assert_eq!(err.path(), Some(missing.as_path()));
}
