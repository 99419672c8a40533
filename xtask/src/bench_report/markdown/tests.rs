//! The report's tables, goals and charts, from hand-made runs.

use super::*;
fn sample_run() -> Run {
    let mut run = Run { quick: true, started_unix: 10, finished_unix: 70, ..Run::default() };
    for (id, ns) in [
        ("per_call/plain_checks", 2.0),
        ("per_call/direct_dyn", 3.0),
        ("per_call/in_process", 4.0),
        ("per_call/in_process_metrics", 9.0),
        ("per_call/socket_pingpong", 40_000.0),
        ("batch/plain_loop/1000000", 3_000_000.0),
        ("batch/in_process/1000000", 4_000_000.0),
    ] {
        run.medians.push((id.to_owned(), ns));
    }
    run.extras.insert(
        "cold/load_handshake_initialize".to_owned(),
        serde_json::json!({ "median_ns": 1.5e6, "min_ns": 1e6, "max_ns": 2e6, "runs": 15 }),
    );
    run.not_measured
        .insert("per_call/out_of_process".to_owned(), "out-of-process mode not built yet".into());
    run
}

#[test]
fn the_metrics_goal_prefers_the_paired_measurement() {
    let mut run = sample_run();
    run.extras.insert(
        "paired/metrics_overhead".to_owned(),
        serde_json::json!({ "delta_ns": 12.5, "delta_p25_ns": 11.0, "delta_p75_ns": 14.25 }),
    );
    let machine = Machine { cpus: 2, ..Machine::default() };
    let report = Report { run: &run, machine: &machine, command: "c", quick: true };
    let md = report.markdown();
    let row = "| metrics on vs in-process call | ≤ +5 ns | +12.5 ns (paired; middle half \
               +11.0 to +14.2) | **no** |";
    assert!(md.contains(row), "{md}");
    assert!(!md.contains("\"Paired\": "), "no rounds in the run, no explanation: {md}");
    run.extras.insert(
        "paired/metrics_overhead".to_owned(),
        serde_json::json!({ "delta_ns": 4.0, "delta_p25_ns": 3.5, "delta_p75_ns": 5.0,
                            "rounds": 1500, "block": 2000, "plugin_ns": 16.0, "handle_ns": 24.0 }),
    );
    let report = Report { run: &run, machine: &machine, command: "c", quick: true };
    let md = report.markdown();
    assert!(md.contains("| +4.0 ns (paired; middle half +3.5 to +5.0) | yes |"), "{md}");
    assert!(md.contains("\"Paired\": 1500 rounds of one block of 2000"), "{md}");
    // Without a paired ratio, the in-process goal divides the criterion medians (4 / 2).
    let in_process =
        "| in-process call vs `basic`'s checks through `&dyn` (no counters) | ≤ 1.5× |";
    assert!(md.contains(&format!("{in_process} 2.00× | **no** |")), "{md}");
    run.extras.insert(
        "paired/metrics_overhead".to_owned(),
        serde_json::json!({ "delta_ns": 4.0, "plugin_vs_floor": 1.25, "rounds": 1500 }),
    );
    let report = Report { run: &run, machine: &machine, command: "c", quick: true };
    let md = report.markdown();
    assert!(md.contains(&format!("{in_process} 1.25× (paired) | yes |")), "{md}");
}

#[test]
fn the_grpc_rows_are_compared_with_go_plugins_own_call() {
    let mut run = sample_run();
    for (id, mean) in
        [("peers/calcplug_grpc_rust_plain", 100_000.0), ("peers/go_grpc_go", 250_000.0)]
    {
        run.extras.insert(
            id.to_owned(),
            serde_json::json!({ "mean_ns": mean, "p50_ns": mean, "p99_ns": mean * 2.0 }),
        );
    }
    run.not_measured.insert("peers/go_netrpc_go".to_owned(), "Go is not installed".into());
    let machine = Machine { cpus: 2, ..Machine::default() };
    let report = Report { run: &run, machine: &machine, command: "c", quick: true };
    let md = report.markdown();
    let row = "| calcplug host → `basic` (`calcplug-runner --grpc`) | gRPC | 100.0 µs | \
               100.0 µs | 200.0 µs | 0.40× |";
    assert!(md.contains(row), "{md}");
    let goal = "| calcplug gRPC call vs go-plugin's own gRPC call (mean per `Add`, both \
                without TLS) | ≤ 0.5× | 0.40× | yes |";
    assert!(md.contains(goal), "{md}");
    let missing = "| go-plugin Go host → Go plugin | net/rpc | not measured: Go is not \
                   installed | | | |";
    assert!(md.contains(missing), "{md}");
    assert!(report.grpc_chart().contains("not measured"));
}

#[test]
fn report_shows_ratios_goals_and_unmeasured_rows() {
    let run = sample_run();
    let machine = Machine { cpus: 2, ..Machine::default() };
    let report = Report {
        run: &run,
        machine: &machine,
        command: "cargo xtask bench-report --quick",
        quick: true,
    };
    let md = report.markdown();
    assert!(md.contains("| in-process plugin call (`Plugin::add`) | 4.00 ns | 2.00× |"), "{md}");
    assert!(
        md.contains(
            "| out-of-process call through a shared-memory lane (the default) | not measured: \
             out-of-process mode not built yet | – |"
        ),
        "{md}"
    );
    assert!(
        md.contains(
            "| in-process call vs `basic`'s checks through `&dyn` (no counters) | ≤ 1.5× | \
             2.00× | **no** |"
        ),
        "{md}"
    );
    assert!(
        md.contains("| `basic` itself through `&dyn Calculator`, its request counters included | 3.00 ns | 1.50× |"),
        "{md}"
    );
    assert!(md.contains("| metrics on vs in-process call | ≤ +5 ns | +5.0 ns | yes |"), "{md}");
    assert!(md.contains("| 1 000 000 | 333.3 M/s | 250.0 M/s | 75% |"), "{md}");
    assert!(
        md.contains(
            "| batch of 1 000 000, in-process vs plain Rust loop (throughput) | ≥ 90% | 75% | \
             **no** |"
        ),
        "{md}"
    );
    assert!(
        md.contains("| load + handshake + initialize of one plugin | < 1 ms | 1.500 ms | **no** |"),
        "{md}"
    );
    assert!(md.contains("Why goals are missed"), "{md}");
    let svg = report.latency_chart();
    assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"), "{svg}");
    assert!(svg.contains("not measured"), "{svg}");
}

#[test]
fn the_fleet_rows_show_latency_tls_cost_and_throughput() {
    let mut run = sample_run();
    for (id, mean, p99) in
        [("fleet/endpoint_mtls", 300_000.0, 900_000.0), ("fleet/endpoint_plain", 250_000.0, 1.0)]
    {
        run.extras.insert(
            id.to_owned(),
            serde_json::json!({ "mean_ns": mean, "p50_ns": mean, "p99_ns": p99 }),
        );
    }
    run.extras
        .insert("fleet/throughput_3".to_owned(), serde_json::json!({ "ops_per_sec": 9000.0 }));
    run.not_measured.insert("fleet/throughput_1".to_owned(), "no time".into());
    let machine = Machine { cpus: 2, ..Machine::default() };
    let md = Report { run: &run, machine: &machine, command: "c", quick: true }.markdown();
    assert!(md.contains("| one instance, mutual TLS | 300.0 µs | 300.0 µs | 900.0 µs |"), "{md}");
    assert!(md.contains("TLS costs 50.0 µs per call at the median (+20%)."), "{md}");
    // Noise can make plaintext the slower one: said as such, not as a negative cost.
    run.extras.insert(
        "fleet/endpoint_plain".to_owned(),
        serde_json::json!({ "mean_ns": 400_000.0, "p50_ns": 400_000.0, "p99_ns": 1.0 }),
    );
    let md = Report { run: &run, machine: &machine, command: "c", quick: true }.markdown();
    assert!(
        md.contains(
            "TLS cost nothing measurable in this run: its median call took 300.0 µs, plaintext's \
             400.0 µs; this VM's noise is larger than what TLS costs."
        ),
        "{md}"
    );
    assert!(md.contains("| 3 | 8 threads, blocking API | 9.0 k/s |"), "{md}");
    assert!(md.contains("| 1 | 8 threads, blocking API | not measured: no time |"), "{md}");
    // The async row beside the blocking one, and the goal from their ratio.
    run.extras.insert(
        "fleet/throughput_async_3".to_owned(),
        serde_json::json!({ "ops_per_sec": 31500.0 }),
    );
    let md = Report { run: &run, machine: &machine, command: "c", quick: true }.markdown();
    assert!(
        md.contains("| 3 | 64 calls in flight from one thread, async API | 31.5 k/s |"),
        "{md}"
    );
    assert!(
        md.contains("| async fleet throughput, 64 calls in flight from one thread vs 8 blocking threads (3 instances) | ≥ 3× | 3.50× | yes |"),
        "{md}"
    );
    assert!(
        md.contains("| remote call over loopback with mutual TLS (`calcplug serve`, p99) | < 1 ms | 0.900 ms | yes |"),
        "{md}"
    );
}

#[test]
fn numbers_are_readable() {
    assert_eq!(thousands(1_000_000), "1 000 000");
    assert_eq!(thousands(100), "100");
    assert_eq!(duration(3.456), "3.46 ns");
    assert_eq!(duration(41_234.0), "41.2 µs");
    assert_eq!(per_second(2.5e8), "250.0 M/s");
}

#[test]
fn the_out_of_process_goals_and_ratios_far_below_the_floor() {
    let mut run = sample_run();
    for (id, ns) in [
        ("per_call/out_of_process", 250.0),
        ("per_call/out_of_process_socket", 44_000.0),
        ("batch/out_of_process/1000000", 10_000_000.0),
    ] {
        run.medians.push((id.to_owned(), ns));
    }
    run.extras.insert(
        "threads/out_of_process/1".to_owned(),
        serde_json::json!({ "threads": 1, "ops_per_sec": 1e6, "mean_ns": 800.0,
                            "p50_ns": 700.0, "p99_ns": 1500.0 }),
    );
    let machine = Machine { cpus: 2, ..Machine::default() };
    let report = Report { run: &run, machine: &machine, command: "c", quick: true };
    let md = report.markdown();
    // The mean of individually timed calls, not criterion's median.
    let goal =
        "| out-of-process call through shared memory (mean per `add`) | ≤ 5 µs | 800 ns | yes |";
    assert!(md.contains(goal), "{md}");
    let goal = "| batch of 1 000 000, out of process (shared memory) vs in process (throughput) \
                | ≥ 50% | 40% | **no** |";
    assert!(md.contains(goal), "{md}");
    let goal = "| out-of-process call over the socket vs socket ping-pong | ≤ 1.2× | 1.10× | yes |";
    assert!(md.contains(goal), "{md}");
    // 250 ns against a 40 µs floor reads as a fraction, not as 0.00×.
    let row = "| out-of-process call through a shared-memory lane (the default) | 250 ns | 1/160 |";
    assert!(md.contains(row), "{md}");
}
