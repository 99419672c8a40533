//! `calcplug serve` as real processes on loopback, and hosts calling through it with
//! `host::fleet::Endpoint`: mutual TLS with certificates from `calcplug certs`, the refusals,
//! health by plugin, and the drain on SIGTERM.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use host::fleet::{ClientTls, Endpoint, Fleet, FleetOptions, Targets};
use host::{Error, ErrorCode, Op};
use tonic_health::pb::health_check_response::ServingStatus;

use crate::util::{artifacts, calcplug, scratch};

/// OpenTelemetry traces across the hop.
mod trace;

/// The CLI reaching a fleet through its config.
mod cli;

pub(crate) const TIMEOUT: Duration = Duration::from_secs(10);

/// `calcplug certs --out DIR`: a throwaway CA, server and client certificates.
pub(crate) fn certs(dir: &Path) -> PathBuf {
    let out = calcplug().args(["certs", "--out"]).arg(dir).output().expect("run calcplug certs");
    assert!(out.status.success(), "calcplug certs: {}", String::from_utf8_lossy(&out.stderr));
    dir.to_owned()
}

/// A running `calcplug serve`, its address, and its stderr lines as they come.
pub(crate) struct Serve {
    child: Child,
    address: String,
    lines: mpsc::Receiver<String>,
    /// Every line read so far.
    log: Vec<String>,
}

impl Serve {
    /// Starts `calcplug --plugin-dir DIR serve --listen 127.0.0.1:0 ARGS` and waits for the
    /// line saying where it listens.
    fn start(args: &[&str]) -> Serve {
        Serve::start_at("127.0.0.1:0", args)
    }

    /// [`Serve::start`] on a given address.
    fn start_at(listen: &str, args: &[&str]) -> Serve {
        let mut command = calcplug();
        command.arg("--plugin-dir").arg(&artifacts().plugin_dir);
        command.args(["serve", "--listen", listen]).args(args);
        Serve::spawn(command)
    }

    /// Runs `command` (a `calcplug … serve …`) and waits for the line saying where it listens.
    fn spawn(mut command: std::process::Command) -> Serve {
        let mut child = command
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start calcplug serve");
        let stderr = child.stderr.take().expect("stderr");
        let (send, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if send.send(line).is_err() {
                    return;
                }
            }
        });
        let mut serve = Serve { child, address: String::new(), lines, log: Vec::new() };
        serve.address = serve.address_in("serving plugins");
        serve
    }

    /// The `address=` field of the next stderr line containing `text` (see [`Serve::wait_for`]).
    fn address_in(&mut self, text: &str) -> String {
        let line = self.wait_for(text);
        let address = line
            .split_whitespace()
            .find_map(|field| field.strip_prefix("address="))
            .unwrap_or_else(|| panic!("no address in {line:?}"));
        address.to_owned()
    }

    /// The next stderr line containing `text`, within 30 s.
    fn wait_for(&mut self, text: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(line) = self.log.iter().find(|line| line.contains(text)) {
                return line.clone();
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => self.log.push(line),
                Err(_) => panic!(
                    "no line with {text:?} within 30 s; stderr so far:\n{}",
                    self.log.join("\n")
                ),
            }
        }
    }

    pub(crate) fn url(&self, scheme: &str) -> String {
        format!("{scheme}://{}", self.address)
    }

    /// SIGTERM, then waits for the exit (the drain's grace included) and for the log's last
    /// line (the manager's shutdown), so that the log is complete; the exit code.
    fn stop(&mut self) -> Option<i32> {
        let pid = rustix::process::Pid::from_raw(self.child.id() as i32).expect("a pid");
        rustix::process::kill_process(pid, rustix::process::Signal::TERM).expect("SIGTERM");
        let status = self.child.wait().expect("wait for calcplug serve");
        self.wait_for("calcplug::manager: shut down");
        status.code()
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(crate) fn mutual(dir: &Path) -> ClientTls {
    ClientTls {
        ca: dir.join("ca.pem"),
        identity: Some((dir.join("client.pem"), dir.join("client.key"))),
        server_name: None,
    }
}

fn tls_args(dir: &Path) -> Vec<String> {
    let file = |name: &str| dir.join(name).display().to_string();
    vec![
        "--tls-cert".into(),
        file("server.pem"),
        "--tls-key".into(),
        file("server.key"),
        "--client-ca".into(),
        file("ca.pem"),
    ]
}

pub(crate) fn start_mutual(dir: &Path) -> Serve {
    start_mutual_at(dir, "127.0.0.1:0")
}

fn start_mutual_at(dir: &Path, listen: &str) -> Serve {
    let args = tls_args(dir);
    Serve::start_at(listen, &args.iter().map(String::as_str).collect::<Vec<_>>())
}

/// How many calls the `basic` of the instance at `url` has served.
pub(crate) fn served(url: &str, dir: &Path) -> u64 {
    let endpoint = Endpoint::connect(url, "basic", Some(&mutual(dir)), TIMEOUT)
        .unwrap_or_else(|err| panic!("{url}: {err}"));
    requests(&endpoint)
}

/// How many calls the plugin behind `endpoint` has served: its own count, asked over a
/// connection made earlier (a new one would be refused once the server drains).
fn requests(endpoint: &Endpoint) -> u64 {
    let status = endpoint.status().unwrap_or_else(|err| panic!("status: {err}"));
    status.request_count
}

/// Waits for `condition`, at most `within`.
#[track_caller]
fn wait_until(what: &str, within: Duration, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !condition() {
        assert!(Instant::now() < deadline, "{what}: not within {within:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Four threads calling `add` through `fleet` until `stop`; every call must succeed.
fn call_until(fleet: &Fleet, stop: &AtomicBool) -> u64 {
    let calls = AtomicU64::new(0);
    std::thread::scope(|scope| {
        for t in 0..4u32 {
            let (calls, stop) = (&calls, stop);
            scope.spawn(move || {
                let mut i = 0u32;
                while !stop.load(Ordering::Relaxed) {
                    let a = f64::from(t * 1_000_000 + i);
                    match fleet.call(Op::Add, a, 1.0) {
                        Ok(sum) => assert_eq!(sum, a + 1.0),
                        Err(err) => panic!("call {i} of thread {t} failed: {err}"),
                    }
                    calls.fetch_add(1, Ordering::Relaxed);
                    i += 1;
                }
            });
        }
    });
    calls.into_inner()
}

#[test]
#[allow(clippy::print_stderr)] // the figures, for a run with `--nocapture`
fn a_fleet_of_three_balances_fails_over_and_takes_an_instance_back() {
    let pki = scratch();
    let dir = certs(pki.path());
    let mut instances: Vec<Serve> = (0..3).map(|_| start_mutual(&dir)).collect();
    let urls: Vec<String> = instances.iter().map(|s| s.url("https")).collect();
    let mut options = FleetOptions::new(Targets::Endpoints(urls.clone()), Some(mutual(&dir)));
    options.call_timeout = Duration::from_secs(5);
    let fleet = Fleet::connect("basic", options).unwrap_or_else(|err| panic!("{err}"));
    assert_eq!(fleet.identity().name(), "basic");
    let deadline = Instant::now() + Duration::from_secs(10);
    while fleet.instances().iter().any(|(_, serving)| !serving) {
        assert!(Instant::now() < deadline, "not all instances balanced: {:?}", fleet.instances());
        std::thread::sleep(Duration::from_millis(50));
    }

    // Four callers for 10 s: each instance gets its share.
    let stop = AtomicBool::new(false);
    let made = std::thread::scope(|scope| {
        let stopper = StopOnDrop(&stop);
        let caller = scope.spawn(|| call_until(&fleet, &stop));
        std::thread::sleep(Duration::from_secs(10));
        drop(stopper);
        caller.join().unwrap()
    });
    let counts: Vec<u64> = urls.iter().map(|url| served(url, &dir)).collect();
    assert_eq!(counts.iter().sum::<u64>(), made, "every call served once: {counts:?}");
    for (url, count) in urls.iter().zip(&counts) {
        let share = *count as f64 / made as f64;
        assert!((0.20..=0.47).contains(&share), "{url} served {share:.2} of {made}: {counts:?}");
    }

    // kill -9 one instance under load: no call fails, and it is ejected.
    let failovers_before = fleet.failovers();
    let stop = AtomicBool::new(false);
    let victim = urls[1].clone();
    let victim_address = instances[1].address.clone();
    std::thread::scope(|scope| {
        let stopper = StopOnDrop(&stop);
        let caller = scope.spawn(|| call_until(&fleet, &stop));
        std::thread::sleep(Duration::from_millis(500));
        instances[1].child.kill().expect("kill -9");
        instances[1].child.wait().expect("reap");
        let deadline = Instant::now() + Duration::from_secs(5);
        while fleet.instances().iter().any(|(url, serving)| *url == victim && *serving) {
            assert!(Instant::now() < deadline, "the dead instance is still balanced");
            std::thread::sleep(Duration::from_millis(20));
        }
        std::thread::sleep(Duration::from_millis(1500));
        drop(stopper);
        caller.join().unwrap()
    });
    // The calls that were on their way to it when it died failed in transport and were tried
    // again on another instance (and none failed: `call_until` panics on a failed call).
    let failovers = fleet.failovers() - failovers_before;
    assert!(failovers >= 1, "a kill -9 under four callers made no call fail over");

    // Restart it on the same address: it gets calls again within 5 s.
    instances[1] = start_mutual_at(&dir, &victim_address);
    let restarted = Instant::now();
    let stop = AtomicBool::new(false);
    let back_after = std::thread::scope(|scope| {
        let stopper = StopOnDrop(&stop);
        let caller = scope.spawn(|| call_until(&fleet, &stop));
        let back = loop {
            if served(&victim, &dir) > 0 {
                break restarted.elapsed();
            }
            assert!(
                restarted.elapsed() < Duration::from_secs(5),
                "no call reached the restarted instance in 5 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        drop(stopper);
        caller.join().unwrap();
        back
    });
    eprintln!(
        "fleet: shares {:?} of {made} calls; {failovers} failovers after kill -9; the restarted instance served again after {back_after:?}",
        counts.iter().map(|c| format!("{:.1}%", *c as f64 * 100.0 / made as f64)).collect::<Vec<_>>()
    );
}

#[test]
fn a_served_plugin_answers_over_mutual_tls_as_a_local_call_would() {
    let pki = scratch();
    let dir = certs(pki.path());
    let serve = start_mutual(&dir);
    let basic = Endpoint::connect(&serve.url("https"), "basic", Some(&mutual(&dir)), TIMEOUT)
        .unwrap_or_else(|err| panic!("connect: {err}"));
    assert_eq!(basic.call(Op::Add, 2.0, 3.0).unwrap(), 5.0);
    assert_eq!(basic.call(Op::Divide, 1.0, 3.0).unwrap(), 0.333_333_333_333_333);

    let local = crate::util::ready("basic", &host::Config::new());
    for (op, a, b) in [(Op::Divide, 1.0, 0.0), (Op::Add, f64::NAN, 1.0), (Op::Sin, 1.0, 0.0)] {
        let remote = basic.call(op, a, b).unwrap_err();
        let here = local.call(op, a, b).unwrap_err();
        assert_eq!(remote.to_string(), here.to_string(), "{op}: the same error either way");
        assert!(matches!(remote, Error::Call { .. }), "{remote:?}");
    }
    let status = basic.status().unwrap();
    assert_eq!(status.state, host::PluginState::Ready);
    // `sin` never reached `basic`, which has no scientific operations.
    assert_eq!(status.request_count, 4, "the plugin counted the calls that reached it");

    let scientific =
        Endpoint::connect(&serve.url("https"), "scientific", Some(&mutual(&dir)), TIMEOUT).unwrap();
    assert_eq!(scientific.call(Op::Pow, 2.0, 10.0).unwrap(), 1024.0);

    let err =
        Endpoint::connect(&serve.url("https"), "nope", Some(&mutual(&dir)), TIMEOUT).unwrap_err();
    let text = err.to_string();
    assert!(text.starts_with(&format!("{}: ", serve.url("https"))), "{text}");
    assert!(text.ends_with("it serves no `nope` (its health service does not know it)"), "{text}");
}

#[test]
fn clients_without_the_right_certificate_are_refused_with_the_reason_on_both_sides() {
    let pki = scratch();
    let dir = certs(&pki.path().join("fleet"));
    let other = certs(&pki.path().join("other"));
    let mut serve = start_mutual(&dir);
    let url = serve.url("https");

    // A client that connects and goes away before any handshake (a TCP probe, a client that
    // exits) is refused nothing: no warning about it (checked at the end, once the log is
    // complete).
    let probe = std::net::TcpStream::connect(&serve.address).expect("connect");
    let probe_peer = format!("peer={}", probe.local_addr().unwrap());
    drop(probe);

    let no_certificate = ClientTls { identity: None, ..mutual(&dir) };
    let err = Endpoint::connect(&url, "basic", Some(&no_certificate), TIMEOUT).unwrap_err();
    let text = err.to_string();
    assert!(text.starts_with(&format!("{url}: ")), "{text}");
    assert!(
        text.ends_with(
            "received fatal alert: CertificateRequired (the server requires a client \
             certificate (mutual TLS) and none is configured)"
        ),
        "{text}"
    );
    serve.wait_for("TLS handshake failed peer=127.0.0.1:");
    serve.wait_for("error=peer sent no certificates");

    // A certificate from another CA, for a server the client trusts.
    let stranger = ClientTls {
        ca: dir.join("ca.pem"),
        identity: Some((other.join("client.pem"), other.join("client.key"))),
        server_name: None,
    };
    let err = Endpoint::connect(&url, "basic", Some(&stranger), TIMEOUT).unwrap_err();
    let text = err.to_string();
    assert!(
        text.ends_with(
            "received fatal alert: UnknownCA (the server does not accept this host's \
             certificate (not signed by the CA it trusts))"
        ),
        "{text}"
    );
    serve.wait_for("error=invalid peer certificate: UnknownIssuer");

    // The client does not trust the server's CA.
    let distrusting = mutual(&other);
    let err = Endpoint::connect(&url, "basic", Some(&distrusting), TIMEOUT).unwrap_err();
    assert!(
        err.to_string().ends_with(
            "invalid peer certificate: UnknownIssuer (the server's certificate is not signed \
             by the configured CA, or not for this name)"
        ),
        "{err}"
    );
    serve.wait_for("error=received fatal alert: UnknownCA");

    // Plaintext to a TLS port.
    let err = Endpoint::connect(&serve.url("http"), "basic", None, TIMEOUT).unwrap_err();
    let text = err.to_string();
    assert!(text.starts_with(&format!("{}: ", serve.url("http"))), "{text}");
    assert!(
        text.ends_with("(the server closed a plaintext connection: is it a TLS port (https://)?)"),
        "{text}"
    );
    serve.wait_for("TLS handshake failed (plaintext on this TLS port?) peer=127.0.0.1:");

    // And the server kept serving the right client all along.
    let basic = Endpoint::connect(&url, "basic", Some(&mutual(&dir)), TIMEOUT).unwrap();
    assert_eq!(basic.call(Op::Multiply, 6.0, 7.0).unwrap(), 42.0);
    drop(basic);

    assert_eq!(serve.stop(), Some(0));
    let refusals: Vec<&String> =
        serve.log.iter().filter(|line| line.contains("refused a connection")).collect();
    assert_eq!(refusals.len(), 4, "no certificate, another CA twice, plaintext: {refusals:#?}");
    assert!(!serve.log.iter().any(|line| line.contains(&probe_peer)), "{:#?}", serve.log);
}

#[test]
fn serve_takes_its_settings_from_the_config_file_and_the_environment() {
    // The seed's keys, with paths relative to the file: mutual TLS without one flag.
    let dir = scratch();
    certs(&dir.path().join("tls"));
    let toml = dir.path().join("calcplug.toml");
    std::fs::write(
        &toml,
        "[serve]\nlisten = \"127.0.0.1:0\"\n\
         [security]\nenable_tls = true\ncert_file = \"tls/server.pem\"\n\
         key_file = \"tls/server.key\"\nclient_ca_file = \"tls/ca.pem\"\n",
    )
    .unwrap();
    let serve_with = |env: &[(&str, &str)]| {
        let mut command = calcplug();
        command.arg("--config").arg(&toml).arg("--plugin-dir").arg(&artifacts().plugin_dir);
        command.arg("serve").envs(env.iter().copied());
        Serve::spawn(command)
    };
    let serve = serve_with(&[]);
    let basic = Endpoint::connect(
        &serve.url("https"),
        "basic",
        Some(&mutual(&dir.path().join("tls"))),
        TIMEOUT,
    )
    .unwrap();
    assert_eq!(basic.call(Op::Add, 2.0, 3.0).unwrap(), 5.0);
    let err = Endpoint::connect(&serve.url("http"), "basic", None, TIMEOUT).unwrap_err();
    assert!(err.to_string().contains("is it a TLS port (https://)?"), "{err}");
    drop(serve);

    // A variable overrides the file's key: plaintext, with the warning.
    let mut serve = serve_with(&[("CALCPLUG_SECURITY_ENABLE_TLS", "false")]);
    serve.wait_for("serving plaintext (--insecure or security.enable_tls = false)");
    let basic = Endpoint::connect(&serve.url("http"), "basic", None, TIMEOUT).unwrap();
    assert_eq!(basic.call(Op::Multiply, 2.0, 3.0).unwrap(), 6.0);
    drop(serve);

    // A variable that names no key stops it at once, naming the variable and the keys there are.
    let out = calcplug()
        .arg("--config")
        .arg(&toml)
        .args(["serve"])
        .env("CALCPLUG_SERVE_LISTN", "127.0.0.1:0")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "error: environment variable CALCPLUG_SERVE_LISTN (`serve.listn`): [serve] has no such key \
         (its variables: CALCPLUG_SERVE_LISTEN, CALCPLUG_SERVE_METRICS_LISTEN, \
         CALCPLUG_SERVE_HEALTH_LISTEN, CALCPLUG_SERVE_DRAIN_GRACE)\n"
    );
}

/// Sets its flag when dropped, by a return or by a panic.
struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

#[test]
fn a_served_plugin_hot_reloads_under_callers_without_a_failed_call() {
    let dir = scratch();
    let file = dir.path().join(tests::library_file_name("reload"));
    let install = |package: &str| {
        let partial = dir.path().join(".reload.partial");
        std::fs::copy(artifacts().library(package), &partial).unwrap();
        std::fs::rename(&partial, &file).unwrap();
    };
    install("reload-v1");
    let mut command = calcplug();
    command.arg("--plugin-dir").arg(dir.path());
    command.args(["serve", "--insecure", "--listen", "127.0.0.1:0"]);
    let mut serve = Serve::spawn(command);
    let reload = Endpoint::connect(&serve.url("http"), "reload", None, TIMEOUT).unwrap();
    // `reload` 1.0.0 adds 1 to every sum, 2.0.0 adds 2.
    assert_eq!(reload.call(Op::Add, 0.0, 0.0).unwrap(), 1.0);

    let stop = AtomicBool::new(false);
    let url = serve.url("http");
    // Per caller, whether it has been answered by 1.0.0 and by 2.0.0: the reload waits for the
    // first, the end for the second (events, not a time that a loaded machine may not keep).
    let seen: [[AtomicBool; 2]; 2] = Default::default();
    let all_seen =
        |version: usize| seen.iter().all(|caller| caller[version].load(Ordering::SeqCst));
    let answers: Vec<Vec<f64>> = std::thread::scope(|scope| {
        // The callers stop however this thread ends, a failed assertion included.
        let stopper = StopOnDrop(&stop);
        let callers: Vec<_> = seen
            .iter()
            .map(|seen| {
                let (url, stop) = (&url, &stop);
                scope.spawn(move || {
                    let endpoint = Endpoint::connect(url, "reload", None, TIMEOUT).unwrap();
                    let mut answers = Vec::new();
                    while !stop.load(Ordering::Relaxed) {
                        let answer = endpoint.call(Op::Add, 0.0, 0.0);
                        let answer = answer.unwrap_or_else(|err| panic!("a call failed: {err}"));
                        if answer == 1.0 || answer == 2.0 {
                            seen[answer as usize - 1].store(true, Ordering::SeqCst);
                        }
                        answers.push(answer);
                    }
                    answers
                })
            })
            .collect();
        wait_until("every caller answered by 1.0.0", TIMEOUT, || all_seen(0));
        install("reload-v2");
        serve.wait_for("reloaded");
        wait_until("every caller answered by 2.0.0", TIMEOUT, || all_seen(1));
        assert_eq!(reload.call(Op::Add, 0.0, 0.0).unwrap(), 2.0);
        drop(stopper);
        callers.into_iter().map(|caller| caller.join().unwrap()).collect()
    });
    for thread in &answers {
        // Each caller saw 1.0.0, then 2.0.0, and never the old one again.
        let switch = thread.iter().position(|&answer| answer == 2.0).expect("2.0.0 answered");
        assert!(switch > 0, "1.0.0 answered first");
        assert!(thread[..switch].iter().all(|&answer| answer == 1.0), "{thread:?}");
        assert!(thread[switch..].iter().all(|&answer| answer == 2.0), "{thread:?}");
    }
}

#[test]
fn plaintext_only_when_asked_for_and_then_with_a_warning() {
    let out = calcplug()
        .arg("--plugin-dir")
        .arg(&artifacts().plugin_dir)
        .args(["serve", "--listen", "127.0.0.1:0"])
        .output()
        .expect("run calcplug serve");
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "error: serve needs a certificate and key: --tls-cert and --tls-key (config: \
         security.cert_file and security.key_file, or CALCPLUG_SECURITY_CERT_FILE and \
         CALCPLUG_SECURITY_KEY_FILE), and --client-ca for mutual TLS; or --insecure \
         (security.enable_tls = false) to serve plaintext\n"
    );

    let mut serve = Serve::start(&["--insecure"]);
    serve.wait_for("serving plaintext (--insecure or security.enable_tls = false)");
    let basic = Endpoint::connect(&serve.url("http"), "basic", None, TIMEOUT).unwrap();
    assert_eq!(basic.call(Op::Subtract, 2.0, 3.0).unwrap(), -1.0);
    let err = basic.call(Op::Divide, 1.0, 0.0).unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::DivisionByZero));
}

#[test]
fn sigterm_reports_not_serving_before_closing_and_a_fleet_loses_no_call() {
    // A grace long enough for the fleet to move away while the draining server still answers.
    let mut draining = Serve::start(&["--insecure", "--drain-grace", "3s"]);
    let other = Serve::start(&["--insecure"]);
    let watched = Endpoint::connect(&draining.url("http"), "basic", None, TIMEOUT).unwrap();
    let beside = Endpoint::connect(&other.url("http"), "basic", None, TIMEOUT).unwrap();
    assert!(watched.serving().unwrap());
    let urls = vec![draining.url("http"), other.url("http")];
    let fleet = Fleet::connect("basic", FleetOptions::new(Targets::Endpoints(urls.clone()), None))
        .unwrap_or_else(|err| panic!("{err}"));
    // What `fleet.instances()` lists (sorted by URL) when the draining server is balanced or not.
    let balanced = |draining_balanced: bool| {
        let mut instances = vec![(urls[0].clone(), draining_balanced), (urls[1].clone(), true)];
        instances.sort();
        instances
    };
    wait_until("the fleet balances both servers", TIMEOUT, || fleet.instances() == balanced(true));
    let stop = AtomicBool::new(false);
    // What the health check said, in order, from the SIGTERM on: `Some(serving)` or `None`
    // once the server stopped answering.
    let mut seen: Vec<Option<bool>> = Vec::new();
    let watch = |seen: &mut Vec<Option<bool>>| {
        let now = watched.serving().ok();
        if seen.last() != Some(&now) {
            seen.push(now);
        }
        now
    };
    // What a new connection to the draining server hears about `basic`: during the grace it
    // is accepted and told NOT_SERVING; once the listener has closed it is refused.
    let draining_address = draining.address.clone();
    let listening = || probe(&draining_address, "basic").map_err(|err| err.code());
    let made = std::thread::scope(|scope| {
        let stopper = StopOnDrop(&stop);
        let caller = scope.spawn(|| call_until(&fleet, &stop));
        wait_until("calls on both servers", TIMEOUT, || {
            requests(&watched) > 0 && requests(&beside) > 0
        });
        let pid = rustix::process::Pid::from_raw(draining.child.id() as i32).expect("a pid");
        rustix::process::kill_process(pid, rustix::process::Signal::TERM).expect("SIGTERM");
        let deadline = Instant::now() + Duration::from_secs(15);
        while watch(&mut seen) == Some(true) {
            assert!(Instant::now() < deadline, "still SERVING 15 s after SIGTERM");
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(seen.last(), Some(&Some(false)), "NOT_SERVING before closing: {seen:?}");

        // The fleet moves away: it no longer balances the draining server, which gets no more
        // calls while the other one's keep coming, all before the grace ends.
        wait_until("the fleet ejects the draining server", TIMEOUT, || {
            fleet.instances() == balanced(false)
        });
        assert_eq!(listening(), Ok(ServingStatus::NotServing), "ejected only once it closed");
        let keep_coming = |what: &str| {
            let from = requests(&beside);
            wait_until(what, TIMEOUT, || requests(&beside) >= from + 300);
        };
        // Calls the balancer sent before it dropped the server may still be on their way.
        keep_coming("300 calls on the other server once the draining one is ejected");
        let stopped_at = requests(&watched);
        keep_coming("300 more calls on the other server");
        assert_eq!(requests(&watched), stopped_at, "calls still reach the draining server");
        assert_eq!(listening(), Ok(ServingStatus::NotServing), "the grace ended first");

        while watch(&mut seen).is_some() {
            assert!(Instant::now() < deadline, "still answering 15 s after SIGTERM: {seen:?}");
            std::thread::sleep(Duration::from_millis(10));
        }
        std::thread::sleep(Duration::from_millis(300));
        drop(stopper);
        caller.join().unwrap()
    });
    assert!(made > 0);
    let start = seen.iter().position(|s| *s == Some(false)).unwrap_or_else(|| panic!("{seen:?}"));
    assert_eq!(&seen[start..], [Some(false), None], "NOT_SERVING, then closed: {seen:?}");
    let status = draining.child.wait().expect("wait");
    assert_eq!(status.code(), Some(0), "{}", draining.log.join("\n"));
    draining.wait_for("draining: reporting NOT_SERVING");
    draining.wait_for("closing the listener; waiting for the calls in flight");
    draining.wait_for("shut down");
    // The idle connections of `watched` and the fleet close on the server's GOAWAY: they do not
    // hold the drain to its timeout.
    let held = draining.log.iter().find(|line| line.contains("after the drain timeout"));
    assert_eq!(held, None, "{}", draining.log.join("\n"));
}

/// Asks the plaintext health service at `address` about `service` as the kubelet's gRPC probe
/// does, on a connection of its own without TLS, closed before it returns: the status, or why
/// there is none.
fn probe(address: &str, service: &str) -> Result<ServingStatus, tonic::Status> {
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::HealthCheckRequest;
    let ask = async {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{address}"))
            .map_err(|err| tonic::Status::invalid_argument(err.to_string()))?
            .connect()
            .await
            .map_err(|err| tonic::Status::unavailable(err.to_string()))?;
        let request = HealthCheckRequest { service: service.to_owned() };
        let answer = HealthClient::new(channel).check(request).await?;
        Ok(answer.get_ref().status())
    };
    // The connection's tasks end with the runtime.
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        tokio::time::timeout(Duration::from_secs(2), ask)
            .await
            .unwrap_or_else(|_| Err(tonic::Status::deadline_exceeded("no answer within 2 s")))
    })
}

#[test]
fn the_plaintext_health_port_answers_the_kubernetes_probes_through_a_drain() {
    use ServingStatus::{NotServing, Serving};
    let pki = scratch();
    let dir = certs(pki.path());
    let mut args = tls_args(&dir);
    args.extend(["--health-listen", "127.0.0.1:0", "--drain-grace", "3s"].map(String::from));
    let mut serve = Serve::start(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let health = serve.address_in("serving plaintext health checks");
    let ask = |service: &str| probe(&health, service);
    // What the Deployment's probes ask (`the_kubernetes_manifests_agree_with_the_code`).
    let (readiness, liveness) = (host::fleet::CALCULATOR_SERVICE, host::fleet::LIVENESS_SERVICE);
    for service in ["", "basic", "scientific", readiness, liveness] {
        assert_eq!(ask(service).map_err(|err| err.code()), Ok(Serving), "{service:?}");
    }
    let unknown = ask("nope").unwrap_err();
    assert_eq!(unknown.code(), tonic::Code::NotFound, "{unknown}");
    // Called once during the grace, over mutual TLS.
    let mut basic = Some(
        Endpoint::connect(&serve.url("https"), "basic", Some(&mutual(&dir)), TIMEOUT).unwrap(),
    );

    let pid = rustix::process::Pid::from_raw(serve.child.id() as i32).expect("a pid");
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).expect("SIGTERM");
    // What each service said, in order, from the SIGTERM until the port stopped answering:
    // `Some(status)`, or `None` once there was no answer.
    let services = ["", "basic", readiness, liveness];
    let mut seen: Vec<Vec<Option<ServingStatus>>> = vec![Vec::new(); services.len()];
    let mut drained_alive = false;
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let now: Vec<Option<ServingStatus>> =
            services.iter().map(|service| ask(service).ok()).collect();
        for (seen, now) in seen.iter_mut().zip(&now) {
            if seen.last() != Some(now) {
                seen.push(*now);
            }
        }
        // What the kubelet sees during the grace: not ready, alive, and still answering calls.
        if !drained_alive && now[2..] == [Some(NotServing), Some(Serving)] {
            let basic = basic.take().expect("one call");
            assert_eq!(basic.call(Op::Add, 2.0, 3.0).unwrap(), 5.0, "a call during the grace");
            // FIXME: an idle `Endpoint` left open holds the drain for the whole drain timeout,
            // and the server then warns of calls still running: its connection's runtime runs
            // only during a call, so nothing answers the server's HTTP/2 goodbye.
            drop(basic);
            assert!(serve.child.try_wait().unwrap().is_none(), "exited during the grace");
            drained_alive = true;
        }
        if now.iter().all(Option::is_none) {
            break;
        }
        assert!(Instant::now() < deadline, "still answering 15 s after SIGTERM: {seen:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(drained_alive, "never NOT_SERVING for readiness and SERVING for liveness: {seen:?}");
    // Readiness (and the server as a whole, and each plugin) turns NOT_SERVING, then the port
    // closes; liveness is SERVING until the port closes with the process.
    for (service, seen) in services.iter().zip(&seen) {
        if *service == liveness {
            assert_eq!(seen[..], [Some(Serving), None], "{service:?}");
            continue;
        }
        let start = seen.iter().position(|s| *s == Some(NotServing));
        let start = start.unwrap_or_else(|| panic!("{service:?} never NOT_SERVING: {seen:?}"));
        assert!(seen[..start].iter().all(|s| *s == Some(Serving)), "{service:?}: {seen:?}");
        assert_eq!(seen[start..], [Some(NotServing), None], "{service:?}");
    }
    let status = serve.child.wait().expect("wait");
    assert_eq!(status.code(), Some(0), "{}", serve.log.join("\n"));
    serve.wait_for("draining: reporting NOT_SERVING");
    serve.wait_for("shut down");
}

#[test]
fn a_plugin_that_cannot_serve_is_not_serving_by_name_and_the_rest_serve() {
    let scratch = scratch();
    let config = scratch.path().join("calcplug.toml");
    std::fs::write(&config, "[plugins.basic]\nprecision = \"many\"\n").unwrap();
    let mut command = calcplug();
    command.arg("--config").arg(&config).arg("--plugin-dir").arg(&artifacts().plugin_dir);
    command.args(["serve", "--listen", "127.0.0.1:0", "--insecure"]);
    let serve = Serve::spawn(command);
    let err = Endpoint::connect(&serve.url("http"), "basic", None, TIMEOUT).unwrap_err();
    assert!(
        err.to_string().ends_with("its health service says `basic` is not serving (status 2)"),
        "{err}"
    );
    let scientific = Endpoint::connect(&serve.url("http"), "scientific", None, TIMEOUT).unwrap();
    assert!(scientific.serving().unwrap());
    assert_eq!(scientific.call(Op::Sqrt, 16.0, 0.0).unwrap(), 4.0);
}

#[test]
fn a_host_calls_a_fleet_by_name_through_its_manager() {
    let pki = scratch();
    let dir = certs(pki.path());
    let instances: Vec<Serve> = (0..2).map(|_| start_mutual(&dir)).collect();
    let urls: Vec<String> = instances.iter().map(|s| format!("{:?}", s.url("https"))).collect();
    let toml = pki.path().join("calcplug.toml");
    std::fs::write(
        &toml,
        format!(
            "[plugins.basic]\nendpoints = [{}]\ntls_ca = \"ca.pem\"\ntls_cert = \"client.pem\"\n\
             tls_key = \"client.key\"\ncall_timeout = \"3s\"\n",
            urls.join(", ")
        ),
    )
    .unwrap();
    let config = host::ManagerConfig::from_file(&toml).unwrap().with_auto_scan(false);
    let manager = host::PluginManager::start(config).unwrap_or_else(|err| panic!("{err}"));
    let basic = manager.get("basic").expect("the fleet serves `basic`");
    assert_eq!(basic.add(2.0, 3.0).unwrap(), 5.0);
    let local = crate::util::ready("basic", &host::Config::new());
    assert_eq!(
        basic.divide(1.0, 0.0).unwrap_err().to_string(),
        local.divide(1.0, 0.0).unwrap_err().to_string()
    );
    let status = manager.status();
    let plugin = status.plugins.iter().find(|p| p.name == "basic").expect("basic's status");
    assert_eq!(plugin.transport, "fleet");
    assert_eq!(
        plugin.source.display().to_string(),
        instances.iter().map(|s| s.url("https")).collect::<Vec<_>>().join(", ")
    );
    assert_eq!(plugin.ops.iter().map(|op| op.calls).sum::<u64>(), 2);
}

#[test]
fn fleet_keys_are_checked_with_the_line_that_is_wrong() {
    let scratch = scratch();
    let toml = scratch.path().join("calcplug.toml");
    for (text, expected) in [
        (
            "[plugins.basic]\nendpoints = [\"https://127.0.0.1:7443\"]\n",
            "calcplug.toml:2: `plugins.basic.tls_ca`: https:// endpoints need `tls_ca` (and `tls_cert`/`tls_key` for mutual TLS)",
        ),
        (
            "[plugins.basic]\n\nendpoints = [\"10.0.0.5:7443\"]\n",
            "calcplug.toml:3: `plugins.basic.endpoints`: \"10.0.0.5:7443\": an endpoint starts with https:// or http://",
        ),
        (
            "[plugins.basic]\nendpoints = [\"http://127.0.0.1:7443\"]\ndiscovery = \"dns:///calc:7443\"\n",
            "calcplug.toml:3: `plugins.basic.discovery`: either `endpoints` or `discovery`, not both",
        ),
        (
            "[plugins.basic]\ndiscovery = \"calc.svc:7443\"\n",
            "calcplug.toml:2: `plugins.basic.discovery`: expected dns:///HOST:PORT (e.g. dns:///calc.plugins.svc.cluster.local:7443), found \"calc.svc:7443\"",
        ),
        (
            "[plugins.basic]\ntls_ca = \"ca.pem\"\n",
            "calcplug.toml:2: `plugins.basic.tls_ca`: is for a fleet (`endpoints` or `discovery`)",
        ),
    ] {
        std::fs::write(&toml, text).unwrap();
        let err = host::ManagerConfig::from_file(&toml).unwrap_err();
        let shown = err.to_string();
        let prefix = format!("{}/", scratch.path().display());
        let shown = shown.strip_prefix(&prefix).unwrap_or(&shown);
        assert_eq!(shown, expected, "{text}");
    }
}

/// `GET /metrics` from `address`, the body.
fn scrape(address: &str) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(address).expect("connect to /metrics");
    write!(stream, "GET /metrics HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").expect("an HTTP response");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.contains("content-type: text/plain; version=0.0.4"), "{head}");
    body.to_owned()
}

/// The samples of a Prometheus text exposition, read by Prometheus' own Python parser:
/// `name{label="value",...}` (labels sorted) → value.
fn parse_prometheus(text: &str) -> std::collections::BTreeMap<String, f64> {
    use std::io::Write;
    let script = r#"
import sys, json
from prometheus_client.parser import text_string_to_metric_families
out = {}
for family in text_string_to_metric_families(sys.stdin.read()):
    for s in family.samples:
        labels = ','.join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
        out[f'{s.name}{{{labels}}}'] = s.value
print(json.dumps(out))
"#;
    let mut child = std::process::Command::new(&tests::python_peer().python)
        .args(["-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run the Prometheus parser");
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the parser refused:\n{}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON from the parser")
}

#[test]
fn metrics_parse_with_prometheus_own_parser_and_count_the_calls_made() {
    let mut serve = Serve::start(&["--insecure", "--metrics-listen", "127.0.0.1:0"]);
    let metrics = serve.address_in("serving /metrics");
    let basic = Endpoint::connect(&serve.url("http"), "basic", None, TIMEOUT).unwrap();
    for i in 0..25 {
        basic.call(Op::Add, f64::from(i), 1.0).unwrap();
    }
    for _ in 0..3 {
        basic.call(Op::Divide, 1.0, 0.0).unwrap_err();
    }
    let samples = parse_prometheus(&scrape(&metrics));
    let sample = |key: &str| {
        *samples
            .get(key)
            .unwrap_or_else(|| panic!("no {key} in {:#?}", samples.keys().collect::<Vec<_>>()))
    };
    assert_eq!(sample("calcplug_calls_total{op=\"add\",plugin=\"basic\"}"), 25.0);
    assert_eq!(sample("calcplug_calls_total{op=\"divide\",plugin=\"basic\"}"), 3.0);
    assert_eq!(
        sample(
            "calcplug_call_errors_total{code=\"DivisionByZero\",op=\"divide\",plugin=\"basic\"}"
        ),
        3.0
    );
    assert_eq!(sample("calcplug_plugin_up{plugin=\"basic\"}"), 1.0);
    assert_eq!(sample("calcplug_plugin_circuit_open{plugin=\"basic\"}"), 0.0);
    assert_eq!(sample("calcplug_plugin_in_flight_calls{plugin=\"basic\"}"), 0.0);
    // 1 in-process call in 1024 is timed by default: the first of each thread's 1024.
    let timed = sample("calcplug_call_latency_seconds_count{op=\"add\",plugin=\"basic\"}");
    assert!(timed >= 1.0, "{timed}");
    let bucket = |le: &str| {
        sample(&format!(
            "calcplug_call_latency_seconds_bucket{{le=\"{le}\",op=\"add\",plugin=\"basic\"}}"
        ))
    };
    assert_eq!(bucket("+Inf"), timed);
    assert_eq!(bucket("10"), timed, "no call took 10 s");
    assert_eq!(bucket("1e-06"), 0.0, "no call over gRPC took 1 µs");
}

#[test]
fn the_kubernetes_manifests_agree_with_the_code() {
    use yaml_rust2::{Yaml, YamlLoader};
    let deploy = xtask::workspace_root().join("host/cli/deploy/kubernetes");
    let text = std::fs::read_to_string(deploy.join("calcplug-fleet.yaml")).unwrap();
    let docs = YamlLoader::load_from_str(&text).expect("the manifests are YAML");
    let kind = |kind: &str| -> &Yaml {
        docs.iter()
            .find(|d| d["kind"].as_str() == Some(kind))
            .unwrap_or_else(|| panic!("no {kind}"))
    };
    let port_of = |address: &str| -> i64 {
        address.rsplit_once(':').and_then(|(_, p)| p.parse().ok()).expect("IP:PORT")
    };

    let pod = &kind("Deployment")["spec"]["template"];
    let container = &pod["spec"]["containers"][0];
    let args: Vec<&str> =
        container["args"].as_vec().unwrap().iter().filter_map(Yaml::as_str).collect();
    assert_eq!(args, ["--config", "/etc/calcplug/calcplug.toml", "serve"]);
    let env: Vec<(String, String)> = container["env"]
        .as_vec()
        .unwrap()
        .iter()
        .map(|e| (e["name"].as_str().unwrap().to_owned(), e["value"].as_str().unwrap().to_owned()))
        .collect();
    // The config parses with the variables over it, as the server will read it; each variable
    // sets a key (one that names none is an error).
    let toml = kind("ConfigMap")["data"]["calcplug.toml"].as_str().expect("calcplug.toml");
    let file = host::ManagerConfig::parse(toml, Path::new("/etc/calcplug/calcplug.toml"))
        .unwrap_or_else(|err| panic!("the ConfigMap's calcplug.toml: {err}"));
    let config = host::ManagerConfig::parse_with_env(
        toml,
        Path::new("/etc/calcplug/calcplug.toml"),
        env.clone(),
    )
    .unwrap_or_else(|err| panic!("the ConfigMap's calcplug.toml with the Deployment's env: {err}"));
    let serve = config.serve();
    assert_ne!(file.serve(), serve, "the variables change nothing: {env:?}");
    // TLS from the Secret's volume.
    let mounts = container["volumeMounts"].as_vec().unwrap();
    let tls_mount = mounts.iter().find(|m| m["name"].as_str() == Some("tls")).unwrap();
    let tls_dir = Path::new(tls_mount["mountPath"].as_str().unwrap());
    assert!(serve.enable_tls);
    for file in [&serve.cert_file, &serve.key_file, &serve.client_ca_file] {
        let file = file.as_deref().expect("a TLS file");
        assert_eq!(file.parent(), Some(tls_dir), "{}", file.display());
    }
    let container_port = |name: &str| -> i64 {
        container["ports"]
            .as_vec()
            .unwrap()
            .iter()
            .find(|p| p["name"].as_str() == Some(name))
            .and_then(|p| p["containerPort"].as_i64())
            .unwrap_or_else(|| panic!("no {name} port"))
    };
    let listen = |address: Option<&String>| port_of(address.expect("an address"));
    assert_eq!(listen(Some(&serve.listen)), container_port("grpc"));
    assert_eq!(listen(serve.metrics_listen.as_ref()), container_port("metrics"));
    assert_eq!(listen(serve.health_listen.as_ref()), container_port("health"));
    let annotations = &pod["metadata"]["annotations"];
    assert_eq!(
        annotations["prometheus.io/port"].as_str(),
        Some(container_port("metrics").to_string().as_str())
    );
    assert_eq!(annotations["prometheus.io/path"].as_str(), Some("/metrics"));

    // The probes ask the plaintext health port about the services the server registers.
    for (probe, service) in [
        ("readinessProbe", host::fleet::CALCULATOR_SERVICE),
        ("livenessProbe", host::fleet::LIVENESS_SERVICE),
    ] {
        assert_eq!(
            container[probe]["grpc"]["port"].as_i64(),
            Some(container_port("health")),
            "{probe}"
        );
        assert_eq!(container[probe]["grpc"]["service"].as_str(), Some(service), "{probe}");
    }
    // SIGTERM's grace period outlasts the drain: the grace, then the calls in flight.
    let drain = serve.drain_grace + config.shutdown_timeout();
    let period = pod["spec"]["terminationGracePeriodSeconds"].as_i64().unwrap();
    assert!(Duration::from_secs(period as u64) > drain, "{period} s <= {drain:?}");

    // The image has what the Deployment asks of it: the entry point, the runner beside it,
    // the plugins where the config looks, the default command the Deployment's args repeat.
    let dockerfile = std::fs::read_to_string(deploy.join("../Dockerfile")).unwrap();
    let last_stage = dockerfile.rsplit_once("\nFROM ").expect("a build stage and an image").1;
    let line = |prefix: &str| -> &str {
        last_stage
            .lines()
            .find(|line| line.starts_with(prefix))
            .unwrap_or_else(|| panic!("no {prefix} in the image"))
    };
    assert_eq!(line("ENTRYPOINT "), "ENTRYPOINT [\"calcplug\"]");
    let default_args = format!(
        "CMD [{}]",
        args.iter().map(|arg| format!("{arg:?}")).collect::<Vec<_>>().join(", ")
    );
    assert_eq!(line("CMD "), default_args);
    assert!(
        last_stage
            .contains("/release/calcplug /src/target/release/calcplug-runner /usr/local/bin/"),
        "calcplug and its runner on the PATH, side by side"
    );
    let plugin_dirs: Vec<&Path> = config.paths().collect();
    assert_eq!(plugin_dirs, [Path::new("/opt/calcplug/plugins")]);
    assert!(
        last_stage
            .contains("COPY --from=build /src/target/plugins/release/ /opt/calcplug/plugins/\n"),
        "the plugins where the ConfigMap's discovery.paths looks"
    );
    let user = line("USER ").trim_start_matches("USER ");
    assert!(!["root", "0", "0:0"].contains(&user), "the image runs as root");

    // A headless Service on the gRPC port: its DNS name lists the pods, for `dns:///`.
    let service = kind("Service");
    assert_eq!(service["spec"]["clusterIP"].as_str(), Some("None"));
    assert_eq!(service["spec"]["ports"][0]["port"].as_i64(), Some(container_port("grpc")));

    // The dashboard asks only for metrics the server exports.
    let manager_dir = scratch();
    std::fs::copy(
        artifacts().library("basic"),
        manager_dir.path().join(format!(
            "{}basic{}",
            std::env::consts::DLL_PREFIX,
            host::LIBRARY_SUFFIX
        )),
    )
    .unwrap();
    let manager = host::PluginManager::start(
        host::ManagerConfig::defaults().with_paths(&[manager_dir.path().to_owned()]),
    )
    .unwrap();
    manager.call("basic", Op::Add, 1.0, 2.0).unwrap();
    manager.call("basic", Op::Divide, 1.0, 0.0).unwrap_err();
    let exported = manager.status().prometheus();
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(deploy.join("grafana-dashboard.json")).unwrap(),
    )
    .unwrap();
    let mut asked = 0;
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            for name in expr
                .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .filter(|w| w.starts_with("calcplug_"))
            {
                assert!(
                    exported.contains(&format!("\n{name}{{")),
                    "the dashboard asks for {name}, which is not exported"
                );
                asked += 1;
            }
        }
    }
    assert!(asked >= 6, "{asked}");
}
