//! `calcplug bench [--plugin NAME] [--json] [--seconds N]`: a quick, dependency-free benchmark of
//! one plugin on the user's own machine.
//!
//! It prints the per-call and batch figures of `cargo xtask bench-report` for any
//! plugin, without criterion: each figure is the median of many timed slices. The in-process
//! per-call rows take turns in rounds of slices of about 2 ms each, and their ratios and
//! differences are taken within each round, so the machine's drifts in speed cancel out; the
//! other figures are medians of slices of about 10 ms.
//! The per-call references are compiled into this binary (`host::reference`), since the user's
//! plugin has no plain-Rust twin here: a plugin that only adds, called through the root module
//! (the boundary's own cost); `basic`'s checks and rounding through `&dyn Calculator` (the floor
//! the in-process call is compared with); and the same with `basic`'s request counting.
//! The out-of-process figures use `calcplug-runner` (found as `--isolate` finds it), over both
//! channels (shared memory and the socket), next to their floor: a Unix-socket ping-pong with a
//! child process (this program again, started as `calcplug-bench-echo`); without a runner they
//! are reported as not measured, with the reason.

use std::hint::black_box;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use host::reference::{add_calls, value, BareAdder, Checked, Counted, Rounds};
use host::remote::{Channel, RemoteOptions, RemotePlugin};
use host::{BatchOp, BatchResult, Config, ManagerConfig, Op, PluginManager};
use interface::plugin::Calculator;
use serde_json::json;

/// The batch sizes, in items (as in `BENCHMARKS.md`).
const BATCH_SIZES: [usize; 4] = [1, 100, 10_000, 1_000_000];

/// The numbers of threads calling one out-of-process plugin at once.
const THREADS: [usize; 4] = [1, 2, 4, 8];

/// The channels to a runner, as the JSON keys name them: `out_of_process` is the default.
const CHANNELS: [(Channel, &str); 2] =
    [(Channel::SharedMemory, "out_of_process"), (Channel::Socket, "out_of_process_socket")];

/// `calcplug bench`.
pub(crate) fn bench(
    config: ManagerConfig,
    dirs: &[PathBuf],
    name: &str,
    as_json: bool,
    seconds: u64,
) -> anyhow::Result<ExitCode> {
    if seconds == 0 {
        bail!("--seconds must be at least 1");
    }
    // The figures share the time: the five in-process per-call rows (timed in interleaved
    // slices, six slots), the four batch sizes, per channel one per-call latency, four thread
    // counts and the four batch sizes, and the socket floor.
    let slot = Duration::from_secs(seconds).div_f64((6 + 4 + CHANNELS.len() * 9 + 1) as f64);
    let plugin = crate::plugins::find_plugin(dirs, name)?;
    let plugin_config = config.plugin(name);
    plugin.initialize(&plugin_config)?;
    let manager = PluginManager::start(config.with_auto_scan(false))?;
    let handle =
        manager.get(name).with_context(|| format!("the plugin manager does not serve `{name}`"))?;
    plugin.add(1.0, 2.0).with_context(|| format!("{name}: add(1, 2) fails"))?;
    handle.add(1.0, 2.0).with_context(|| format!("{name}: add(1, 2) through the manager fails"))?;
    let spawn = |channel| {
        let options = RemoteOptions { channel, ..RemoteOptions::default() };
        RemotePlugin::spawn(plugin.identity().path(), options)
            .and_then(|remote| remote.initialize(&plugin_config).map(|()| remote))
    };
    let remotes = match CHANNELS.map(|(channel, _)| spawn(channel)) {
        [Ok(shm), Ok(socket)] => Ok([shm, socket]),
        [Err(err), _] | [_, Err(err)] => Err(err),
    };
    let no_ipc = remotes.as_ref().err().map(|err| format!("{err}"));

    let progress = |what: &str| {
        let _ =
            writeln!(io::stderr().lock(), "calcplug bench: {what} ({:.1} s)", slot.as_secs_f64());
    };
    let bare = host::load_builtin::<BareAdder>()?;
    let (checked, counted) = (Checked::default(), Counted::default());
    checked.initialize(&Config::new())?;
    counted.initialize(&Config::new())?;
    let dyn_calls = |reference: &dyn Calculator, n: u64| {
        add_calls(n, |a, b| black_box(reference).add(a, b));
    };
    progress("the in-process rows and their references, in interleaved slices");
    // The five rows take turns in every round, so a drift of this machine's speed moves them
    // together: the ratios and the metrics' cost are compared round by round.
    let rounds = interleaved(
        slot * 6,
        &mut [
            &mut |n| add_calls(n, |a, b| bare.add(a, b)),
            &mut |n| dyn_calls(&checked, n),
            &mut |n| dyn_calls(&counted, n),
            &mut |n| add_calls(n, |a, b| plugin.add(a, b)),
            &mut |n| add_calls(n, |a, b| handle.add(a, b)),
        ],
    );
    let [bare_ns, direct, direct_counted, in_process, metrics] =
        std::array::from_fn(|row| rounds.median(row));
    let metrics_overhead = rounds.median_of(|round| round[4] - round[3]);
    let counted_ratio = rounds.median_of(|round| round[2] / round[1]);
    let in_process_ratio = rounds.median_of(|round| round[3] / round[1]);

    // The floor of a call to another process, then per channel one caller's latency and
    // calls/s from 1 to 8 threads.
    let mut floor = None;
    let mut out_of_process = Vec::new();
    if let Ok(remotes) = &remotes {
        progress("Unix-socket ping-pong to a child process (the floor)");
        let mut echo = Echo::start().context("cannot start the ping-pong's echo process")?;
        floor = Some(latency(slot, || echo.round_trip()));
        for (remote, (channel, _)) in remotes.iter().zip(CHANNELS) {
            progress(&format!("out-of-process call, {}", channel.name()));
            remote
                .add(1.0, 2.0)
                .with_context(|| format!("{name}: add(1, 2) out of process fails"))?;
            let latency = latency(slot, || black_box(value(remote.add(1.0, black_box(2.0)))));
            let mut rates = Vec::new();
            for threads in THREADS {
                progress(&format!("{threads} threads calling out of process, {}", channel.name()));
                rates.push((threads, calls_per_second(slot, threads, remote)));
            }
            out_of_process.push((latency, rates));
        }
    }

    // (items, in-process items/s, failed items, out-of-process items/s per channel)
    let mut batches = Vec::new();
    for size in BATCH_SIZES {
        progress(&format!("batch of {size}"));
        let ops = batch_ops(size);
        let mut results = vec![BatchResult::PENDING; size];
        plugin.process_batch(&ops, &mut results)?;
        let failed = results.iter().filter(|r| r.result().is_err()).count();
        let mut error = None;
        let ns = per_iteration(slot, |n| {
            for _ in 0..n {
                if let Err(err) = plugin.process_batch(black_box(&ops), &mut results) {
                    error.get_or_insert(err);
                }
            }
        });
        let mut remote_ns = Vec::new();
        for remote in remotes.iter().flatten() {
            progress(&format!("batch of {size}, out of process, {}", remote.channel().name()));
            remote_ns.push(per_iteration(slot, |n| {
                for _ in 0..n {
                    if let Err(err) = remote.process_batch(black_box(&ops), &mut results) {
                        error.get_or_insert(err);
                    }
                }
            }));
        }
        if let Some(err) = error {
            return Err(err.into());
        }
        let rate = |ns: f64| size as f64 / ns * 1e9;
        batches.push((size, rate(ns), failed, remote_ns.into_iter().map(rate).collect::<Vec<_>>()));
    }
    drop(manager);
    for remote in remotes.iter().flatten() {
        remote.shutdown()?;
    }
    plugin.shutdown()?;

    let mut out = io::stdout().lock();
    if as_json {
        let value = json!({
            "plugin": plugin.identity().name(),
            "version": plugin.identity().version().to_string(),
            "path": plugin.identity().path().display().to_string(),
            "cpus": std::thread::available_parallelism().map_or(0, |n| n.get()),
            "seconds": seconds,
            "per_call_ns": {
                "bare_abi_call": bare_ns,
                "direct_dyn_reference": direct,
                "direct_dyn_counted": direct_counted,
                "in_process": in_process,
                "in_process_metrics": metrics,
                "metrics_overhead_paired": metrics_overhead,
                "in_process_vs_reference_paired": in_process_ratio,
                "out_of_process": out_of_process.first().map(|(latency, _)| latency.mean),
                "out_of_process_p99": out_of_process.first().map(|(latency, _)| latency.p99),
                "out_of_process_socket": out_of_process.get(1).map(|(latency, _)| latency.mean),
                "out_of_process_socket_p99": out_of_process.get(1).map(|(latency, _)| latency.p99),
                "socket_pingpong": floor.as_ref().map(|floor| floor.mean),
                "socket_pingpong_p99": floor.as_ref().map(|floor| floor.p99),
            },
            "out_of_process_calls_per_sec": THREADS.iter().enumerate().map(|(i, threads)| {
                let mut row = json!({ "threads": threads });
                for ((_, rates), (_, key)) in out_of_process.iter().zip(CHANNELS) {
                    row[key] = json!(rates[i].1);
                }
                row
            }).collect::<Vec<_>>(),
            "batch_items_per_sec": batches.iter().map(|(size, rate, failed, remote)| json!({
                "items": size, "in_process": rate, "failed_items": failed,
                "out_of_process": remote.first(), "out_of_process_socket": remote.get(1),
            })).collect::<Vec<_>>(),
            "not_measured": no_ipc.as_ref().map_or_else(|| json!({}), |why| json!({ "out_of_process": why })),
        });
        serde_json::to_writer_pretty(&mut out, &value)?;
        writeln!(out)?;
        return Ok(ExitCode::SUCCESS);
    }
    writeln!(
        out,
        "{} {} ({})",
        plugin.identity().name(),
        plugin.identity().version(),
        plugin.identity().path().display()
    )?;
    if cfg!(debug_assertions) {
        writeln!(
            out,
            "(a debug build of calcplug: use --release for figures that mean something)"
        )?;
    }
    writeln!(out, "per call, add(1, 2), single thread (median):")?;
    writeln!(
        out,
        "  bare call through the root module       {:>10}  (a plugin that only adds)",
        nanos(bare_ns)
    )?;
    writeln!(out, "  direct dyn call, basic's checks         {:>10}  (the floor)", nanos(direct))?;
    writeln!(
        out,
        "  the same, with basic's counters         {:>10}  {:.2}x the floor (paired)",
        nanos(direct_counted),
        counted_ratio
    )?;
    writeln!(
        out,
        "  in-process                              {:>10}  {:.2}x the floor (paired)",
        nanos(in_process),
        in_process_ratio
    )?;
    writeln!(
        out,
        "  in-process, metrics on                  {:>10}  {:+.1} ns for metrics (paired)",
        nanos(metrics),
        metrics_overhead
    )?;
    if let Some(why) = &no_ipc {
        writeln!(out, "  out-of-process                          not measured: {why}")?;
    }
    if let Some(floor) = &floor {
        writeln!(
            out,
            "  Unix-socket ping-pong (IPC floor)       {:>10}  p99 {}, mean",
            nanos(floor.mean),
            nanos(floor.p99)
        )?;
    }
    for ((latency, _), (channel, _)) in out_of_process.iter().zip(CHANNELS) {
        writeln!(
            out,
            "  out-of-process, {:<6}                  {:>10}  p99 {}, mean, {:.0}x the in-process call",
            channel.name(),
            nanos(latency.mean),
            nanos(latency.p99),
            latency.mean / in_process
        )?;
    }
    if !out_of_process.is_empty() {
        writeln!(out, "out of process, calls per second by calling threads:")?;
        for (i, threads) in THREADS.iter().enumerate() {
            write!(out, "  {threads} threads")?;
            for ((_, rates), (channel, _)) in out_of_process.iter().zip(CHANNELS) {
                write!(out, "  {} {:>12}", channel.name(), rate_text(rates[i].1))?;
            }
            writeln!(out)?;
        }
    }
    writeln!(out, "batch, process_batch (items per second):")?;
    for (size, rate, failed, remote) in &batches {
        let note = if *failed > 0 { format!("  ({failed} items failed)") } else { String::new() };
        write!(out, "  {size:>9} items  in-process {:>12}", rate_text(*rate))?;
        for (rate, (channel, _)) in remote.iter().zip(CHANNELS) {
            write!(out, "  {} {:>12}", channel.name(), rate_text(*rate))?;
        }
        writeln!(out, "{note}")?;
    }
    Ok(ExitCode::SUCCESS)
}

/// The batch items: the four operations in turn, on operands that never fail.
fn batch_ops(n: usize) -> Vec<BatchOp> {
    let ops = [Op::Add, Op::Subtract, Op::Multiply, Op::Divide];
    (0..n)
        .map(|i| BatchOp::new(ops[i % 4], 1.5 + (i % 97) as f64, 2.25 + (i % 89) as f64))
        .collect()
}

/// The median time of one iteration of `run`, in nanoseconds, measured for about `budget`.
///
/// `run(n)` performs `n` iterations. `n` is first grown until a slice takes 10 ms, then slices
/// of that size are timed until the budget is spent; the first fifth of the budget warms up.
fn per_iteration(budget: Duration, mut run: impl FnMut(u64)) -> f64 {
    let n = iterations_per(Duration::from_millis(10), &mut run);
    let warm_up = Instant::now();
    while warm_up.elapsed() < budget / 5 {
        run(n);
    }
    let mut samples = Vec::new();
    let measuring = Instant::now();
    while measuring.elapsed() < budget * 4 / 5 || samples.len() < 5 {
        let start = Instant::now();
        run(n);
        samples.push(start.elapsed().as_nanos() as f64 / n as f64);
    }
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}

/// `argv[0]` of the child process that echoes frames for the socket floor.
const ECHO_NAME: &str = "calcplug-bench-echo";
/// The floor's frames: those of an out-of-process `add(a, b)` request and its answer (length,
/// id, variant, op code and operands; length, id, variant and value).
const REQUEST_FRAME: usize = 4 + 4 + 1 + 1 + 16;
const ANSWER_FRAME: usize = 4 + 4 + 1 + 8;

/// Serves as the socket floor's echo process when this program was started as one (its
/// `argv[0]` is [`ECHO_NAME`], its stdin a Unix socket): call it first thing in `main`.
pub(crate) fn echo_if_asked() -> Option<ExitCode> {
    let arg0 = std::env::args_os().next()?;
    if Path::new(&arg0).file_name() != Some(ECHO_NAME.as_ref()) {
        return None;
    }
    let Ok(fd) = io::stdin().as_fd().try_clone_to_owned() else {
        return Some(ExitCode::FAILURE);
    };
    let mut stream = UnixStream::from(fd);
    let (mut request, mut answer) = ([0u8; REQUEST_FRAME], [0u8; ANSWER_FRAME]);
    while stream.read_exact(&mut request).is_ok() {
        answer[..8].copy_from_slice(&request[..8]);
        if stream.write_all(&answer).is_err() {
            break;
        }
    }
    Some(ExitCode::SUCCESS)
}

/// A child process (this program again) echoing frames over a Unix socket: the floor of any
/// call to another process, since waking it dominates.
struct Echo {
    child: Child,
    stream: UnixStream,
}

impl Echo {
    fn start() -> io::Result<Echo> {
        let (ours, theirs) = UnixStream::pair()?;
        let child = Command::new(std::env::current_exe()?)
            .arg0(ECHO_NAME)
            .stdin(Stdio::from(OwnedFd::from(theirs)))
            .stdout(Stdio::null())
            .spawn()?;
        Ok(Echo { child, stream: ours })
    }

    /// One round trip; NaN if the echo process is gone.
    fn round_trip(&mut self) -> f64 {
        let mut answer = [0u8; ANSWER_FRAME];
        let sent = self.stream.write_all(black_box(&[7; REQUEST_FRAME]));
        match sent.and_then(|()| self.stream.read_exact(&mut answer)) {
            Ok(()) => f64::from(answer[0]),
            Err(_) => f64::NAN,
        }
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        // End of file on its stdin ends the echo process.
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
        let _ = self.child.wait();
    }
}

/// One caller's latency, in nanoseconds.
struct Latency {
    mean: f64,
    p99: f64,
}

/// Times each call of `call` for about `budget` (the first fifth warms up): their mean and
/// 99th percentile. For calls of microseconds, where reading the clock twice is noise.
fn latency(budget: Duration, mut call: impl FnMut() -> f64) -> Latency {
    let started = Instant::now();
    while started.elapsed() < budget / 5 {
        call();
    }
    let mut samples = Vec::new();
    let measuring = Instant::now();
    while measuring.elapsed() < budget * 4 / 5 || samples.len() < 100 {
        let start = Instant::now();
        call();
        samples.push(start.elapsed().as_nanos() as f64);
    }
    let mean = samples.iter().sum::<f64>() / samples.len() as f64;
    samples.sort_by(f64::total_cmp);
    Latency { mean, p99: samples[samples.len() * 99 / 100] }
}

/// Calls per second of `threads` threads calling `remote.add` for about `budget`.
fn calls_per_second(budget: Duration, threads: usize, remote: &RemotePlugin) -> f64 {
    let started = Instant::now();
    let calls: u64 = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                scope.spawn(|| {
                    let mut calls = 0u64;
                    while started.elapsed() < budget {
                        black_box(value(remote.add(1.0, black_box(2.0))));
                        calls += 1;
                    }
                    calls
                })
            })
            .collect();
        workers.into_iter().map(|worker| worker.join().unwrap_or(0)).sum()
    });
    calls as f64 / started.elapsed().as_secs_f64()
}

/// Times `runs` in interleaved rounds for about `budget` (slices sized on the first run to take
/// about 2 ms; the first fifth of the budget warms up; at least five rounds).
fn interleaved(budget: Duration, runs: &mut [&mut dyn FnMut(u64)]) -> Rounds {
    let Some(first) = runs.first_mut() else {
        return Rounds::default();
    };
    let n = iterations_per(Duration::from_millis(2), &mut |n| first(n));
    host::reference::interleaved(budget, budget / 5, 5, n, runs)
}

/// How many iterations of `run` take at least `slice` (a power of two).
fn iterations_per(slice: Duration, run: &mut impl FnMut(u64)) -> u64 {
    let mut n = 1u64;
    loop {
        let start = Instant::now();
        run(n);
        if start.elapsed() >= slice || n >= 1 << 40 {
            return n;
        }
        n *= 2;
    }
}

fn nanos(ns: f64) -> String {
    if ns < 10_000.0 {
        format!("{ns:.1} ns")
    } else {
        format!("{:.1} µs", ns / 1e3)
    }
}

fn rate_text(rate: f64) -> String {
    if rate >= 1e6 {
        format!("{:.1} M/s", rate / 1e6)
    } else {
        format!("{:.1} k/s", rate / 1e3)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_iteration_measures_something() {
        let ns = per_iteration(Duration::from_millis(100), |n| {
            for i in 0..n {
                black_box(i);
            }
        });
        assert!(ns > 0.0 && ns < 1_000.0, "{ns}");
    }

    #[test]
    fn interleaved_times_every_run_once_a_round_in_a_rotating_order() {
        let order = std::cell::RefCell::new(Vec::new());
        let (mut a, mut b, mut c) = (
            |n: u64| order.borrow_mut().push((0, n)),
            |n: u64| order.borrow_mut().push((1, n)),
            |n: u64| order.borrow_mut().push((2, n)),
        );
        let rounds = interleaved(Duration::from_millis(20), &mut [&mut a, &mut b, &mut c]);
        assert!(rounds.0.len() >= 5, "{} rounds", rounds.0.len());
        assert!(rounds.0.iter().all(|round| round.len() == 3));
        let order = order.into_inner();
        // Sizing the slices calls the first run alone; then rounds of three, each starting one
        // run further on.
        let sized = order.iter().rposition(|&(_, n)| n != order.last().map_or(0, |l| l.1));
        let timed = &order[sized.map_or(0, |i| i + 1)..];
        let timed = &timed[timed.len() % 3..];
        for (i, round) in timed.chunks(3).enumerate() {
            let mut runs: Vec<usize> = round.iter().map(|&(run, _)| run).collect();
            let first = runs[0];
            runs.sort_unstable();
            assert_eq!(runs, [0, 1, 2], "round {i}: {round:?}");
            let next = timed.get((i + 1) * 3).map(|&(run, _)| run);
            assert!(next.is_none() || next == Some((first + 1) % 3), "round {i} then {next:?}");
        }
    }
}
