//! What the README promises about the CLI that no other test covers: where plugins and the
//! config come from, `--set` against the config, exit codes, verbosity, JSON fields, what
//! `status` lists.

use std::path::Path;
use std::process::Output;

use crate::util::{artifacts, copy_as, scratch};

/// `calcplug` with a clean environment (none of the variables below), in `cwd`.
fn calcplug_in(cwd: &Path, args: &[&str], env: &[(&str, &std::ffi::OsStr)]) -> Output {
    let mut command = crate::util::calcplug();
    command.current_dir(cwd).args(args).envs(env.iter().copied()).output().expect("run calcplug")
}

fn stdout(out: &Output) -> String {
    assert!(out.status.success(), "{out:?}\n{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A directory holding `basic` alone.
fn basic_dir() -> tempfile::TempDir {
    let dir = scratch();
    copy_as(&artifacts().library("basic"), dir.path(), &tests::library_file_name("basic"));
    dir
}

#[test]
fn calcplug_plugin_path_names_the_plugin_directories() {
    let (one, two) = (basic_dir(), scratch());
    copy_as(
        &artifacts().library("scientific"),
        two.path(),
        &tests::library_file_name("scientific"),
    );
    let path = std::env::join_paths([one.path(), two.path()]).unwrap();
    let cwd = scratch();
    let out = calcplug_in(
        cwd.path(),
        &["call", "scientific", "sqrt", "16"],
        &[("CALCPLUG_PLUGIN_PATH", &path)],
    );
    assert_eq!(stdout(&out), "4\n");
    let out = calcplug_in(
        cwd.path(),
        &["call", "basic", "add", "2", "3"],
        &[("CALCPLUG_PLUGIN_PATH", &path)],
    );
    assert_eq!(stdout(&out), "5\n");
    // --plugin-dir wins over it.
    let empty = scratch();
    let out = calcplug_in(
        cwd.path(),
        &["--plugin-dir", empty.path().to_str().unwrap(), "call", "basic", "add", "2", "3"],
        &[("CALCPLUG_PLUGIN_PATH", &path)],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("no plugin named `basic` (no plugin was loaded)"), "{out:?}");
}

#[test]
fn the_config_comes_from_calcplug_config_or_the_current_directory_and_set_wins() {
    let plugins = basic_dir();
    let config = format!(
        "[discovery]\npaths = [{:?}]\n[plugins.basic]\nprecision = 2\n",
        plugins.path().display().to_string()
    );
    // ./calcplug.toml, when there is one.
    let cwd = scratch();
    std::fs::write(cwd.path().join("calcplug.toml"), &config).unwrap();
    let out = calcplug_in(cwd.path(), &["call", "basic", "divide", "1", "3"], &[]);
    assert_eq!(stdout(&out), "0.33\n", "[plugins.basic] precision from ./calcplug.toml");
    // --set wins over the config's table.
    let out = calcplug_in(
        cwd.path(),
        &["call", "basic", "divide", "1", "3", "--set", "precision=4"],
        &[],
    );
    assert_eq!(stdout(&out), "0.3333\n");
    // $CALCPLUG_CONFIG, from anywhere.
    let elsewhere = scratch();
    let file = cwd.path().join("calcplug.toml");
    let out = calcplug_in(
        elsewhere.path(),
        &["call", "basic", "divide", "1", "3"],
        &[("CALCPLUG_CONFIG", file.as_os_str())],
    );
    assert_eq!(stdout(&out), "0.33\n", "the config named by CALCPLUG_CONFIG");
    // Without either, the defaults: no [plugins.basic] table, and no plugin directory here.
    let out = calcplug_in(
        elsewhere.path(),
        &["--plugin-dir", plugins.path().to_str().unwrap(), "call", "basic", "divide", "1", "3"],
        &[],
    );
    assert_eq!(stdout(&out), "0.333333333333333\n", "basic's default precision");
}

#[test]
fn calcplug_runner_names_the_runner() {
    let plugins = basic_dir();
    let cwd = scratch();
    let dir = plugins.path().to_str().unwrap();
    let args = ["--plugin-dir", dir, "--isolate", "call", "basic", "add", "2", "3"];
    let out =
        calcplug_in(cwd.path(), &args, &[("CALCPLUG_RUNNER", artifacts().runner.as_os_str())]);
    assert_eq!(stdout(&out), "5\n");
    // Named, it is used: a wrong name is an error naming it, not a silent fallback.
    let missing = cwd.path().join("no-such-runner");
    let out = calcplug_in(cwd.path(), &args, &[("CALCPLUG_RUNNER", missing.as_os_str())]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains(&*missing.to_string_lossy()), "{out:?}");
}

#[test]
fn usage_errors_exit_with_2_and_other_errors_with_1() {
    let cwd = scratch();
    for args in [&["frobnicate"][..], &["call", "basic"], &["--no-such-flag", "list"]] {
        let out = calcplug_in(cwd.path(), args, &[]);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {out:?}");
        assert!(out.stdout.is_empty(), "{args:?}");
    }
    let out = calcplug_in(
        cwd.path(),
        &["--plugin-dir", "/nonexistent", "call", "basic", "add", "1", "2"],
        &[],
    );
    assert_eq!(out.status.code(), Some(1), "{out:?}");
}

#[test]
fn each_v_shows_one_more_level() {
    let plugins = basic_dir();
    let cwd = scratch();
    let dir = plugins.path().to_str().unwrap();
    let levels = |flag: Option<&str>| {
        let mut args = vec!["--plugin-dir", dir];
        args.extend(flag);
        args.extend(["call", "basic", "add", "2", "3"]);
        let out = calcplug_in(cwd.path(), &args, &[]);
        let text = stderr(&out);
        assert_eq!(stdout(&out), "5\n");
        ["ERROR", "WARN", "INFO", "DEBUG", "TRACE"]
            .into_iter()
            .filter(|level| text.lines().any(|l| l.contains(&format!(" {level} "))))
            .collect::<Vec<_>>()
    };
    assert_eq!(levels(None), Vec::<&str>::new());
    assert_eq!(levels(Some("-v")), ["WARN"]);
    assert_eq!(levels(Some("-vv")), ["WARN", "INFO"]);
    assert_eq!(levels(Some("-vvv")), ["WARN", "INFO", "DEBUG"]);
    // Nothing logs at trace level on this path: -vvvv shows what -vvv does, and more if any.
    assert_eq!(levels(Some("-vvvv"))[..3], ["WARN", "INFO", "DEBUG"]);
    // CALCPLUG_LOG is any tracing filter, and wins.
    let out = calcplug_in(
        cwd.path(),
        &["--plugin-dir", dir, "-vvvv", "call", "basic", "add", "2", "3"],
        &[("CALCPLUG_LOG", "off".as_ref())],
    );
    assert_eq!(stdout(&out), "5\n");
    assert_eq!(stderr(&out), "");
}

#[test]
fn list_json_carries_every_field_the_readme_names() {
    let plugins = basic_dir();
    std::fs::write(plugins.path().join(tests::library_file_name("junk")), b"not a library")
        .unwrap();
    let cwd = scratch();
    let out = calcplug_in(
        cwd.path(),
        &["--plugin-dir", plugins.path().to_str().unwrap(), "list", "--json"],
        &[],
    );
    let entries: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    let entries = entries.as_array().unwrap();
    assert_eq!(entries.len(), 2, "{entries:#?}");
    let loaded = entries.iter().find(|e| e["status"] == "loaded").unwrap();
    let mut keys: Vec<&str> = loaded.as_object().unwrap().keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(keys, ["interface_version", "name", "path", "status", "transport", "version"]);
    assert_eq!(loaded["transport"], "in-process");
    assert_eq!(loaded["interface_version"], "1.1.0");
    assert_eq!(loaded["name"], "basic");
    let refused = entries.iter().find(|e| e["status"] == "refused").unwrap();
    let mut keys: Vec<&str> = refused.as_object().unwrap().keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(keys, ["error", "path", "status"]);
}

#[test]
fn status_lists_refused_and_shadowed_files_and_the_runner() {
    let plugins = scratch();
    let d = plugins.path();
    copy_as(&artifacts().library("reload-v1"), d, &tests::library_file_name("reload_one"));
    copy_as(&artifacts().library("reload-v2"), d, &tests::library_file_name("reload_two"));
    copy_as(&artifacts().library("bad-cookie"), d, &tests::library_file_name("bad_cookie"));
    let cwd = scratch();
    let dir = d.to_str().unwrap();
    let text = stdout(&calcplug_in(
        cwd.path(),
        &["--plugin-dir", dir, "--isolate", "status", "--call", "reload:add:1:1"],
        &[("CALCPLUG_RUNNER", artifacts().runner.as_os_str())],
    ));
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines[0].starts_with("reload         2.0.0    ready         out-of-process"), "{text}");
    assert_eq!(lines[1], "  transport: shared memory (calcplug-runner)", "{text}");
    assert!(
        lines[2].starts_with("  runner: pid ") && lines[2].ends_with(", circuit closed"),
        "{text}"
    );
    let shadowed = format!(
        "shadowed {}: plugin `reload` 1.0.0 is shadowed by 2.0.0 from {}",
        d.join(tests::library_file_name("reload_one")).display(),
        d.join(tests::library_file_name("reload_two")).display()
    );
    assert!(lines.iter().any(|l| l.starts_with(&shadowed)), "{text}");
    let refused =
        format!("refused  {}: ", d.join(tests::library_file_name("bad_cookie")).display());
    assert!(
        lines.iter().any(|l| l.starts_with(&refused) && l.contains("wrong magic cookie")),
        "{text}"
    );
}

#[test]
fn integrity_off_warns_once_and_warn_logs_each_failure_but_loads() {
    // Two plugins, integrity off: one warning for the run, not one per library.
    let plugins = basic_dir();
    copy_as(
        &artifacts().library("scientific"),
        plugins.path(),
        &tests::library_file_name("scientific"),
    );
    let cwd = scratch();
    let dir = plugins.path().to_str().unwrap();
    let out = calcplug_in(cwd.path(), &["--plugin-dir", dir, "-v", "list"], &[]);
    let text = stderr(&out);
    let warnings = text.lines().filter(|l| l.contains("plugin integrity checks are off")).count();
    assert_eq!((stdout(&out).lines().count(), warnings), (2, 1), "{text}");

    // `warn` with a manifest that lists neither: each library is logged, and loads.
    std::fs::write(plugins.path().join("SHA256SUMS"), format!("{} libother.so\n", "0".repeat(64)))
        .unwrap();
    let config = cwd.path().join("calcplug.toml");
    std::fs::write(
        &config,
        format!(
            "[discovery]\npaths = [{dir:?}]\n[security]\nintegrity = \"warn\"\nmanifest = {:?}\n",
            plugins.path().join("SHA256SUMS").display().to_string()
        ),
    )
    .unwrap();
    let out = calcplug_in(cwd.path(), &["-v", "call", "basic", "add", "2", "3"], &[]);
    assert_eq!(stdout(&out), "5\n");
    let text = stderr(&out);
    for library in ["basic", "scientific"] {
        let file = tests::library_file_name(library);
        assert!(
            text.lines().any(|l| l.contains(" WARN ")
                && l.contains(&format!("`{file}` is not in the SHA-256 allowlist"))),
            "{library}: {text}"
        );
    }
    assert!(!text.contains("integrity checks are off"), "{text}");
}

#[test]
fn runner_logs_reach_the_host_log_under_calcplug_runner() {
    let plugins = basic_dir();
    let cwd = scratch();
    let dir = plugins.path().to_str().unwrap();
    let out = calcplug_in(
        cwd.path(),
        &["--plugin-dir", dir, "-vv", "--isolate", "call", "basic", "add", "2", "3"],
        &[],
    );
    assert_eq!(stdout(&out), "5\n");
    let text = stderr(&out);
    let forwarded: Vec<&str> = text.lines().filter(|l| l.contains(" calcplug::runner: ")).collect();
    assert!(
        forwarded.iter().any(|l| l.contains("serving") && l.contains("plugin=\"basic\"")),
        "the runner's own `serving` line, re-emitted by the host: {text}"
    );
}

#[test]
fn probe_from_the_config_refuses_a_library_that_crashes_when_mapped() {
    let plugins = basic_dir();
    let hostile = tests::library_file_name("hostile_ctor_crash");
    copy_as(&artifacts().hostile_dir.join(&hostile), plugins.path(), &hostile);
    let cwd = scratch();
    let dir = plugins.path().to_str().unwrap();
    std::fs::write(
        cwd.path().join("calcplug.toml"),
        format!("[discovery]\npaths = [{dir:?}]\n[security]\nprobe = true\n"),
    )
    .unwrap();
    // Without the probe, this process would die mapping it; with it, the runner dies instead.
    let text = stdout(&calcplug_in(cwd.path(), &["status", "--call", "basic:add:2:3"], &[]));
    assert!(text.starts_with("basic          1.0.0    ready"), "{text}");
    let refused =
        format!("refused  {}: refused by the probe: ", plugins.path().join(&hostile).display());
    assert!(text.lines().any(|l| l.starts_with(&refused) && l.contains("SIGSEGV")), "{text}");
}

#[test]
fn probe_refuses_a_library_that_hangs_when_mapped_within_its_timeout() {
    let plugins = basic_dir();
    let hostile = tests::library_file_name("hostile_ctor_hang");
    copy_as(&artifacts().hostile_dir.join(&hostile), plugins.path(), &hostile);
    let cwd = scratch();
    let dir = plugins.path().to_str().unwrap();
    std::fs::write(
        cwd.path().join("calcplug.toml"),
        format!(
            "[discovery]\npaths = [{dir:?}]\n[security]\nprobe = true\nprobe_timeout = \"1s\"\n"
        ),
    )
    .unwrap();
    let started = std::time::Instant::now();
    let text = stdout(&calcplug_in(cwd.path(), &["status", "--call", "basic:add:2:3"], &[]));
    // A safety net: the message below says the 1 s timeout was the one applied.
    assert!(started.elapsed() < std::time::Duration::from_secs(30), "{:?}", started.elapsed());
    assert!(text.starts_with("basic          1.0.0    ready"), "{text}");
    let refused = format!(
        "refused  {}: refused by the probe: the runner printed no handshake within 1s",
        plugins.path().join(&hostile).display()
    );
    assert!(text.lines().any(|l| l.starts_with(&refused)), "{text}");
}
