//! The compatibility matrix: hosts and plugins built against different interface versions,
//! each cell a real load and real calls.
//!
//! "1.0" is the frozen copy of the interface in `tests/compat` (a plugin and a minimal host built
//! against it); "1.1" is the live `interface` crate (this host, `basic`, `scientific`).

use std::process::Command;

use host::{BatchOp, Config, Error, ErrorCode, Extension, Op};

use crate::util::artifacts;

/// Who loads the plugin.
#[derive(Debug, Clone, Copy)]
enum HostSide {
    /// This host, built against interface 1.1.
    Current,
    /// The minimal host built against the frozen interface 1.0.
    V1_0,
}

/// What must happen.
#[derive(Debug, Clone, Copy)]
enum Expect {
    /// Loads; the basic operations work; the scientific extension is present or not.
    Loads { scientific: bool },
    /// Refused because the interface major version differs.
    RefusedVersion,
    /// Refused by abi_stable's layout check.
    RefusedLayout,
}

/// (host, plugin package, plugin built against, expected)
const MATRIX: &[(HostSide, &str, &str, Expect)] = &[
    (HostSide::Current, "basic-v1_0", "1.0", Expect::Loads { scientific: false }),
    (HostSide::V1_0, "basic", "1.1", Expect::Loads { scientific: false }),
    (HostSide::V1_0, "scientific", "1.1", Expect::Loads { scientific: true }),
    (HostSide::Current, "scientific", "1.1", Expect::Loads { scientific: true }),
    (HostSide::Current, "basic", "1.1", Expect::Loads { scientific: false }),
    (HostSide::Current, "major-two", "2.0", Expect::RefusedVersion),
    (HostSide::V1_0, "major-two", "2.0", Expect::RefusedVersion),
    (HostSide::Current, "layout-broken", "1.0, layout changed", Expect::RefusedLayout),
    (HostSide::V1_0, "layout-broken", "1.0, layout changed", Expect::RefusedLayout),
];

#[test]
fn compatibility_matrix() {
    for &(host_side, package, _built_with, expect) in MATRIX {
        match host_side {
            HostSide::Current => check_current(package, expect),
            HostSide::V1_0 => check_old_host(package, expect),
        }
    }
}

#[track_caller]
fn check_current(package: &str, expect: Expect) {
    let path = artifacts().library(package);
    match (host::load(&path), expect) {
        (Ok(plugin), Expect::Loads { scientific }) => {
            plugin.initialize(&Config::new()).unwrap();
            assert_eq!(plugin.add(2.0, 3.0).unwrap(), 5.0, "{package}");
            assert_eq!(plugin.divide(1.0, 4.0).unwrap(), 0.25, "{package}");
            assert_eq!(plugin.identity().has_scientific(), scientific, "{package}");
            if scientific {
                assert_eq!(plugin.identity().extensions(), [Extension::Scientific]);
                assert_eq!(plugin.sqrt(9.0).unwrap(), 3.0);
                assert_eq!(plugin.log(2.0, 8.0).unwrap(), 3.0);
            } else {
                let err = plugin.sin(1.0).unwrap_err();
                assert_eq!(err.code(), Some(ErrorCode::Unsupported), "{package}: {err}");
                let results = plugin.batch(&[BatchOp::new(Op::Sin, 1.0, 0.0)]).unwrap();
                assert_eq!(results[0].result(), Err(ErrorCode::Unsupported), "{package}");
            }
        }
        (Err(err), Expect::RefusedVersion) => {
            assert!(
                matches!(err.without_path(), Error::IncompatibleVersion { .. }),
                "{package}: {err:?}"
            );
        }
        (Err(err), Expect::RefusedLayout) => {
            assert!(matches!(err.without_path(), Error::AbiMismatch { .. }), "{package}: {err:?}");
            let shown = err.to_string();
            assert!(!shown.contains('\n'), "{package}: not one line: {shown}");
            assert!(
                shown.contains("unexpected field (expected `new_instance`, found `inserted_without_major_bump`)"),
                "{package}: abi_stable's explanation is missing: {shown}"
            );
        }
        (Ok(plugin), expect) => panic!("{package}: expected {expect:?}, but it loaded: {plugin:?}"),
        (Err(err), expect) => panic!("{package}: expected {expect:?}, got {err}"),
    }
}

#[track_caller]
fn check_old_host(package: &str, expect: Expect) {
    let path = artifacts().library(package);
    let output = Command::new(&artifacts().old_host).arg(&path).output().expect("run host-v1_0");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let context = format!("{package}: {output:?}");
    match expect {
        Expect::Loads { .. } => {
            assert!(output.status.success(), "{context}");
            assert!(stdout.contains("add 2 3 = 5"), "{context}");
            assert!(stdout.contains("divide 1 4 = 0.25"), "{context}");
            assert!(stdout.contains("batch divide 1 0 -> DivisionByZero"), "{context}");
            assert!(stdout.ends_with("ok\n"), "{context}");
        }
        Expect::RefusedVersion => {
            assert_eq!(output.status.code(), Some(3), "{context}");
            assert!(stdout.starts_with("refused: "), "{context}");
            assert!(
                stdout.contains("library version mismatch: user:1.0.0 library:2."),
                "{context}"
            );
        }
        Expect::RefusedLayout => {
            assert_eq!(output.status.code(), Some(3), "{context}");
            // abi_stable's layout report, on one line: the inserted field is named.
            assert!(stdout.starts_with("refused: "), "{context}");
            assert!(
                stdout.contains(
                    "Error:unexpected field Expected: field_name:new_instance type:AFunctionPointer"
                ) && stdout.contains("Found: field_name:inserted_without_major_bump type:u64"),
                "{context}"
            );
        }
    }
}

#[test]
fn a_1_0_plugin_reports_the_scientific_extension_absent() {
    let plugin = crate::util::load("basic-v1_0");
    assert_eq!(plugin.identity().interface_version(), &semver::Version::new(1, 0, 0));
    assert!(plugin.identity().extensions().is_empty());
    assert!(!plugin.identity().has_scientific());
    assert!(!plugin.identity().supports(Op::Sqrt));
    assert!(plugin.identity().supports(Op::Add));
    plugin.initialize(&Config::new()).unwrap();
    let err = plugin.set_angle_unit(host::AngleUnit::Degrees).unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::Unsupported));
    assert!(err.to_string().contains("built against interface 1.0.0"), "{err}");
    assert_eq!(plugin.call(Op::Pow, 2.0, 2.0).unwrap_err().code(), Some(ErrorCode::Unsupported));
}

#[test]
fn a_1_0_source_rebuilt_against_1_1_has_the_fields_but_not_the_operations() {
    // `panicky` implements only the 1.0 methods: the trait's defaults answer for the rest.
    let plugin = crate::util::ready("panicky", &Config::new().with("mode", "internal"));
    assert_eq!(plugin.identity().extensions(), [Extension::Scientific]);
    assert!(!plugin.identity().has_scientific());
    let err = plugin.sqrt(4.0).unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::Unsupported));
    assert!(err.to_string().contains("does not implement `sqrt`"), "{err}");
}

#[test]
fn info_says_whether_the_scientific_extension_is_there() {
    let a = artifacts();
    let info = |package: &str| {
        let dir = a.library(package).parent().unwrap().to_owned();
        let name = if package == "basic-v1_0" { "basic" } else { package };
        let out = crate::util::calcplug()
            .arg("--plugin-dir")
            .arg(dir)
            .args(["info", name])
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let old = info("basic-v1_0");
    assert!(
        old.contains(
            "extensions:  none: built against interface 1.0.0, the scientific extension is absent"
        ),
        "{old}"
    );
    let sci = info("scientific");
    assert!(sci.contains("extensions:  scientific (interface 1.1)\n"), "{sci}");
}
