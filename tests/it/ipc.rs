//! The out-of-process mode: one conformance suite run against both modes, then crashes,
//! hangs, kills, hostile bytes on the socket and the runner's own rules.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use host::remote::{Circuit, RemoteOptions, RemotePlugin};
use host::{BatchOp, BatchResult, Config, Error, ErrorCode, Op, PluginHandle, PluginState};

use crate::util::artifacts;

fn options() -> RemoteOptions {
    RemoteOptions { runner: Some(artifacts().runner.clone()), ..RemoteOptions::default() }
}

fn remote(package: &str, options: RemoteOptions) -> RemotePlugin {
    let path = artifacts().library(package);
    RemotePlugin::spawn(&path, options).unwrap_or_else(|err| panic!("spawn {package}: {err}"))
}

/// The same plugin, in process and out of process.
fn both_modes(package: &str) -> [Box<dyn PluginHandle>; 2] {
    [Box::new(crate::util::load(package)), Box::new(remote(package, options()))]
}

#[test]
fn conformance_basic_in_both_modes() {
    for plugin in both_modes("basic") {
        let mode = if plugin.is_isolated() { "out-of-process" } else { "in-process" };
        assert_eq!(plugin.name(), "basic", "{mode}");
        assert_eq!(plugin.version().to_string(), "1.0.0", "{mode}");
        assert_eq!(plugin.metadata().operations, ["add", "subtract", "multiply", "divide"]);
        let err = plugin.call(Op::Add, 1.0, 2.0).unwrap_err();
        assert_eq!(err.code(), Some(ErrorCode::NotInitialized), "{mode}: {err}");
        assert_eq!(plugin.status().unwrap().state, PluginState::Uninitialized, "{mode}");

        plugin.initialize(&Config::new().with("max_value", "1e6")).unwrap();
        assert_eq!(plugin.call(Op::Add, 2.0, 3.0).unwrap(), 5.0, "{mode}");
        assert_eq!(plugin.call(Op::Subtract, 2.0, 3.0).unwrap(), -1.0, "{mode}");
        assert_eq!(plugin.call(Op::Multiply, 2.5, 4.0).unwrap(), 10.0, "{mode}");
        assert_eq!(plugin.call(Op::Divide, 1.0, 4.0).unwrap(), 0.25, "{mode}");
        assert_eq!(plugin.call(Op::Add, 0.1, 0.2).unwrap(), 0.3, "{mode}");
        let cases = [
            (Op::Divide, 1.0, 0.0, ErrorCode::DivisionByZero),
            (Op::Add, f64::NAN, 1.0, ErrorCode::InvalidInput),
            (Op::Multiply, 2e6, 1.0, ErrorCode::OutOfRange),
            (Op::Multiply, 1e4, 1e4, ErrorCode::Overflow),
            (Op::Sqrt, 4.0, 0.0, ErrorCode::Unsupported),
        ];
        for (op, a, b, code) in cases {
            let err = plugin.call(op, a, b).unwrap_err();
            assert_eq!(err.code(), Some(code), "{mode}: {op}({a}, {b}): {err}");
        }
        let err = plugin.call(Op::Divide, 1.0, 0.0).unwrap_err();
        assert_eq!(
            err.to_string(),
            "basic: divide: division by zero: cannot divide 1 by zero",
            "{mode}"
        );

        let ops = [
            BatchOp::new(Op::Add, 1.0, 2.0),
            BatchOp::new(Op::Divide, 1.0, 0.0),
            BatchOp { op: interface::OpCode::from_u8(250), a: 1.0, b: 1.0 },
            BatchOp::new(Op::Subtract, 10.0, 4.0),
        ];
        let results: Vec<_> = plugin.batch(&ops).unwrap().iter().map(BatchResult::result).collect();
        assert_eq!(
            results,
            [Ok(3.0), Err(ErrorCode::DivisionByZero), Err(ErrorCode::Unsupported), Ok(6.0)],
            "{mode}"
        );
        let status = plugin.status().unwrap();
        assert_eq!(status.state, PluginState::Ready, "{mode}");
        // 5 results, 4 refused calculations, the message check, 4 batch items; `sqrt` is not
        // basic's, so the trait's default answered it without counting.
        assert_eq!(status.request_count, 5 + 4 + 1 + 4, "{mode}");

        plugin.shutdown().unwrap();
        let err = plugin.call(Op::Add, 1.0, 2.0).unwrap_err();
        assert_eq!(err.code(), Some(ErrorCode::NotInitialized), "{mode}: {err}");
    }
}

#[test]
fn conformance_scientific_in_both_modes() {
    for plugin in both_modes("scientific") {
        let mode = if plugin.is_isolated() { "out-of-process" } else { "in-process" };
        assert!(plugin.has_scientific(), "{mode}");
        plugin.initialize(&Config::new().with("angle_unit", "degrees")).unwrap();
        assert_eq!(plugin.angle_unit().unwrap(), host::AngleUnit::Degrees, "{mode}");
        assert_eq!(plugin.call(Op::Sin, 90.0, 0.0).unwrap(), 1.0, "{mode}");
        assert_eq!(plugin.call(Op::Log, 2.0, 1024.0).unwrap(), 10.0, "{mode}");
        let err = plugin.call(Op::Sqrt, -1.0, 0.0).unwrap_err();
        assert_eq!(err.code(), Some(ErrorCode::InvalidInput), "{mode}");
        plugin.set_angle_unit(host::AngleUnit::Radians).unwrap();
        assert_eq!(plugin.call(Op::Cos, 0.0, 0.0).unwrap(), 1.0, "{mode}");
        let big: Vec<_> =
            (0..10_000).map(|i| BatchOp::new(Op::Sqrt, f64::from(i * i), 0.0)).collect();
        let results = plugin.batch(&big).unwrap();
        assert!(results.iter().enumerate().all(|(i, r)| r.result() == Ok(i as f64)), "{mode}");
    }
}

#[test]
fn four_threads_call_at_once_out_of_process() {
    let plugin = Arc::new(remote("basic", options()));
    plugin.initialize(&Config::new()).unwrap();
    std::thread::scope(|scope| {
        for t in 0..4u32 {
            let plugin = Arc::clone(&plugin);
            scope.spawn(move || {
                for i in 0..500u32 {
                    let a = f64::from(t * 1000 + i);
                    assert_eq!(plugin.add(a, 1.0).unwrap(), a + 1.0);
                }
            });
        }
    });
    assert_eq!(plugin.status().unwrap().request_count, 2000);
}

/// `divide` in the crashy fixture ends its runner the way `crash` says.
#[track_caller]
fn check_crash(crash: &str, expected_status: &str) {
    let plugin = remote("crashy", RemoteOptions { retries: 0, ..options() });
    plugin.initialize(&Config::new().with("crash", crash)).unwrap();
    assert_eq!(plugin.add(1.0, 2.0).unwrap(), 3.0);
    let first_pid = plugin.runner_pid().unwrap();
    let started = Instant::now();
    let err = plugin.divide(1.0, 2.0).unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(4), "{crash}: the call must fail fast");
    match &err {
        Error::PluginCrashed { plugin, status } => {
            assert_eq!(plugin, "crashy");
            assert!(status.contains(expected_status), "{crash}: {status}");
        }
        other => panic!("{crash}: expected PluginCrashed, got {other:?}"),
    }
    // The next call starts a new runner, initialized again with the same config.
    assert_eq!(plugin.add(2.0, 2.0).unwrap(), 4.0, "{crash}");
    assert_ne!(plugin.runner_pid(), Some(first_pid));
    assert_eq!(plugin.generation(), 2);
    assert_eq!(plugin.status().unwrap().state, PluginState::Ready);
}

#[test]
fn a_segfaulting_plugin_fails_the_call_not_the_host() {
    check_crash("segfault", "signal 11 (SIGSEGV)");
}

#[test]
fn an_aborting_plugin_fails_the_call_not_the_host() {
    check_crash("abort", "signal 6 (SIGABRT)");
}

#[test]
fn an_exiting_plugin_fails_the_call_not_the_host() {
    check_crash("exit", "exited with code 3");
}

#[test]
fn a_hanging_call_times_out_and_the_runner_is_replaced() {
    let options =
        RemoteOptions { call_timeout: Duration::from_millis(500), retries: 0, ..options() };
    let plugin = remote("crashy", options);
    plugin.initialize(&Config::new().with("crash", "hang")).unwrap();
    let pid = plugin.runner_pid().unwrap();
    let started = Instant::now();
    let err = plugin.divide(1.0, 2.0).unwrap_err();
    assert!(matches!(err, Error::CallTimeout { op: "divide", .. }), "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(3));
    assert!(!process_alive(pid), "the hung runner must be killed");
    assert_eq!(plugin.add(1.0, 1.0).unwrap(), 2.0);
}

#[test]
fn crashes_are_retried_then_the_circuit_opens_then_a_trial_closes_it() {
    // Long enough that a loaded machine does not let it pass between two steps that expect the
    // circuit still open.
    let cooldown = Duration::from_millis(1500);
    let options = RemoteOptions {
        retries: 2,
        max_failures: 4,
        circuit_cooldown: cooldown,
        max_circuit_cooldown: cooldown * 2,
        ..options()
    };
    let plugin = remote("crashy", options);
    plugin.initialize(&Config::new().with("crash", "abort")).unwrap();
    // 1 try + 2 retries, each on a new runner, each crashing.
    let err = plugin.divide(1.0, 2.0).unwrap_err();
    assert!(matches!(err, Error::PluginCrashed { .. }), "{err:?}");
    assert_eq!(plugin.generation(), 3);
    assert_eq!(plugin.circuit(), Circuit::Closed);
    assert_eq!(plugin.retried(), [("divide", 2)]);
    // The fourth failure opens the circuit: the retry is refused, and so is every call until
    // the cool-down has passed, without a new runner.
    let err = plugin.divide(1.0, 2.0).unwrap_err();
    assert!(matches!(err, Error::CircuitOpen { failures: 4, .. }), "{err:?}");
    assert_eq!(plugin.generation(), 4);
    assert_eq!(plugin.retried(), [("divide", 2)], "a retry the circuit refused is not one");
    let err = plugin.add(1.0, 2.0).unwrap_err();
    let Error::CircuitOpen { failures: 4, next_trial_in, .. } = err else { panic!("{err:?}") };
    assert!(next_trial_in > Duration::ZERO && next_trial_in <= cooldown, "{next_trial_in:?}");
    assert!(
        err.to_string().starts_with(
            "crashy: circuit open: the runner failed 4 times within 60s; next trial in "
        ),
        "{err}"
    );
    let Circuit::Open { next_trial_in } = plugin.circuit() else {
        panic!("{:?}", plugin.circuit())
    };
    assert_eq!(plugin.runner_pid(), None);
    assert_eq!(plugin.generation(), 4, "no runner starts while the circuit is open");
    // After the cool-down, one trial runner: a crash reopens the circuit for twice as long.
    std::thread::sleep(next_trial_in + Duration::from_millis(20));
    let err = plugin.divide(1.0, 2.0).unwrap_err();
    assert!(matches!(err, Error::CircuitOpen { failures: 5, .. }), "{err:?}");
    assert_eq!(plugin.generation(), 5, "exactly one trial runner");
    let Circuit::Open { next_trial_in } = plugin.circuit() else {
        panic!("{:?}", plugin.circuit())
    };
    assert!(next_trial_in > cooldown && next_trial_in <= cooldown * 2, "{next_trial_in:?}");
    // The next trial answers a call: the circuit closes and calls flow again.
    std::thread::sleep(next_trial_in + Duration::from_millis(20));
    assert_eq!(plugin.add(1.0, 2.0).unwrap(), 3.0);
    assert_eq!(plugin.generation(), 6);
    assert_eq!(plugin.circuit(), Circuit::Closed);
    assert_eq!(plugin.add(2.0, 2.0).unwrap(), 4.0);
}

#[test]
fn kill_9_during_a_stream_of_calls_from_four_threads() {
    let plugin = Arc::new(remote("basic", options()));
    plugin.initialize(&Config::new()).unwrap();
    let victim = plugin.runner_pid().unwrap();
    let done = AtomicUsize::new(0);
    let after_restart = AtomicUsize::new(0);
    let failed = AtomicUsize::new(0);
    let stop = std::sync::atomic::AtomicBool::new(false);
    let deadline = Instant::now() + Duration::from_secs(30);
    let wait_for = |what: &str, condition: &dyn Fn() -> bool| {
        while !condition() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(1));
        }
    };
    std::thread::scope(|scope| {
        for t in 0..4u32 {
            let (plugin, done, after_restart, failed, stop) =
                (&plugin, &done, &after_restart, &failed, &stop);
            scope.spawn(move || {
                let mut i = 0u32;
                while !stop.load(Ordering::Relaxed) {
                    let started = Instant::now();
                    let a = f64::from(t * 100_000 + i % 100_000);
                    i += 1;
                    match plugin.add(a, 1.0) {
                        Ok(v) => assert_eq!(v, a + 1.0),
                        Err(err) => {
                            assert!(matches!(err, Error::PluginCrashed { .. }), "{err:?}");
                            failed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    assert!(started.elapsed() < Duration::from_secs(5), "a call hung");
                    done.fetch_add(1, Ordering::Relaxed);
                    if plugin.generation() == 2 {
                        after_restart.fetch_add(1, Ordering::Relaxed);
                    }
                }
            });
        }
        // Kill the runner once the stream is under way, then keep calling until the new
        // runner has served a good number of calls.
        wait_for("200 calls", &|| done.load(Ordering::Relaxed) >= 200);
        let status = Command::new("kill").args(["-9", &victim.to_string()]).status().unwrap();
        assert!(status.success());
        wait_for("400 calls on the new runner", &|| after_restart.load(Ordering::Relaxed) >= 400);
        stop.store(true, Ordering::Relaxed);
    });
    // Calculations are retried on the new runner: none failed, and one kill is one restart.
    assert_eq!(failed.load(Ordering::Relaxed), 0);
    assert_eq!(plugin.generation(), 2);
    assert!(!process_alive(victim));
    assert_ne!(plugin.runner_pid(), Some(victim));
    assert_eq!(plugin.add(20.0, 22.0).unwrap(), 42.0);
}

#[test]
fn a_library_the_runner_refuses_is_a_clear_error() {
    let path = artifacts().library("bad-cookie");
    let err = RemotePlugin::spawn(&path, options()).unwrap_err();
    assert!(matches!(err.without_path(), Error::RunnerFailed { .. }), "{err:?}");
    assert!(err.to_string().contains("wrong magic cookie"), "{err}");
}

#[test]
fn the_runner_refuses_to_run_without_the_cookie() {
    let out = Command::new(&artifacts().runner)
        .args(["serve", "x", "y"])
        .env_remove(interface::MAGIC_COOKIE_KEY)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("not meant to be executed directly"), "{stderr}");
}

/// A runner started by the test itself, which plays the host.
struct RawRunner {
    child: std::process::Child,
    socket: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

fn raw_runner() -> RawRunner {
    let dir = crate::util::scratch();
    let mut child = Command::new(&artifacts().runner)
        .arg("serve")
        .arg(artifacts().library("basic"))
        .arg(dir.path())
        .env(interface::MAGIC_COOKIE_KEY, interface::MAGIC_COOKIE_VALUE)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let fields: Vec<&str> = line.trim().split('|').collect();
    assert_eq!(fields.len(), 5, "{line}");
    assert_eq!(&fields[..3], ["1", "1", "unix"], "{line}");
    assert_eq!(fields[4], "calcplug-postcard", "{line}");
    RawRunner { child, socket: fields[3].into(), _dir: dir }
}

#[test]
fn malformed_frames_close_that_connection_and_nothing_else() {
    use std::os::unix::fs::PermissionsExt;
    // A host with a connection open to its runner (pooled after the first call) ...
    let plugin = remote("basic", options());
    plugin.initialize(&Config::new()).unwrap();
    assert_eq!(plugin.add(1.0, 1.0).unwrap(), 2.0);
    let pid = plugin.runner_pid().unwrap();
    let socket = crate::supervision::socket_dir(pid).unwrap().join("plugin.sock");
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "socket mode");
    // ... while other connections to the same runner send garbage.
    let garbage: [&[u8]; 3] = [
        &[0xff, 0xff, 0xff, 0x7f], // a frame of 2 GiB: over the limit
        &[5, 0, 0, 0, 0xde, 0xad, 0xbe, 0xef, 0x99], // undecodable
        b"GET / HTTP/1.1\r\n\r\n", // another protocol
    ];
    for bytes in garbage {
        let mut stream = UnixStream::connect(&socket).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        stream.write_all(bytes).unwrap();
        // The runner closes that connection (end of file, not a timeout) without answering.
        let mut rest = Vec::new();
        let read = stream.read_to_end(&mut rest);
        assert!(matches!(read, Ok(0)), "{bytes:?}: {read:?}, {rest:?}");
    }
    // The runner lives, and the host's connection, open all along, still serves.
    assert!(process_alive(pid), "the runner must survive");
    assert_eq!(plugin.add(2.0, 3.0).unwrap(), 5.0);
    assert_eq!(plugin.runner_pid(), Some(pid));
    assert_eq!(plugin.generation(), 1, "no restart");
}

#[test]
fn the_runner_exits_when_its_host_goes_away() {
    let mut runner = raw_runner();
    // The host's end of the runner's stdin closes when the host exits, however it exits.
    drop(runner.child.stdin.take());
    let deadline = Instant::now() + Duration::from_secs(5);
    while runner.child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "the runner outlived its host");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(!runner.socket.exists(), "the socket file must be removed");
}

#[test]
fn dropping_the_handle_stops_the_runner_and_removes_its_directory() {
    let plugin = remote("basic", options());
    let pid = plugin.runner_pid().unwrap();
    let dir = crate::supervision::socket_dir(pid).unwrap();
    assert!(dir.join("plugin.sock").exists(), "{}", dir.display());
    drop(plugin);
    assert!(!process_alive(pid), "runner {pid} survived its handle");
    assert!(!dir.exists(), "{} was left behind", dir.display());
}

#[test]
fn a_stopped_runner_is_gone_and_never_restarted() {
    let plugin = remote("basic", options());
    plugin.initialize(&Config::new()).unwrap();
    assert_eq!(plugin.call(Op::Add, 2.0, 3.0).unwrap(), 5.0);
    let pid = plugin.runner_pid().unwrap();
    plugin.stop();
    assert!(!process_alive(pid), "runner {pid} survived stop()");
    assert_eq!(plugin.runner_pid(), None);
    let err = plugin.call(Op::Add, 2.0, 3.0).unwrap_err();
    assert!(matches!(err, Error::Stopped { .. }), "{err}");
    assert_eq!(
        err.to_string(),
        "basic: its runner was stopped (the plugin was replaced or shut down)"
    );
    assert_eq!(plugin.generation(), 1, "no runner was started after stop()");
}

#[test]
fn a_runner_that_dies_between_calls_is_a_failure_for_the_circuit_too() {
    let options = RemoteOptions {
        max_failures: 2,
        circuit_cooldown: Duration::from_secs(30),
        max_circuit_cooldown: Duration::from_secs(30),
        ..options()
    };
    let plugin = remote("basic", options);
    plugin.initialize(&Config::new()).unwrap();
    let kill = |plugin: &RemotePlugin| {
        let pid = plugin.runner_pid().expect("a runner");
        Command::new("kill").args(["-9", &pid.to_string()]).status().unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while process_alive(pid) {
            assert!(Instant::now() < deadline, "runner {pid} still alive");
            std::thread::sleep(Duration::from_millis(5));
        }
    };
    // Killed while idle: the next call runs on a new runner (whether the exit watcher or the
    // call noticed the death first), and the death is one failure.
    kill(&plugin);
    assert_eq!(plugin.add(1.0, 2.0).unwrap(), 3.0);
    assert_eq!((plugin.generation(), plugin.circuit()), (2, Circuit::Closed));
    // The second death within the window opens the circuit.
    kill(&plugin);
    let err = plugin.add(1.0, 2.0).unwrap_err();
    assert!(matches!(err, Error::CircuitOpen { failures: 2, .. }), "{err:?}");
    assert_eq!(plugin.generation(), 2, "no runner starts while the circuit is open");
}

pub(crate) fn process_alive(pid: u32) -> bool {
    // A zombie counts as gone: /proc/PID/stat's state field is `Z`.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat.rsplit(')').next().is_some_and(|rest| rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

#[test]
fn the_cli_isolates_on_request() {
    let a = artifacts();
    let run = |dir: &std::path::Path, args: &[&str]| {
        crate::util::calcplug()
            .arg("--plugin-dir")
            .arg(dir)
            .arg("--isolate")
            .args(args)
            .output()
            .unwrap()
    };
    let out = run(&a.plugin_dir, &["call", "basic", "add", "2", "3"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "5\n");

    let out =
        run(&a.fixture_dir, &["call", "crashy", "divide", "1", "2", "--set", "crash=segfault"]);
    assert_eq!(out.status.code(), Some(1), "the host survives and reports: {out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(
            "error: crashy: the plugin's runner process crashed: killed by signal 11 (SIGSEGV)"
        ),
        "{stderr}"
    );

    let out = run(&a.plugin_dir, &["info", "basic"]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("mode:        out-of-process"),
        "{out:?}"
    );
}

/// A manager over `dir` with this `calcplug.toml` text.
fn manager(dir: &std::path::Path, toml: &str) -> host::PluginManager {
    let toml =
        format!("[isolation]\nrunner = {:?}\n{toml}", artifacts().runner.display().to_string());
    let config = host::ManagerConfig::parse(&toml, &dir.join("calcplug.toml")).unwrap();
    host::PluginManager::start(config.with_paths(&[dir.to_owned()])).unwrap()
}

#[test]
fn the_manager_serves_out_of_process_plugins_like_in_process_ones() {
    let dir = crate::util::scratch();
    crate::util::copy_as(
        &artifacts().library("basic"),
        dir.path(),
        &tests::library_file_name("basic"),
    );
    crate::util::copy_as(
        &artifacts().library("crashy"),
        dir.path(),
        &tests::library_file_name("crashy"),
    );
    // basic stays in process; crashy is isolated, and crashes its runner on divide.
    let manager =
        manager(dir.path(), "[plugins.crashy]\nmode = \"out-of-process\"\ncrash = \"segfault\"\n");
    let status = manager.status();
    let mode_of = |name: &str| status.plugins.iter().find(|p| p.name == name).map(|p| p.mode);
    assert_eq!(mode_of("basic"), Some(host::Mode::InProcess));
    assert_eq!(mode_of("crashy"), Some(host::Mode::OutOfProcess));

    let crashy = manager.get("crashy").unwrap();
    assert_eq!(crashy.add(2.0, 3.0).unwrap(), 5.0);
    let err = crashy.divide(1.0, 2.0).unwrap_err();
    assert!(matches!(err, Error::PluginCrashed { .. }), "{err:?}");
    // The host and the in-process plugin never noticed; the isolated one is back.
    assert_eq!(manager.get("basic").unwrap().multiply(6.0, 7.0).unwrap(), 42.0);
    assert_eq!(crashy.add(1.0, 1.0).unwrap(), 2.0);
    let report = manager.shutdown();
    assert!(report.failed.is_empty(), "{report:?}");
}

/// With the default `metrics.sample_every` (1024), an in-process plugin's calls are timed 1 in
/// 1024 (each thread's first call, then every 1024th), while every call to another process is
/// timed: two clock reads are lost in a call that takes microseconds.
#[test]
fn in_process_calls_are_sampled_and_calls_to_another_process_are_all_timed() {
    let dir = crate::util::scratch();
    let file = tests::library_file_name("basic");
    crate::util::copy_as(&artifacts().library("basic"), dir.path(), &file);
    // (calls, timed calls) of `add`.
    let timed = |manager: &host::PluginManager| {
        let status = manager.status();
        let add = status.plugins[0].ops.iter().find(|op| op.op == "add").expect("add was called");
        (add.calls, add.latency.map_or(0, |latency| latency.sampled))
    };

    let in_process = manager(dir.path(), "");
    let local = in_process.get("basic").unwrap();
    for i in 0..2049 {
        assert_eq!(local.add(f64::from(i), 1.0).unwrap(), f64::from(i) + 1.0);
    }
    assert_eq!(timed(&in_process), (2049, 3), "calls 1, 1025 and 2049 are timed");
    // Another thread's first call is timed too.
    std::thread::scope(|scope| {
        scope.spawn(|| local.add(1.0, 1.0).unwrap());
    });
    assert_eq!(timed(&in_process), (2050, 4));

    let isolated = manager(dir.path(), "[plugins.basic]\nmode = \"out-of-process\"\n");
    let remote = isolated.get("basic").unwrap();
    assert!(remote.is_isolated());
    for i in 0..40 {
        assert_eq!(remote.add(f64::from(i), 1.0).unwrap(), f64::from(i) + 1.0);
    }
    assert_eq!(timed(&isolated), (40, 40), "every call to a runner is timed");
    for manager in [in_process, isolated] {
        let report = manager.shutdown();
        assert!(report.failed.is_empty(), "{report:?}");
    }
}

#[test]
fn isolate_moves_every_plugin_out_of_process_and_status_says_so() {
    let a = artifacts();
    let out = crate::util::calcplug()
        .arg("--plugin-dir")
        .arg(&a.plugin_dir)
        .args(["--isolate", "status", "--json", "--call", "basic:add:2:3"])
        .env("CALCPLUG_RUNNER", &a.runner)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let plugins = status["plugins"].as_array().unwrap();
    assert!(!plugins.is_empty());
    assert!(plugins.iter().all(|p| p["mode"] == "out-of-process"), "{status:#}");
    assert!(plugins.iter().all(|p| p["transport"] == "shm"), "{status:#}");
    // The text says how calls reach the runner; `CALCPLUG_ISOLATION_TRANSPORT` changes it.
    for (channel, line) in [
        ("shm", "transport: shared memory (calcplug-runner)"),
        ("socket", "transport: Unix socket (calcplug-runner)"),
    ] {
        let out = crate::util::calcplug()
            .arg("--plugin-dir")
            .arg(&a.plugin_dir)
            .args(["--isolate", "status", "--call", "basic:add:2:3"])
            .env("CALCPLUG_RUNNER", &a.runner)
            .env("CALCPLUG_ISOLATION_TRANSPORT", channel)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success() && text.contains(line), "{channel}: {out:?}");
    }
}

#[test]
fn restarts_back_off_exponentially_and_an_answer_resets_the_backoff() {
    let backoff = Duration::from_millis(300);
    let options = RemoteOptions {
        retries: 0,
        initial_backoff: backoff,
        max_backoff: Duration::from_secs(5),
        ..options()
    };
    let plugin = remote("crashy", options);
    plugin.initialize(&Config::new().with("crash", "abort")).unwrap();
    // Each crash doubles the wait before the next runner starts: 300 ms, then 600 ms.
    let restart_after_crash = |plugin: &RemotePlugin| {
        let err = plugin.divide(1.0, 2.0).unwrap_err();
        assert!(matches!(err, Error::PluginCrashed { .. }), "{err:?}");
        let crashed = Instant::now();
        assert_eq!(plugin.add(1.0, 2.0).unwrap(), 3.0, "a new runner serves");
        crashed.elapsed()
    };
    let first = restart_after_crash(&plugin);
    assert!(first >= backoff - Duration::from_millis(50), "{first:?}");
    // The answer above reset it: the next crash waits the initial backoff again, not 600 ms.
    let again = restart_after_crash(&plugin);
    assert!(again >= backoff - Duration::from_millis(50), "{again:?}");
    assert!(again < backoff * 2 - Duration::from_millis(50), "{again:?}");
    // Two crashes in a row with no answer between: the second restart waits twice as long.
    let err = plugin.divide(1.0, 2.0).unwrap_err();
    assert!(matches!(err, Error::PluginCrashed { .. }), "{err:?}");
    let err = plugin.divide(1.0, 2.0).unwrap_err();
    assert!(matches!(err, Error::PluginCrashed { .. }), "{err:?}");
    let crashed = Instant::now();
    assert_eq!(plugin.add(1.0, 2.0).unwrap(), 3.0);
    let doubled = crashed.elapsed();
    assert!(doubled >= backoff * 2 - Duration::from_millis(50), "{doubled:?}");
    assert_eq!(plugin.generation(), 5, "1 + one runner per restart");
}

/// The per-operation methods are generated from the table in `interface`'s `ops.rs`: on every
/// API there is one for each operation of [`Op::ALL`], in the same order, and each computes the
/// same thing as `call` with that operation (checked in process, out of process, and through
/// the manager, against the scientific plugin, which implements them all).
#[test]
fn every_api_has_one_method_per_operation_and_each_matches_call() {
    macro_rules! methods {
        ($receiver:ty; $( [$kind:ident $variant:ident $method:ident $code:literal ($($arg:ident: $ty:ident),*) $doc:literal $minor:literal] )*) => {
            vec![$((
                Op::$variant,
                (|p: &$receiver, a: f64, b: f64| {
                    let _ = b; // one-operand operations ignore it
                    interface::__calculator_call_with!(p, $method, ($($arg: $ty),*), a, b)
                }) as fn(&$receiver, f64, f64) -> Result<f64, Error>,
            )),*]
        };
    }
    let plugin_methods = interface::calculator_ops!(flat methods { host::Plugin; });
    let remote_methods = interface::calculator_ops!(flat methods { RemotePlugin; });
    let handle_methods = interface::calculator_ops!(flat methods { host::Handle; });
    fn listed<T>(methods: &[(Op, T)]) -> Vec<Op> {
        methods.iter().map(|(op, _)| *op).collect()
    }
    assert_eq!(listed(&plugin_methods), Op::ALL);
    assert_eq!(listed(&remote_methods), Op::ALL);
    assert_eq!(listed(&handle_methods), Op::ALL);

    let config = Config::new().with("angle_unit", "degrees");
    let plugin = crate::util::ready("scientific", &config);
    let isolated = remote("scientific", options());
    isolated.initialize(&config).unwrap();
    let dir = crate::util::scratch();
    crate::util::copy_as(
        &artifacts().library("scientific"),
        dir.path(),
        &tests::library_file_name("scientific"),
    );
    let manager = manager(dir.path(), "[plugins.scientific]\nangle_unit = \"degrees\"\n");
    let handle = manager.get("scientific").unwrap();
    for (i, op) in Op::ALL.into_iter().enumerate() {
        let (a, b) = (30.0, 2.0);
        let expected = plugin.call(op, a, b).unwrap();
        assert_eq!((plugin_methods[i].1)(&plugin, a, b).unwrap(), expected, "Plugin::{op}");
        assert_eq!((remote_methods[i].1)(&isolated, a, b).unwrap(), expected, "RemotePlugin::{op}");
        assert_eq!(isolated.call(op, a, b).unwrap(), expected, "RemotePlugin::call({op})");
        assert_eq!((handle_methods[i].1)(&handle, a, b).unwrap(), expected, "Handle::{op}");
        assert_eq!(handle.call(op, a, b).unwrap(), expected, "Handle::call({op})");
    }
    // Each `Handle` method counted its call under its own operation.
    let status = handle.status();
    for op in Op::ALL {
        let calls = status.ops.iter().find(|o| o.op == op.name());
        assert_eq!(calls.map(|o| o.calls), Some(2), "{op}: {:?}", status.ops);
    }
    assert!(manager.shutdown().failed.is_empty());
}
