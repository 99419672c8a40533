//! The `calcplug` binary, run as a child process against the built libraries.

use std::path::Path;
use std::process::{Command, Output};

use crate::util::{artifacts, copy_as, scratch};

fn calcplug(dirs: &[&Path], args: &[&str]) -> Output {
    let mut command = Command::new(&artifacts().calcplug);
    for dir in dirs {
        command.arg("--plugin-dir").arg(dir);
    }
    command.args(args).env_remove("CALCPLUG_LOG").env_remove("CALCPLUG_PLUGIN_PATH");
    command.output().expect("run calcplug")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[track_caller]
fn succeeded(output: &Output) -> String {
    assert!(
        output.status.success(),
        "calcplug failed: {output:?}\nstderr:\n{}",
        text(&output.stderr)
    );
    text(&output.stdout)
}

#[test]
fn call_prints_the_result_alone() {
    let dir = &artifacts().plugin_dir;
    assert_eq!(succeeded(&calcplug(&[dir], &["call", "basic", "add", "2", "3"])), "5\n");
    assert_eq!(succeeded(&calcplug(&[dir], &["call", "basic", "subtract", "-2", "3"])), "-5\n");
    let out = calcplug(&[dir], &["call", "basic", "divide", "2", "3", "--set", "precision=3"]);
    assert_eq!(succeeded(&out), "0.667\n");
}

#[test]
fn call_failure_goes_to_stderr_with_exit_code_1() {
    let dir = &artifacts().plugin_dir;
    let out = calcplug(&[dir], &["call", "basic", "divide", "1", "0"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(text(&out.stdout), "");
    assert_eq!(
        text(&out.stderr),
        "error: basic: divide: division by zero: cannot divide 1 by zero\n"
    );

    let out = calcplug(&[dir], &["call", "nosuch", "add", "1", "2"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("no plugin named `nosuch` (loaded: basic, scientific)"),
        "{out:?}"
    );

    let out = calcplug(&[dir], &["call", "basic", "modulo", "1", "2"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("unknown operation `modulo`"), "{out:?}");
}

#[test]
fn list_shows_fixtures_refused_with_reasons_and_good_plugins_loaded() {
    let a = artifacts();
    let out = calcplug(&[&a.plugin_dir, &a.fixture_dir], &["list", "--json"]);
    let entries: serde_json::Value = serde_json::from_str(&succeeded(&out)).expect("valid JSON");
    let entries = entries.as_array().expect("a JSON array");
    let by_file = |stem: &str| {
        entries
            .iter()
            .find(|e| {
                e["path"].as_str().is_some_and(|p| p.ends_with(&tests::library_file_name(stem)))
            })
            .unwrap_or_else(|| panic!("{stem} not listed: {entries:#?}"))
    };
    let basic = by_file("basic");
    assert_eq!(basic["status"], "loaded");
    assert_eq!(basic["name"], "basic");
    assert_eq!(basic["version"], "1.0.0");
    assert_eq!(by_file("panicky")["status"], "loaded");
    let expectations = [
        ("bad-cookie", "wrong magic cookie"),
        ("bad-protocol", "protocol version mismatch"),
        ("major-two", "interface 2.0.0"),
        ("not-a-plugin", "not a calcplug plugin"),
    ];
    for (stem, reason) in expectations {
        let entry = by_file(stem);
        assert_eq!(entry["status"], "refused", "{entry}");
        let error = entry["error"].as_str().expect("refused entries carry an error");
        assert!(error.contains(reason), "{stem}: {error}");
        assert!(!error.contains('\n'), "{stem}: not one line: {error}");
    }

    let plain = succeeded(&calcplug(&[&a.plugin_dir, &a.fixture_dir], &["list"]));
    assert!(plain.lines().any(|l| l.starts_with("loaded") && l.contains("basic")), "{plain}");
    assert!(
        plain.lines().any(|l| l.starts_with("refused") && l.contains("wrong magic cookie")),
        "{plain}"
    );
}

#[test]
fn list_keeps_going_past_a_truncated_library() {
    let dir = scratch();
    let good =
        copy_as(&artifacts().library("basic"), dir.path(), &tests::library_file_name("basic"));
    let bytes = std::fs::read(&good).unwrap();
    std::fs::write(dir.path().join(tests::library_file_name("cut")), &bytes[..bytes.len() / 2])
        .unwrap();
    let out = succeeded(&calcplug(&[dir.path()], &["list"]));
    assert!(out.contains("loaded   basic"), "{out}");
    assert!(out.contains("truncated"), "{out}");
}

#[test]
fn info_shows_metadata_and_state() {
    let out = succeeded(&calcplug(&[&artifacts().plugin_dir], &["info", "basic", "--json"]));
    let info: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(info["name"], "basic");
    assert_eq!(info["operations"], serde_json::json!(["add", "subtract", "multiply", "divide"]));
    assert_eq!(info["status"]["state"], "uninitialized");
    let plain = succeeded(&calcplug(&[&artifacts().plugin_dir], &["info", "basic"]));
    assert!(plain.contains("precision"), "{plain}");
}

#[test]
fn demo_tours_the_bundled_plugins() {
    let out = succeeded(&calcplug(&[&artifacts().plugin_dir], &["demo"]));
    assert!(out.contains("== basic 1.0.0"), "{out}");
    assert!(out.contains("add(7.5, 2.5) = 10"), "{out}");
    assert!(out.contains("divide(1, 0) -> DivisionByZero"), "{out}");
    assert!(out.contains("multiply(6, 7) = 42"), "{out}");
    assert!(out.contains("after shutdown -> basic: add: plugin not initialized"), "{out}");
}

#[test]
fn no_plugin_directory_is_a_clear_error() {
    let dir = scratch();
    let out = calcplug(&[&dir.path().join("absent")], &["call", "basic", "add", "1", "2"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("no plugin named `basic` (no plugin was loaded)"),
        "{out:?}"
    );
}

#[test]
fn bench_measures_every_figure_it_prints() {
    let dir = &artifacts().plugin_dir;
    let out = calcplug(&[dir], &["bench", "--plugin", "basic", "--json", "--seconds", "1"]);
    let json: serde_json::Value = serde_json::from_str(&succeeded(&out)).expect("JSON");
    assert_eq!(json["plugin"], "basic");
    let per_call = &json["per_call_ns"];
    for figure in ["direct_dyn_reference", "in_process", "in_process_metrics", "out_of_process"] {
        let ns = per_call[figure].as_f64().unwrap_or(f64::NAN);
        assert!(ns.is_finite() && ns > 0.0, "{figure}: {per_call:#}");
    }
    // A difference of two noisy medians can be slightly negative, never absurd.
    let overhead = per_call["metrics_overhead_paired"].as_f64().unwrap_or(f64::NAN);
    assert!(overhead.is_finite() && overhead.abs() < 1e6, "{per_call:#}");
    let batches = json["batch_items_per_sec"].as_array().expect("batch rows");
    assert_eq!(batches.len(), 4);
    for row in batches {
        assert_eq!(row["failed_items"], 0, "{row}");
        assert!(row["in_process"].as_f64().is_some_and(|r| r > 0.0), "{row}");
        assert!(row["out_of_process"].as_f64().is_some_and(|r| r > 0.0), "{row}");
    }
}
