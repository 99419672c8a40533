//! Supervision of out-of-process runners under fire: four threads call through the plugin
//! manager while the runner is killed with SIGKILL, now and then or in a storm.
//!
//! A crash is one failure however many callers see it, so occasional kills never open the
//! circuit and every call succeeds (retried on the new runner); a storm opens it, calls fail
//! fast with `CircuitOpen`, and a trial runner closes it again within seconds of the last kill.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use host::remote::Circuit;
use host::{Error, Handle, PluginManager};

use crate::ipc::process_alive;
use crate::util::{artifacts, copy_as, scratch};

/// What the callers and the killer saw.
#[derive(Debug, Default)]
struct Soak {
    /// Calls that returned the right sum.
    ok: u64,
    /// Every failed call: when (since the start) and the error.
    failures: Vec<(Duration, Error)>,
    /// When each kill happened (since the start).
    kills: Vec<Duration>,
    /// Each killed runner's pid and socket directory.
    victims: Vec<(u32, Option<PathBuf>)>,
    /// Per thread: calls completed between consecutive kills (the last entry runs to the end).
    progress: Vec<Vec<u64>>,
    /// Per thread: its last failed call (since the start), and how many calls succeeded after it.
    last_failure: Vec<(Option<Duration>, u64)>,
    /// The longest time any caller went without a successful call (first failure to next
    /// success).
    longest_outage: Duration,
    /// Circuit states `status` showed while the storm ran.
    circuits: BTreeSet<&'static str>,
    /// The slowest single call (one that waited for a restart, say).
    slowest_call: Duration,
}

/// A manager serving `basic` out of process with the default supervision settings.
fn isolated_basic() -> (tempfile::TempDir, PluginManager) {
    let dir = scratch();
    copy_as(&artifacts().library("basic"), dir.path(), &tests::library_file_name("basic"));
    let toml = format!(
        "[isolation]\nmode = \"out-of-process\"\nrunner = {:?}\n",
        artifacts().runner.display().to_string()
    );
    let config = host::ManagerConfig::parse(&toml, &dir.path().join("calcplug.toml")).unwrap();
    let manager = PluginManager::start(config.with_paths(&[dir.path().to_owned()])).unwrap();
    (dir, manager)
}

/// Four threads call `add` for `kill_for + tail`; the runner is SIGKILLed every `every` during
/// `kill_for`, starting after one period.
fn soak(handle: &Handle, every: Duration, kill_for: Duration, tail: Duration) -> Soak {
    let started = Instant::now();
    let stop = AtomicBool::new(false);
    let kills_done = std::sync::atomic::AtomicUsize::new(0);
    let report = Mutex::new(Soak::default());
    std::thread::scope(|scope| {
        let mut callers = Vec::new();
        for t in 0..4u32 {
            let (stop, kills_done, report) = (&stop, &kills_done, &report);
            let handle = handle.clone();
            callers.push(scope.spawn(move || {
                let mut ok = 0;
                let mut failures = Vec::new();
                let mut progress = vec![0u64];
                let mut seen_kills = 0;
                let mut last_failure = None;
                let mut ok_since_failure = 0u64;
                let mut outage_since = None;
                let mut longest_outage = Duration::ZERO;
                let mut slowest_call = Duration::ZERO;
                let mut i = 0u32;
                while !stop.load(Ordering::Relaxed) {
                    let a = f64::from(t * 1_000_000 + i % 1_000_000);
                    i = i.wrapping_add(1);
                    let call_started = Instant::now();
                    let result = handle.add(a, 1.0);
                    slowest_call = slowest_call.max(call_started.elapsed());
                    let kills = kills_done.load(Ordering::Acquire);
                    while seen_kills < kills {
                        progress.push(0);
                        seen_kills += 1;
                    }
                    match result {
                        Ok(sum) => {
                            assert_eq!(sum, a + 1.0);
                            ok += 1;
                            ok_since_failure += 1;
                            if let Some(since) = outage_since.take() {
                                longest_outage = longest_outage.max(started.elapsed() - since);
                            }
                            *progress.last_mut().unwrap() += 1;
                        }
                        Err(err) => {
                            last_failure = Some(started.elapsed());
                            ok_since_failure = 0;
                            outage_since.get_or_insert(started.elapsed());
                            failures.push((started.elapsed(), err));
                        }
                    }
                    let deadline = kill_for + tail + Duration::from_secs(30);
                    assert!(started.elapsed() < deadline, "the soak overran by 30 s");
                }
                let mut report = report.lock().unwrap();
                report.ok += ok;
                report.failures.extend(failures);
                report.progress.push(progress);
                report.last_failure.push((last_failure, ok_since_failure));
                report.longest_outage = report.longest_outage.max(longest_outage);
                report.slowest_call = report.slowest_call.max(slowest_call);
            }));
        }
        // The killer: a kill every period while the storm lasts, of whichever runner serves.
        let mut next = started + every;
        while next.duration_since(started) <= kill_for {
            std::thread::sleep(next.saturating_duration_since(Instant::now()));
            let status = handle.status();
            if let Some(circuit) = status.circuit {
                report.lock().unwrap().circuits.insert(circuit_name(circuit));
            }
            if let Some(pid) = status.runner_pid {
                let dir = socket_dir(pid);
                let killed = std::process::Command::new("kill")
                    .args(["-KILL", &pid.to_string()])
                    .status()
                    .is_ok_and(|s| s.success());
                let mut report = report.lock().unwrap();
                if killed {
                    report.kills.push(started.elapsed());
                    report.victims.push((pid, dir));
                }
                drop(report);
                kills_done.fetch_add(1, Ordering::Release);
            }
            next += every;
        }
        std::thread::sleep((started + kill_for + tail).saturating_duration_since(Instant::now()));
        stop.store(true, Ordering::Relaxed);
        for caller in callers {
            caller.join().unwrap();
        }
    });
    report.into_inner().unwrap()
}

fn circuit_name(circuit: Circuit) -> &'static str {
    match circuit {
        Circuit::Closed => "closed",
        Circuit::Open { .. } => "open",
        Circuit::HalfOpen => "half-open",
    }
}

/// The runner's socket directory, from its command line (`calcplug-runner serve LIB DIR`).
pub(crate) fn socket_dir(pid: u32) -> Option<PathBuf> {
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let args: Vec<&[u8]> = cmdline.split(|&b| b == 0).filter(|a| !a.is_empty()).collect();
    match args.as_slice() {
        [_, serve, _, dir] if *serve == b"serve" => {
            Some(PathBuf::from(String::from_utf8_lossy(dir).into_owned()))
        }
        _ => None,
    }
}

/// A soak with a kill every 3 s for 12 s: four kills, each of a new process, no failed call,
/// and every caller served before the first kill, between kills and after; the killed pids.
fn four_kills_lost_nothing(soak: &Soak) -> BTreeSet<u32> {
    assert_eq!(soak.kills.len(), 4, "{:?}", soak.kills);
    assert!(
        soak.failures.is_empty(),
        "{} failed calls, the first: {:?}",
        soak.failures.len(),
        &soak.failures[..soak.failures.len().min(3)]
    );
    for progress in &soak.progress {
        assert_eq!(progress.len(), 5, "{progress:?}");
        assert!(progress.iter().all(|&n| n > 0), "a caller stalled: {progress:?}");
    }
    let victims: BTreeSet<u32> = soak.victims.iter().map(|(pid, _)| *pid).collect();
    assert_eq!(victims.len(), 4, "each kill hit a new process: {:?}", soak.victims);
    victims
}

/// After the manager shut down, no runner it started lives and no socket directory remains.
fn nothing_left_behind(soak: &Soak, last_runner: Option<(u32, Option<PathBuf>)>) {
    for (pid, dir) in soak.victims.iter().chain(last_runner.as_ref()) {
        assert!(!process_alive(*pid), "runner {pid} outlived the manager");
        let dir = dir.as_ref().unwrap_or_else(|| panic!("runner {pid}'s command line"));
        assert!(!dir.exists(), "{} was left behind", dir.display());
    }
}

#[test]
#[allow(clippy::print_stderr)] // the figures, for a run with `--nocapture`
fn a_runner_killed_every_3s_loses_no_call() {
    let (_dir, manager) = isolated_basic();
    let basic = manager.get("basic").unwrap();
    basic.add(0.0, 0.0).unwrap();
    let soak =
        soak(&basic, Duration::from_secs(3), Duration::from_secs(12), Duration::from_secs(1));
    let victims = four_kills_lost_nothing(&soak);
    let status = basic.status();
    assert_eq!(status.circuit, Some(Circuit::Closed));
    let last = status.runner_pid.map(|pid| (pid, socket_dir(pid)));
    assert!(last.as_ref().is_some_and(|(pid, _)| !victims.contains(pid)), "{last:?}");
    let report = manager.shutdown();
    assert!(report.failed.is_empty(), "{report:?}");
    nothing_left_behind(&soak, last);
    eprintln!(
        "kill every 3 s for 12 s: {} calls, 0 failed, the slowest call {:?}",
        soak.ok, soak.slowest_call
    );
}

#[test]
#[allow(clippy::print_stderr)] // the figures, for a run with `--nocapture`
fn a_kill_storm_opens_the_circuit_and_it_closes_within_5s_of_the_last_kill() {
    let (_dir, manager) = isolated_basic();
    let basic = manager.get("basic").unwrap();
    basic.add(0.0, 0.0).unwrap();
    let soak =
        soak(&basic, Duration::from_millis(300), Duration::from_secs(6), Duration::from_secs(6));
    let last_kill = *soak.kills.last().expect("the storm killed runners");
    // Five kills in a row open the circuit (5 failures within 60 s): fewer than every tick
    // found a runner to kill, since an open circuit starts none.
    assert!(soak.kills.len() >= 5, "{:?}", soak.kills);
    assert!(soak.kills.len() < 20, "the circuit never held runners back: {:?}", soak.kills);
    assert!(soak.circuits.contains("open"), "status showed only {:?}", soak.circuits);
    // Every failed call failed fast with CircuitOpen: kills were retried on new runners.
    assert!(!soak.failures.is_empty(), "the storm failed no call");
    for (at, err) in &soak.failures {
        assert!(matches!(err, Error::CircuitOpen { .. }), "at {at:?}: {err:?}");
        assert!(*at <= last_kill + Duration::from_secs(5), "still failing at {at:?}: {err}");
    }
    // Every caller is served again within 5 s of the last kill, and stays served.
    for (failed_at, ok_after) in &soak.last_failure {
        assert!(*ok_after > 0, "a caller was never served again: {:?}", soak.last_failure);
        let since = failed_at.map_or(Duration::ZERO, |at| at.saturating_sub(last_kill));
        assert!(since < Duration::from_secs(5), "a caller still failed {since:?} after");
    }
    let status = basic.status();
    assert_eq!(status.circuit, Some(Circuit::Closed));
    let last = status.runner_pid.map(|pid| (pid, socket_dir(pid)));
    let report = manager.shutdown();
    assert!(report.failed.is_empty(), "{report:?}");
    nothing_left_behind(&soak, last);
    eprintln!(
        "kill every 300 ms for 6 s: {} kills, {} calls ok, {} failed (all CircuitOpen), \
         the longest a caller went unserved: {:?}",
        soak.kills.len(),
        soak.ok,
        soak.failures.len(),
        soak.longest_outage
    );
}

/// The same under go-plugin's gRPC protocol: the Go plugin, run by the manager from its config.
#[test]
#[allow(clippy::print_stderr)] // the figures, for a run with `--nocapture`
fn a_go_plugin_killed_every_3s_loses_no_call() {
    let dir = scratch();
    let toml = format!(
        "[plugins.go-calc]\ncommand = [{:?}]\n",
        tests::go_peers().plugin.display().to_string()
    );
    let config = host::ManagerConfig::parse(&toml, &dir.path().join("calcplug.toml")).unwrap();
    let manager = PluginManager::start(config.with_paths(&[dir.path().to_owned()])).unwrap();
    let go_calc = manager.get("go-calc").expect("the Go plugin is served");
    go_calc.add(0.0, 0.0).unwrap();
    let started = Instant::now();
    let soak =
        soak(&go_calc, Duration::from_secs(3), Duration::from_secs(12), Duration::from_secs(1));
    let victims = four_kills_lost_nothing(&soak);
    let status = go_calc.status();
    assert_eq!((status.circuit, status.transport), (Some(Circuit::Closed), "grpc"));
    let last = status.runner_pid.expect("a plugin process serves");
    assert!(manager.shutdown().failed.is_empty());
    for pid in victims.iter().chain([&last]) {
        assert!(!process_alive(*pid), "plugin process {pid} outlived the manager");
    }
    eprintln!(
        "Go plugin killed every 3 s for 12 s: {} calls in {:?}, 0 failed, the slowest call \
         (waiting for a restart) {:?}",
        soak.ok,
        started.elapsed(),
        soak.slowest_call
    );
}

#[test]
fn crashes_and_calls_retried_on_a_new_runner_are_counted_in_the_managers_status() {
    let dir = scratch();
    copy_as(&artifacts().library("crashy"), dir.path(), &tests::library_file_name("crashy"));
    let toml = format!(
        "[isolation]\nmode = \"out-of-process\"\nrunner = {:?}\nretries = 2\n\n\
         [retry]\nmax_retries = 0\n\n[plugins.crashy]\ncrash = \"exit\"\n",
        artifacts().runner.display().to_string()
    );
    let config = host::ManagerConfig::parse(&toml, &dir.path().join("calcplug.toml")).unwrap();
    let manager = PluginManager::start(config.with_paths(&[dir.path().to_owned()])).unwrap();
    // `divide` ends its runner: the call is tried, then retried on two new runners, and fails.
    let err = manager.call("crashy", host::Op::Divide, 1.0, 2.0).unwrap_err();
    assert!(matches!(err, Error::PluginCrashed { .. }), "{err:?}");
    assert_eq!(manager.call("crashy", host::Op::Add, 1.0, 2.0).unwrap(), 3.0);
    let status = manager.status();
    let ops: Vec<(&str, u64, u64, u64)> = status.plugins[0]
        .ops
        .iter()
        .map(|op| (op.op, op.calls, op.error_count(), op.retries))
        .collect();
    assert_eq!(ops, [("add", 1, 0, 0), ("divide", 1, 1, 2)]);
    // A crash is a failed call (no plugin error code: it is counted by what failed it).
    let divide = &status.plugins[0].ops[1];
    assert_eq!(
        (divide.errors.as_slice(), divide.failures.as_slice()),
        (&[][..], &[("PluginCrashed", 1)][..])
    );
    assert_eq!(divide.success_rate(), 0.0);
    let exposition = status.prometheus();
    assert!(
        exposition.contains(
            "calcplug_call_errors_total{plugin=\"crashy\",op=\"divide\",code=\"PluginCrashed\"} 1\n"
        ),
        "{exposition}"
    );
    assert!(
        exposition.contains("calcplug_call_retries_total{plugin=\"crashy\",op=\"divide\"} 2\n"),
        "{exposition}"
    );
    assert!(manager.shutdown().failed.is_empty());
}
