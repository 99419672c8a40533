//! The `calcplug` CLI reaching a fleet through its config: `call`, `info`, `list` and `status`
//! of an `endpoints` plugin, and a refused client certificate told with its TLS reason, exit 1,
//! and a server that logs the repeated refusal once per interval.

use std::path::Path;
use std::process::Output;
use std::time::Instant;

use super::{certs, start_mutual, Serve};
use crate::util::{calcplug, scratch};

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A host config naming `basic` at `urls`, with `extra` keys (the client certificate, or none).
fn host_config(dir: &Path, urls: &[String], extra: &str) -> String {
    let quoted: Vec<String> = urls.iter().map(|url| format!("{url:?}")).collect();
    let path = dir.join("host.toml");
    std::fs::write(
        &path,
        format!(
            "[plugins.basic]\nendpoints = [{}]\ntls_ca = \"ca.pem\"\n{extra}",
            quoted.join(", ")
        ),
    )
    .unwrap();
    path.display().to_string()
}

fn run(config: &str, args: &[&str]) -> Output {
    calcplug().arg("--config").arg(config).args(args).output().expect("run calcplug")
}

#[test]
fn call_info_list_and_status_reach_a_fleet_plugin_named_in_the_config() {
    let pki = scratch();
    let dir = certs(pki.path());
    let servers: Vec<Serve> = (0..2).map(|_| start_mutual(&dir)).collect();
    let urls: Vec<String> = servers.iter().map(|s| s.url("https")).collect();
    let config = host_config(&dir, &urls, "tls_cert = \"client.pem\"\ntls_key = \"client.key\"\n");
    let targets = urls.join(", ");

    let out = run(&config, &["call", "basic", "add", "2", "3"]);
    assert_eq!((text(&out.stdout), text(&out.stderr)), ("5\n".into(), String::new()));
    let out = run(&config, &["call", "basic", "divide", "1", "0"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        text(&out.stderr),
        "error: basic: divide: division by zero: cannot divide 1 by zero\n"
    );

    let out = run(&config, &["info", "basic"]);
    let shown = text(&out.stdout);
    assert!(shown.contains(&format!("\npath:        {targets}\n")), "{shown}");
    assert!(
        shown.contains("\nmode:        remote (gRPC to calcplug serve instances, balanced)\n"),
        "{shown}"
    );
    let out = run(&config, &["list"]);
    assert_eq!(
        text(&out.stdout),
        format!("loaded   basic          1.0.0    fleet      interface 1.1.0   {targets}\n")
    );
    let out = run(&config, &["status", "--call", "basic:add:2:3"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(text(&out.stdout).contains("  add            1 calls, 0 errors, 100.0% ok"), "{out:?}");

    // A plugin the servers do not serve: the reason is each server's health answer.
    let path = dir.join("nosuch.toml");
    std::fs::write(
        &path,
        format!(
            "[plugins.nosuch]\nendpoints = [{:?}]\ntls_ca = \"ca.pem\"\ntls_cert = \"client.pem\"\n\
             tls_key = \"client.key\"\ncall_timeout = \"1s\"\n",
            urls[0]
        ),
    )
    .unwrap();
    let out = run(&path.display().to_string(), &["call", "nosuch", "add", "1", "2"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let shown = text(&out.stderr);
    assert!(
        shown.starts_with(&format!(
            "error: {}: metadata: no instance answered within 1s (",
            urls[0]
        )) && shown.ends_with(
            "): the server serves no plugin `nosuch` (health: service not registered)\n"
        ),
        "{shown}"
    );
}

#[test]
fn a_refused_client_certificate_is_exit_1_with_the_tls_reason_and_one_warning_per_interval() {
    let pki = scratch();
    let dir = certs(pki.path());
    let started = Instant::now();
    let mut server = start_mutual(&dir);
    let url = server.url("https");
    // No client certificate; a long deadline, so that the answer comes from the refusal, not
    // from waiting for one.
    let config = host_config(&dir, std::slice::from_ref(&url), "call_timeout = \"60s\"\n");
    let reason = "received fatal alert: CertificateRequired (the server requires a client \
                  certificate (mutual TLS) and none is configured)";

    let out = run(&config, &["call", "basic", "add", "2", "3"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert_eq!(
        text(&out.stderr),
        format!("error: {url}: metadata: every instance refused this host: {reason}\n")
    );
    let out = run(&config, &["info", "basic"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let out = run(&config, &["status", "--call", "basic:add:2:3"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert_eq!(
        text(&out.stdout),
        format!(
            "no plugin is loaded (no plugin directory; configured, not reached: basic)\n\
             refused  {url}: fleet `basic`: metadata: every instance refused this host: {reason}\n"
        )
    );
    assert_eq!(
        text(&out.stderr),
        "error: --call basic:add:2:3: no plugin named `basic` (no plugin was loaded)\n\
         (1 of the 1 --call calls failed)\n"
    );
    let out = run(&config, &["list"]);
    assert_eq!(
        text(&out.stdout),
        format!("refused  {url}: metadata: every instance refused this host: {reason}\n")
    );
    // The config names it: a plugin it promises and that cannot be reached fails the command.
    assert_eq!(out.status.code(), Some(1));

    // Each of the four commands was refused at least twice (its health probe, and the handshake
    // that read the alert); the server warned once per 10 s, the later warnings with a count.
    assert_eq!(server.stop(), Some(0));
    let windows = started.elapsed().as_secs() / 10 + 1;
    let warnings: Vec<&String> =
        server.log.iter().filter(|line| line.contains("refused a connection")).collect();
    assert!(
        !warnings.is_empty() && warnings.len() as u64 <= windows,
        "{} warnings in {windows} interval(s): {warnings:#?}",
        warnings.len()
    );
    assert!(warnings[0].contains("error=peer sent no certificates"), "{warnings:#?}");
    assert!(!warnings[0].contains("more time"), "{warnings:#?}");
    for later in &warnings[1..] {
        assert!(
            later.contains("more times from this address since the last such warning"),
            "{later}"
        );
    }
}

#[test]
fn a_dns_fleet_whose_certificate_is_not_for_the_name_says_so() {
    let pki = scratch();
    let out = calcplug()
        .args(["certs", "--name", "127.0.0.1", "--out"])
        .arg(pki.path())
        .output()
        .expect("run calcplug certs");
    assert!(out.status.success(), "{out:?}");
    let server = start_mutual(pki.path());
    let port = server.address.rsplit_once(':').map(|(_, port)| port.to_owned()).unwrap();
    let path = pki.path().join("host.toml");
    std::fs::write(
        &path,
        format!(
            "[plugins.basic]\ndiscovery = \"dns:///localhost:{port}\"\ntls_ca = \"ca.pem\"\n\
             tls_cert = \"client.pem\"\ntls_key = \"client.key\"\ncall_timeout = \"2s\"\n"
        ),
    )
    .unwrap();
    let out = run(&path.display().to_string(), &["call", "basic", "add", "1", "2"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    // `localhost` may also resolve to ::1, where nothing listens: the 127.0.0.1 instance's
    // reason is the certificate's.
    let shown = text(&out.stderr);
    assert!(
        shown.starts_with(&format!("error: dns:///localhost:{port}: metadata: "))
            && shown.contains(&format!(
                "https://127.0.0.1:{port}: invalid peer certificate: certificate not valid for \
                 name \"localhost\"; certificate is only valid for IpAddress(127.0.0.1) (the \
                 server's certificate is not signed by the configured CA, or not for this name)"
            )),
        "{shown}"
    );
}
