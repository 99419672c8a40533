//! The CLI's plugin-manager commands: `status` and `watch`, and `--config` handling.

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::mpsc;

use anyhow::{bail, Context};
use host::remote::Circuit;
use host::{ManagerConfig, ManagerStatus, Op, PluginManager, CONFIG_FILE_NAME};
use serde_json::json;

/// The configuration: `--config PATH` (or `$CALCPLUG_CONFIG`), else `./calcplug.toml` if there
/// is one, else every default; with the `CALCPLUG_<SECTION>_<KEY>` variables over it.
pub(crate) fn load_config(path: Option<&Path>) -> anyhow::Result<ManagerConfig> {
    check_variables(std::env::vars_os().filter_map(|(var, _)| var.into_string().ok()))?;
    let local = Path::new(CONFIG_FILE_NAME);
    let path = path.or(local.is_file().then_some(local));
    Ok(ManagerConfig::from_file_with_env(path)?)
}

/// The `CALCPLUG_` variables the CLI reads besides the config's keys.
const OTHER_VARIABLES: [&str; 6] = [
    "CALCPLUG_CONFIG",
    "CALCPLUG_LOG",
    "CALCPLUG_PLUGIN_PATH",
    "CALCPLUG_RUNNER",
    "CALCPLUG_RUNNER_LOG",
    "CALCPLUG_FENCE",
];

/// Refuses a `CALCPLUG_` variable that calcplug does not read (`CALCPLUG_ISOLATON_MODE`): left
/// alone, the setting it was meant for would silently keep its default.
fn check_variables(vars: impl IntoIterator<Item = String>) -> anyhow::Result<()> {
    for var in vars {
        if var.starts_with("CALCPLUG_")
            && !OTHER_VARIABLES.contains(&var.as_str())
            && !ManagerConfig::is_config_variable(&var)
        {
            let sections: Vec<String> = ManagerConfig::sections().map(str::to_uppercase).collect();
            bail!(
                "environment variable {var}: calcplug reads no such variable (a config key is \
                 CALCPLUG_<SECTION>_<KEY>, SECTION one of {}, or CALCPLUG_PLUGINS__<NAME>__<KEY>; \
                 the others are {})",
                sections.join(", "),
                OTHER_VARIABLES.join(", ")
            );
        }
    }
    Ok(())
}

/// The config file's `[plugins.NAME]` entries as `KEY=VALUE` settings, followed by `set` (so
/// that `--set` wins).
pub(crate) fn settings_for(config: &ManagerConfig, plugin: &str, set: Vec<String>) -> Vec<String> {
    let mut settings: Vec<String> =
        config.plugin(plugin).iter().map(|(key, value)| format!("{key}={value}")).collect();
    settings.extend(set);
    settings
}

/// `calcplug status [--json | --prometheus] [--call PLUGIN:OP:A[:B]]...`: exit 1 when a
/// `--call` failed (each failure said on stderr), after the status.
pub(crate) fn status(
    config: ManagerConfig,
    dirs: &[PathBuf],
    as_json: bool,
    prometheus: bool,
    calls: &[String],
) -> anyhow::Result<ExitCode> {
    let parsed = calls.iter().map(|spec| parse_call(spec)).collect::<anyhow::Result<Vec<_>>>()?;
    let remotes: Vec<String> = config.configured_remotes().map(str::to_owned).collect();
    let manager = PluginManager::start(config.with_auto_scan(false))?;
    let mut failed = Vec::new();
    for (spec, (plugin, op, a, b)) in calls.iter().zip(parsed) {
        if let Err(err) = manager.call(&plugin, op, a, b) {
            failed.push(format!("--call {spec}: {err}"));
        }
    }
    let snapshot = manager.status();
    let report = manager.shutdown();
    let mut out = io::stdout().lock();
    if prometheus {
        out.write_all(snapshot.prometheus().as_bytes())?;
    } else if as_json {
        serde_json::to_writer_pretty(&mut out, &status_json(&snapshot))?;
        writeln!(out)?;
    } else {
        if snapshot.plugins.is_empty() {
            write_nothing_loaded(&mut out, dirs, &remotes)?;
        }
        write_status(&mut out, &snapshot)?;
    }
    for err in &report.failed {
        tracing::warn!(error = %err, "shutdown");
    }
    drop(out);
    for failure in &failed {
        eprintln!("error: {failure}");
    }
    if !failed.is_empty() {
        eprintln!("({} of the {} --call calls failed)", failed.len(), calls.len());
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}

/// Where `status` looked when it found nothing to serve, and the plugin executables it passed
/// over (the manager starts only those the config names).
fn write_nothing_loaded(
    out: &mut impl Write,
    dirs: &[PathBuf],
    remotes: &[String],
) -> io::Result<()> {
    let shown: Vec<_> = dirs.iter().map(|d| d.display().to_string()).collect();
    let looked = if shown.is_empty() {
        "no plugin directory".to_owned()
    } else {
        format!("libraries looked for in {}", shown.join(", "))
    };
    let configured = if remotes.is_empty() {
        String::new()
    } else {
        format!("; configured, not reached: {}", remotes.join(", "))
    };
    writeln!(out, "no plugin is loaded ({looked}{configured})")?;
    for path in dirs.iter().filter_map(|dir| host::plugin_executables(dir).ok()).flatten() {
        writeln!(
            out,
            "skipped  {}: a plugin executable; the manager starts those the config names: \
             [plugins.NAME] command = [{:?}]",
            path.display(),
            path.display().to_string()
        )?;
    }
    Ok(())
}

fn parse_call(spec: &str) -> anyhow::Result<(String, Op, f64, f64)> {
    let parts: Vec<&str> = spec.split(':').collect();
    let usage = || format!("--call {spec:?}: expected PLUGIN:OP:A[:B], e.g. basic:add:2:3");
    if !(3..=4).contains(&parts.len()) {
        bail!(usage());
    }
    let Some(op) = Op::from_name(parts[1]) else {
        let known: Vec<_> = Op::ALL.iter().map(|op| op.name()).collect();
        bail!("--call {spec:?}: unknown operation `{}` (known: {})", parts[1], known.join(", "));
    };
    let a: f64 = parts[2].parse().with_context(usage)?;
    let b: f64 = match parts.get(3) {
        Some(b) => b.parse().with_context(usage)?,
        None => 0.0,
    };
    Ok((parts[0].to_owned(), op, a, b))
}

fn write_status(out: &mut impl Write, status: &ManagerStatus) -> io::Result<()> {
    for p in &status.plugins {
        writeln!(
            out,
            "{:<14} {:<8} {:<13} {:<14} generation {}  {}",
            p.name,
            p.version.to_string(),
            p.state.name(),
            // A fleet's plugin runs on other machines: neither mode says that.
            if p.transport == "fleet" { "remote" } else { p.mode.name() },
            p.generation,
            p.source.display()
        )?;
        match p.transport {
            "grpc" => writeln!(out, "  transport: gRPC (go-plugin protocol)")?,
            "shm" => writeln!(out, "  transport: shared memory (calcplug-runner)")?,
            "socket" => writeln!(out, "  transport: Unix socket (calcplug-runner)")?,
            "fleet" => writeln!(out, "  transport: gRPC to `calcplug serve` instances, balanced")?,
            _ => {}
        }
        match (p.runner_pid, p.circuit) {
            (Some(pid), Some(circuit)) => writeln!(out, "  runner: pid {pid}, circuit {circuit}")?,
            (Some(pid), None) => writeln!(out, "  runner: pid {pid}")?,
            (None, Some(circuit)) => writeln!(out, "  runner: none running, circuit {circuit}")?,
            (None, None) => {}
        }
        if let Some(err) = &p.last_error {
            writeln!(out, "  last error: {err}")?;
        }
        for op in &p.ops {
            write!(
                out,
                "  {:<14} {} calls, {} errors, {:.1}% ok",
                op.op,
                op.calls,
                op.error_count(),
                op.success_rate() * 100.0
            )?;
            if op.retries > 0 {
                write!(out, ", {} retried", op.retries)?;
            }
            if let Some(l) = &op.latency {
                write!(
                    out,
                    ", p50 {:?} p99 {:?} max {:?} ({} timed)",
                    l.p50, l.p99, l.max, l.sampled
                )?;
            }
            writeln!(out)?;
        }
    }
    for problem in &status.problems {
        let what = if problem.shadowed { "shadowed" } else { "refused " };
        writeln!(out, "{what} {}: {}", problem.path.display(), problem.reason)?;
    }
    Ok(())
}

fn status_json(status: &ManagerStatus) -> serde_json::Value {
    let plugins: Vec<_> = status
        .plugins
        .iter()
        .map(|p| {
            json!({
                "name": p.name,
                "version": p.version.to_string(),
                "path": p.source.display().to_string(),
                "state": p.state.name(),
                "mode": p.mode.name(),
                "transport": p.transport,
                "runner_pid": p.runner_pid,
                "circuit": p.circuit.map(|c| match c {
                    Circuit::Closed => json!({ "state": "closed" }),
                    Circuit::Open { next_trial_in } => json!({ "state": "open", "next_trial_in_seconds": next_trial_in.as_secs_f64() }),
                    Circuit::HalfOpen => json!({ "state": "half-open" }),
                }),
                "generation": p.generation,
                "uptime_seconds": p.uptime.as_secs_f64(),
                "in_flight": p.in_flight,
                "rejected": p.rejected,
                "reloads": p.reloads,
                "reload_failures": p.reload_failures,
                "last_error": p.last_error,
                "operations": p.ops.iter().map(|op| json!({
                    "op": op.op,
                    "calls": op.calls,
                    "errors": op.failed_by_kind().map(|(kind, n)| (kind.to_owned(), json!(n))).collect::<serde_json::Map<_, _>>(),
                    "retries": op.retries,
                    "success_rate": op.success_rate(),
                    "latency": op.latency.map(|l| json!({
                        "sampled": l.sampled,
                        "p50_seconds": l.p50.as_secs_f64(),
                        "p99_seconds": l.p99.as_secs_f64(),
                        "max_seconds": l.max.as_secs_f64(),
                    })),
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    let problems: Vec<_> = status
        .problems
        .iter()
        .map(|p| {
            json!({
                "path": p.path.display().to_string(),
                "status": if p.shadowed { "shadowed" } else { "refused" },
                "failed_in": p.failed_in.name(),
                "error": p.reason,
            })
        })
        .collect();
    json!({ "uptime_seconds": status.uptime.as_secs_f64(), "plugins": plugins, "problems": problems })
}

/// `calcplug watch`: the manager with auto-scan on, logging loads, reloads and errors, until
/// Ctrl-C; then a graceful shutdown.
pub(crate) fn watch(config: ManagerConfig) -> anyhow::Result<ExitCode> {
    let (stop, stopped) = mpsc::channel();
    ctrlc::set_handler(move || {
        let _ = stop.send(());
    })
    .context("cannot install the Ctrl-C handler")?;
    let dirs: Vec<PathBuf> = config.paths().map(Path::to_owned).collect();
    let manager = PluginManager::start(config.with_auto_scan(true))?;
    for plugin in manager.status().plugins {
        tracing::info!(plugin = %plugin.name, version = %plugin.version, path = %plugin.source.display(), "serving");
    }
    for problem in manager.status().problems {
        tracing::warn!(path = %problem.path.display(), reason = %problem.reason, "not serving");
    }
    let shown: Vec<_> = dirs.iter().map(|d| d.display().to_string()).collect();
    tracing::info!(dirs = %shown.join(", "), "watching; Ctrl-C to stop");
    let _ = stopped.recv();
    tracing::info!("Ctrl-C: shutting down");
    let report = manager.shutdown();
    for err in &report.failed {
        tracing::warn!(error = %err, "shutdown");
    }
    tracing::info!(closed = %report.closed.join(", "), "shut down");
    Ok(if report.failed.is_empty() { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

/// The flags of `calcplug serve`: each wins over its config key (the file's, or its
/// `CALCPLUG_*` variable's).
#[derive(Debug, clap::Args)]
pub(crate) struct ServeArgs {
    /// The address to listen on, IP:PORT [config: serve.listen; default 127.0.0.1:7443].
    #[arg(long, value_name = "ADDR")]
    pub(crate) listen: Option<String>,
    /// The server's certificate chain (PEM) [config: security.cert_file].
    #[arg(long, value_name = "PEM")]
    pub(crate) tls_cert: Option<PathBuf>,
    /// The server's private key (PEM) [config: security.key_file].
    #[arg(long, value_name = "PEM")]
    pub(crate) tls_key: Option<PathBuf>,
    /// The CA that signs the clients' certificates (PEM): clients without one are refused
    /// (mutual TLS) [config: security.client_ca_file].
    #[arg(long, value_name = "PEM")]
    pub(crate) client_ca: Option<PathBuf>,
    /// Serve plaintext, without TLS: anyone who reaches the address can call the plugins
    /// [config: security.enable_tls = false].
    #[arg(long, conflicts_with_all = ["tls_cert", "tls_key", "client_ca"])]
    pub(crate) insecure: bool,
    /// Also serve the manager's metrics at http://ADDR/metrics (Prometheus text format)
    /// [config: serve.metrics_listen].
    #[arg(long, value_name = "ADDR")]
    pub(crate) metrics_listen: Option<String>,
    /// Also serve the gRPC health service alone, plaintext, at ADDR: for probes without a
    /// client certificate (Kubernetes' native gRPC probes) [config: serve.health_listen].
    #[arg(long, value_name = "ADDR")]
    pub(crate) health_listen: Option<String>,
    /// On SIGTERM, how long to report NOT_SERVING while still answering, before the
    /// listener closes (load balancers and fleet clients move away meanwhile)
    /// [config: serve.drain_grace; default 1s].
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub(crate) drain_grace: Option<std::time::Duration>,
}

/// `calcplug serve`: the manager's plugins over gRPC until SIGTERM or Ctrl-C, then a drain and
/// a graceful shutdown.
pub(crate) fn serve(config: ManagerConfig, args: ServeArgs) -> anyhow::Result<ExitCode> {
    let mut settings = config.serve().clone();
    let ServeArgs {
        listen,
        tls_cert,
        tls_key,
        client_ca,
        insecure,
        metrics_listen,
        health_listen,
        drain_grace,
    } = args;
    settings.listen = listen.unwrap_or(settings.listen);
    settings.cert_file = tls_cert.or(settings.cert_file);
    settings.key_file = tls_key.or(settings.key_file);
    settings.client_ca_file = client_ca.or(settings.client_ca_file);
    settings.enable_tls &= !insecure;
    settings.metrics_listen = metrics_listen.or(settings.metrics_listen);
    settings.health_listen = health_listen.or(settings.health_listen);
    settings.drain_grace = drain_grace.unwrap_or(settings.drain_grace);
    let tls = match (settings.enable_tls, settings.cert_file, settings.key_file) {
        (false, _, _) => None,
        (true, Some(cert), Some(key)) => {
            Some(host::fleet::ServerTls { cert, key, client_ca: settings.client_ca_file })
        }
        (true, _, _) => anyhow::bail!(
            "serve needs a certificate and key: --tls-cert and --tls-key (config: \
             security.cert_file and security.key_file, or CALCPLUG_SECURITY_CERT_FILE and \
             CALCPLUG_SECURITY_KEY_FILE), and --client-ca for mutual TLS; or --insecure \
             (security.enable_tls = false) to serve plaintext"
        ),
    };
    let options = host::fleet::ServeOptions {
        listen: settings.listen,
        tls,
        // Calls in flight get `[manager] shutdown_timeout` to finish, as in a manager's
        // shutdown.
        drain_timeout: config.shutdown_timeout(),
        drain_grace: settings.drain_grace,
        health_interval: std::time::Duration::from_millis(500),
        metrics_listen: settings.metrics_listen,
        health_listen: settings.health_listen,
    };
    let plaintext = options.tls.is_none();
    let manager = std::sync::Arc::new(PluginManager::start(config.with_auto_scan(true))?);
    let server = host::fleet::Server::bind(manager.clone(), options)?;
    if plaintext {
        tracing::warn!(address = %server.local_addr(), "serving plaintext (--insecure or security.enable_tls = false): anyone who can reach this address can call the plugins");
    }
    for plugin in manager.status().plugins {
        tracing::info!(plugin = %plugin.name, version = %plugin.version, transport = plugin.transport, "serving");
    }
    for problem in manager.status().problems {
        tracing::warn!(path = %problem.path.display(), reason = %problem.reason, "not serving");
    }
    let stopper = server.stopper();
    ctrlc::set_handler(move || {
        tracing::info!("stop requested: draining");
        stopper.stop();
    })
    .context("cannot install the SIGTERM/Ctrl-C handler")?;
    server.run()?;
    let report = manager.shutdown();
    for err in &report.failed {
        tracing::warn!(error = %err, "shutdown");
    }
    tracing::info!(closed = %report.closed.join(", "), "shut down");
    Ok(if report.failed.is_empty() { ExitCode::SUCCESS } else { ExitCode::from(1) })
}
