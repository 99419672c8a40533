//! The CLI honouring its config for what `call`, `info`, `list` and `status` reach: plugin
//! executables run with `[isolation]`'s options (from the file and from `CALCPLUG_*`), the
//! executables the config names, exit codes, and how numbers and extensions are shown.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Output;

use crate::util::{artifacts, scratch};

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// `calcplug ARGS` with `env`; every other `CALCPLUG_` variable removed.
fn run(args: &[&str], env: &[(&str, &str)]) -> Output {
    crate::util::calcplug().args(args).envs(env.iter().copied()).output().expect("run calcplug")
}

/// The Python plugin (`py-calc`, go-plugin's protocol, no AutoMTLS) as an executable file
/// `DIR/py-calc`, the way a plugin directory holds one.
fn python_executable(dir: &Path) -> PathBuf {
    let peer = tests::python_peer();
    let path = dir.join("py-calc");
    let script = format!(
        "#!/bin/sh\nexec '{}' '{}' '{}' '{}'\n",
        peer.python.display(),
        peer.script.display(),
        peer.generated.display(),
        interface::MAGIC_COOKIE_VALUE
    );
    std::fs::write(&path, script).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

/// The one-line refusal of a plugin executable without AutoMTLS when it is asked for.
fn automtls_refusal(path: &Path) -> String {
    format!(
        "{}: plugin handshake failed: expected the plugin's certificate in the handshake line's \
         last field (automatic mutual TLS), found none: the plugin does not support AutoMTLS; \
         set `auto_mtls = false` to talk to it without TLS",
        path.display()
    )
}

#[test]
fn a_plugin_executable_without_automtls_is_called_with_the_configs_auto_mtls_false() {
    let dir = scratch();
    let plugins = dir.path().join("plugins");
    std::fs::create_dir(&plugins).unwrap();
    let program = python_executable(&plugins);
    let plugin_dir = plugins.display().to_string();
    let by_path = program.display().to_string();

    // Asked for AutoMTLS (the default): refused, and the reason is the error, not "no plugin".
    let out = run(&["--plugin-dir", &plugin_dir, "call", "py-calc", "add", "2", "3"], &[]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert_eq!(
        text(&out.stderr),
        format!(
            "error: no plugin named `py-calc` (no plugin was loaded); refused: {}\n",
            automtls_refusal(&program)
        )
    );
    let out = run(&["call", &by_path, "add", "2", "3"], &[]);
    assert_eq!(text(&out.stderr), format!("error: {}\n", automtls_refusal(&program)));

    // `auto_mtls = false` from the config file: by name in a plugin directory, and by path.
    let config = dir.path().join("calcplug.toml");
    std::fs::write(&config, "[isolation]\nauto_mtls = false\n").unwrap();
    let config = config.display().to_string();
    for plugin in ["py-calc", by_path.as_str()] {
        let args =
            ["--config", &config, "--plugin-dir", &plugin_dir, "call", plugin, "add", "2", "3"];
        let out = run(&args, &[]);
        assert_eq!(
            (text(&out.stdout), text(&out.stderr)),
            ("5\n".into(), String::new()),
            "{plugin}"
        );
    }
    let out = run(&["--config", &config, "--plugin-dir", &plugin_dir, "list"], &[]);
    assert_eq!(
        text(&out.stdout),
        format!("loaded   py-calc        0.3.0    grpc       interface 1.0.0   {by_path}\n")
    );
    let out = run(&["--config", &config, "--plugin-dir", &plugin_dir, "info", "py-calc"], &[]);
    assert!(
        text(&out.stdout).contains("\nmode:        out-of-process (gRPC, go-plugin protocol)\n"),
        "{out:?}"
    );

    // The same from the environment, over a file that does not say it.
    let env = [("CALCPLUG_ISOLATION_AUTO_MTLS", "false")];
    let out = run(&["--plugin-dir", &plugin_dir, "call", "py-calc", "multiply", "2.5", "4"], &env);
    assert_eq!((text(&out.stdout), text(&out.stderr)), ("10\n".into(), String::new()));
    let out = run(&["call", &by_path, "divide", "1", "0"], &env);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        text(&out.stderr),
        "error: py-calc: divide: division by zero: py-calc cannot divide 1 by zero\n"
    );
}

#[test]
fn call_info_and_list_reach_the_executables_the_config_names() {
    let dir = scratch();
    let peer = tests::python_peer();
    let config = dir.path().join("calcplug.toml");
    std::fs::write(
        &config,
        format!(
            "[plugins.py-calc]\ncommand = [{:?}, {:?}, {:?}, {:?}]\nauto_mtls = false\n",
            peer.python.display().to_string(),
            peer.script.display().to_string(),
            peer.generated.display().to_string(),
            interface::MAGIC_COOKIE_VALUE,
        ),
    )
    .unwrap();
    let config = config.display().to_string();
    let out = run(&["--config", &config, "call", "py-calc", "subtract", "2", "3"], &[]);
    assert_eq!((text(&out.stdout), text(&out.stderr)), ("-1\n".into(), String::new()));
    let out = run(&["--config", &config, "info", "py-calc", "--json"], &[]);
    let info: serde_json::Value = serde_json::from_slice(&out.stdout).expect("info --json");
    assert_eq!((&info["name"], &info["transport"]), (&"py-calc".into(), &"grpc".into()));
    assert_eq!(info["path"], peer.python.display().to_string());
    // The library directories' plugins and the configured one, side by side.
    let plugin_dir = artifacts().plugin_dir.display().to_string();
    let out = run(&["--config", &config, "--plugin-dir", &plugin_dir, "list", "--json"], &[]);
    let listed: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).expect("list --json");
    let names: Vec<(&str, &str)> = listed
        .iter()
        .map(|entry| {
            (entry["name"].as_str().unwrap_or("?"), entry["transport"].as_str().unwrap_or("?"))
        })
        .collect();
    assert_eq!(names, [("basic", "in-process"), ("scientific", "in-process"), ("py-calc", "grpc")]);
    assert_eq!(out.status.code(), Some(0), "every plugin the config names answered");
}

#[test]
fn status_exits_1_when_a_call_failed_and_says_where_it_looked_when_nothing_loaded() {
    let plugin_dir = artifacts().plugin_dir.display().to_string();
    let out = run(
        &[
            "--plugin-dir",
            &plugin_dir,
            "status",
            "--call",
            "basic:add:2:3",
            "--call",
            "basic:divide:1:0",
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert_eq!(
        text(&out.stderr),
        "error: --call basic:divide:1:0: basic: divide: division by zero: cannot divide 1 by zero\n\
         (1 of the 2 --call calls failed)\n"
    );
    assert!(text(&out.stdout).contains("  add            1 calls, 0 errors, 100.0% ok"), "{out:?}");
    let out = run(&["--plugin-dir", &plugin_dir, "status", "--call", "basic:add:2:3"], &[]);
    assert_eq!((out.status.code(), text(&out.stderr)), (Some(0), String::new()));

    // A directory of executables only: the manager starts only those the config names.
    let dir = scratch();
    let program = python_executable(dir.path());
    let shown = dir.path().display().to_string();
    let out = run(&["--plugin-dir", &shown, "status"], &[]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(
        text(&out.stdout),
        format!(
            "no plugin is loaded (libraries looked for in {shown})\n\
             skipped  {0}: a plugin executable; the manager starts those the config names: \
             [plugins.NAME] command = [\"{0}\"]\n",
            program.display()
        )
    );
}

#[test]
fn numbers_print_in_their_shortest_form_and_a_result_rounded_to_zero_says_so() {
    let plugin_dir = artifacts().plugin_dir.display().to_string();
    let call = |args: &[&str]| {
        let mut all = vec!["--plugin-dir", plugin_dir.as_str(), "call", "basic"];
        all.extend_from_slice(args);
        let out = run(&all, &[]);
        assert_eq!(out.status.code(), Some(0), "{out:?}");
        (text(&out.stdout), text(&out.stderr))
    };
    assert_eq!(call(&["multiply", "1e40", "1e40"]), ("1e+80\n".into(), String::new()));
    assert_eq!(call(&["divide", "1", "8"]), ("0.125\n".into(), String::new()));
    assert_eq!(
        call(&["divide", "1", "3e30", "--set", "precision=17"]),
        (
            "0\n".into(),
            "note: divide(1, 3e+30) is 3.3333333333333338e-31, rounded to 0 by basic's \
           `precision` setting (--set precision=N keeps N decimal places)\n"
                .into()
        )
    );
    assert_eq!(call(&["subtract", "2", "2"]), ("0\n".into(), String::new()));
}

#[test]
fn info_says_which_operations_of_an_extension_a_plugin_implements() {
    let plugin_dir = artifacts().plugin_dir.display().to_string();
    let line = |plugin: &str| {
        let out = run(&["--plugin-dir", &plugin_dir, "info", plugin], &[]);
        let shown = text(&out.stdout);
        shown.lines().find(|line| line.starts_with("extensions:")).map(str::to_owned)
    };
    assert_eq!(
        line("basic").as_deref(),
        Some("extensions:  scientific (interface 1.1): present in the library, none of its operations implemented")
    );
    assert_eq!(line("scientific").as_deref(), Some("extensions:  scientific (interface 1.1)"));
}
