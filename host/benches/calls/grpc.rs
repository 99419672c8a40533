//! The gRPC rows: calcplug over go-plugin's protocol, next to go-plugin itself, in the same run.
//!
//! Every row here is the same measurement, made the same way on both sides: N sequential
//! `Add(1, 2)` calls, each timed, after a warm-up of N/10; the mean, median and 99th percentile.
//! calcplug's rows are timed here; the Go rows by the Go host of `tests/go` (`bench:N`), built
//! from Debian's go-plugin. Without Go, the Go rows are recorded as not measured, saying why.
//!
//! - `peers/calcplug_shm`, `peers/calcplug_socket`: calcplug's own out-of-process transport,
//!   through a shared-memory lane (its default) and over the runner's socket;
//! - `peers/calcplug_grpc_rust_plain` / `_tls`: the calcplug host calling `basic` served by
//!   `calcplug-runner --grpc`, without and with automatic mutual TLS (calcplug's default);
//! - `peers/calcplug_grpc_go_tls`: the calcplug host calling the Go plugin;
//! - `peers/go_grpc_calcplug`: go-plugin's Go host calling `basic` through `calcplug-runner --grpc`;
//! - `peers/go_grpc_go` / `_tls`: go-plugin's Go host calling the Go plugin over gRPC (its
//!   default, without TLS; and with AutoMTLS), the peer the goal is measured against;
//! - `peers/go_netrpc_go`: the same over go-plugin's net/rpc, the tutorial's default protocol.

use super::remote::{remote_options, Remote};
use super::*;

/// Times `calls` sequential calls of `add` after a warm-up; the figures as the run file keeps
/// them.
pub(super) fn timed(calls: usize, mut add: impl FnMut() -> f64) -> Value {
    for _ in 0..calls / 10 + 1 {
        black_box(add());
    }
    let mut times = Vec::with_capacity(calls);
    let start = Instant::now();
    for _ in 0..calls {
        let t = Instant::now();
        let sum = add();
        times.push(t.elapsed().as_nanos() as f64);
        assert_eq!(sum, 3.0, "the call answered");
    }
    let mean = start.elapsed().as_nanos() as f64 / calls as f64;
    let p50 = percentile(&mut times, 0.5);
    let p99 = percentile(&mut times, 0.99);
    json!({ "mean_ns": mean, "p50_ns": p50, "p99_ns": p99, "calls": calls })
}

/// Runs the Go host on `plugin` (a command line) with `bench:N`; the figures it printed.
fn go_host(
    host: &Path,
    flags: &[&str],
    plugin: &[&std::ffi::OsStr],
    calls: usize,
) -> Result<Value, String> {
    let output = Command::new(host)
        .args(flags)
        .args(plugin)
        .arg("--")
        .arg("init")
        .arg(format!("bench:{calls}"))
        .output()
        .map_err(|err| format!("cannot run the Go host: {err}"))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout.lines().find(|l| l.starts_with("bench:")).ok_or_else(|| {
        format!(
            "the Go host printed no figures: {stdout} {}",
            String::from_utf8_lossy(&output.stderr)
        )
    })?;
    let figure = |key: &str| -> Result<f64, String> {
        line.split_whitespace()
            .find_map(|field| field.strip_prefix(key)?.strip_prefix('='))
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| format!("no {key} in {line:?}"))
    };
    Ok(json!({
        "mean_ns": figure("mean_ns")?,
        "p50_ns": figure("p50_ns")?,
        "p99_ns": figure("p99_ns")?,
        "calls": calls,
    }))
}

pub(super) fn grpc_rows(setup: &Setup, remote: &Remote, quick: bool, run: &mut RunFile) {
    let calls = if quick { 2_000 } else { 10_000 };
    fn add(plugin: &RemotePlugin) -> impl FnMut() -> f64 + '_ {
        move || value(plugin.add(black_box(1.0), black_box(2.0)))
    }
    run.extra("peers/calcplug_shm", timed(calls, add(&remote.plugin)));
    run.extra("peers/calcplug_socket", timed(calls, add(&remote.socket)));

    let runner = built().1.clone();
    let library = setup.library.clone().into_os_string();
    for (id, auto_mtls) in [("plain", false), ("tls", true)] {
        let options = RemoteOptions { auto_mtls, ..remote_options() };
        let args = ["--grpc".into(), library.clone()];
        let plugin =
            RemotePlugin::spawn_command(&runner, args, options).expect("the runner serves gRPC");
        plugin.initialize(&Config::new()).expect("basic initializes");
        run.extra(&format!("peers/calcplug_grpc_rust_{id}"), timed(calls, add(&plugin)));
    }

    let go_ids = [
        "calcplug_grpc_go_tls",
        "go_grpc_calcplug",
        "go_grpc_go",
        "go_grpc_go_tls",
        "go_netrpc_go",
    ];
    let root = xtask::workspace_root();
    let peers = match xtask::peers::build_go_peers(
        &root,
        &root.join("target").join("bench-plugins").join("go"),
        interface::MAGIC_COOKIE_VALUE,
    ) {
        Ok(peers) => peers,
        Err(err) => {
            let why = format!("{err:#}");
            note!("the go-plugin rows are not measured: {why}");
            for id in go_ids {
                run.not_measured(&format!("peers/{id}"), &why);
            }
            return;
        }
    };
    let plugin = RemotePlugin::spawn_command(&peers.plugin, [""; 0], RemoteOptions::default())
        .expect("the Go plugin starts");
    plugin.initialize(&Config::new()).expect("the Go plugin initializes");
    run.extra("peers/calcplug_grpc_go_tls", timed(calls, add(&plugin)));
    drop(plugin);

    let served: Vec<&std::ffi::OsStr> =
        vec![runner.as_os_str(), "--grpc".as_ref(), library.as_os_str()];
    let go_plugin: Vec<&std::ffi::OsStr> = vec![peers.plugin.as_os_str()];
    let netrpc: Vec<&std::ffi::OsStr> = vec![peers.plugin.as_os_str(), "-mode=netrpc".as_ref()];
    let rows: [(&str, &[&str], &[&std::ffi::OsStr]); 4] = [
        ("go_grpc_calcplug", &[], &served),
        ("go_grpc_go", &[], &go_plugin),
        ("go_grpc_go_tls", &["-automtls"], &go_plugin),
        ("go_netrpc_go", &["-netrpc"], &netrpc),
    ];
    for (id, flags, command) in rows {
        match go_host(&peers.host, flags, command, calls) {
            Ok(figures) => run.extra(&format!("peers/{id}"), figures),
            Err(why) => {
                note!("peers/{id} not measured: {why}");
                run.not_measured(&format!("peers/{id}"), &why);
            }
        }
    }
}
