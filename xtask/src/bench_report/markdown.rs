//! `BENCHMARKS.md` from one run: the tables, each figure with its ratio to its floor, the goals
//! met or missed, the machine and the command.

use std::fmt::Write as _;

use super::svg::{bar_chart, chart_label, Bar, FLOOR, IN_PROCESS, IPC};
use super::{Machine, Run, BATCH_SIZES, THREADS};

/// A goal of `BENCHMARKS.md`, checked against a run.
struct Goal {
    name: &'static str,
    target: &'static str,
    /// The measured value as text, and whether it meets the goal; `None` if not measured.
    measured: Option<(String, bool)>,
    /// The row that was not measured, for the reason.
    missing: &'static str,
    /// Why the goal is missed, from profiling (see the hot-path notes in the report).
    why_missed: &'static str,
}

/// Everything the report is made of.
pub(super) struct Report<'a> {
    pub(super) run: &'a Run,
    pub(super) machine: &'a Machine,
    pub(super) command: &'a str,
    pub(super) quick: bool,
}

impl Report<'_> {
    fn per_call_rows(&self) -> Vec<(&'static str, &'static str, &'static str)> {
        // (id, label, floor id)
        const FLOOR_ID: &str = "per_call/plain_checks";
        vec![
            (
                "per_call/bare_abi",
                "bare call through the root module to a plugin that only adds (the boundary itself)",
                FLOOR_ID,
            ),
            (FLOOR_ID, "`basic`'s checks and rounding through `&dyn Calculator` (floor)", FLOOR_ID),
            (
                "per_call/direct_dyn",
                "`basic` itself through `&dyn Calculator`, its request counters included",
                FLOOR_ID,
            ),
            ("per_call/in_process", "in-process plugin call (`Plugin::add`)", FLOOR_ID),
            (
                "per_call/in_process_metrics",
                "in-process, metrics on (`Handle::add`, 1 in 1024 timed)",
                FLOOR_ID,
            ),
            (
                "per_call/in_process_async",
                "in-process, async API (`AsyncHandle::add` on the `Plugin`, ready at its first poll)",
                FLOOR_ID,
            ),
            (
                "per_call/in_process_metrics_async",
                "in-process, metrics on, async API (`handle.to_async().add`)",
                FLOOR_ID,
            ),
            (
                "per_call/socket_pingpong",
                "Unix-socket ping-pong to a child process, 26 B out, 17 B back (IPC floor)",
                "per_call/socket_pingpong",
            ),
            (
                "per_call/out_of_process",
                "out-of-process call through a shared-memory lane (the default)",
                "per_call/socket_pingpong",
            ),
            (
                "per_call/out_of_process_socket",
                "out-of-process call over the runner's socket (`transport = \"socket\"`)",
                "per_call/socket_pingpong",
            ),
        ]
    }

    /// The gRPC rows: (id, caller → plugin, protocol, the chart's short label).
    fn peer_rows(&self) -> [(&'static str, &'static str, &'static str, &'static str); 9] {
        const RUNNER: &str = "calcplug host → `basic` (`calcplug-runner --grpc`)";
        const GO_PLUGIN: &str = "go-plugin Go host → Go plugin";
        [
            (
                "peers/calcplug_shm",
                "calcplug host → `basic` (runner)",
                "calcplug shared memory",
                "calcplug → basic, shm",
            ),
            (
                "peers/calcplug_socket",
                "calcplug host → `basic` (runner)",
                "calcplug socket",
                "calcplug → basic, socket",
            ),
            ("peers/calcplug_grpc_rust_plain", RUNNER, "gRPC", "calcplug → basic, gRPC"),
            (
                "peers/calcplug_grpc_rust_tls",
                RUNNER,
                "gRPC + AutoMTLS",
                "calcplug → basic, gRPC + mTLS",
            ),
            (
                "peers/calcplug_grpc_go_tls",
                "calcplug host → Go plugin",
                "gRPC + AutoMTLS",
                "calcplug → Go, gRPC + mTLS",
            ),
            (
                "peers/go_grpc_calcplug",
                "go-plugin Go host → `basic` (`calcplug-runner --grpc`)",
                "gRPC",
                "Go host → basic, gRPC",
            ),
            ("peers/go_grpc_go", GO_PLUGIN, "gRPC", "Go host → Go, gRPC"),
            ("peers/go_grpc_go_tls", GO_PLUGIN, "gRPC + AutoMTLS", "Go host → Go, gRPC + mTLS"),
            ("peers/go_netrpc_go", GO_PLUGIN, "net/rpc", "Go host → Go, net/rpc"),
        ]
    }

    fn goals(&self) -> Vec<Goal> {
        let run = self.run;
        let ratio = |id: &str, floor: &str| Some(run.median(id)? / run.median(floor)?);
        let mut goals = Vec::new();
        goals.push(Goal {
            name: "in-process call vs `basic`'s checks through `&dyn` (no counters)",
            target: "≤ 1.5×",
            // Paired when the run has it (the same rounds as the metrics' cost, below).
            measured: match run.extra("paired/metrics_overhead", "plugin_vs_floor") {
                Some(r) => Some((format!("{r:.2}× (paired)"), r <= 1.5)),
                None => ratio("per_call/in_process", "per_call/plain_checks")
                    .map(|r| (format!("{r:.2}×"), r <= 1.5)),
            },
            missing: "per_call/in_process",
            why_missed: "the plugin call adds the root module's indirect call and the plugin's \
                own bookkeeping to the floor's work: its state check and its request count (a \
                load and a store on the calling thread's own counter, found from the thread \
                pointer, about 20 instructions, none locked); `basic` through `&dyn` with its \
                counters costs the same, so the remaining difference is the counting itself",
        });
        // The paired measurement (alternating blocks, median of the differences) when the run
        // has it: the difference of two separate criterion medians moves with the VM's drift.
        let paired = "paired/metrics_overhead";
        let delta = match run.extra(paired, "delta_ns") {
            Some(d) => {
                let p25 = run.extra(paired, "delta_p25_ns").unwrap_or(f64::NAN);
                let p75 = run.extra(paired, "delta_p75_ns").unwrap_or(f64::NAN);
                Some((format!("{d:+.1} ns (paired; middle half {p25:+.1} to {p75:+.1})"), d))
            }
            None => (|| {
                let d = run.median("per_call/in_process_metrics")?
                    - run.median("per_call/in_process")?;
                Some((format!("{d:+.1} ns"), d))
            })(),
        };
        goals.push(Goal {
            name: "metrics on vs in-process call",
            target: "≤ +5 ns",
            measured: delta.map(|(text, d)| (text, d <= 5.0)),
            missing: "per_call/in_process_metrics",
            why_missed: "a managed call adds about 33 instructions to the plugin call (callgrind, \
                `host/examples/call_path.rs`), none of them locked, and each one part of what the \
                manager does: its thread's counter shard from a thread-local, the `entered` and \
                `calls` counters (a load and a store each, to memory), the serving library's \
                address, its state and backend, the sampling check; the plugin's value goes \
                straight back, every other outcome leaves through cold functions",
        });
        goals.push(Goal {
            name: "async in-process call vs the blocking one (`AsyncHandle::add` vs `Plugin::add`)",
            target: "≤ +1 ns",
            measured: (|| {
                let d =
                    run.median("per_call/in_process_async")? - run.median("per_call/in_process")?;
                Some((format!("{d:+.1} ns"), d <= 1.0))
            })(),
            missing: "per_call/in_process_async",
            why_missed: "the async call asks the handle whether it is isolated before calling \
                inline, and the future's state machine is moved into its first poll",
        });
        goals.push(Goal {
            name: "async fleet throughput, 64 calls in flight from one thread vs 8 blocking threads (3 instances)",
            target: "≥ 3×",
            measured: run
                .extra("fleet/throughput_async_3", "ops_per_sec")
                .zip(run.extra("fleet/throughput_3", "ops_per_sec"))
                .map(|(ours, threads)| ours / threads)
                .map(|r| (format!("{r:.2}×"), r >= 3.0)),
            missing: "fleet/throughput_async_3",
            why_missed: "the calls share three server processes and this host's HTTP/2 \
                connections on two cores: past a few calls in flight, the servers' and the \
                I/O runtime's CPU time, not waiting, bounds the rate",
        });
        goals.push(Goal {
            name: "out-of-process call through shared memory (mean per `add`)",
            target: "≤ 5 µs",
            measured: run
                .extra("threads/out_of_process/1", "mean_ns")
                .or_else(|| run.median("per_call/out_of_process"))
                .map(|ns| (duration(ns), ns <= 5_000.0)),
            missing: "per_call/out_of_process",
            why_missed: "the runner's lane thread was asleep when the call came: past its spin \
                it sleeps on a futex, and waking it costs what a socket round trip costs",
        });
        goals.push(Goal {
            name: "out-of-process call over the socket vs socket ping-pong",
            target: "≤ 1.2×",
            measured: ratio("per_call/out_of_process_socket", "per_call/socket_pingpong")
                .map(|r| (format!("{r:.2}×"), r <= 1.2)),
            missing: "per_call/out_of_process_socket",
            why_missed: "encoding and decoding the frame and the runner's dispatch add to the \
                bare round trip",
        });
        let big = BATCH_SIZES[3];
        goals.push(Goal {
            name: "batch of 1 000 000, in-process vs plain Rust loop (throughput)",
            target: "≥ 90%",
            measured: ratio(&format!("batch/plain_loop/{big}"), &format!("batch/in_process/{big}"))
                .map(|r| (format!("{:.0}%", r * 100.0), r >= 0.9)),
            missing: "batch/in_process/1000000",
            why_missed: "the plugin's loop is compiled separately from the host, so it cannot be \
                specialised for the host's data; both loops run the same validated arithmetic",
        });
        goals.push(Goal {
            name: "batch of 1 000 000, out of process (shared memory) vs in process (throughput)",
            target: "≥ 50%",
            measured: ratio(
                &format!("batch/in_process/{big}"),
                &format!("batch/out_of_process/{big}"),
            )
            .map(|r| (format!("{:.0}%", r * 100.0), r >= 0.5)),
            missing: "batch/out_of_process/1000000",
            why_missed: "the host copies each chunk's operations into the lane and its results \
                out, on top of the runner's computing; with two cores, those copies and the \
                computing overlap only while nothing else runs",
        });
        let mean = |id: &str| run.extra(id, "mean_ns");
        goals.push(Goal {
            name: "calcplug gRPC call vs go-plugin's own gRPC call (mean per `Add`, both without TLS)",
            target: "≤ 0.5×",
            measured: mean("peers/calcplug_grpc_rust_plain")
                .zip(mean("peers/go_grpc_go"))
                .map(|(ours, theirs)| ours / theirs)
                .map(|r| (format!("{r:.2}×"), r <= 0.5)),
            missing: "peers/go_grpc_go",
            why_missed: "a gRPC call is an HTTP/2 exchange on both sides (headers, frames, \
                flow control) plus the wake-up of the plugin process; on this VM the wake-ups \
                dominate, and both sides pay them",
        });
        goals.push(Goal {
            name: "remote call over loopback with mutual TLS (`calcplug serve`, p99)",
            target: "< 1 ms",
            measured: run
                .extra("fleet/endpoint_mtls", "p99_ns")
                .map(|ns| (format!("{:.3} ms", ns / 1e6), ns < 1e6)),
            missing: "fleet/endpoint_mtls",
            why_missed: "each call crosses HTTP/2 and TLS on both sides and wakes the server \
                process; on this VM a wake-up alone costs tens of microseconds, and the slowest \
                one in a hundred far more",
        });
        let load = run.extra("cold/load_handshake_initialize", "median_ns");
        goals.push(Goal {
            name: "load + handshake + initialize of one plugin",
            target: "< 1 ms",
            measured: load.map(|ns| (format!("{:.3} ms", ns / 1e6), ns < 1e6)),
            missing: "cold/load_handshake_initialize",
            why_missed: "a first load maps a library the process has never seen: `dlopen` reads \
                its headers, relocates it and runs its initialisers, and abi_stable checks the \
                root module's whole type layout",
        });
        goals
    }

    pub(super) fn markdown(&self) -> String {
        let run = self.run;
        let m = self.machine;
        let mut md = String::new();
        let w = &mut md;
        let _ = writeln!(w, "# Benchmarks\n");
        let _ = writeln!(
            w,
            "Generated by `{}` on {} (the run took {} s). Do not edit: run the command again.",
            self.command,
            m.date,
            run.finished_unix.saturating_sub(run.started_unix)
        );
        if self.quick || run.quick {
            let _ = writeln!(
                w,
                "Quick mode: short criterion measurements (0.3 s warm-up, 1.2 s, 20 samples; batches 0.2 s, 0.6 s, 10 samples), no criterion plots, and fewer cold-path runs, so expect a few percent of noise."
            );
        }
        let _ = writeln!(
            w,
            "Medians; the ratio is to the row's floor (the cheapest way to do the same thing without a plugin).\n"
        );
        let _ = writeln!(w, "![Latency per call by mode](benchmarks/latency.svg)\n");

        let _ = writeln!(w, "## Goals\n");
        let _ = writeln!(w, "| Goal | Target | Measured | Met |\n|---|---|---|---|");
        let goals = self.goals();
        for goal in &goals {
            let (measured, met) = match &goal.measured {
                Some((value, true)) => (value.clone(), "yes".to_owned()),
                Some((value, false)) => (value.clone(), "**no**".to_owned()),
                None => (run.why_missing(goal.missing), "–".to_owned()),
            };
            let _ = writeln!(w, "| {} | {} | {} | {} |", goal.name, goal.target, measured, met);
        }
        let paired = "paired/metrics_overhead";
        if let (Some(rounds), Some(block)) =
            (run.extra(paired, "rounds"), run.extra(paired, "block"))
        {
            let plugin = run.extra(paired, "plugin_ns").unwrap_or(f64::NAN);
            let handle = run.extra(paired, "handle_ns").unwrap_or(f64::NAN);
            let _ = writeln!(
                w,
                "\n\"Paired\": {rounds:.0} rounds of one block of {block:.0} `Plugin::add` calls, one of `Handle::add` and one of the floor (which goes first rotates); the figures are the medians of the per-round difference and ratio (medians of the blocks: {plugin:.1} ns and {handle:.1} ns). Two separate medians, as in the table below, drift apart with this VM's speed by more than the difference itself."
            );
        }
        let missed: Vec<&Goal> =
            goals.iter().filter(|g| matches!(g.measured, Some((_, false)))).collect();
        if !missed.is_empty() {
            let _ = writeln!(w, "\nWhy goals are missed:\n");
            for goal in missed {
                let _ = writeln!(w, "- {}: {}.", goal.name, goal.why_missed);
            }
        }

        let _ = writeln!(w, "\n## Per call, single thread\n");
        let _ = writeln!(w, "`add(1, 2)` on the `basic` plugin.\n");
        let _ = writeln!(w, "| Mode | Median | vs floor |\n|---|---:|---:|");
        for (id, label, floor) in self.per_call_rows() {
            match run.median(id) {
                Some(ns) => {
                    let ratio = run.median(floor).map_or("–".to_owned(), |f| times(ns / f));
                    let _ = writeln!(w, "| {label} | {} | {ratio} |", duration(ns));
                }
                None => {
                    let _ = writeln!(w, "| {label} | {} | – |", run.why_missing(id));
                }
            }
        }

        let _ = writeln!(w, "\n## gRPC: calcplug and go-plugin, both ways\n");
        let _ = writeln!(
            w,
            "N sequential `Add(1, 2)` calls, each timed, after a warm-up, measured the same way on both sides in the same run: calcplug's rows by the benchmark, the Go rows by the Go host of `tests/go` (go-plugin from Debian's packages). The ratio is to go-plugin's own gRPC call (a Go host calling a Go plugin, no TLS: go-plugin's default).\n"
        );
        let _ = writeln!(w, "![calcplug and go-plugin over gRPC](benchmarks/grpc.svg)\n");
        let _ = writeln!(w, "| Caller → plugin | Protocol | Mean | p50 | p99 | vs go-plugin gRPC |\n|---|---|---:|---:|---:|---:|");
        let peer_rows = self.peer_rows();
        let reference = run.extra("peers/go_grpc_go", "mean_ns");
        for (id, label, protocol, _) in peer_rows {
            match (run.extra(id, "mean_ns"), run.extra(id, "p50_ns"), run.extra(id, "p99_ns")) {
                (Some(mean), Some(p50), Some(p99)) => {
                    let ratio = reference.map_or("–".to_owned(), |r| times(mean / r));
                    let _ = writeln!(
                        w,
                        "| {label} | {protocol} | {} | {} | {} | {ratio} |",
                        duration(mean),
                        duration(p50),
                        duration(p99)
                    );
                }
                _ => {
                    let _ = writeln!(w, "| {label} | {protocol} | {} | | | |", run.why_missing(id));
                }
            }
        }

        let _ = writeln!(w, "\n## Fleet: `calcplug serve` on loopback\n");
        let _ = writeln!(
            w,
            "`basic` served by `calcplug serve` processes on 127.0.0.1, called by this host: N sequential `Add(1, 2)` through `host::fleet::Endpoint`, each timed; 8 threads calling at once through `host::fleet::Fleet` over one and three instances (mutual TLS), and 64 calls kept in flight by tasks on one thread through its async API (`host::AsyncHandle`). go-plugin has no counterpart: its plugins run on the host's own machine only.\n"
        );
        let _ = writeln!(w, "| Call | Mean | p50 | p99 |\n|---|---:|---:|---:|");
        for (id, label) in [
            ("fleet/endpoint_mtls", "one instance, mutual TLS"),
            ("fleet/endpoint_plain", "one instance, plaintext (`--insecure`)"),
        ] {
            match (run.extra(id, "mean_ns"), run.extra(id, "p50_ns"), run.extra(id, "p99_ns")) {
                (Some(mean), Some(p50), Some(p99)) => {
                    let _ = writeln!(
                        w,
                        "| {label} | {} | {} | {} |",
                        duration(mean),
                        duration(p50),
                        duration(p99)
                    );
                }
                _ => {
                    let _ = writeln!(w, "| {label} | {} | | |", run.why_missing(id));
                }
            }
        }
        // Medians: one slow wake-up in a hundred moves a mean on this VM by more than TLS costs.
        if let (Some(tls), Some(plain)) = (
            run.extra("fleet/endpoint_mtls", "p50_ns"),
            run.extra("fleet/endpoint_plain", "p50_ns"),
        ) {
            if tls >= plain {
                let _ = writeln!(
                    w,
                    "\nTLS costs {} per call at the median ({:+.0}%).",
                    duration(tls - plain),
                    (tls / plain - 1.0) * 100.0
                );
            } else {
                let _ = writeln!(
                    w,
                    "\nTLS cost nothing measurable in this run: its median call took {}, plaintext's \
                     {}; this VM's noise is larger than what TLS costs.",
                    duration(tls),
                    duration(plain)
                );
            }
        }
        let _ = writeln!(w, "\n| Instances | Callers | Calls/s |\n|---:|---|---:|");
        for (id, count, callers) in [
            ("fleet/throughput_1", 1, "8 threads, blocking API"),
            ("fleet/throughput_3", 3, "8 threads, blocking API"),
            ("fleet/throughput_async_3", 3, "64 calls in flight from one thread, async API"),
        ] {
            let cell = run.extra(id, "ops_per_sec").map_or_else(|| run.why_missing(id), per_second);
            let _ = writeln!(w, "| {count} | {callers} | {cell} |");
        }

        let _ = writeln!(w, "\n## Batch throughput\n");
        let _ = writeln!(
            w,
            "`process_batch` of N items (add, subtract, multiply, divide in turn), in items per second; the floor is the same validated arithmetic called directly.\n"
        );
        let _ = writeln!(w, "![Batch throughput](benchmarks/batch.svg)\n");
        let _ = writeln!(
            w,
            "| Items per batch | Plain Rust loop (floor) | In-process | vs floor | Out-of-process, shared memory | Out-of-process, socket |\n|---:|---:|---:|---:|---:|---:|"
        );
        for n in BATCH_SIZES {
            let rate =
                |mode: &str| run.median(&format!("batch/{mode}/{n}")).map(|ns| n as f64 / ns * 1e9);
            let floor = rate("plain_loop");
            let plugin = rate("in_process");
            let ratio = match (plugin, floor) {
                (Some(p), Some(f)) => format!("{:.0}%", p / f * 100.0),
                _ => "–".to_owned(),
            };
            let show = |mode: &str, value: Option<f64>| {
                value.map_or_else(|| run.why_missing(&format!("batch/{mode}/{n}")), per_second)
            };
            let _ = writeln!(
                w,
                "| {} | {} | {} | {ratio} | {} | {} |",
                thousands(n),
                show("plain_loop", floor),
                show("in_process", plugin),
                show("out_of_process", rate("out_of_process")),
                show("out_of_process_socket", rate("out_of_process_socket")),
            );
        }

        let _ = writeln!(w, "\n## Threads\n");
        let _ = writeln!(
            w,
            "N threads calling `add` on one plugin at once for a fixed time; calls per second over all threads.\nThe p99 is of a call's latency averaged over blocks of 1 000 calls (timing each nanosecond-scale call would cost more than the call).\nThis machine has {} CPU{}, so more threads than that share cores.\n",
            m.cpus,
            if m.cpus == 1 { "" } else { "s" }
        );
        let _ = writeln!(
            w,
            "| Threads | In-process calls/s | p50 | p99 | Out-of-process, shared memory: calls/s, p99 | Out-of-process, socket: calls/s, p99 |\n|---:|---:|---:|---:|---:|---:|"
        );
        for n in THREADS {
            let id = format!("threads/in_process/{n}");
            let remote_cell = |mode: &str| {
                let id = format!("threads/{mode}/{n}");
                match (run.extra(&id, "ops_per_sec"), run.extra(&id, "p99_ns")) {
                    (Some(rate), Some(p99)) => format!("{}, {}", per_second(rate), duration(p99)),
                    _ => run.why_missing(&id),
                }
            };
            let remote_cell = format!(
                "{} | {}",
                remote_cell("out_of_process"),
                remote_cell("out_of_process_socket")
            );
            match (
                run.extra(&id, "ops_per_sec"),
                run.extra(&id, "p50_ns"),
                run.extra(&id, "p99_ns"),
            ) {
                (Some(rate), Some(p50), Some(p99)) => {
                    let _ = writeln!(
                        w,
                        "| {n} | {} | {} | {} | {remote_cell} |",
                        per_second(rate),
                        duration(p50),
                        duration(p99)
                    );
                }
                _ => {
                    let _ = writeln!(w, "| {n} | {} | | | {remote_cell} |", run.why_missing(&id));
                }
            }
        }

        let _ = writeln!(w, "\n## Cold paths\n");
        let _ = writeln!(
            w,
            "Each run maps a copy of the library the process has never loaded (under a new name: `dlopen` caches by path and inode), from a warm page cache.\n"
        );
        let _ = writeln!(w, "| Path | Median | Min – max | Runs |\n|---|---:|---:|---:|");
        let cold_rows = [
            ("cold/load_handshake_initialize", "load + handshake + initialize of one plugin"),
            ("cold/discover_100", "discovery of a directory of 100 plugin copies"),
            (
                "cold/out_of_process_first_call",
                "out-of-process start-up until the first call answers",
            ),
        ];
        for (id, label) in cold_rows {
            match run.extra(id, "median_ns") {
                Some(median) => {
                    let _ = writeln!(
                        w,
                        "| {label} | {} | {} – {} | {} |",
                        duration(median),
                        duration(run.extra(id, "min_ns").unwrap_or(f64::NAN)),
                        duration(run.extra(id, "max_ns").unwrap_or(f64::NAN)),
                        run.extra(id, "runs").unwrap_or(0.0)
                    );
                }
                None => {
                    let _ = writeln!(w, "| {label} | {} | | |", run.why_missing(id));
                }
            }
        }

        let _ = writeln!(w, "\n## Memory\n");
        let _ = writeln!(w, "Growth of the host's resident set (`/proc/self/statm`), averaged.\n");
        let _ = writeln!(w, "| What | RSS growth | Over |\n|---|---:|---:|");
        let memory_rows = [
            (
                "memory/per_plugin",
                "per loaded plugin (a new library, initialized, one call)",
                "plugins",
            ),
            (
                "memory/per_reload",
                "per hot reload through the manager (libraries are never unmapped)",
                "reloads",
            ),
        ];
        for (id, label, over) in memory_rows {
            match run.extra(id, "bytes") {
                Some(bytes) => {
                    let count = run.extra(id, over).unwrap_or(0.0);
                    let _ = writeln!(w, "| {label} | {:.0} KiB | {count} {over} |", bytes / 1024.0);
                }
                None => {
                    let _ = writeln!(w, "| {label} | {} | |", run.why_missing(id));
                }
            }
        }

        let _ = writeln!(w, "\n## Machine and command\n");
        let _ = writeln!(w, "- Command: `{}`", self.command);
        let _ = writeln!(
            w,
            "- It ran: `{}cargo bench --package host --bench calls` (`CALCPLUG_BENCH_PLUGIN` = the `basic` library of the same build)",
            if self.quick { "CALCPLUG_BENCH_QUICK=1 " } else { "" }
        );
        let _ = writeln!(w, "- Date: {}", m.date);
        let _ =
            writeln!(w, "- CPU: {} ({} logical CPUs, `nproc`), {}", m.cpu_model, m.cpus, m.arch);
        let _ = writeln!(w, "- Kernel: {}", m.kernel);
        let _ = writeln!(w, "- Compiler: {}", m.rustc);
        let _ = writeln!(
            w,
            "- Load average (1, 5, 15 min) before the run: {}; after: {}",
            m.load_before, m.load_after
        );
        let html = if self.quick || run.quick {
            "Quick mode skips criterion's HTML report"
        } else {
            "Criterion's HTML report is in `target/criterion/report/index.html`"
        };
        let _ = writeln!(
            w,
            "\n{html}; the figures above come from its `*/new/estimates.json` files and from `target/criterion/calcplug-run.json`."
        );
        let _ = writeln!(
            w,
            "`calcplug bench [--plugin NAME] [--json]` measures the per-call and batch figures for any plugin, without the benchmark dependencies."
        );
        md
    }

    pub(super) fn latency_chart(&self) -> String {
        let rows: Vec<Bar> = self
            .per_call_rows()
            .into_iter()
            .map(|(id, label, _)| Bar {
                label: chart_label(label),
                value: self.run.median(id),
                text: self.run.median(id).map_or_else(|| "not measured".to_owned(), duration),
                colour: if id.contains("pingpong") || id.contains("out_of") {
                    IPC
                } else {
                    IN_PROCESS
                },
            })
            .collect();
        bar_chart("Latency per call (median, log scale; shorter is faster)", &rows)
    }

    /// calcplug over gRPC next to go-plugin's own host and plugin, side by side.
    pub(super) fn grpc_chart(&self) -> String {
        let rows: Vec<Bar> = self
            .peer_rows()
            .into_iter()
            .map(|(id, _, _, short)| {
                let mean = self.run.extra(id, "mean_ns");
                Bar {
                    label: short.to_owned(),
                    value: mean,
                    text: mean.map_or_else(|| "not measured".to_owned(), duration),
                    colour: if id.starts_with("peers/go_") { FLOOR } else { IPC },
                }
            })
            .collect();
        bar_chart("Mean per Add: calcplug (orange) and go-plugin's Go host (grey)", &rows)
    }

    pub(super) fn batch_chart(&self) -> String {
        let mut rows = Vec::new();
        for n in BATCH_SIZES {
            for (mode, label, colour) in [
                ("plain_loop", "plain loop", FLOOR),
                ("in_process", "in-process", IN_PROCESS),
                ("out_of_process", "out-of-process, shared memory", IPC),
                ("out_of_process_socket", "out-of-process, socket", IPC),
            ] {
                let rate =
                    self.run.median(&format!("batch/{mode}/{n}")).map(|ns| n as f64 / ns * 1e9);
                rows.push(Bar {
                    label: format!("{} items, {label}", thousands(n)),
                    value: rate,
                    text: rate.map_or_else(|| "not measured".to_owned(), per_second),
                    colour,
                });
            }
        }
        bar_chart("Batch throughput (items per second, log scale; longer is faster)", &rows)
    }
}

/// A duration in nanoseconds, in the unit that suits it.
/// A ratio to a floor: `1.41×`, or `1/324` for one far below it (where two decimals would
/// print `0.00×`).
fn times(ratio: f64) -> String {
    if ratio > 0.0 && ratio < 0.1 {
        format!("1/{:.0}", 1.0 / ratio)
    } else {
        format!("{ratio:.2}×")
    }
}

fn duration(ns: f64) -> String {
    if !ns.is_finite() {
        "–".to_owned()
    } else if ns < 100.0 {
        format!("{ns:.2} ns")
    } else if ns < 10_000.0 {
        format!("{ns:.0} ns")
    } else if ns < 1_000_000.0 {
        format!("{:.1} µs", ns / 1e3)
    } else {
        format!("{:.1} ms", ns / 1e6)
    }
}

/// A rate per second, in millions or thousands.
fn per_second(rate: f64) -> String {
    if rate >= 1e6 {
        format!("{:.1} M/s", rate / 1e6)
    } else if rate >= 1e3 {
        format!("{:.1} k/s", rate / 1e3)
    } else {
        format!("{rate:.0} /s")
    }
}

/// `1000000` as `1 000 000`.
fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut groups = Vec::new();
    let mut end = digits.len();
    while end > 3 {
        groups.push(&digits[end - 3..end]);
        end -= 3;
    }
    groups.push(&digits[..end]);
    groups.reverse();
    groups.join(" ")
}

#[cfg(test)]
mod tests;
