//! go-plugin's gRPC protocol against real go-plugin peers, both ways: a Go host (go-plugin 1.0,
//! from Debian) running calcplug libraries through `calcplug-runner --grpc`, and the calcplug
//! host running a Go plugin. The peers are built from `tests/go` by `tests::go_peers`, which
//! fails with what to install when Go or go-plugin is missing.

use std::process::Command;
use std::time::{Duration, Instant};

use host::remote::{RemoteOptions, RemotePlugin};
use host::{AngleUnit, BatchOp, Config, Error, ErrorCode, Op, PluginHandle, PluginState};

use crate::util::artifacts;

/// Runs the Go host on `plugin` (a command line) with `commands`; its stdout, one line per
/// command.
fn go_host(plugin: &[&std::ffi::OsStr], commands: &[&str]) -> Vec<String> {
    let output = Command::new(&tests::go_peers().host)
        .args(plugin)
        .arg("--")
        .args(commands)
        .output()
        .expect("run the Go host");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "the Go host failed ({}):\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    stdout.lines().map(str::to_owned).collect()
}

fn runner_serving(package: &str) -> Vec<std::ffi::OsString> {
    vec![artifacts().runner.clone().into(), "--grpc".into(), artifacts().library(package).into()]
}

#[test]
fn a_go_plugin_host_runs_a_calcplug_library_through_the_runner() {
    let plugin = runner_serving("basic");
    let plugin: Vec<&std::ffi::OsStr> = plugin.iter().map(|s| s.as_os_str()).collect();
    let lines = go_host(
        &plugin,
        &[
            "ping",
            "metadata",
            "add:1:2",
            "init:max_value=100",
            "add:2:3",
            "subtract:2:3",
            "multiply:2.5:4",
            "divide:1:4",
            "divide:1:0",
            "add:1000:1",
            "sin:0",
            "status",
            "batch:add,1,2;divide,1,0;sqrt,4,0",
            "shutdown",
            "add:1:1",
        ],
    );
    assert_eq!(
        lines,
        [
            "ping -> ok",
            "metadata -> name=basic version=1.0.0 interface=1.1.0 operations=add,subtract,multiply,divide",
            "add:1:2 -> error ERROR_CODE_NOT_INITIALIZED: call initialize first",
            "init:max_value=100 -> ok",
            "add:2:3 -> 5",
            "subtract:2:3 -> -1",
            "multiply:2.5:4 -> 10",
            "divide:1:4 -> 0.25",
            "divide:1:0 -> error ERROR_CODE_DIVISION_BY_ZERO: cannot divide 1 by zero",
            "add:1000:1 -> error ERROR_CODE_OUT_OF_RANGE: add(1000, 1): operand 1e3 exceeds max_value 1e2",
            "sin:0 -> error ERROR_CODE_UNSUPPORTED: this plugin does not implement `sin`",
            "status -> state=PLUGIN_STATE_READY requests=6",
            "batch:add,1,2;divide,1,0;sqrt,4,0 -> 3 ERROR_CODE_DIVISION_BY_ZERO ERROR_CODE_UNSUPPORTED",
            "shutdown -> ok",
            "add:1:1 -> error ERROR_CODE_NOT_INITIALIZED: the plugin has been shut down",
        ]
    );
}

#[test]
fn a_go_plugin_host_gets_the_scientific_extension_of_a_calcplug_library() {
    let plugin = runner_serving("scientific");
    let plugin: Vec<&std::ffi::OsStr> = plugin.iter().map(|s| s.as_os_str()).collect();
    let lines = go_host(
        &plugin,
        &["init", "sin:0", "angle:degrees", "sin:90", "log:2:1024", "sqrt:-1", "pow:2:10"],
    );
    assert_eq!(
        lines,
        [
            "init -> ok",
            "sin:0 -> 0",
            "angle:degrees -> ok",
            "sin:90 -> 1",
            "log:2:1024 -> 10",
            "sqrt:-1 -> error ERROR_CODE_INVALID_INPUT: sqrt(-1) is outside the operation's domain",
            "pow:2:10 -> 1024",
        ]
    );
}

fn go_plugin(args: &[&str]) -> Result<RemotePlugin, Error> {
    RemotePlugin::spawn_command(&tests::go_peers().plugin, args, RemoteOptions::default())
}

#[test]
fn automatic_mutual_tls_is_on_by_default_and_can_be_turned_off() {
    let plugin = go_plugin(&[]).unwrap();
    assert_eq!(plugin.status().unwrap().message, "go-calc over TLS");
    let options = RemoteOptions { auto_mtls: false, ..RemoteOptions::default() };
    let plain = RemotePlugin::spawn_command(&tests::go_peers().plugin, [""; 0], options).unwrap();
    assert_eq!(plain.status().unwrap().message, "go-calc over plaintext");
    plain.initialize(&Config::new()).unwrap();
    assert_eq!(plain.add(2.0, 2.0).unwrap(), 4.0);
}

#[test]
fn a_go_plugin_host_with_automtls_runs_a_calcplug_library() {
    let plugin = runner_serving("basic");
    let mut args: Vec<&std::ffi::OsStr> = vec!["-automtls".as_ref()];
    args.extend(plugin.iter().map(|s| s.as_os_str()));
    let lines = go_host(&args, &["ping", "init", "add:2:3", "divide:1:0"]);
    assert_eq!(
        lines,
        [
            "ping -> ok",
            "init -> ok",
            "add:2:3 -> 5",
            "divide:1:0 -> error ERROR_CODE_DIVISION_BY_ZERO: cannot divide 1 by zero",
        ]
    );
}

#[test]
fn the_calcplug_host_calls_a_calcplug_library_over_grpc_with_and_without_tls() {
    for auto_mtls in [true, false] {
        let options = RemoteOptions { auto_mtls, ..RemoteOptions::default() };
        let args = ["--grpc".into(), artifacts().library("scientific").into_os_string()];
        let plugin = RemotePlugin::spawn_command(&artifacts().runner, args, options).unwrap();
        assert_eq!(plugin.transport(), "grpc");
        assert_eq!((plugin.name(), plugin.has_scientific()), ("scientific", true));
        plugin.initialize(&Config::new().with("angle_unit", "degrees")).unwrap();
        assert_eq!(plugin.sin(90.0).unwrap(), 1.0, "auto_mtls {auto_mtls}");
        assert_eq!(plugin.sqrt(-1.0).unwrap_err().code(), Some(ErrorCode::InvalidInput));
        let big: Vec<_> =
            (0..10_000).map(|i| BatchOp::new(Op::Sqrt, f64::from(i * i), 0.0)).collect();
        let results = plugin.batch(&big).unwrap();
        assert!(results.iter().enumerate().all(|(i, r)| r.result() == Ok(i as f64)));
        assert_eq!(plugin.status().unwrap().request_count, 2 + 10_000);
    }
}

#[test]
fn the_calcplug_host_calls_a_go_plugin_with_the_same_api_and_errors() {
    let plugin = go_plugin(&[]).unwrap();
    assert_eq!(plugin.transport(), "grpc");
    assert_eq!(plugin.name(), "go-calc");
    assert_eq!(plugin.version().to_string(), "1.2.0");
    assert_eq!(plugin.interface_version().to_string(), "1.1.0");
    assert!(plugin.has_scientific());
    assert_eq!(plugin.path(), tests::go_peers().plugin.as_path());
    assert_eq!(plugin.status().unwrap().state, PluginState::Uninitialized);
    let err = plugin.add(1.0, 2.0).unwrap_err();
    assert_eq!(
        err.to_string(),
        "go-calc: add: plugin not initialized: the Go plugin is not initialized"
    );

    let err = plugin.initialize(&Config::new().with("max_valu", "5")).unwrap_err();
    assert_eq!(
        err.to_string(),
        "go-calc: initialize: invalid input: unknown config key `max_valu`"
    );
    plugin.initialize(&Config::new().with("max_value", "100")).unwrap();
    assert_eq!(plugin.add(2.0, 3.0).unwrap(), 5.0);
    assert_eq!(plugin.subtract(2.0, 3.0).unwrap(), -1.0);
    assert_eq!(plugin.multiply(2.5, 4.0).unwrap(), 10.0);
    assert_eq!(plugin.divide(1.0, 4.0).unwrap(), 0.25);
    let err = plugin.divide(1.0, 0.0).unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::DivisionByZero));
    assert_eq!(
        err.to_string(),
        "go-calc: divide: division by zero: go-calc cannot divide 1 by zero"
    );
    assert_eq!(plugin.add(1000.0, 1.0).unwrap_err().code(), Some(ErrorCode::OutOfRange));
    assert_eq!(plugin.add(f64::NAN, 1.0).unwrap_err().code(), Some(ErrorCode::InvalidInput));
    assert_eq!(plugin.pow(2.0, 10.0).unwrap(), 1024.0);
    assert_eq!(plugin.sqrt(-4.0).unwrap_err().code(), Some(ErrorCode::InvalidInput));
    assert_eq!(plugin.log(2.0, 64.0).unwrap(), 6.0);
    plugin.set_angle_unit(AngleUnit::Degrees).unwrap();
    assert_eq!(plugin.angle_unit().unwrap(), AngleUnit::Degrees);
    assert_eq!(plugin.sin(90.0).unwrap(), 1.0);
    assert_eq!(plugin.call(Op::Cos, 0.0, 0.0).unwrap(), 1.0);

    let ops = [
        BatchOp::new(Op::Add, 1.0, 2.0),
        BatchOp::new(Op::Divide, 1.0, 0.0),
        BatchOp::new(Op::Sqrt, 9.0, 0.0),
        BatchOp { op: interface::OpCode::from_u8(77), a: 1.0, b: 1.0 },
    ];
    let results: Vec<_> = plugin.batch(&ops).unwrap().iter().map(|r| r.result()).collect();
    assert_eq!(
        results,
        [Ok(3.0), Err(ErrorCode::DivisionByZero), Ok(3.0), Err(ErrorCode::Unsupported)]
    );
    let status = plugin.status().unwrap();
    assert_eq!(status.state, PluginState::Ready);
    // Counted by the Go plugin: the 12 calls made since initialize, and 3 known batch items.
    assert_eq!(status.request_count, 15);
    plugin.shutdown().unwrap();
    assert_eq!(plugin.status().unwrap().state, PluginState::Closed);
}

#[test]
fn a_killed_go_plugin_is_restarted_and_the_call_retried() {
    let plugin = go_plugin(&[]).unwrap();
    plugin.initialize(&Config::new().with("max_value", "50")).unwrap();
    let first = plugin.runner_pid().expect("a running plugin process");
    Command::new("kill").args(["-9", &first.to_string()]).status().unwrap();
    let started = Instant::now();
    // The call finds the process dead, starts a new one, replays the config and retries.
    assert_eq!(plugin.add(2.0, 3.0).unwrap(), 5.0);
    assert!(started.elapsed() < Duration::from_secs(10), "{:?}", started.elapsed());
    let second = plugin.runner_pid().expect("a new plugin process");
    assert_ne!(first, second);
    assert_eq!(plugin.generation(), 2);
    // The replayed config is in force in the new process.
    assert_eq!(plugin.add(60.0, 1.0).unwrap_err().code(), Some(ErrorCode::OutOfRange));
}

/// The error a misbehaving Go plugin gets, without the path prefix.
fn refusal(mode: &str) -> String {
    let err = go_plugin(&[&format!("-mode={mode}")]).unwrap_err();
    assert!(matches!(err.without_path(), Error::PluginHandshake { .. }), "{mode}: {err:?}");
    assert_eq!(err.path(), Some(tests::go_peers().plugin.as_path()), "{mode}");
    assert!(!err.to_string().contains('\n'), "{mode}: one line: {err}");
    err.reason()
}

#[test]
fn go_plugins_that_break_the_handshake_are_refused_in_one_line() {
    assert_eq!(
        refusal("netrpc"),
        "plugin handshake failed: the plugin speaks go-plugin's net/rpc protocol; calcplug \
         supports only gRPC (serve it with plugin.GRPCServer and a GRPCPlugin)"
    );
    assert_eq!(
        refusal("app2"),
        "plugin handshake failed: expected app protocol version 1 (the host offered 1), found \"2\""
    );
    assert_eq!(
        refusal("garbled"),
        "plugin handshake failed: expected a go-plugin handshake line \
         `CORE|APP|NETWORK|ADDRESS|PROTOCOL|CERT` on stdout, found \"hello from a plugin that \
         forgot its handshake\""
    );
    assert_eq!(
        refusal("stderr-only"),
        "plugin handshake failed: the plugin exited before its handshake (exited with code 3); \
         it said on stderr: refusing to start reason=asked to"
    );
    let cookie = refusal("other-cookie");
    assert!(
        cookie.starts_with(
            "plugin handshake failed: the plugin exited before its handshake (exited with code \
             1); it said on stderr: "
        ) && cookie.contains("This binary is a plugin."),
        "{cookie}"
    );
    assert!(
        cookie.ends_with(
            "(go-plugin's refusal of a magic cookie it was not built with: calcplug sets \
             CALCULATOR_PLUGIN=\"6f1c9a2e5d7b4c38a0e2f4d6b8c1a3e5\"; build the plugin with that MagicCookieKey and \
             MagicCookieValue)"
        ),
        "{cookie}"
    );
}

#[test]
fn the_cli_calls_a_go_plugin_executable_by_its_path() {
    let plugin = &tests::go_peers().plugin;
    let out =
        crate::util::calcplug().arg("call").arg(plugin).args(["add", "2", "3"]).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "5\n", "{out:?}");
    assert!(out.status.success());
    let out = crate::util::calcplug()
        .arg("call")
        .arg(plugin)
        .args(["divide", "1", "0"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "error: go-calc: divide: division by zero: go-calc cannot divide 1 by zero\n"
    );
}

/// The Python plugin, started as the calcplug host starts any plugin executable.
fn python_plugin(options: RemoteOptions) -> Result<RemotePlugin, Error> {
    let peer = tests::python_peer();
    let args = [
        peer.script.clone().into_os_string(),
        peer.generated.clone().into_os_string(),
        interface::MAGIC_COOKIE_VALUE.into(),
    ];
    RemotePlugin::spawn_command(&peer.python, args, options)
}

#[test]
fn the_calcplug_host_calls_a_python_plugin() {
    let plugin =
        python_plugin(RemoteOptions { auto_mtls: false, ..RemoteOptions::default() }).unwrap();
    assert_eq!((plugin.name(), plugin.transport()), ("py-calc", "grpc"));
    assert_eq!(plugin.interface_version().to_string(), "1.0.0");
    assert!(!plugin.has_scientific(), "a 1.0 plugin has no scientific extension");
    assert_eq!(plugin.add(1.0, 1.0).unwrap_err().code(), Some(ErrorCode::NotInitialized));
    plugin.initialize(&Config::new().with("greeting", "hi")).unwrap();
    assert_eq!(plugin.add(2.0, 3.0).unwrap(), 5.0);
    assert_eq!(plugin.multiply(2.5, 4.0).unwrap(), 10.0);
    let err = plugin.divide(1.0, 0.0).unwrap_err();
    assert_eq!(
        err.to_string(),
        "py-calc: divide: division by zero: py-calc cannot divide 1 by zero"
    );
    // A call the Python plugin does not have: grpcio answers UNIMPLEMENTED.
    let err = plugin.sin(1.0).unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::Unsupported));
    assert_eq!(
        err.to_string(),
        "py-calc: sin: unsupported operation: the plugin does not implement `sin` (gRPC UNIMPLEMENTED)"
    );
    let ops = [
        BatchOp::new(Op::Add, 1.0, 2.0),
        BatchOp::new(Op::Divide, 1.0, 0.0),
        BatchOp::new(Op::Sqrt, 4.0, 0.0),
    ];
    let results: Vec<_> = plugin.batch(&ops).unwrap().iter().map(|r| r.result()).collect();
    assert_eq!(results, [Ok(3.0), Err(ErrorCode::DivisionByZero), Err(ErrorCode::Unsupported)]);
    assert_eq!(plugin.status().unwrap().request_count, 5);
    plugin.shutdown().unwrap();
    assert_eq!(plugin.status().unwrap().state, PluginState::Closed);
}

#[test]
fn a_plugin_without_automtls_is_refused_when_it_is_asked_for() {
    let err = python_plugin(RemoteOptions::default()).unwrap_err();
    assert_eq!(err.path(), Some(tests::python_peer().python.as_path()));
    assert_eq!(
        err.reason(),
        "plugin handshake failed: expected the plugin's certificate in the handshake line's last \
         field (automatic mutual TLS), found none: the plugin does not support AutoMTLS; set \
         `auto_mtls = false` to talk to it without TLS"
    );
}

/// A plugin manager over an empty plugin directory with this `calcplug.toml` text.
fn manager_with(toml: &str) -> (tempfile::TempDir, host::PluginManager) {
    let dir = crate::util::scratch();
    let config = host::ManagerConfig::parse(toml, &dir.path().join("calcplug.toml")).unwrap();
    let manager = host::PluginManager::start(config.with_paths(&[dir.path().to_owned()])).unwrap();
    (dir, manager)
}

#[test]
fn the_manager_serves_a_plugin_executable_named_in_the_config() {
    let go = tests::go_peers().plugin.display().to_string();
    let python = tests::python_peer();
    let toml = format!(
        "[plugins.go-calc]\ncommand = [{go:?}]\ntransport = \"grpc\"\nmax_value = 50\n\n\
         [plugins.py-calc]\ncommand = [{:?}, {:?}, {:?}, {:?}]\nauto_mtls = false\n",
        python.python.display().to_string(),
        python.script.display().to_string(),
        python.generated.display().to_string(),
        interface::MAGIC_COOKIE_VALUE,
    );
    let (_dir, manager) = manager_with(&toml);
    let go_calc = manager.get("go-calc").expect("the Go plugin is served");
    assert_eq!(go_calc.add(2.0, 3.0).unwrap(), 5.0);
    // Its `[plugins.go-calc]` table, minus the manager's keys, went to `initialize`.
    assert_eq!(go_calc.add(60.0, 1.0).unwrap_err().code(), Some(ErrorCode::OutOfRange));
    let py_calc = manager.get("py-calc").expect("the Python plugin is served");
    assert_eq!(py_calc.divide(1.0, 4.0).unwrap(), 0.25);
    let status = manager.status();
    let of = |name: &str| status.plugins.iter().find(|p| p.name == name).unwrap();
    assert_eq!((of("go-calc").transport, of("go-calc").mode), ("grpc", host::Mode::OutOfProcess));
    assert_eq!(of("go-calc").source, tests::go_peers().plugin);
    assert!(of("py-calc").runner_pid.is_some());
    assert!(manager.shutdown().failed.is_empty());
}

#[test]
fn a_killed_plugin_executable_is_restarted_under_the_manager() {
    let go = tests::go_peers().plugin.display().to_string();
    let (_dir, manager) = manager_with(&format!("[plugins.go-calc]\ncommand = [{go:?}]\n"));
    let go_calc = manager.get("go-calc").expect("the Go plugin is served");
    assert_eq!(go_calc.add(1.0, 1.0).unwrap(), 2.0);
    let pid_of = |manager: &host::PluginManager| manager.status().plugins[0].runner_pid;
    let first = pid_of(&manager).expect("a plugin process");
    Command::new("kill").args(["-9", &first.to_string()]).status().unwrap();
    // The call finds its process dead (its exit watcher noticed, or the call's connection
    // failed and it is retried), and a new one answers.
    assert_eq!(go_calc.add(2.0, 3.0).unwrap(), 5.0);
    assert_ne!(pid_of(&manager), Some(first));
    let status = manager.status();
    let add = status.plugins[0].ops.iter().find(|op| op.op == "add").expect("add's metrics");
    assert_eq!((add.calls, add.error_count()), (2, 0));
    assert!(manager.shutdown().failed.is_empty());
}

#[test]
fn a_plugin_executable_must_call_itself_by_its_configured_name() {
    let go = tests::go_peers().plugin.display().to_string();
    let (_dir, manager) = manager_with(&format!("[plugins.calc]\ncommand = [{go:?}]\n"));
    assert!(manager.get("calc").is_none());
    let status = manager.status();
    let problem = status.problems.iter().find(|p| p.path == tests::go_peers().plugin);
    assert_eq!(
        problem.map(|p| p.reason.as_str()),
        Some(
            "invalid plugin metadata: the plugin calls itself `go-calc`, but it is configured as \
             `[plugins.calc]`"
        ),
        "{status:?}"
    );
}

#[test]
fn bad_plugin_executable_settings_name_the_key_and_line() {
    let err = |toml: &str| {
        host::ManagerConfig::parse(toml, std::path::Path::new("/etc/calcplug.toml"))
            .unwrap_err()
            .to_string()
    };
    assert_eq!(
        err("[plugins.x]\ncommand = \"./x\"\n"),
        "/etc/calcplug.toml:2: `plugins.x.command`: expected the program and its arguments, an \
         array of strings: command = [\"./my-plugin\", \"--flag\"]"
    );
    assert_eq!(
        err("[plugins.x]\ncommand = [\"./x\"]\ntransport = \"http\"\n"),
        "/etc/calcplug.toml:3: `plugins.x.transport`: expected \"grpc\" (go-plugin's protocol, \
         the one a plugin executable speaks), found \"http\""
    );
    assert_eq!(
        err("[plugins.x]\ntransport = \"grpc\"\n"),
        "/etc/calcplug.toml:2: `plugins.x.transport`: needs `command`, the plugin executable: a \
         library's is set by `mode`"
    );
    assert_eq!(
        err("[plugins.x]\nprecision = [1]\n"),
        "/etc/calcplug.toml:2: `plugins.x.precision`: expected a string, number or boolean, \
         found an array"
    );
    let config = host::ManagerConfig::parse(
        "[plugins.x]\ncommand = [\"bin/x\", \"--flag\"]\nauto_mtls = false\n",
        std::path::Path::new("/etc/calcplug.toml"),
    )
    .unwrap();
    let commands: Vec<_> = config.commands().collect();
    assert_eq!(
        commands,
        [(
            "x",
            &host::PluginCommand {
                program: "/etc/bin/x".into(),
                args: vec!["--flag".to_owned()],
                auto_mtls: Some(false)
            }
        )]
    );
}

#[test]
fn a_plugin_directory_holds_executables_next_to_libraries() {
    let dir = crate::util::scratch();
    crate::util::copy_as(
        &artifacts().library("basic"),
        dir.path(),
        &tests::library_file_name("basic"),
    );
    let go = crate::util::copy_as(&tests::go_peers().plugin, dir.path(), "go-calc");
    // Not executable, not a plugin: ignored.
    std::fs::write(dir.path().join("SHA256SUMS"), "").unwrap();
    let out =
        crate::util::calcplug().arg("--plugin-dir").arg(dir.path()).arg("list").output().unwrap();
    let listed = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = listed.lines().collect();
    assert_eq!(lines.len(), 2, "{listed}");
    assert!(
        lines[0].starts_with("loaded   basic          1.0.0    in-process interface 1.1.0 "),
        "{listed}"
    );
    assert_eq!(
        lines[1],
        format!("loaded   go-calc        1.2.0    grpc       interface 1.1.0   {}", go.display())
    );
    let out = crate::util::calcplug()
        .arg("--plugin-dir")
        .arg(dir.path())
        .args(["call", "go-calc", "multiply", "6", "7"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "42\n", "{out:?}");
    let out = crate::util::calcplug()
        .arg("--plugin-dir")
        .arg(dir.path())
        .args(["list", "--json"])
        .output()
        .unwrap();
    let entries: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(entries[1]["transport"], "grpc", "{entries}");
    assert_eq!(entries[0]["transport"], "in-process", "{entries}");
}
