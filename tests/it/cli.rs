//! The `calcplug` binary, run as a child process against the built libraries.

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Output};

use crate::util::{artifacts, copy_as, scratch};

fn calcplug(dirs: &[&Path], args: &[&str]) -> Output {
    calcplug_with(dirs, args, &[])
}

fn calcplug_with(dirs: &[&Path], args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = crate::util::calcplug();
    for dir in dirs {
        command.arg("--plugin-dir").arg(dir);
    }
    command.args(args).envs(env.iter().copied()).output().expect("run calcplug")
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
    let absent = dir.path().join("absent");
    for args in [&["call", "basic", "add", "1", "2"][..], &["status"], &["serve", "--insecure"]] {
        let out = calcplug(&[&absent], args);
        assert_eq!(out.status.code(), Some(1));
        assert_eq!(
            text(&out.stderr),
            format!("error: --plugin-dir {}: does not exist\n", absent.display()),
            "{args:?}"
        );
    }
    // An empty one is no error: nothing is loaded from it.
    let out = calcplug(&[dir.path()], &["call", "basic", "add", "1", "2"]);
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
    assert_eq!(json["version"], "1.0.0");
    assert_eq!(json["path"], artifacts().library("basic").display().to_string());
    assert_eq!(json["seconds"], 1);
    assert_eq!(json["cpus"], std::thread::available_parallelism().unwrap().get());
    // The runner is there: every out-of-process figure was measured.
    assert_eq!(json["not_measured"], serde_json::json!({}));

    // The bounds are physical, not a machine's speed: a figure outside them is a measurement
    // gone wrong (a unit, a count of calls), however noisy the machine.
    let per_call = &json["per_call_ns"];
    let ns = |figure: &str| {
        let ns = per_call[figure].as_f64().unwrap_or(f64::NAN);
        assert!(ns.is_finite(), "{figure}: {per_call:#}");
        ns
    };
    // A call in process takes more than a few cycles and less than 10 µs.
    for figure in [
        "bare_abi_call",
        "direct_dyn_reference",
        "direct_dyn_counted",
        "in_process",
        "in_process_metrics",
    ] {
        assert!((0.1..10_000.0).contains(&ns(figure)), "{figure}: {per_call:#}");
    }
    // A call to another process, and the floor of one, is slower than a call in process and
    // takes less than 100 ms; a 99th percentile is one of the calls timed, whole nanoseconds.
    let in_process = ns("in_process");
    for figure in ["out_of_process", "out_of_process_socket", "socket_pingpong"] {
        let p99 = format!("{figure}_p99");
        for figure in [figure, &p99] {
            assert!(ns(figure) > in_process && ns(figure) < 1e8, "{figure}: {per_call:#}");
        }
        assert_eq!(ns(&p99).fract(), 0.0, "{p99}: {per_call:#}");
    }
    // The paired figures are medians over rounds in which every in-process row is timed once
    // (`host::reference::Rounds`). Each round's cost of metrics (`in_process_metrics` less
    // `in_process`) lies between minus that round's `in_process` and its `in_process_metrics`,
    // so their median lies between the medians of those two rows.
    let overhead = ns("metrics_overhead_paired");
    assert!(
        -in_process < overhead && overhead < ns("in_process_metrics"),
        "metrics_overhead_paired: {per_call:#}"
    );
    // The median of each round's ratio is not the ratio of the medians: under load the separate
    // medians drift apart (386 ns beside a 78 ns reference, paired 1.85, under `stress-ng --cpu
    // 2`) while the paired figure holds, so no bound ties the two; it is a ratio of two timed
    // calls, positive and finite.
    let paired = ns("in_process_vs_reference_paired");
    assert!(paired > 0.0, "in_process_vs_reference_paired: {per_call:#}");

    // Items per second: in process between 0.1 ns and 10 µs an item, out of process under
    // 100 ms an item.
    let rate = |row: &serde_json::Value, key: &str| {
        let rate = row[key].as_f64().unwrap_or(f64::NAN);
        assert!(rate.is_finite(), "{key}: {row}");
        rate
    };
    let batches = json["batch_items_per_sec"].as_array().expect("batch rows");
    let items: Vec<_> = batches.iter().map(|row| row["items"].as_u64()).collect();
    assert_eq!(items, [Some(1), Some(100), Some(10_000), Some(1_000_000)]);
    for row in batches {
        assert_eq!(row["failed_items"], 0, "{row}");
        assert!((1e5..1e10).contains(&rate(row, "in_process")), "{row}");
        for key in ["out_of_process", "out_of_process_socket"] {
            assert!((10.0..1e10).contains(&rate(row, key)), "{key}: {row}");
        }
    }
    // Calls per second of N threads calling out of process: each call slower than one in
    // process, and under 100 ms.
    let threads = json["out_of_process_calls_per_sec"].as_array().expect("thread rows");
    let counts: Vec<_> = threads.iter().map(|row| row["threads"].as_u64()).collect();
    assert_eq!(counts, [Some(1), Some(2), Some(4), Some(8)]);
    for row in threads {
        let n = row["threads"].as_f64().unwrap();
        for key in ["out_of_process", "out_of_process_socket"] {
            let bounds = n * 10.0..n * 1e9 / in_process;
            assert!(bounds.contains(&rate(row, key)), "{key}: {row}");
        }
    }
}

#[test]
fn a_panicking_plugin_prints_one_error_line_and_nothing_else() {
    let dir = &artifacts().fixture_dir;
    let expected = "error: panicky: divide: plugin panicked: panicked in `divide` at \
                    tests/fixtures/panicky/src/lib.rs:29:9: divide panics on purpose\n";
    for isolate in [false, true] {
        let mut args = vec!["call", "panicky", "divide", "1", "2"];
        if isolate {
            args.insert(0, "--isolate");
        }
        // The plugin's own copy of std would print the panic (and, here, a backtrace).
        let out = calcplug_with(&[dir], &args, &[("RUST_BACKTRACE", "1")]);
        assert_eq!(out.status.code(), Some(1), "{out:?}");
        assert_eq!(text(&out.stdout), "");
        assert_eq!(text(&out.stderr), expected, "isolate: {isolate}");
    }
    // At -v, one log line says so too.
    let out = calcplug_with(&[dir], &["-v", "call", "panicky", "divide", "1", "2"], &[]);
    let stderr = text(&out.stderr);
    let panicked: Vec<&str> = stderr.lines().filter(|l| l.contains("panics on purpose")).collect();
    assert_eq!(panicked.len(), 2, "{stderr}");
    assert!(panicked[0].contains(" WARN host::plugin: plugin panicked plugin=panicky"), "{stderr}");
    assert_eq!(format!("{}\n", panicked[1]), expected);
}

#[test]
fn logs_are_coloured_only_on_a_terminal_and_never_under_no_color() {
    let dir = artifacts().plugin_dir.to_str().unwrap().to_owned();
    let args = ["--plugin-dir", &dir, "-vv", "call", "basic", "add", "2", "3"];
    // Piped: plain text.
    let out = calcplug_with(&[], &args, &[]);
    let stderr = succeeded_stderr(&out);
    assert!(stderr.contains(" INFO "), "-vv logs at info: {stderr}");
    assert!(!stderr.contains('\u{1b}'), "escape bytes in piped stderr: {stderr:?}");
    // On a terminal (`script` gives it a pseudo-terminal): colour, unless NO_COLOR is set.
    let on_a_terminal = |no_color: Option<&str>| {
        let line = std::iter::once(artifacts().calcplug.to_str().unwrap())
            .chain(args.iter().copied())
            .collect::<Vec<_>>()
            .join(" ");
        let mut command = Command::new("script");
        command.args(["-qec", &line, "/dev/null"]).env_remove("CALCPLUG_LOG");
        match no_color {
            Some(value) => command.env("NO_COLOR", value),
            None => command.env_remove("NO_COLOR"),
        };
        let out = command.output().expect("script(1), from util-linux");
        assert!(out.status.success(), "{out:?}");
        text(&out.stdout)
    };
    let coloured = on_a_terminal(None);
    assert!(coloured.contains("\u{1b}["), "no colour on a terminal: {coloured:?}");
    let plain = on_a_terminal(Some("1"));
    assert!(plain.contains(" INFO ") && !plain.contains('\u{1b}'), "{plain:?}");
}

#[test]
fn calcplug_is_its_own_runner() {
    // A calcplug binary alone in a directory: no calcplug-runner beside it.
    let bin = scratch();
    let alone = copy_as(&artifacts().calcplug, bin.path(), "calcplug");
    let out = Command::new(&alone)
        .arg("--plugin-dir")
        .arg(&artifacts().plugin_dir)
        .args(["--isolate", "call", "basic", "add", "2", "3"])
        .env_remove("CALCPLUG_RUNNER")
        .output()
        .unwrap();
    assert_eq!(succeeded(&out), "5\n");
    // Started by hand under the runner's name, it refuses like the runner does.
    let out = Command::new(&alone).arg0("calcplug-runner").arg("serve").output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).starts_with("This binary is a calcplug plugin runner."), "{out:?}");
}

#[track_caller]
fn succeeded_stderr(output: &Output) -> String {
    succeeded(output);
    text(&output.stderr)
}

#[test]
fn a_calcplug_variable_it_does_not_read_is_an_error_naming_it() {
    let plugins = artifacts().plugin_dir.clone();
    let add = ["call", "basic", "add", "1", "2"];
    // A misspelt section: no section, so no config key, and no other variable either.
    let out = calcplug_with(&[&plugins], &add, &[("CALCPLUG_ISOLATON_MODE", "out-of-process")]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        text(&out.stderr),
        "error: environment variable CALCPLUG_ISOLATON_MODE: calcplug reads no such variable (a \
         config key is CALCPLUG_<SECTION>_<KEY>, SECTION one of DISCOVERY, MANAGER, METRICS, \
         RETRY, SECURITY, ISOLATION, SERVE, or CALCPLUG_PLUGINS__<NAME>__<KEY>; the others are \
         CALCPLUG_CONFIG, CALCPLUG_LOG, CALCPLUG_PLUGIN_PATH, CALCPLUG_RUNNER, \
         CALCPLUG_RUNNER_LOG, CALCPLUG_FENCE)\n"
    );
    // A misspelt key of a real section: the config's own error, with the section's variables.
    let out = calcplug_with(&[&plugins], &add, &[("CALCPLUG_ISOLATION_MOD", "out-of-process")]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).starts_with(
            "error: environment variable CALCPLUG_ISOLATION_MOD (`isolation.mod`): [isolation] \
             has no such key (its variables: CALCPLUG_ISOLATION_MODE, "
        ),
        "{out:?}"
    );
    // The right ones work: a config key (handed to `initialize`), and one of the others.
    let out = calcplug_with(
        &[&plugins],
        &["call", "basic", "divide", "1", "3"],
        &[("CALCPLUG_PLUGINS__BASIC__PRECISION", "2"), ("CALCPLUG_LOG", "off")],
    );
    assert_eq!(succeeded(&out), "0.33\n");
}
