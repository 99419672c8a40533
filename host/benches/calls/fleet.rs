//! The fleet rows: `basic` served by `calcplug serve` processes on loopback TCP, called by this
//! host.
//!
//! - `fleet/endpoint_mtls` / `fleet/endpoint_plain`: N sequential `Add(1, 2)` through
//!   `host::fleet::Endpoint` to one instance, with mutual TLS (certificates from
//!   `calcplug certs`) and plaintext (`--insecure`), each call timed as the gRPC rows are;
//! - `fleet/throughput_1` / `fleet/throughput_3`: calls per second with 8 threads calling `add`
//!   at once through one `host::fleet::Fleet`, over one and over three mTLS instances;
//! - `fleet/throughput_async_3`: the same over three instances through `host::AsyncHandle`, 64
//!   calls kept in flight by tasks on one thread.
//!
//! go-plugin has no counterpart: its plugins run on the host's own machine only.

use std::io::{BufRead, BufReader};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use host::fleet::{ClientTls, Endpoint, Fleet, FleetOptions, Targets};

use super::grpc::timed;
use super::*;

/// A `calcplug serve` child, killed when dropped.
struct Served {
    child: Child,
    address: String,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `calcplug --plugin-dir DIR serve --listen 127.0.0.1:0 ARGS` and reads its address.
fn serve(calcplug: &Path, dir: &Path, args: &[&str]) -> Result<Served, String> {
    let mut command = Command::new(calcplug);
    // The benchmark's own variables are not for `calcplug`, which refuses `CALCPLUG_` ones it
    // does not read.
    for (var, _) in std::env::vars_os() {
        if var.to_string_lossy().starts_with("CALCPLUG_BENCH_") {
            command.env_remove(var);
        }
    }
    let mut child = command
        .arg("--plugin-dir")
        .arg(dir)
        .args(["serve", "--listen", "127.0.0.1:0"])
        .args(args)
        .env("NO_COLOR", "1")
        .env_remove("CALCPLUG_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|err| format!("cannot start {}: {err}", calcplug.display()))?;
    let stderr = child.stderr.take().ok_or("no stderr")?;
    let mut lines = BufReader::new(stderr).lines();
    let address = loop {
        match lines.next() {
            Some(Ok(line)) => {
                if let Some(address) = line
                    .contains("serving plugins")
                    .then(|| line.split_whitespace().find_map(|f| f.strip_prefix("address=")))
                {
                    break address.map(str::to_owned);
                }
            }
            _ => break None,
        }
    };
    // Keep reading, so that the server never blocks on a full pipe.
    std::thread::spawn(move || lines.for_each(drop));
    match address {
        Some(address) => Ok(Served { child, address }),
        None => {
            let _ = child.kill();
            Err("calcplug serve exited without serving".to_owned())
        }
    }
}

/// Calls per second of 8 threads calling `add` through `fleet` for `duration`.
fn throughput(fleet: &Fleet, duration: Duration) -> Value {
    let stop = AtomicBool::new(false);
    let calls = AtomicU64::new(0);
    std::thread::scope(|scope| {
        for _ in 0..8 {
            scope.spawn(|| {
                while !stop.load(Ordering::Relaxed) {
                    assert_eq!(value(fleet.call(Op::Add, black_box(1.0), black_box(2.0))), 3.0);
                    calls.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
        std::thread::sleep(duration);
        stop.store(true, Ordering::Relaxed);
    });
    let made = calls.into_inner();
    json!({ "ops_per_sec": made as f64 / duration.as_secs_f64(), "calls": made, "threads": 8 })
}

/// Calls per second of 64 calls kept in flight, for `duration`, by tasks on one thread (a
/// current-thread runtime) through the async API of `fleet`.
fn throughput_async(fleet: &host::AsyncHandle<Fleet>, duration: Duration) -> Value {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a current-thread runtime");
    let made = runtime.block_on(async {
        let deadline = tokio::time::Instant::now() + duration;
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..64 {
            let fleet = fleet.clone();
            tasks.spawn(async move {
                let mut made = 0u64;
                while tokio::time::Instant::now() < deadline {
                    assert_eq!(value(fleet.add(black_box(1.0), black_box(2.0)).await), 3.0);
                    made += 1;
                }
                made
            });
        }
        tasks.join_all().await.into_iter().sum::<u64>()
    });
    json!({ "ops_per_sec": made as f64 / duration.as_secs_f64(), "calls": made, "in_flight": 64 })
}

pub(super) fn fleet_rows(setup: &Setup, quick: bool, run: &mut RunFile) {
    let ids = [
        "fleet/endpoint_mtls",
        "fleet/endpoint_plain",
        "fleet/throughput_1",
        "fleet/throughput_3",
        "fleet/throughput_async_3",
    ];
    if let Err(why) = measure(setup, quick, run) {
        for id in ids {
            run.not_measured(id, &why);
        }
    }
}

fn measure(setup: &Setup, quick: bool, run: &mut RunFile) -> Result<(), String> {
    let calcplug = built().1.with_file_name("calcplug");
    let dir = setup.scratch.path().join("fleet");
    let plugins = dir.join("plugins");
    fs::create_dir_all(&plugins).map_err(|err| err.to_string())?;
    fs::copy(&setup.library, plugins.join(library_name())).map_err(|err| err.to_string())?;
    let certs = dir.join("certs");
    let made = Command::new(&calcplug)
        .args(["certs", "--out"])
        .arg(&certs)
        .output()
        .map_err(|err| err.to_string())?;
    if !made.status.success() {
        return Err(format!("calcplug certs failed: {}", String::from_utf8_lossy(&made.stderr)));
    }
    let file = |name: &str| certs.join(name).display().to_string();
    let mtls_args = [
        "--tls-cert".to_owned(),
        file("server.pem"),
        "--tls-key".to_owned(),
        file("server.key"),
        "--client-ca".to_owned(),
        file("ca.pem"),
    ];
    let mtls_args: Vec<&str> = mtls_args.iter().map(String::as_str).collect();
    let instances =
        (0..3).map(|_| serve(&calcplug, &plugins, &mtls_args)).collect::<Result<Vec<_>, _>>()?;
    let plain = serve(&calcplug, &plugins, &["--insecure"])?;
    let tls = ClientTls {
        ca: certs.join("ca.pem"),
        identity: Some((certs.join("client.pem"), certs.join("client.key"))),
        server_name: None,
    };
    let timeout = Duration::from_secs(10);
    let url = |served: &Served, scheme: &str| format!("{scheme}://{}", served.address);

    let calls = if quick { 2_000 } else { 10_000 };
    note!("fleet: {calls} sequential calls over loopback, mutual TLS and plaintext");
    let secure = Endpoint::connect(&url(&instances[0], "https"), "basic", Some(&tls), timeout)
        .map_err(|err| err.to_string())?;
    run.extra("fleet/endpoint_mtls", timed(calls, || value(secure.call(Op::Add, 1.0, 2.0))));
    let plaintext = Endpoint::connect(&url(&plain, "http"), "basic", None, timeout)
        .map_err(|err| err.to_string())?;
    run.extra("fleet/endpoint_plain", timed(calls, || value(plaintext.call(Op::Add, 1.0, 2.0))));

    let duration = if quick { Duration::from_secs(2) } else { Duration::from_secs(8) };
    for (id, count) in [("fleet/throughput_1", 1), ("fleet/throughput_3", 3)] {
        note!("{id}: 8 threads for {duration:?} over {count} instance(s)");
        let urls = instances[..count].iter().map(|s| url(s, "https")).collect();
        let fleet =
            Fleet::connect("basic", FleetOptions::new(Targets::Endpoints(urls), Some(tls.clone())))
                .map_err(|err| err.to_string())?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while fleet.instances().iter().any(|(_, serving)| !serving) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        throughput(&fleet, duration / 4);
        run.extra(id, throughput(&fleet, duration));
        if count == 3 {
            let id = "fleet/throughput_async_3";
            note!("{id}: 64 calls in flight from one thread for {duration:?} over 3 instances");
            let fleet = host::AsyncHandle::new(fleet);
            throughput_async(&fleet, duration / 4);
            run.extra(id, throughput_async(&fleet, duration));
        }
    }
    Ok(())
}
