//! The goals of `BENCHMARKS.md`, each checked against a run.

use super::{duration, Report};
use crate::bench_report::BATCH_SIZES;

/// A goal of `BENCHMARKS.md`, checked against a run.
pub(super) struct Goal {
    pub(super) name: &'static str,
    pub(super) target: &'static str,
    /// The measured value as text, and whether it meets the goal; `None` if not measured.
    pub(super) measured: Option<(String, bool)>,
    /// The row that was not measured, for the reason.
    pub(super) missing: &'static str,
    /// Why the goal is missed, from profiling (see the hot-path notes in the report).
    pub(super) why_missed: &'static str,
}

impl Report<'_> {
    pub(super) fn goals(&self) -> Vec<Goal> {
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
}
