//! The plugin manager over real libraries: discovery and shadowing, the lifecycle state machine,
//! metrics and their Prometheus export, retries, graceful shutdown, hot reload under load, the
//! config file, and the `status`/`watch` commands.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant};

use host::{Error, ErrorCode, LifecycleState, ManagerConfig, Op, PluginManager, StateMachine};

use crate::util::{artifacts, copy_as, scratch};

/// A manager over `dir` with `extra` TOML appended to its `[discovery]` table.
#[track_caller]
fn manager(dir: &Path, extra: &str) -> PluginManager {
    let text = format!("[discovery]\npaths = [{:?}]\n{extra}", dir.display().to_string());
    let config = ManagerConfig::parse(&text, &dir.join("calcplug.toml"))
        .unwrap_or_else(|err| panic!("config: {err}\n{text}"));
    PluginManager::start(config).unwrap_or_else(|err| panic!("start: {err}"))
}

/// Puts `package`'s library at `dir/name` the way `xtask::install` does: copy to a temporary
/// name, then rename over (never rewrite a library in place).
fn install_as(package: &str, dir: &Path, name: &str) -> PathBuf {
    let temp = dir.join(format!(".{name}.partial"));
    std::fs::copy(artifacts().library(package), &temp).expect("copy the library");
    let to = dir.join(name);
    std::fs::rename(&temp, &to).expect("rename it into place");
    to
}

fn lib(package: &str) -> String {
    tests::library_file_name(package)
}

/// Waits for `condition`, failing the test with `what` after a generous deadline (a safety net
/// against a hang, not a timing assertion).
#[track_caller]
fn wait_for(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn discovery_loads_the_good_reports_the_bad_and_the_shadowed() {
    let dir = scratch();
    copy_as(&artifacts().library("basic"), dir.path(), &lib("basic"));
    copy_as(&artifacts().library("reload-v1"), dir.path(), &lib("reload-v1"));
    copy_as(&artifacts().library("reload-v2"), dir.path(), &lib("reload-v2"));
    copy_as(&artifacts().library("bad-cookie"), dir.path(), &lib("bad-cookie"));
    let bytes = std::fs::read(artifacts().library("basic")).unwrap();
    std::fs::write(dir.path().join(lib("cut")), &bytes[..bytes.len() / 2]).unwrap();

    let manager = manager(dir.path(), "");
    assert_eq!(manager.names(), ["basic", "reload"]);
    let reload = manager.get("reload").unwrap();
    assert_eq!(reload.identity().version().to_string(), "2.0.0", "the higher version serves");
    assert!(reload.identity().path().ends_with(lib("reload-v2")));
    assert_eq!(reload.add(1.0, 1.0).unwrap(), 4.0, "reload 2.x answers a + b + 2");
    assert_eq!(manager.call("basic", Op::Divide, 1.0, 4.0).unwrap(), 0.25);

    let status = manager.status();
    let problem = |stem: &str| {
        status
            .problems
            .iter()
            .find(|p| p.path.ends_with(lib(stem)))
            .unwrap_or_else(|| panic!("{stem} not reported: {:#?}", status.problems))
    };
    let shadowed = problem("reload-v1");
    assert!(shadowed.shadowed);
    assert!(
        shadowed.reason.contains("plugin `reload` 1.0.0 is shadowed by 2.0.0"),
        "{}",
        shadowed.reason
    );
    let cookie = problem("bad-cookie");
    assert!(!cookie.shadowed);
    assert_eq!(cookie.failed_in, LifecycleState::Handshaking);
    assert!(cookie.reason.contains("wrong magic cookie"), "{}", cookie.reason);
    let cut = problem("cut");
    assert_eq!(cut.failed_in, LifecycleState::Validating);
    assert!(cut.reason.contains("truncated"), "{}", cut.reason);
    assert_eq!(status.problems.len(), 3, "{:#?}", status.problems);

    // A second scan leaves unchanged files alone.
    let again = manager.scan();
    assert!(
        again.loaded.is_empty() && again.reloaded.is_empty() && again.failed.is_empty(),
        "{again:?}"
    );

    match manager.call("nosuch", Op::Add, 1.0, 2.0) {
        Err(Error::UnknownPlugin { available, .. }) => assert_eq!(available, ["basic", "reload"]),
        other => panic!("{other:?}"),
    }
}

#[test]
fn the_state_machine_refuses_illegal_transitions_and_keeps_its_state() {
    use LifecycleState as S;
    let machine = StateMachine::new("demo");
    assert_eq!(machine.state(), S::Discovered);
    for to in [
        S::Validating,
        S::Loading,
        S::Handshaking,
        S::Initializing,
        S::Ready,
        S::Processing,
        S::Ready,
    ] {
        machine.transition(to).unwrap_or_else(|err| panic!("{err}"));
        assert_eq!(machine.state(), to);
    }
    for illegal in [S::Discovered, S::Loading, S::Closed, S::Initializing] {
        match machine.transition(illegal) {
            Err(err @ Error::IllegalTransition { .. }) => {
                assert_eq!(
                    err.to_string(),
                    format!("demo: illegal state transition ready -> {illegal}")
                );
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(machine.state(), S::Ready);
    }
    machine.transition(S::ShuttingDown).unwrap();
    machine.transition(S::Closed).unwrap();
    assert!(machine.transition(S::Ready).is_err());
    assert_eq!(machine.state(), S::Closed);
}

#[test]
fn managed_plugins_go_through_ready_processing_error_shutting_down_and_closed() {
    let dir = scratch();
    install_as("reload-v1", dir.path(), &lib("reload"));
    let manager = Arc::new(manager(dir.path(), "[plugins.reload]\ndelay_ms = 300\n"));
    let reload = manager.get("reload").unwrap();
    assert_eq!(reload.state(), LifecycleState::Ready);
    assert!(reload.health().is_healthy(), "{:?}", reload.health());

    let caller = {
        let reload = reload.clone();
        thread::spawn(move || reload.subtract(5.0, 3.0))
    };
    wait_for("Processing", || reload.state() == LifecycleState::Processing);
    assert_eq!(caller.join().unwrap().unwrap(), 2.0);
    assert_eq!(reload.state(), LifecycleState::Ready);
    // This thread has called before, so its next call takes the fast path: shutdown closes
    // that too.
    assert_eq!(reload.subtract(5.0, 3.0).unwrap(), 2.0);

    let report = manager.shutdown();
    assert_eq!(report.closed, ["reload"]);
    assert!(report.failed.is_empty(), "{:?}", report.failed);
    assert_eq!(reload.state(), LifecycleState::Closed);
    assert!(matches!(reload.add(1.0, 2.0), Err(Error::ShuttingDown { .. })));
    assert!(manager.shutdown().closed.is_empty(), "shutting down twice does nothing");

    // A plugin whose initialize fails is managed in Error and refuses calls.
    let failing = manager_for_reload("[plugins.reload]\nfail_initialize = true\n");
    let handle = failing.1.get("reload").unwrap();
    assert_eq!(handle.state(), LifecycleState::Error);
    assert!(!handle.health().is_healthy());
    match handle.add(1.0, 2.0) {
        Err(err @ Error::NotServing { .. }) => {
            assert_eq!(err.to_string(), "reload: add: refused: the plugin is error");
        }
        other => panic!("{other:?}"),
    }
    let status = failing.1.status();
    assert!(
        status.plugins[0].last_error.as_deref().unwrap_or("").contains("fail_initialize"),
        "{status:?}"
    );
}

/// A scratch directory with `reload` 1.0 and a manager over it with `extra` config.
fn manager_for_reload(extra: &str) -> (tempfile::TempDir, PluginManager) {
    let dir = scratch();
    install_as("reload-v1", dir.path(), &lib("reload"));
    let manager = manager(dir.path(), extra);
    (dir, manager)
}

#[test]
fn health_reports_a_plugin_that_cannot_say_how_it_is() {
    let dir = scratch();
    copy_as(&artifacts().library("panicky"), dir.path(), &lib("panicky"));
    let manager = manager(dir.path(), "");
    let health = manager.health("panicky").unwrap();
    assert_eq!(health.state, LifecycleState::Ready);
    assert!(
        health.problem.as_deref().unwrap_or("").contains("status panics on purpose"),
        "{health:?}"
    );
    assert!(manager.status().plugins[0].health.is_some(), "the last check is kept");
}

#[test]
fn metrics_count_every_call_made_from_8_threads() {
    let dir = scratch();
    copy_as(&artifacts().library("basic"), dir.path(), &lib("basic"));
    let manager = manager(dir.path(), "[metrics]\nsample_every = 1\n");
    let basic = manager.get("basic").unwrap();
    const THREADS: u64 = 8;
    const CALLS: u64 = 500;
    thread::scope(|scope| {
        for _ in 0..THREADS {
            let basic = basic.clone();
            scope.spawn(move || {
                for i in 0..CALLS {
                    basic.add(i as f64, 1.0).unwrap();
                    let divided = basic.divide(1.0, if i % 10 == 0 { 0.0 } else { 2.0 });
                    assert_eq!(divided.is_err(), i % 10 == 0);
                }
            });
        }
    });
    let status = basic.status();
    let op = |name: &str| status.ops.iter().find(|o| o.op == name).unwrap().clone();
    let add = op("add");
    assert_eq!(add.calls, THREADS * CALLS);
    assert_eq!(add.error_count(), 0);
    assert_eq!(add.success_rate(), 1.0);
    let latency = add.latency.expect("every call is timed");
    assert_eq!(latency.sampled, THREADS * CALLS);
    assert!(latency.p50 <= latency.p99 && latency.p99 <= latency.max, "{latency:?}");
    let divide = op("divide");
    assert_eq!(divide.calls, THREADS * CALLS);
    assert_eq!(divide.errors, [(ErrorCode::DivisionByZero, THREADS * CALLS / 10)]);
    assert_eq!(divide.retries, 0, "business errors are never retried");
    assert!((divide.success_rate() - 0.9).abs() < 1e-9);
    assert_eq!(status.in_flight, 0);
    assert!(status.uptime > Duration::ZERO);

    // With timing off nothing is timed; the counts are the same.
    let untimed = self::manager(dir.path(), "[metrics]\nsample_every = 0\n");
    untimed.call("basic", Op::Add, 1.0, 2.0).unwrap();
    let ops = &untimed.status().plugins[0].ops;
    assert_eq!((ops[0].calls, ops[0].latency), (1, None));
}

#[test]
fn retryable_errors_are_retried_with_backoff_and_business_errors_are_not() {
    // Every second calculation fails with Internal: each call after the first fails once and
    // succeeds on its retry, after the backoff.
    let (_dir, manager) =
        manager_for_reload("[retry]\nbackoff = \"40ms\"\n[plugins.reload]\nfail_every = 2\n");
    let started = Instant::now();
    for _ in 0..10 {
        assert_eq!(manager.call("reload", Op::Multiply, 2.0, 3.0).unwrap(), 6.0);
    }
    let elapsed = started.elapsed();
    let multiply = manager.status().plugins[0].ops[0].clone();
    assert_eq!(multiply.op, "multiply");
    assert_eq!(multiply.retries, 9, "{multiply:?}");
    assert_eq!(multiply.errors, [(ErrorCode::Internal, 9)]);
    assert!(elapsed >= Duration::from_millis(9 * 40), "9 backoffs of 40 ms took {elapsed:?}");

    // A business error is the answer: never retried.
    let (_dir, manager) = manager_for_reload("[retry]\nbackoff = \"1ms\"\n");
    assert!(matches!(
        manager.call("reload", Op::Divide, 1.0, 0.0),
        Err(Error::Call { code: ErrorCode::DivisionByZero, .. })
    ));
    let divide = manager.status().plugins[0].ops[0].clone();
    assert_eq!((divide.op, divide.calls, divide.retries), ("divide", 1, 0));
    assert_eq!(divide.errors, [(ErrorCode::DivisionByZero, 1)]);

    // Without retries, the failures reach the caller.
    let (_dir, manager) =
        manager_for_reload("[retry]\nmax_retries = 0\n[plugins.reload]\nfail_every = 2\n");
    let failed =
        (0..10).filter(|_| manager.call("reload", Op::Multiply, 2.0, 3.0).is_err()).count();
    assert_eq!(failed, 5);
}

#[test]
fn shutdown_waits_for_calls_in_flight_and_reports_failures() {
    let (_dir, manager) = manager_for_reload("[plugins.reload]\ndelay_ms = 200\n");
    let manager = Arc::new(manager);
    let reload = manager.get("reload").unwrap();
    let callers: Vec<_> = (0..4)
        .map(|i| {
            let reload = reload.clone();
            thread::spawn(move || reload.multiply(i as f64, 2.0))
        })
        .collect();
    wait_for("4 calls in flight", || reload.status().in_flight == 4);
    let report = manager.shutdown();
    assert_eq!(report.closed, ["reload"]);
    assert!(report.failed.is_empty(), "{:?}", report.failed);
    for (i, caller) in callers.into_iter().enumerate() {
        assert_eq!(caller.join().unwrap().unwrap(), i as f64 * 2.0, "calls in flight finish");
    }
    assert!(matches!(reload.add(1.0, 1.0), Err(Error::ShuttingDown { .. })));
    assert_eq!(reload.status().rejected, 1);

    // A call longer than the timeout, and a plugin whose shutdown fails: both reported.
    let (_dir, manager) = manager_for_reload(
        "[manager]\nshutdown_timeout = \"10ms\"\n[plugins.reload]\ndelay_ms = 400\nfail_shutdown = true\n",
    );
    let reload = manager.get("reload").unwrap();
    let caller = thread::spawn(move || reload.add(1.0, 1.0));
    wait_for("a call in flight", || manager.status().plugins[0].in_flight == 1);
    let report = manager.shutdown();
    assert!(report.closed.is_empty());
    let messages: Vec<String> = report.failed.iter().map(ToString::to_string).collect();
    assert!(matches!(report.failed[0], Error::Timeout { in_flight: 1, .. }), "{messages:?}");
    assert!(
        messages[1].contains("shutdown: internal plugin error: fail_shutdown is set"),
        "{messages:?}"
    );
    // The plugin admitted the call before its shutdown, so it still finishes (`1 + 1 + 1`).
    assert_eq!(caller.join().unwrap().unwrap(), 3.0);
}

#[test]
#[allow(clippy::print_stderr)] // It reports the memory cost of reloads (see with --nocapture).
fn hot_reload_under_load_loses_no_call() {
    let dir = scratch();
    install_as("reload-v1", dir.path(), &lib("reload"));
    let manager =
        manager(dir.path(), "auto_scan = true\nscan_interval = \"1s\"\n[retry]\nmax_retries = 0\n");
    let reload = manager.get("reload").unwrap();
    assert_eq!(reload.add(0.0, 0.0).unwrap(), 1.0);
    let rss_before = resident_kib();

    let stop = Arc::new(AtomicBool::new(false));
    // Calls made by each caller.
    let calls: Arc<[AtomicU64; 4]> = Arc::new(Default::default());
    let (errors_tx, errors_rx) = mpsc::channel();
    let callers: Vec<_> = (0..4)
        .map(|t| {
            let (reload, stop, calls, errors) =
                (reload.clone(), stop.clone(), calls.clone(), errors_tx.clone());
            thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match reload.add(0.0, 0.0) {
                        Ok(answer) => assert!(answer == 1.0 || answer == 2.0, "{answer}"),
                        Err(err) => errors.send(err.to_string()).unwrap(),
                    }
                    calls[t].fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    let made = |t: usize| calls[t].load(Ordering::Relaxed);
    drop(errors_tx);

    const RELOADS: u64 = 20;
    for i in 0..RELOADS {
        let (package, major) = if i % 2 == 0 { ("reload-v2", 2.0) } else { ("reload-v1", 1.0) };
        install_as(package, dir.path(), &lib("reload"));
        wait_for(&format!("reload {} to answer", i + 1), || {
            reload.generation() == i + 2 && reload.add(0.0, 0.0).is_ok_and(|v| v == major)
        });
        // Every caller goes on calling on the new build: none is stuck in the swap.
        let before: Vec<u64> = (0..4).map(made).collect();
        wait_for(&format!("every caller to call after reload {}", i + 1), || {
            (0..4).all(|t| made(t) >= before[t] + 20)
        });
    }
    stop.store(true, Ordering::Relaxed);
    for caller in callers {
        caller.join().unwrap();
    }
    let errors: Vec<String> = errors_rx.iter().collect();
    assert!(
        errors.is_empty(),
        "{} calls failed during reloads, e.g. {:?}",
        errors.len(),
        errors.first()
    );
    assert_eq!(reload.identity().version().to_string(), "1.0.0", "the last build installed serves");
    let status = reload.status();
    assert_eq!(status.reloads, RELOADS);
    assert_eq!(status.reload_failures, 0);
    let rss_after = resident_kib();
    eprintln!(
        "hot reload: {} calls from 4 threads over {RELOADS} reloads, none failed; resident memory \
         {rss_before} KiB -> {rss_after} KiB ({} KiB per reload)",
        (0..4).map(made).sum::<u64>(),
        (rss_after.saturating_sub(rss_before)) / RELOADS,
    );

    // A replacement that fails to load leaves the old library serving, with the error recorded.
    let target = dir.path().join(lib("reload"));
    let temp = dir.path().join(".broken.partial");
    std::fs::write(&temp, b"not a library").unwrap();
    std::fs::rename(&temp, &target).unwrap();
    wait_for("the failed reload to be recorded", || reload.status().reload_failures == 1);
    assert_eq!(reload.add(0.0, 0.0).unwrap(), 1.0);
    let last = reload.status().last_error.unwrap_or_default();
    assert!(last.contains("unrecognized file format") && last.contains(&lib("reload")), "{last}");
    assert!(manager.shutdown().failed.is_empty());
}

#[test]
fn a_reload_waits_for_the_calls_on_the_replaced_library_from_every_thread() {
    let (dir, manager) =
        manager_for_reload("[retry]\nmax_retries = 0\n[plugins.reload]\ndelay_ms = 300\n");
    let reload = manager.get("reload").unwrap();
    // First one caller (a thread with a counter shard of its own, unless 16 other threads hold
    // all of them), then 20: more than there are shards, so calls are tracked both ways a
    // reload has to wait for.
    for (threads, next, old_answer) in [(1, "reload-v2", 1.0), (20, "reload-v1", 2.0)] {
        let callers: Vec<_> = (0..threads)
            .map(|_| {
                let reload = reload.clone();
                thread::spawn(move || reload.add(0.0, 0.0))
            })
            .collect();
        wait_for("every call in flight", || reload.status().in_flight == threads);
        install_as(next, dir.path(), &lib("reload"));
        let report = manager.scan();
        assert_eq!(report.reloaded, ["reload"], "{report:?}");
        // `scan` returns once the old library is shut down, which waits for the calls on it.
        assert_eq!(reload.status().in_flight, 0, "{threads} thread(s): the reload did not wait");
        for caller in callers {
            let answer = caller.join().unwrap().unwrap();
            assert_eq!(answer, old_answer, "calls in flight finish on the old library");
        }
        assert_eq!(reload.add(0.0, 0.0).unwrap(), 3.0 - old_answer, "new calls, new library");
    }
    assert_eq!(reload.status().rejected, 0);
    assert!(manager.shutdown().failed.is_empty());
}

#[test]
fn a_replaced_library_whose_calls_outlast_the_wait_shuts_down_with_the_manager() {
    let (dir, manager) = manager_for_reload(
        "[manager]\nshutdown_timeout = \"10ms\"\n[retry]\nmax_retries = 0\n\
         [plugins.reload]\ndelay_ms = 400\nfail_shutdown = true\n",
    );
    let reload = manager.get("reload").unwrap();
    let caller = {
        let reload = reload.clone();
        thread::spawn(move || reload.add(0.0, 0.0))
    };
    wait_for("a call in flight", || reload.status().in_flight == 1);
    install_as("reload-v2", dir.path(), &lib("reload"));
    // The reload waits 10 ms for the call, gives up, and leaves the old library running.
    assert_eq!(manager.scan().reloaded, ["reload"]);
    assert_eq!(caller.join().unwrap().unwrap(), 1.0, "the call finishes on the old library");
    let report = manager.shutdown();
    // Both libraries are shut down now, and both say so (`fail_shutdown`): the serving one and
    // the replaced one, whose shutdown was put off.
    let messages: Vec<String> = report.failed.iter().map(ToString::to_string).collect();
    assert_eq!(messages.len(), 2, "{messages:?}");
    assert!(messages.iter().all(|m| m.contains("fail_shutdown is set")), "{messages:?}");
}

/// This process's resident memory, from /proc (0 where there is none).
fn resident_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

#[test]
fn the_example_config_parses_and_bad_configs_name_line_and_key() {
    let example = xtask::workspace_root().join("calcplug.example.toml");
    let config = ManagerConfig::from_file(&example).unwrap_or_else(|err| panic!("{err}"));
    assert!(config.auto_scan());
    assert_eq!(config.plugin("basic").get("precision"), Some("4"));

    let dir = scratch();
    let cases = [
        ("[discovery]\nauto_scan = true\nscan_intervall = \"5s\"\n", 3, "discovery.scan_intervall"),
        ("[discovery]\nauto_scan = 1\n", 2, "discovery.auto_scan"),
        ("[manager]\n\nshutdown_timeout = \"forever\"\n", 3, "manager.shutdown_timeout"),
        ("[plugins.basic]\nprecision = { digits = 4 }\n", 2, "plugins.basic.precision"),
        ("[discovery]\npaths = [\"does-not-exist\"]\n", 2, "discovery.paths"),
    ];
    for (text, line, key) in cases {
        let path = dir.path().join("calcplug.toml");
        std::fs::write(&path, text).unwrap();
        let err = ManagerConfig::from_file(&path).and_then(PluginManager::start).unwrap_err();
        match &err {
            Error::Config { line: l, key: k, .. } => {
                assert_eq!((*l, k.as_str()), (line, key), "{err}")
            }
            other => panic!("{text}: {other:?}"),
        }
        let shown = err.to_string();
        assert!(shown.starts_with(&format!("{}:{line}: `{key}`: ", path.display())), "{shown}");

        // The CLI shows the same line, on every command, and nothing on stdout.
        for command in [&["list"][..], &["info", "basic"], &["call", "basic", "add", "1", "2"]] {
            let mut args = vec!["--config", path.to_str().unwrap()];
            args.extend_from_slice(command);
            let out = calcplug(&args);
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(1), "{command:?}: {stderr}");
            assert_eq!(stderr, format!("error: {shown}\n"), "{command:?}");
            assert!(out.stdout.is_empty(), "{command:?}: {out:?}");
        }
    }
}

fn calcplug(args: &[&str]) -> std::process::Output {
    crate::util::calcplug().args(args).output().expect("run calcplug")
}

/// Checks the Prometheus text exposition rules a scraper enforces: each family has one HELP and
/// one TYPE line before its samples, samples belong to a declared family (summaries may add
/// `_sum` and `_count`), label values are quoted and escaped, values are floats, no series
/// repeats.
#[track_caller]
fn check_prometheus(text: &str) {
    use std::collections::{HashMap, HashSet};
    let mut types: HashMap<String, String> = HashMap::new();
    let mut helps = HashSet::new();
    let mut series = HashSet::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let name = rest.split(' ').next().unwrap();
            assert!(helps.insert(name.to_owned()), "second HELP for {name}");
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split(' ');
            let (name, kind) = (parts.next().unwrap(), parts.next().unwrap());
            assert!(
                ["counter", "gauge", "summary", "histogram", "untyped"].contains(&kind),
                "{line}"
            );
            assert!(helps.contains(name), "TYPE before HELP: {line}");
            assert!(
                types.insert(name.to_owned(), kind.to_owned()).is_none(),
                "second TYPE: {line}"
            );
            continue;
        }
        assert!(!line.starts_with('#') && !line.is_empty(), "stray line {line:?}");
        let (name_labels, value) = line.rsplit_once(' ').unwrap();
        assert!(value.parse::<f64>().is_ok() || ["NaN", "+Inf", "-Inf"].contains(&value), "{line}");
        let (name, labels) = match name_labels.split_once('{') {
            Some((name, labels)) => (name, labels.strip_suffix('}').expect("labels end with }")),
            None => (name_labels, ""),
        };
        assert!(
            name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "metric name {name:?}"
        );
        let family = [
            name,
            name.trim_end_matches("_sum"),
            name.trim_end_matches("_count"),
            name.trim_end_matches("_bucket"),
        ]
        .into_iter()
        .find(|f| types.contains_key(*f))
        .unwrap_or_else(|| panic!("sample of an undeclared family: {line}"));
        if family != name {
            assert!(["summary", "histogram"].contains(&types[family].as_str()), "{line}");
            if name.ends_with("_bucket") {
                assert_eq!(types[family], "histogram", "{line}");
            }
        }
        // Labels: name="value" pairs, values with only escaped quotes, backslashes, newlines.
        let mut rest = labels;
        while !rest.is_empty() {
            let (label, after) =
                rest.split_once("=\"").unwrap_or_else(|| panic!("label in {line}"));
            assert!(label.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'), "{label:?}");
            let mut chars = after.char_indices();
            let end = loop {
                match chars.next() {
                    Some((_, '\\')) => {
                        let (_, escaped) = chars.next().expect("escape");
                        assert!(['\\', '"', 'n'].contains(&escaped), "bad escape in {line}");
                    }
                    Some((i, '"')) => break i,
                    Some((_, c)) => assert!(c != '\n'),
                    None => panic!("unterminated label value in {line}"),
                }
            };
            rest = after[end + 1..].strip_prefix(',').unwrap_or(&after[end + 1..]);
        }
        assert!(series.insert(name_labels.to_owned()), "repeated series {name_labels}");
    }
}

#[test]
fn prometheus_output_follows_the_exposition_format() {
    let dir = scratch();
    copy_as(&artifacts().library("basic"), dir.path(), &lib("basic"));
    // A directory whose name needs escaping in a label value.
    let odd = dir.path().join("we\"ird\\dir");
    std::fs::create_dir(&odd).unwrap();
    copy_as(&artifacts().library("reload-v1"), &odd, &lib("reload"));
    let text = format!(
        "[discovery]\npaths = [{:?}, {:?}]\n[metrics]\nsample_every = 1\n",
        dir.path().display().to_string(),
        odd.display().to_string()
    );
    let config = ManagerConfig::parse(&text, &dir.path().join("calcplug.toml")).unwrap();
    let manager = PluginManager::start(config).unwrap();
    manager.call("basic", Op::Add, 1.0, 2.0).unwrap();
    manager.call("basic", Op::Divide, 1.0, 0.0).unwrap_err();
    manager.call("reload", Op::Subtract, 1.0, 2.0).unwrap();
    let exposition = manager.status().prometheus();
    check_prometheus(&exposition);
    assert!(
        exposition.contains("calcplug_calls_total{plugin=\"basic\",op=\"add\"} 1\n"),
        "{exposition}"
    );
    assert!(
        exposition.contains("calcplug_call_errors_total{plugin=\"basic\",op=\"divide\",code=\"DivisionByZero\"} 1\n"),
        "{exposition}"
    );
    assert!(exposition.contains("we\\\"ird\\\\dir"), "{exposition}");
    assert!(
        exposition.contains("calcplug_call_latency_seconds_count{plugin=\"basic\",op=\"add\"} 1\n")
    );
}

#[test]
fn calls_work_with_full_fences_where_membarrier_is_not_used() {
    // The fallback of `host/src/manager/fence.rs`, which this machine would not take by itself.
    let dir = artifacts().plugin_dir.to_str().unwrap().to_owned();
    let out = crate::util::calcplug()
        .args(["--plugin-dir", &dir, "status", "--json"])
        .args(["--call", "basic:add:2:3", "--call", "basic:add:1:1", "--call", "basic:divide:1:0"])
        .env("CALCPLUG_FENCE", "full")
        .env("CALCPLUG_LOG", "host::manager=debug")
        .env("NO_COLOR", "1")
        .output()
        .expect("run calcplug");
    // The division by zero is a failed `--call`: exit 1, after the status.
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(log.contains("asymmetric=false"), "{log}");
    assert!(
        log.ends_with(
            "error: --call basic:divide:1:0: basic: divide: division by zero: cannot divide 1 by \
             zero\n(1 of the 3 --call calls failed)\n"
        ),
        "{log}"
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let basic = json["plugins"].as_array().unwrap().iter().find(|p| p["name"] == "basic").unwrap();
    let ops = basic["operations"].as_array().unwrap();
    let add = ops.iter().find(|o| o["op"] == "add").unwrap();
    assert_eq!(add["calls"], 2, "{json:#}");
    let divide = ops.iter().find(|o| o["op"] == "divide").unwrap();
    assert_eq!(divide["errors"]["DivisionByZero"], 1, "{json:#}");
    assert_eq!(basic["in_flight"], 0);
}

#[test]
fn status_command_prints_metrics_as_text_json_and_prometheus() {
    let dir = &artifacts().plugin_dir;
    let dir = dir.to_str().unwrap();
    let calls =
        ["--call", "basic:add:2:3", "--call", "basic:divide:1:0", "--call", "basic:subtract:-1:2"];
    let mut args = vec!["--plugin-dir", dir, "status", "--prometheus"];
    args.extend(calls);
    let out = calcplug(&args);
    let failed =
        "error: --call basic:divide:1:0: basic: divide: division by zero: cannot divide 1 \
                  by zero\n(1 of the 3 --call calls failed)\n";
    assert_eq!(
        (out.status.code(), String::from_utf8_lossy(&out.stderr).as_ref()),
        (Some(1), failed)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    check_prometheus(&text);
    assert!(text.contains("calcplug_calls_total{plugin=\"basic\",op=\"add\"} 1\n"), "{text}");
    assert!(text.contains("code=\"DivisionByZero\"} 1\n"), "{text}");

    let mut args = vec!["--plugin-dir", dir, "status", "--json"];
    args.extend(calls);
    let out = calcplug(&args);
    assert_eq!(
        (out.status.code(), String::from_utf8_lossy(&out.stderr).as_ref()),
        (Some(1), failed)
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let basic = json["plugins"].as_array().unwrap().iter().find(|p| p["name"] == "basic").unwrap();
    assert_eq!(basic["state"], "ready");
    let divide =
        basic["operations"].as_array().unwrap().iter().find(|o| o["op"] == "divide").unwrap();
    assert_eq!(divide["errors"]["DivisionByZero"], 1);
    assert_eq!(divide["success_rate"], 0.0);

    let out = calcplug(&["--plugin-dir", dir, "status"]);
    assert_eq!((out.status.code(), String::from_utf8_lossy(&out.stderr).as_ref()), (Some(0), ""));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!(
            "basic          1.0.0    ready         in-process     generation 1  \
             {dir}/libbasic.so\n\
             scientific     1.1.0    ready         in-process     generation 1  \
             {dir}/libscientific.so\n"
        )
    );

    // `--config` supplies the directories and each plugin's `initialize` config.
    let scratch = scratch();
    let config = scratch.path().join("calcplug.toml");
    std::fs::write(
        &config,
        format!("[discovery]\npaths = [{dir:?}]\n[plugins.basic]\nprecision = 2\n"),
    )
    .unwrap();
    let out =
        calcplug(&["--config", config.to_str().unwrap(), "call", "basic", "divide", "1", "3"]);
    assert_eq!((out.status.code(), String::from_utf8_lossy(&out.stderr).as_ref()), (Some(0), ""));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "0.33\n", "{out:?}");
}

#[cfg(unix)]
#[test]
fn watch_picks_up_a_new_plugin_and_a_rebuilt_one_then_stops_on_ctrl_c() {
    let dir = scratch();
    let mut child = crate::util::calcplug()
        .args(["--plugin-dir", dir.path().to_str().unwrap(), "watch"])
        .env_remove("CALCPLUG_LOG")
        .env("NO_COLOR", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start calcplug watch");
    let (lines_tx, lines) = mpsc::channel();
    let stderr = child.stderr.take().unwrap();
    thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut seen = Vec::new();
    let mut expect = |fragments: &[&str]| {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match lines.recv_timeout(left) {
                Ok(line) => {
                    let hit = fragments.iter().all(|f| line.contains(f));
                    seen.push(line);
                    if hit {
                        return;
                    }
                }
                Err(_) => panic!("no log line with {fragments:?}; got:\n{}", seen.join("\n")),
            }
        }
    };
    expect(&["watching"]);
    install_as("reload-v1", dir.path(), &lib("reload"));
    expect(&["loaded", "reload"]);
    install_as("reload-v2", dir.path(), &lib("reload"));
    expect(&["reloaded", "version=2.0.0", "old=1.0.0"]);
    let killed = Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap();
    assert!(killed.success());
    expect(&["shut down", "closed=reload"]);
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}");
}

#[test]
fn out_of_process_plugins_hot_reload_by_starting_a_new_runner() {
    let dir = scratch();
    install_as("reload-v1", dir.path(), &lib("reload"));
    let extra = format!(
        "auto_scan = true\n[isolation]\nmode = \"out-of-process\"\nrunner = {:?}\n",
        artifacts().runner.display().to_string()
    );
    let manager = manager(dir.path(), &extra);
    let reload = manager.get("reload").unwrap();
    assert_eq!(reload.add(0.0, 0.0).unwrap(), 1.0);
    assert_eq!(manager.status().plugins[0].mode, host::Mode::OutOfProcess);
    let old_runner = reload.status().runner_pid.expect("a runner serves it");
    install_as("reload-v2", dir.path(), &lib("reload"));
    wait_for("the new runner to answer", || {
        reload.generation() == 2 && reload.add(0.0, 0.0).is_ok_and(|v| v == 2.0)
    });
    assert_eq!(reload.identity().version().to_string(), "2.0.0");
    let new_runner = reload.status().runner_pid.expect("a runner serves it");
    assert_ne!(new_runner, old_runner);
    // The replaced library's runner is stopped once its calls are done, not at shutdown.
    wait_for("the replaced runner to exit", || !crate::ipc::process_alive(old_runner));
    assert!(crate::ipc::process_alive(new_runner));
    let report = manager.shutdown();
    assert!(report.failed.is_empty(), "{report:?}");
}

#[test]
fn health_checks_run_every_health_interval() {
    // Without an interval, none runs on its own: checked once the other manager ran three.
    let (_quiet_dir, quiet) = manager_for_reload("");
    let (_dir, manager) = manager_for_reload("[manager]\nhealth_interval = \"50ms\"\n");
    let reload = manager.get("reload").unwrap();
    // Each check asks the plugin for its status, whose uptime says when it was asked: the
    // uptimes of the checks seen, in order.
    let mut checks: Vec<Duration> = Vec::new();
    wait_for("three health checks", || {
        if let Some(health) = reload.status().health {
            assert!(health.is_healthy(), "{health:?}");
            let status = health.status.expect("the plugin's own status");
            assert_eq!(status.state, interface::PluginState::Ready);
            if checks.last() != Some(&status.uptime) {
                checks.push(status.uptime);
            }
        }
        checks.len() >= 3
    });
    for pair in checks.windows(2) {
        assert!(pair[1] >= pair[0] + Duration::from_millis(50), "checks at uptimes {checks:?}");
    }
    assert!(quiet.get("reload").unwrap().status().health.is_none());
}

#[test]
fn dropping_the_manager_shuts_it_down_even_with_handles_alive() {
    let dir = scratch();
    install_as("reload-v1", dir.path(), &lib("reload"));
    let toml = format!(
        "[isolation]\nmode = \"out-of-process\"\nrunner = {:?}\n",
        artifacts().runner.display().to_string()
    );
    let manager = manager(dir.path(), &toml);
    let reload = manager.get("reload").unwrap();
    assert_eq!(reload.add(1.0, 1.0).unwrap(), 3.0);
    let runner = reload.status().runner_pid.expect("a runner serves it");
    drop(manager);
    assert!(matches!(reload.add(1.0, 1.0), Err(Error::ShuttingDown { .. })));
    assert!(!crate::ipc::process_alive(runner), "the runner outlived its manager");
}

#[test]
fn metrics_count_every_call_from_more_threads_than_shards() {
    let (_dir, manager) = manager_for_reload("");
    let reload = manager.get("reload").unwrap();
    const THREADS: u64 = 24;
    const CALLS: u64 = 500;
    thread::scope(|scope| {
        for _ in 0..THREADS {
            let reload = reload.clone();
            scope.spawn(move || {
                for _ in 0..CALLS {
                    reload.multiply(2.0, 3.0).unwrap();
                }
            });
        }
    });
    let ops = reload.status().ops;
    assert_eq!(ops.len(), 1, "{ops:?}");
    assert_eq!((ops[0].op, ops[0].calls), ("multiply", THREADS * CALLS));
    assert_eq!(ops[0].error_count(), 0);
    assert_eq!(reload.status().in_flight, 0);
}

#[test]
fn reload_and_shutdown_under_calls_hold_with_full_fences_too() {
    // The fence is chosen once per process: run the two tests that reload and shut down under
    // calls again, in a child of this test binary with the fallback (full fences) forced.
    // `calls_work_with_full_fences_where_membarrier_is_not_used` shows the variable selects it.
    let tests = [
        "manager::hot_reload_under_load_loses_no_call",
        "manager::shutdown_waits_for_calls_in_flight_and_reports_failures",
    ];
    let out = Command::new(std::env::current_exe().unwrap())
        .arg("--exact")
        .args(tests)
        .env("CALCPLUG_FENCE", "full")
        .output()
        .expect("run this test binary again");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("test result: ok. 2 passed"), "{stdout}");
}

#[test]
fn polling_at_scan_interval_finds_a_change_no_file_event_announced() {
    // inotify tells a directory about writes made through a name in it: a file written through
    // a hard link in another directory changes here without an event. Only polling sees it.
    let watched = scratch();
    let elsewhere = scratch();
    let name = lib("basic");
    std::fs::write(watched.path().join(&name), b"not a library yet").unwrap();
    std::fs::hard_link(watched.path().join(&name), elsewhere.path().join(&name)).unwrap();
    let polling = manager(watched.path(), "auto_scan = true\nscan_interval = \"1s\"\n");
    let events_only = manager(watched.path(), "auto_scan = true\nscan_interval = \"1h\"\n");
    assert!(polling.get("basic").is_none() && events_only.get("basic").is_none());
    assert_eq!(polling.status().problems.len(), 1, "the placeholder is refused");

    std::fs::write(
        elsewhere.path().join(&name),
        std::fs::read(artifacts().library("basic")).unwrap(),
    )
    .unwrap();
    wait_for("the next poll to load basic", || polling.get("basic").is_some());
    assert_eq!(polling.get("basic").unwrap().add(2.0, 3.0).unwrap(), 5.0);
    // A file event would have woken the other manager within its 50 ms settle time.
    assert!(events_only.get("basic").is_none(), "an event announced the change after all");
}
