//! The shared-memory channel to runners: it is what calls use, it gives the socket's answers
//! (batches across several chunks included), a runner that vandalises its lane or dies in a
//! call cannot hang or crash the host, and an idle runner sleeps.

use std::sync::Arc;
use std::time::{Duration, Instant};

use host::remote::{Channel, RemoteOptions, RemotePlugin};
use host::{BatchOp, BatchResult, Config, Error, ErrorCode, Op};

use crate::ipc::process_alive;
use crate::util::artifacts;

fn options(channel: Channel) -> RemoteOptions {
    RemoteOptions { runner: Some(artifacts().runner.clone()), channel, ..RemoteOptions::default() }
}

fn remote(package: &str, options: RemoteOptions) -> RemotePlugin {
    let path = artifacts().library(package);
    RemotePlugin::spawn(&path, options).unwrap_or_else(|err| panic!("spawn {package}: {err}"))
}

/// How many shared-memory lanes process `pid` has mapped.
fn lanes_mapped(pid: u32) -> usize {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap_or_default();
    maps.lines().filter(|line| line.contains("/memfd:calcplug-lane")).count()
}

#[test]
fn calls_go_through_a_lane_per_calling_thread_unless_the_socket_is_asked_for() {
    let shm = Arc::new(remote("basic", options(Channel::SharedMemory)));
    shm.initialize(&Config::new()).unwrap();
    assert_eq!(shm.add(1.0, 2.0).unwrap(), 3.0);
    let pid = shm.runner_pid().unwrap();
    assert_eq!(lanes_mapped(pid), 1, "one thread has called: one lane");
    let barrier = std::sync::Barrier::new(3);
    std::thread::scope(|scope| {
        for t in 0..3u32 {
            let (shm, barrier) = (Arc::clone(&shm), &barrier);
            scope.spawn(move || {
                barrier.wait();
                for i in 0..200u32 {
                    let a = f64::from(t * 1000 + i);
                    assert_eq!(shm.add(a, 1.0).unwrap(), a + 1.0);
                }
            });
        }
    });
    // Threads that take turns share lanes (a connection goes back to the pool after each
    // call), so how many the stream above needed depends on the scheduler: at most one per
    // thread.
    assert!((1..=4).contains(&lanes_mapped(pid)), "{} lanes", lanes_mapped(pid));
    assert_eq!(shm.status().unwrap().request_count, 601);

    // Three calls that each take a second overlap whatever the scheduler does: each holds a
    // lane of its own. The runner's first lane (idle in the pool) serves one of them.
    let slow = remote("reload-v1", options(Channel::SharedMemory));
    slow.initialize(&Config::new().with("delay_ms", "1000")).unwrap();
    assert_eq!(slow.subtract(3.0, 1.0).unwrap(), 2.0);
    let pid = slow.runner_pid().unwrap();
    assert_eq!(lanes_mapped(pid), 1);
    let barrier = std::sync::Barrier::new(3);
    std::thread::scope(|scope| {
        for t in 0..3u32 {
            let (slow, barrier) = (&slow, &barrier);
            scope.spawn(move || {
                barrier.wait();
                assert_eq!(slow.subtract(f64::from(t), 1.0).unwrap(), f64::from(t) - 1.0);
            });
        }
    });
    assert_eq!(lanes_mapped(pid), 3, "three calls at once, three lanes");

    let socket = remote("basic", options(Channel::Socket));
    socket.initialize(&Config::new()).unwrap();
    assert_eq!(socket.add(1.0, 2.0).unwrap(), 3.0);
    assert_eq!(lanes_mapped(socket.runner_pid().unwrap()), 0);
    assert_eq!(socket.channel(), Channel::Socket);
}

#[test]
fn both_channels_give_the_in_process_answers_batches_across_chunks_included() {
    let local = crate::util::ready("scientific", &Config::new());
    let remotes = [Channel::SharedMemory, Channel::Socket]
        .map(|channel| remote("scientific", options(channel)));
    // Many lane chunks (16 384 items each) and a partial one, with every kind of outcome.
    let ops: Vec<BatchOp> = (0..1_000_003u32)
        .map(|i| {
            let x = f64::from(i);
            match i % 7 {
                0 => BatchOp::new(Op::Add, x, 0.5),
                1 => BatchOp::new(Op::Divide, x, f64::from(i % 3)),
                2 => BatchOp::new(Op::Sqrt, x - 500_000.0, 0.0),
                3 => BatchOp::new(Op::Multiply, x, 1e300),
                4 => BatchOp { op: interface::OpCode::from_u8(200), a: x, b: x },
                5 => BatchOp::new(Op::Log, 10.0, x),
                _ => BatchOp::new(Op::Subtract, f64::NAN, x),
            }
        })
        .collect();
    let expected = local.batch(&ops).unwrap();
    for plugin in &remotes {
        let channel = plugin.channel();
        plugin.initialize(&Config::new()).unwrap();
        let results = plugin.batch(&ops).unwrap();
        assert_eq!(results.len(), expected.len());
        let differing = results
            .iter()
            .zip(&expected)
            .position(|(a, b)| a.result().map(f64::to_bits) != b.result().map(f64::to_bits));
        assert_eq!(differing, None, "{channel:?}");
        assert_eq!(plugin.call(Op::Pow, 2.0, 10.0).unwrap(), 1024.0, "{channel:?}");
        let err = plugin.call(Op::Sqrt, -1.0, 0.0).unwrap_err();
        assert_eq!(err.code(), Some(ErrorCode::InvalidInput), "{channel:?}");
        // After shutdown, every item fails alone, the same way on both.
        plugin.shutdown().unwrap();
        let results = plugin.batch(&ops[..10]).unwrap();
        let codes: Vec<_> = results.iter().map(BatchResult::result).collect();
        assert_eq!(codes, [Err(ErrorCode::NotInitialized); 10], "{channel:?}");
    }
    let mixed = expected.iter().map(BatchResult::result);
    assert!(mixed.clone().any(|r| r.is_ok()) && mixed.clone().any(|r| r.is_err()));
}

/// Calls `add` on the hostile-lane fixture with `vandal` = `mode`: the error it ends with and
/// how long it took; then checks that the runner was replaced and the plugin serves again.
fn vandalised(mode: &str, call_timeout: Duration) -> (Error, Duration) {
    let plugin = remote(
        "hostile-lane",
        RemoteOptions { call_timeout, retries: 0, ..options(Channel::SharedMemory) },
    );
    plugin.initialize(&Config::new().with("vandal", mode)).unwrap();
    assert_eq!(plugin.subtract(5.0, 3.0).unwrap(), 2.0, "{mode}");
    let pid = plugin.runner_pid().unwrap();
    let started = Instant::now();
    let err = plugin.add(1.0, 2.0).unwrap_err();
    let took = started.elapsed();
    assert!(!process_alive(pid), "{mode}: the vandal runner must be killed");
    assert_eq!(plugin.subtract(5.0, 3.0).unwrap(), 2.0, "{mode}: a new runner serves");
    assert_ne!(plugin.runner_pid(), Some(pid));
    (err, took)
}

#[test]
fn a_runner_writing_garbage_into_its_lane_is_killed_and_the_call_fails_clearly() {
    let timeout = Duration::from_secs(2);
    let cases = [
        ("bad-length", "an answer of 4294967280 bytes in a lane's 1048576"),
        ("bad-id", "in the shared lane"),
        ("torn", "undecodable frame"),
    ];
    for (mode, expected) in cases {
        let (err, took) = vandalised(mode, timeout);
        match &err {
            Error::Wire { plugin, reason } => {
                assert_eq!(plugin, "hostile-lane");
                assert!(reason.contains(expected), "{mode}: {reason}");
            }
            other => panic!("{mode}: expected Error::Wire, got {other:?}"),
        }
        // Seen at the latest when the call's deadline wakes the caller, never later.
        assert!(took < timeout + Duration::from_secs(1), "{mode}: took {took:?}");
    }
    let (err, took) = vandalised("bad-id", timeout);
    let Error::Wire { reason, .. } = &err else { panic!("{err:?}") };
    let seq: Vec<&str> = reason.split(' ').collect();
    // "answer N+7 to request N in the shared lane"
    let (got, asked): (u32, u32) = (seq[1].parse().unwrap(), seq[4].parse().unwrap());
    assert_eq!(got, asked.wrapping_add(7), "{reason}");
    assert!(took < timeout + Duration::from_secs(1));
}

#[test]
fn a_silent_lane_times_out_at_the_call_timeout() {
    let timeout = Duration::from_millis(800);
    let (err, took) = vandalised("silent", timeout);
    assert!(matches!(err, Error::CallTimeout { op: "add", .. }), "{err:?}");
    assert!(took >= timeout && took < timeout + Duration::from_secs(1), "took {took:?}");
}

#[test]
fn a_runner_cannot_resize_its_lane_under_the_host() {
    let plugin = remote("hostile-lane", options(Channel::SharedMemory));
    plugin.initialize(&Config::new().with("vandal", "resize")).unwrap();
    // `add` tries to shrink and grow every lane of its process: the seals refuse both.
    assert_eq!(plugin.add(1.0, 2.0).map_err(|err| err.to_string()), Ok(3.0));
    assert_eq!(plugin.add(2.0, 2.0).map_err(|err| err.to_string()), Ok(4.0));
}

#[test]
fn a_runner_killed_mid_call_fails_the_call_at_once_not_at_its_timeout() {
    let options = RemoteOptions {
        call_timeout: Duration::from_secs(60),
        retries: 0,
        ..options(Channel::SharedMemory)
    };
    let plugin = remote("crashy", options);
    plugin.initialize(&Config::new().with("crash", "hang")).unwrap();
    assert_eq!(plugin.add(1.0, 2.0).unwrap(), 3.0);
    let pid = plugin.runner_pid().unwrap();
    std::thread::scope(|scope| {
        let caller = scope.spawn(|| plugin.divide(1.0, 2.0));
        // The call is in the runner once the plugin counted it (add, then divide).
        let deadline = Instant::now() + Duration::from_secs(10);
        while plugin.status().unwrap().request_count < 2 {
            assert!(Instant::now() < deadline, "the call never reached the runner");
            std::thread::sleep(Duration::from_millis(5));
        }
        let killed = Instant::now();
        std::process::Command::new("kill").args(["-9", &pid.to_string()]).status().unwrap();
        let err = caller.join().unwrap().unwrap_err();
        let noticed = killed.elapsed();
        assert!(
            matches!(&err, Error::PluginCrashed { status, .. } if status.contains("SIGKILL")),
            "{err:?}"
        );
        assert!(noticed < Duration::from_secs(2), "noticed after {noticed:?}");
    });
    assert_eq!(plugin.add(2.0, 2.0).unwrap(), 4.0);
}

/// User plus system CPU time of process `pid`, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat.rsplit(')').next().unwrap().split_whitespace().collect();
    // After the command: state is field 3, utime 14 and stime 15 (1-based, man 5 proc).
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

#[test]
fn an_idle_runner_sleeps_on_its_lane_and_uses_no_cpu() {
    let plugin = remote("basic", options(Channel::SharedMemory));
    plugin.initialize(&Config::new()).unwrap();
    for i in 0..10_000u32 {
        assert_eq!(plugin.add(f64::from(i), 1.0).unwrap(), f64::from(i) + 1.0);
    }
    let pid = plugin.runner_pid().unwrap();
    assert_eq!(lanes_mapped(pid), 1);
    // Past the spin (microseconds), the lane's thread sleeps on its futex.
    std::thread::sleep(Duration::from_millis(100));
    let before = cpu_ticks(pid);
    std::thread::sleep(Duration::from_secs(2));
    let used = cpu_ticks(pid) - before;
    // A tick is 10 ms: a spinning thread would show about 200.
    assert!(used <= 1, "the idle runner used {used} ticks of CPU in 2 s");
    assert_eq!(plugin.add(1.0, 1.0).unwrap(), 2.0, "and wakes for the next call");
}

#[test]
fn requests_and_answers_larger_than_a_lane_still_get_through() {
    let plugin = remote("basic", options(Channel::SharedMemory));
    plugin.initialize(&Config::new()).unwrap();
    assert_eq!(plugin.add(1.0, 2.0).unwrap(), 3.0);
    // 15 MiB of config: more than a lane's 14 MiB of request room.
    let huge = "7".repeat(15 << 20);
    let err = plugin.initialize(&Config::new().with("precision", &huge)).unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::InvalidInput), "{err}");
    assert!(err.to_string().contains("precision"), "{err}");
    // The refusal was the plugin's own: the runner and its lane still serve.
    let pid = plugin.runner_pid();
    // 2 MiB fits a request, but the refusal echoes it and does not fit an answer's 1 MiB:
    // the message is cut, and the caller gets it, not a timeout.
    let big = "7".repeat(2 << 20);
    let err = plugin.initialize(&Config::new().with("precision", &big)).unwrap_err();
    let message = err.to_string();
    assert_eq!(err.code(), Some(ErrorCode::InvalidInput), "{}", &message[..200]);
    assert!(message.ends_with("(cut: the message does not fit a shared-memory lane)"));
    assert!(message.len() < 70 << 10, "{} bytes", message.len());
    assert_eq!(plugin.add(2.0, 2.0).unwrap(), 4.0);
    assert_eq!(plugin.runner_pid(), pid);
    assert_eq!(lanes_mapped(pid.unwrap()), 1);
}
