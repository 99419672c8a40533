//! What a plugin call costs, next to the floor it is compared with (the figures of `BENCHMARKS.md`).
//!
//! `cargo bench -p host --bench calls`, or `cargo xtask bench-report [--quick]`, which runs this
//! and writes `BENCHMARKS.md`.
//!
//! Criterion measures the repeated, nanosecond-scale paths:
//!
//! - `per_call/*`: one `add(a, b)`, single thread, next to three references from
//!   `host::reference`: `bare_abi` (`Plugin::add` of a built-in plugin that only adds: the
//!   boundary's own cost), `plain_checks` (`basic`'s checks and rounding through
//!   `&dyn Calculator`, no counters: the floor), `direct_dyn` (`BasicCalculator` itself through
//!   `&dyn Calculator`, its counters included); then `in_process` (`host::Plugin::add` through
//!   the abi_stable root module), `in_process_metrics` (`host::Handle::add` through the plugin
//!   manager, metrics on with the default sampling), `socket_pingpong` (a frame of an
//!   out-of-process `add` request to a child process over a Unix socket, and a frame of its
//!   answer back: the out-of-process floor, since waking another process dominates both),
//!   `out_of_process` (`host::remote::RemotePlugin::add`, served by `calcplug-runner`, through
//!   a shared-memory lane) and `out_of_process_socket` (the same over the runner's socket).
//! - `batch/{plain_loop,in_process,out_of_process,out_of_process_socket}/{1,100,10000,1000000}`: `process_batch` of
//!   that many items, with criterion's throughput in items per second. `plain_loop` is the same
//!   validated arithmetic in a plain loop (`host::reference::Checked`), the floor.
//!
//! What criterion's model does not fit is measured by hand after it and written to a JSON run
//! file (see [`RunFile`]): `paired/metrics_overhead` (what the manager adds to a call, measured
//! by rounds of one block each of `Plugin::add`, `Handle::add` and the floor and taking the
//! median of the per-round differences, so that the VM's slow drifts in speed, which move the
//! separate criterion medians by more than the overhead itself, cancel out; the same rounds give
//! `Plugin::add`'s ratio to the floor), `threads` (throughput and p99 with 1, 2, 4, 8 threads calling at
//! once, in process and out of process), `cold` (a load, handshake and initialize of a library
//! never mapped before, the discovery of a directory of 100 such copies, both repeated a fixed
//! small number of times since each maps one more library for good; and an out-of-process
//! start-up until the first call answers) and `memory` (RSS growth per loaded plugin and per hot
//! reload).
//!
//! The out-of-process rows are kept apart (`Remote`, `out_of_process`, `threads_remote`,
//! `cold_remote`): the rest of the suite does not depend on them. So are the gRPC rows
//! (`grpc.rs`, `peers/*`): calcplug over go-plugin's protocol next to go-plugin's own Go host
//! and plugin, measured the same way in the same run; and the fleet rows (`fleet.rs`,
//! `fleet/*`): `calcplug serve` on loopback, with and without mutual TLS, one and three
//! instances.
//!
//! Environment: `CALCPLUG_BENCH_QUICK=1` shortens every measurement (the report's `--quick`);
//! `CALCPLUG_BENCH_PLUGIN` names a release build of `libbasic` to use (else it is built here,
//! into `target/bench-plugins`: cargo holds the lock on the main target directory while benches
//! run); `CALCPLUG_BENCH_RUN_FILE` is where the run file goes (default
//! `<criterion home>/calcplug-run.json`).

use std::env;
use std::fs;
use std::hint::black_box;
use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use basic::BasicCalculator;
use criterion::{BenchmarkId, Criterion, SamplingMode, Throughput};
use host::reference::{add_calls, value, BareAdder, Checked};
use host::remote::{Channel, RemoteOptions, RemotePlugin};
use host::{BatchOp, BatchResult, Config, ManagerConfig, Op, Plugin, PluginManager};
use interface::plugin::Calculator;
use serde_json::{json, Value};

/// Reports progress on stderr, as criterion does.
macro_rules! note {
    ($($arg:tt)*) => {{
        let _ = writeln!(std::io::stderr().lock(), $($arg)*);
    }};
}

// After `note!`, which they use.
mod fleet;
mod grpc;
mod remote;
mod run_file;

use remote::{cold_remote, echo, out_of_process, threads_remote, Remote};
use run_file::RunFile;

/// The size of the ping-pong's request frame: that of an out-of-process `add(a, b)` (see
/// `host/src/remote/wire.rs`): a 4-byte length, the request id (a varint, 4 bytes once ids pass
/// 2^21), the variant, the op code and two `f64`s.
const REQUEST_FRAME: usize = 4 + 4 + 1 + 1 + 16;

/// The size of the ping-pong's answer frame: a length, the id, the variant and one `f64`.
const ANSWER_FRAME: usize = 4 + 4 + 1 + 8;

/// Set in the child process that echoes frames: the path of the socket to connect to.
const ECHO_ENV: &str = "CALCPLUG_BENCH_ECHO_SOCKET";

/// The batch sizes, in items.
const BATCH_SIZES: [usize; 4] = [1, 100, 10_000, 1_000_000];

/// The thread counts of the concurrency measurement.
const THREADS: [usize; 4] = [1, 2, 4, 8];

fn main() {
    if let Some(socket) = env::var_os(ECHO_ENV) {
        echo(Path::new(&socket));
        return;
    }
    let quick = env::var("CALCPLUG_BENCH_QUICK").is_ok_and(|v| !v.is_empty() && v != "0");
    let args: Vec<String> = env::args().skip(1).collect();
    // `cargo test --benches` and `--list` must not spend half a minute on the hand-made part.
    let only_checking = args.iter().any(|a| a == "--test" || a == "--list");
    let filter = filter_of(&args);

    let setup = Setup::new();
    let mut run = RunFile::new(quick);
    let mut c = criterion_config(quick).configure_from_args();

    per_call(&mut c, &setup, &mut run);
    batch(&mut c, &setup, quick, &mut run);
    let remote = Remote::start(&setup);
    out_of_process(&mut c, &setup, &remote, quick, &mut run);
    c.final_summary();

    if only_checking {
        return;
    }
    let wanted = |section: &str| filter.as_deref().is_none_or(|f| section.contains(f));
    if wanted("paired") {
        metrics_overhead(&setup, quick, &mut run);
    }
    if wanted("threads") {
        threads(&setup, quick, &mut run);
        threads_remote(&remote, quick, &mut run);
    }
    if wanted("cold") {
        cold(&setup, quick, &mut run);
        cold_remote(&setup, quick, &mut run);
    }
    if wanted("memory") {
        memory(&setup, quick, &mut run);
    }
    if wanted("peers") {
        grpc::grpc_rows(&setup, &remote, quick, &mut run);
    }
    if wanted("fleet") {
        fleet::fleet_rows(&setup, quick, &mut run);
    }
    run.write();
}

/// Criterion's settings: its defaults, or short ones for the report's quick mode.
///
/// Quick mode also skips criterion's plots (drawing them took longer than measuring on a busy
/// 2-core machine; the report draws its own charts) and resamples 10 000 times instead of
/// 100 000 (it only needs medians). Flags given on the command line (`--measurement-time` …)
/// still win.
fn criterion_config(quick: bool) -> Criterion {
    let c = Criterion::default();
    if quick {
        c.warm_up_time(Duration::from_millis(300))
            .measurement_time(Duration::from_millis(1200))
            .sample_size(20)
            .nresamples(10_000)
            .without_plots()
    } else {
        c
    }
}

/// A criterion group measuring batches.
type BatchGroup<'a> = criterion::BenchmarkGroup<'a, criterion::measurement::WallTime>;

/// The `batch` group; in quick mode with short settings, since its large batches take tens of
/// milliseconds an iteration: 10 samples, 0.2 s warm-up, 0.6 s.
fn batch_group(c: &mut Criterion, quick: bool) -> BatchGroup<'_> {
    let mut group = c.benchmark_group("batch");
    if quick {
        group
            .sample_size(10)
            .warm_up_time(Duration::from_millis(200))
            .measurement_time(Duration::from_millis(600));
    }
    group
}

/// Sets `group` up for batches of `n` items and returns the items and their result slots.
fn batch_of(group: &mut BatchGroup<'_>, n: usize) -> (Vec<BatchOp>, Vec<BatchResult>) {
    group.throughput(Throughput::Elements(n as u64));
    if n >= 10_000 {
        group.sampling_mode(SamplingMode::Flat);
    }
    (batch_ops(n), vec![BatchResult::PENDING; n])
}

/// The benchmark filter criterion will apply, if any: the first free-standing argument.
///
/// It is used as a plain substring for the hand-made sections (criterion reads it as a regex).
fn filter_of(args: &[String]) -> Option<String> {
    const WITH_VALUE: &[&str] = &[
        "--save-baseline",
        "-s",
        "--baseline",
        "-b",
        "--baseline-lenient",
        "--load-baseline",
        "--sample-size",
        "--warm-up-time",
        "--measurement-time",
        "--nresamples",
        "--noise-threshold",
        "--confidence-level",
        "--significance-level",
        "--profile-time",
        "--plotting-backend",
        "--output-format",
        "--color",
        "-c",
        "--format",
    ];
    let mut previous: Option<&str> = None;
    for arg in args {
        if !arg.starts_with('-') && !previous.is_some_and(|p| WITH_VALUE.contains(&p)) {
            return Some(arg.clone());
        }
        previous = Some(arg);
    }
    None
}

/// What every measurement shares: the plugin library and the values called.
struct Setup {
    /// A release build of `libbasic`, never loaded by this process from this path.
    library: PathBuf,
    /// A scratch directory, removed at the end.
    scratch: tempfile::TempDir,
    /// `basic` as a plain Rust value, initialized, counters included.
    direct: BasicCalculator,
    /// `basic`'s checks and rounding without counters, initialized: the floor.
    checked: Checked,
    /// A built-in plugin that only adds, called through its root module.
    bare: Plugin,
    /// `basic` loaded in process, initialized.
    plugin: Arc<Plugin>,
    /// The same library served by a plugin manager (metrics on, the default: 1 call in 1024
    /// timed).
    manager: PluginManager,
}

impl Setup {
    fn new() -> Setup {
        let library = match env::var_os("CALCPLUG_BENCH_PLUGIN") {
            Some(path) => PathBuf::from(path),
            None => built().0.clone(),
        };
        let scratch =
            tempfile::Builder::new().prefix("calcplug-bench-").tempdir().expect("temp dir");

        let direct = BasicCalculator::default();
        direct.initialize(&interface::Config::new()).expect("basic initializes");
        let checked = Checked::default();
        checked.initialize(&interface::Config::new()).expect("the reference initializes");
        let bare = host::load_builtin::<BareAdder>().expect("the bare adder loads");

        let plugin = host::load(fresh_copy(&library, scratch.path(), "main")).expect("basic loads");
        plugin.initialize(&Config::new()).expect("basic initializes");

        let managed = scratch.path().join("managed");
        fs::create_dir_all(&managed).expect("managed dir");
        fs::copy(&library, managed.join(library_name())).expect("copy for the manager");
        let manager = start_manager(&managed);
        Setup { library, scratch, direct, checked, bare, plugin: Arc::new(plugin), manager }
    }
}

/// The release builds of `libbasic` and of `calcplug-runner` (from the `calcplug` package),
/// built once into `target/bench-plugins`.
fn built() -> &'static (PathBuf, PathBuf) {
    static BUILT: std::sync::OnceLock<(PathBuf, PathBuf)> = std::sync::OnceLock::new();
    BUILT.get_or_init(|| {
        let root = xtask::workspace_root();
        let target_dir = root.join("target").join("bench-plugins");
        let packages = ["basic".to_owned(), "calcplug".to_owned()];
        let built = xtask::build(
            &root,
            &xtask::BuildRequest {
                packages: &packages,
                release: true,
                target_dir: Some(&target_dir),
                quiet: true,
            },
        )
        .expect("building basic and calcplug-runner (release) for the benchmarks");
        let find = |kind: xtask::ArtifactKind, stem: &str| {
            built
                .iter()
                .find(|a| a.kind == kind && a.path.file_stem().is_some_and(|s| s == stem))
                .map(|a| a.path.clone())
                .unwrap_or_else(|| panic!("cargo built no {stem}"))
        };
        (
            find(xtask::ArtifactKind::Cdylib, &format!("{}basic", env::consts::DLL_PREFIX)),
            find(xtask::ArtifactKind::Bin, "calcplug-runner"),
        )
    })
}

/// `libbasic.so` (or `.dylib`).
fn library_name() -> String {
    format!("{}basic{}", env::consts::DLL_PREFIX, env::consts::DLL_SUFFIX)
}

/// Copies `library` into `dir` under a name of its own, so that `dlopen` maps it anew (it caches
/// libraries by path and by inode).
fn fresh_copy(library: &Path, dir: &Path, tag: &str) -> PathBuf {
    let path =
        dir.join(format!("{}basic_{tag}{}", env::consts::DLL_PREFIX, env::consts::DLL_SUFFIX));
    fs::copy(library, &path).expect("copy the plugin library");
    path
}

fn start_manager(dir: &Path) -> PluginManager {
    let text =
        format!("[discovery]\npaths = [{:?}]\nauto_scan = false\n", dir.display().to_string());
    let config = ManagerConfig::parse(&text, Path::new("bench.toml")).expect("valid config");
    PluginManager::start(config).expect("the manager starts")
}

/// The batch items: the four operations in turn, on operands that never fail.
fn batch_ops(n: usize) -> Vec<BatchOp> {
    let ops = [Op::Add, Op::Subtract, Op::Multiply, Op::Divide];
    (0..n)
        .map(|i| BatchOp::new(ops[i % 4], 1.5 + (i % 97) as f64, 2.25 + (i % 89) as f64))
        .collect()
}

fn per_call(c: &mut Criterion, setup: &Setup, run: &mut RunFile) {
    let mut group = c.benchmark_group("per_call");
    let bare = &setup.bare;
    group.bench_function("bare_abi", |b| {
        b.iter(|| value(bare.add(black_box(1.0), black_box(2.0))));
    });
    for (name, reference) in [
        ("plain_checks", &setup.checked as &dyn Calculator),
        ("direct_dyn", &setup.direct as &dyn Calculator),
    ] {
        group.bench_function(name, |b| {
            // `black_box` on the reference keeps the compiler from seeing the concrete type.
            b.iter(|| value(black_box(reference).add(black_box(1.0), black_box(2.0))));
        });
    }
    let plugin = &setup.plugin;
    group.bench_function("in_process", |b| {
        b.iter(|| value(plugin.add(black_box(1.0), black_box(2.0))));
    });
    let handle = setup.manager.get("basic").expect("the manager serves basic");
    group.bench_function("in_process_metrics", |b| {
        b.iter(|| value(handle.add(black_box(1.0), black_box(2.0))));
    });
    // The async API on the same two: an in-process call completes at its first poll.
    let plugin = host::AsyncHandle::from(Arc::clone(&setup.plugin));
    group.bench_function("in_process_async", |b| {
        b.iter(|| value(first_poll(plugin.add(black_box(1.0), black_box(2.0)))));
    });
    let handle = handle.to_async();
    group.bench_function("in_process_metrics_async", |b| {
        b.iter(|| value(first_poll(handle.add(black_box(1.0), black_box(2.0)))));
    });
    group.finish();
    for name in [
        "bare_abi",
        "plain_checks",
        "direct_dyn",
        "in_process",
        "in_process_metrics",
        "in_process_async",
        "in_process_metrics_async",
    ] {
        run.criterion(&format!("per_call/{name}"));
    }
}

/// The output of `future` at its first poll, which must be ready.
fn first_poll<F: std::future::Future>(future: F) -> F::Output {
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match std::pin::pin!(future).poll(&mut cx) {
        std::task::Poll::Ready(output) => output,
        std::task::Poll::Pending => panic!("an in-process call waited"),
    }
}

fn batch(c: &mut Criterion, setup: &Setup, quick: bool, run: &mut RunFile) {
    let mut group = batch_group(c, quick);
    let direct: &dyn Calculator = &setup.checked;
    for n in BATCH_SIZES {
        let (ops, mut results) = batch_of(&mut group, n);
        group.bench_with_input(BenchmarkId::new("plain_loop", n), &ops, |b, ops| {
            b.iter(|| black_box(direct).process_batch(ops, &mut results));
        });
        group.bench_with_input(BenchmarkId::new("in_process", n), &ops, |b, ops| {
            b.iter(|| setup.plugin.process_batch(ops, &mut results));
        });
        // Unless a filter left it out, the batch computed.
        if results[n - 1].result() != BatchResult::PENDING.result() {
            assert_eq!(results[n - 1].result().map(f64::is_finite), Ok(true), "the batch computed");
        }
        run.criterion(&format!("batch/plain_loop/{n}"));
        run.criterion(&format!("batch/in_process/{n}"));
    }
    group.finish();
}

/// The manager's cost per call: `Plugin::add` and `Handle::add` on the same library, with the
/// floor (`Checked` through `&dyn`), in rounds of one block each (which goes first rotates), as
/// `paired/metrics_overhead`, with `Plugin::add`'s ratio to the floor in the same rounds.
fn metrics_overhead(setup: &Setup, quick: bool, run: &mut RunFile) {
    const BLOCK: u64 = 2_000;
    let handle = setup.manager.get("basic").expect("the manager serves basic");
    let plugin = &setup.plugin;
    let checked = &setup.checked;
    let duration = if quick { Duration::from_secs(2) } else { Duration::from_secs(10) };
    let rounds = host::reference::interleaved(
        duration,
        Duration::ZERO,
        1,
        BLOCK,
        &mut [
            &mut |n| add_calls(n, |a, b| plugin.add(a, b)),
            &mut |n| add_calls(n, |a, b| handle.add(a, b)),
            &mut |n| add_calls(n, |a, b| black_box(checked as &dyn Calculator).add(a, b)),
        ],
    );
    let delta_of = |round: &[f64]| round[1] - round[0];
    let (p25, p75) = (rounds.percentile_of(0.25, delta_of), rounds.percentile_of(0.75, delta_of));
    let delta = rounds.median_of(delta_of);
    let ratio = rounds.median_of(|round| round[0] / round[2]);
    let (plugin_median, handle_median) = (rounds.median(0), rounds.median(1));
    let rounds = rounds.0.len();
    note!(
        "paired/metrics_overhead: {delta:+.1} ns per call (p25 {p25:+.1}, p75 {p75:+.1}; \
         Plugin::add {plugin_median:.1} ns, Handle::add {handle_median:.1} ns, {rounds} rounds); \
         Plugin::add {ratio:.2}x the floor in the same rounds"
    );
    run.extra(
        "paired/metrics_overhead",
        json!({ "delta_ns": delta, "delta_p25_ns": p25, "delta_p75_ns": p75,
                "plugin_ns": plugin_median, "handle_ns": handle_median, "plugin_vs_floor": ratio,
                "rounds": rounds, "block": BLOCK }),
    );
}

/// Throughput and p99 latency with `n` threads calling one plugin in process at once.
///
/// Each thread times blocks of 1 000 calls (timing every call would cost more than the call),
/// so the p99 is that of a call's latency averaged over a block.
fn threads(setup: &Setup, quick: bool, run: &mut RunFile) {
    let add = |plugin: &Plugin| {
        black_box(value(plugin.add(black_box(1.0), black_box(2.0))));
    };
    thread_rows("in_process", &setup.plugin, 1_000, add, quick, run);
}

/// For 1, 2, 4 and 8 threads calling `call` on `plugin` for a fixed time: throughput and the
/// p50/p99 of a call's latency averaged over blocks of `block` calls, as `threads/<mode>/<n>`.
fn thread_rows<P: Send + Sync + 'static>(
    mode: &str,
    plugin: &Arc<P>,
    block: u32,
    call: fn(&P),
    quick: bool,
    run: &mut RunFile,
) {
    let duration = if quick { Duration::from_millis(400) } else { Duration::from_secs(3) };
    for n in THREADS {
        let barrier = Arc::new(Barrier::new(n));
        let workers: Vec<_> = (0..n)
            .map(|_| {
                let plugin = Arc::clone(plugin);
                let barrier = Arc::clone(&barrier);
                std::thread::spawn(move || {
                    barrier.wait();
                    let start = Instant::now();
                    let mut blocks = Vec::new();
                    while start.elapsed() < duration {
                        let t = Instant::now();
                        for _ in 0..block {
                            call(&plugin);
                        }
                        blocks.push(t.elapsed().as_nanos() as f64 / f64::from(block));
                    }
                    (start.elapsed(), blocks)
                })
            })
            .collect();
        let mut wall = Duration::ZERO;
        let mut latencies = Vec::new();
        for worker in workers {
            let (elapsed, blocks) = worker.join().expect("a benchmark thread panicked");
            wall = wall.max(elapsed);
            latencies.extend(blocks);
        }
        let calls = latencies.len() as f64 * f64::from(block);
        let ops_per_sec = calls / wall.as_secs_f64();
        let mean = latencies.iter().sum::<f64>() / latencies.len().max(1) as f64;
        let p99 = percentile(&mut latencies, 0.99);
        let p50 = percentile(&mut latencies, 0.50);
        note!("threads/{mode}/{n}: {ops_per_sec:.3e} calls/s, p50 {p50:.1} ns, p99 {p99:.1} ns");
        run.extra(
            &format!("threads/{mode}/{n}"),
            json!({ "threads": n, "ops_per_sec": ops_per_sec, "mean_ns": mean, "p50_ns": p50,
                    "p99_ns": p99, "block": block, "seconds": wall.as_secs_f64() }),
        );
    }
}

/// The first load of a library, and the discovery of a directory of 100 copies.
fn cold(setup: &Setup, quick: bool, run: &mut RunFile) {
    let dir = setup.scratch.path().join("cold");
    fs::create_dir_all(&dir).expect("cold dir");
    let loads = if quick { 15 } else { 50 };
    // The copies are made before timing: only `load` + `initialize` is measured.
    let paths: Vec<PathBuf> =
        (0..loads).map(|i| fresh_copy(&setup.library, &dir, &format!("cold{i}"))).collect();
    let mut times = Vec::new();
    for path in &paths {
        let start = Instant::now();
        let plugin = host::load(path).expect("a copy loads");
        plugin.initialize(&Config::new()).expect("a copy initializes");
        times.push(start.elapsed().as_nanos() as f64);
        black_box(plugin.add(1.0, 2.0).expect("a copy adds"));
    }
    let (median, min, max) = spread(&mut times);
    note!("cold/load_handshake_initialize: median {:.3} ms", median / 1e6);
    run.extra(
        "cold/load_handshake_initialize",
        json!({ "median_ns": median, "min_ns": min, "max_ns": max, "runs": loads }),
    );

    const COPIES: usize = 100;
    let rounds = if quick { 1 } else { 3 };
    let mut times = Vec::new();
    for round in 0..rounds {
        let dir = setup.scratch.path().join(format!("discovery{round}"));
        fs::create_dir_all(&dir).expect("discovery dir");
        for i in 0..COPIES {
            fresh_copy(&setup.library, &dir, &format!("r{round}c{i}"));
        }
        let start = Instant::now();
        let found = host::discover(std::slice::from_ref(&dir));
        times.push(start.elapsed().as_nanos() as f64);
        let loaded = found.iter().filter(|f| f.outcome.is_ok()).count();
        assert_eq!(loaded, COPIES, "every copy loads");
        drop(found);
        // The files are no longer needed once mapped.
        let _ = fs::remove_dir_all(&dir);
    }
    let (median, min, max) = spread(&mut times);
    note!("cold/discover_100: median {:.1} ms", median / 1e6);
    run.extra(
        "cold/discover_100",
        json!({ "median_ns": median, "min_ns": min, "max_ns": max, "runs": rounds, "copies": COPIES }),
    );
}

/// RSS growth per loaded plugin and per hot reload.
fn memory(setup: &Setup, quick: bool, run: &mut RunFile) {
    let Some(page) = page_size() else {
        run.not_measured("memory/per_plugin", "no /proc/self/statm on this platform");
        run.not_measured("memory/per_reload", "no /proc/self/statm on this platform");
        return;
    };
    let count = if quick { 20 } else { 50 };
    let dir = setup.scratch.path().join("memory");
    fs::create_dir_all(&dir).expect("memory dir");
    let paths: Vec<PathBuf> =
        (0..count).map(|i| fresh_copy(&setup.library, &dir, &format!("mem{i}"))).collect();
    let mut plugins = Vec::new();
    let before = rss_pages().unwrap_or(0);
    for path in &paths {
        let plugin = host::load(path).expect("a copy loads");
        plugin.initialize(&Config::new()).expect("a copy initializes");
        black_box(plugin.add(1.0, 2.0).expect("a copy adds"));
        plugins.push(plugin);
    }
    let after = rss_pages().unwrap_or(0);
    let per_plugin = after.saturating_sub(before) as f64 * page as f64 / count as f64;
    note!("memory/per_plugin: {:.0} KiB", per_plugin / 1024.0);
    run.extra("memory/per_plugin", json!({ "bytes": per_plugin, "plugins": count }));
    drop(plugins);
    let _ = fs::remove_dir_all(&dir);

    // Hot reload: replace the watched file (copy, then rename over it) and let the manager scan.
    let reloads = if quick { 10 } else { 30 };
    let watched = setup.scratch.path().join("reload");
    fs::create_dir_all(&watched).expect("reload dir");
    let target = watched.join(library_name());
    fs::copy(&setup.library, &target).expect("copy for reloads");
    let manager = start_manager(&watched);
    let handle = manager.get("basic").expect("the manager serves basic");
    let first = handle.generation();
    let before = rss_pages().unwrap_or(0);
    for i in 0..reloads {
        let temp = watched.join(format!(".reload{i}.tmp"));
        fs::copy(&setup.library, &temp).expect("copy the new build");
        fs::rename(&temp, &target).expect("replace the watched library");
        manager.scan();
        black_box(handle.add(1.0, 2.0).expect("the reloaded plugin adds"));
    }
    let after = rss_pages().unwrap_or(0);
    let done = handle.generation() - first;
    assert_eq!(done, reloads, "every replacement was reloaded");
    let per_reload = after.saturating_sub(before) as f64 * page as f64 / reloads as f64;
    note!("memory/per_reload: {:.0} KiB", per_reload / 1024.0);
    run.extra("memory/per_reload", json!({ "bytes": per_reload, "reloads": reloads }));
    manager.shutdown();
}

/// The process's resident set, in pages (Linux).
fn rss_pages() -> Option<u64> {
    let statm = fs::read_to_string("/proc/self/statm").ok()?;
    statm.split_whitespace().nth(1)?.parse().ok()
}

/// The page size `/proc/self/statm` counts in, or `None` where there is no such file.
fn page_size() -> Option<u64> {
    rss_pages()?;
    // `statm` counts in pages; the kernel reports the page size through `/proc/self/smaps`.
    let smaps = fs::read_to_string("/proc/self/smaps").ok()?;
    let line = smaps.lines().find(|l| l.starts_with("KernelPageSize:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

fn percentile(values: &mut [f64], p: f64) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(f64::total_cmp);
    let index = ((values.len() - 1) as f64 * p).round() as usize;
    values[index]
}

fn spread(values: &mut [f64]) -> (f64, f64, f64) {
    let median = percentile(values, 0.5);
    (
        median,
        values.first().copied().unwrap_or(f64::NAN),
        values.last().copied().unwrap_or(f64::NAN),
    )
}
