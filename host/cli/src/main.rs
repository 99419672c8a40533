//! `calcplug`: the command-line host for Calculator plugins.
//!
//! `list` shows every library found and why any was refused, `info` a plugin's metadata and
//! status, `call` runs one operation, `demo` tours every bundled plugin; `status` and `watch`
//! run the plugin manager (`manager`). `--config` (every command) reads `calcplug.toml`.
//! Results go to stdout; errors go to stderr with exit code 1 (2 for usage errors).

// This binary talks to a terminal.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::env;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::{ArgAction, Parser, Subcommand};
use host::remote::{RemoteOptions, RemotePlugin};
use host::{BatchOp, Config, Found, LoadPolicy, Op, Plugin, PluginHandle};
use serde_json::json;

mod bench;
mod certs;
mod manager;
mod runner_log;
mod telemetry;

/// Loads Calculator plugins (stable-ABI cdylibs) and calls them.
#[derive(Debug, Parser)]
#[command(name = "calcplug", version)]
struct Cli {
    /// A directory to load plugins from (repeatable). Default: the directories in
    /// $CALCPLUG_PLUGIN_PATH, else the `cargo xtask build-plugins` output (release, then debug)
    /// of the target directory this binary was built in.
    #[arg(long = "plugin-dir", value_name = "DIR", global = true)]
    plugin_dirs: Vec<PathBuf>,

    /// The config file (TOML; see calcplug.example.toml). Default: ./calcplug.toml if there is
    /// one, else every key's default. `--plugin-dir` overrides its `discovery.paths`.
    #[arg(long, value_name = "PATH", env = "CALCPLUG_CONFIG", global = true)]
    config: Option<PathBuf>,

    /// Run plugins out of process, each in a `calcplug-runner` child over a local socket, so a
    /// plugin that crashes cannot take this process down (`call` and `info`).
    #[arg(long, global = true)]
    isolate: bool,

    /// More log output on stderr (-v warnings, -vv info, -vvv debug, -vvvv trace);
    /// $CALCPLUG_LOG takes a tracing filter instead.
    #[arg(short, long, action = ArgAction::Count, global = true)]
    verbose: u8,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// List every plugin library found: loaded (name, version) or refused (why).
    List {
        /// Print one JSON array instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Show a plugin's metadata and status.
    Info {
        /// The plugin's name, e.g. `basic`.
        plugin: String,
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Run one operation and print its result.
    #[command(allow_negative_numbers = true)]
    Call {
        /// The plugin's name, e.g. `basic`.
        plugin: String,
        /// The operation: add, subtract, multiply or divide.
        op: String,
        /// The first operand.
        a: f64,
        /// The second operand (for two-operand operations).
        b: Option<f64>,
        /// A config value for the plugin's `initialize` (repeatable), e.g. `--set precision=4`.
        #[arg(long = "set", value_name = "KEY=VALUE")]
        set: Vec<String>,
    },
    /// Tour every bundled plugin: metadata, each operation, errors, a batch, status.
    Demo,
    /// Load every plugin through the plugin manager and print its status and metrics.
    Status {
        /// Print one JSON object instead of text.
        #[arg(long, conflicts_with = "prometheus")]
        json: bool,
        /// Print Prometheus text exposition format.
        #[arg(long)]
        prometheus: bool,
        /// Make a call through the manager first (repeatable), e.g. `--call basic:add:2:3`.
        #[arg(long = "call", value_name = "PLUGIN:OP:A[:B]", allow_hyphen_values = true)]
        calls: Vec<String>,
    },
    /// Run the plugin manager with auto-scan on: load new libraries, hot-reload changed ones,
    /// log it all (at info level unless -v/CALCPLUG_LOG say otherwise) until Ctrl-C.
    Watch,
    /// Serve the plugins the manager loads (from calcplug.toml and the plugin directories) to
    /// other hosts over gRPC on TCP, each by name, with health by plugin, until SIGTERM or
    /// Ctrl-C; then report NOT_SERVING, drain the calls in flight and shut the plugins down.
    Serve(manager::ServeArgs),
    /// Write a throwaway CA, a server certificate and a client certificate (PEM) for trying
    /// `serve` with mutual TLS; a fleet in production uses its own PKI.
    Certs {
        /// The directory to write ca.pem, server.pem, server.key, client.pem, client.key into.
        #[arg(long)]
        out: PathBuf,
        /// A name (DNS name or IP address) the server certificate is for (repeatable; default
        /// localhost and 127.0.0.1).
        #[arg(long = "name")]
        names: Vec<String>,
    },
    /// Measure a plugin's call and batch speed on this machine (about a minute).
    Bench {
        /// The plugin to measure.
        #[arg(long, default_value = "basic")]
        plugin: String,
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
        /// The measuring time, shared by every figure measured.
        #[arg(long, default_value_t = 45)]
        seconds: u64,
    },
}

fn main() -> ExitCode {
    // `calcplug --isolate` starts this same binary as its runner.
    if host::remote::started_as_runner() {
        runner_log::init();
    }
    if let Some(code) = host::remote::serve_if_runner() {
        return code;
    }
    // `calcplug bench` starts this same binary to echo its socket floor's frames.
    if let Some(code) = bench::echo_if_asked() {
        return code;
    }
    let cli = Cli::parse();
    // `watch` is a log to follow: it logs loads and reloads (info) by default.
    let watching = matches!(cli.command, Command::Watch | Command::Serve(_));
    let _telemetry = telemetry::init(if watching { cli.verbose.max(2) } else { cli.verbose });
    match run(cli) {
        Ok(code) => code,
        Err(err) => {
            // A closed stdout (`calcplug list | head`) is not an error worth reporting.
            if err
                .downcast_ref::<io::Error>()
                .is_some_and(|e| e.kind() == io::ErrorKind::BrokenPipe)
            {
                return ExitCode::SUCCESS;
            }
            eprintln!("error: {err:#}");
            ExitCode::from(1)
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    // Writing certificates needs no config and no plugin.
    if let Command::Certs { out, names } = &cli.command {
        return certs::certs(out, names);
    }
    let config = manager::load_config(cli.config.as_deref())?;
    let config_dirs: Vec<PathBuf> = config.paths().map(PathBuf::from).collect();
    // `call` and `info` given a file (a path, with a `/`) need no plugin directory.
    let by_path = matches!(
        &cli.command,
        Command::Call { plugin, .. } | Command::Info { plugin, .. } if plugin.contains('/')
    );
    for dir in &cli.plugin_dirs {
        if !dir.is_dir() {
            let what = if dir.exists() { "is not a directory" } else { "does not exist" };
            bail!("--plugin-dir {}: {what}", dir.display());
        }
    }
    let dirs = match (cli.plugin_dirs.is_empty(), config_dirs.is_empty()) {
        (false, _) => cli.plugin_dirs,
        (true, false) => {
            // A bad `discovery.paths` entry is the config's error, for every command, with
            // its file, line and key.
            config.check_paths()?;
            config_dirs
        }
        // A config whose plugins are all executables or fleets needs no plugin directory.
        (true, true) if by_path || config.fleets().next().is_some() => Vec::new(),
        (true, true) => default_plugin_dirs()?,
    };
    let config = config.with_paths(&dirs);
    let config = if cli.isolate { config.isolated() } else { config };
    // `list`, `info`, `call` and `demo` load under the same `[security]` policy as the manager.
    let _ = POLICY.set(config.security().load_policy()?);
    match cli.command {
        Command::List { json } => list(&dirs, json),
        Command::Info { plugin, json } => info(&dirs, &plugin, json, cli.isolate),
        Command::Call { plugin, op, a, b, set } => {
            // The config file's `[plugins.NAME]` table first, so that `--set` wins.
            let set = manager::settings_for(&config, &plugin, set);
            call(&dirs, &plugin, &op, (a, b), &set, cli.isolate)
        }
        Command::Demo => demo(&dirs),
        Command::Status { json, prometheus, calls } => {
            manager::status(config, json, prometheus, &calls)
        }
        Command::Watch => manager::watch(config),
        Command::Certs { .. } => unreachable!("handled before the config is read"),
        Command::Serve(args) => manager::serve(config, args),
        Command::Bench { plugin, json, seconds } => {
            bench::bench(config, &dirs, &plugin, json, seconds)
        }
    }
}

/// The `[security]` policy of this run.
static POLICY: std::sync::OnceLock<LoadPolicy> = std::sync::OnceLock::new();

/// Loads every library in `dirs` under this run's policy.
fn discover(dirs: &[PathBuf]) -> Vec<Found> {
    host::discover_with(dirs, POLICY.get_or_init(LoadPolicy::development))
}

fn default_plugin_dirs() -> anyhow::Result<Vec<PathBuf>> {
    if let Some(path) = env::var_os("CALCPLUG_PLUGIN_PATH") {
        let dirs: Vec<PathBuf> =
            env::split_paths(&path).filter(|p| !p.as_os_str().is_empty()).collect();
        if !dirs.is_empty() {
            return Ok(dirs);
        }
    }
    // This binary lives in `<target>/<profile>/calcplug`; xtask installs into
    // `<target>/plugins/<profile>/`.
    let exe = env::current_exe().context("cannot locate the calcplug binary")?;
    let target = exe.parent().and_then(|profile_dir| profile_dir.parent());
    if let Some(target) = target {
        for profile in ["release", "debug"] {
            let dir = target.join("plugins").join(profile);
            if dir.is_dir() {
                return Ok(vec![dir]);
            }
        }
    }
    bail!(
        "no plugin directory: pass --plugin-dir DIR, set CALCPLUG_PLUGIN_PATH, \
         or run `cargo xtask build-plugins` first"
    )
}

/// A plugin found in a plugin directory: loaded (in process, or started as an executable), or
/// refused and why.
type Listed = Result<Box<dyn PluginHandle>, host::Error>;

fn list(dirs: &[PathBuf], as_json: bool) -> anyhow::Result<ExitCode> {
    let mut found: Vec<(PathBuf, Listed)> = discover(dirs)
        .into_iter()
        .map(|Found { path, outcome }| {
            (path, outcome.map(|plugin| Box::new(plugin) as Box<dyn PluginHandle>))
        })
        .collect();
    // Plugin executables next to the libraries, each started to ask what it is.
    for path in dirs.iter().filter_map(|dir| host::plugin_executables(dir).ok()).flatten() {
        let outcome = RemotePlugin::spawn(&path, RemoteOptions::default())
            .map(|plugin| Box::new(plugin) as Box<dyn PluginHandle>);
        found.push((path, outcome));
    }
    let mut out = io::stdout().lock();
    if as_json {
        let entries: Vec<_> =
            found.iter().map(|(path, outcome)| found_json(path, outcome)).collect();
        serde_json::to_writer_pretty(&mut out, &entries)?;
        writeln!(out)?;
        return Ok(ExitCode::SUCCESS);
    }
    if found.is_empty() {
        let shown: Vec<_> = dirs.iter().map(|d| d.display().to_string()).collect();
        writeln!(out, "no plugin libraries in {}", shown.join(", "))?;
    }
    for (path, outcome) in &found {
        match outcome {
            Ok(plugin) => writeln!(
                out,
                "loaded   {:<14} {:<8} {:<10} interface {:<7} {}",
                plugin.name(),
                plugin.version().to_string(),
                plugin.transport(),
                plugin.interface_version().to_string(),
                path.display()
            )?,
            Err(err) => writeln!(out, "refused  {}: {}", path.display(), err.reason())?,
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn found_json(
    path: &Path,
    outcome: &Result<Box<dyn PluginHandle>, host::Error>,
) -> serde_json::Value {
    let path = path.display().to_string();
    match outcome {
        Ok(plugin) => json!({
            "path": path,
            "status": "loaded",
            "name": plugin.name(),
            "version": plugin.version().to_string(),
            "interface_version": plugin.interface_version().to_string(),
            "transport": plugin.transport(),
        }),
        Err(err) => json!({
            "path": path,
            "status": "refused",
            "error": err.reason(),
        }),
    }
}

/// Loads every plugin in `dirs` and keeps the highest version of the one named `name`.
fn find_plugin(dirs: &[PathBuf], name: &str) -> anyhow::Result<Plugin> {
    let mut available = Vec::new();
    let mut best: Option<Plugin> = None;
    for found in discover(dirs) {
        let Ok(plugin) = found.outcome else { continue };
        if plugin.name() != name {
            available.push(plugin.name().to_owned());
            continue;
        }
        if best.as_ref().is_none_or(|b| plugin.version() > b.version()) {
            best = Some(plugin);
        }
    }
    match best {
        Some(plugin) => Ok(plugin),
        None => {
            available.sort();
            available.dedup();
            Err(host::Error::UnknownPlugin { name: name.to_owned(), available }.into())
        }
    }
}

/// The plugin named `name`, in process or (with `isolate`) served by a runner process; or,
/// when `name` is a path (it has a `/`), the plugin in that file: a library, or a plugin
/// executable speaking go-plugin's gRPC protocol.
///
/// Out of process, every library is opened by a runner of its own, never by this process.
fn find_handle(
    dirs: &[PathBuf],
    name: &str,
    isolate: bool,
) -> anyhow::Result<Box<dyn PluginHandle>> {
    if name.contains('/') {
        let path = Path::new(name);
        let library = path.to_str().is_some_and(|p| p.ends_with(host::LIBRARY_SUFFIX));
        return Ok(if library && !isolate {
            Box::new(host::load(path)?)
        } else {
            Box::new(RemotePlugin::spawn(path, RemoteOptions::default())?)
        });
    }
    if !isolate {
        return match find_plugin(dirs, name) {
            Ok(plugin) => Ok(Box::new(plugin)),
            Err(err) => find_executable(dirs, name).ok_or(err),
        };
    }
    let mut available = Vec::new();
    let mut best: Option<RemotePlugin> = None;
    for dir in dirs {
        let Ok(files) = host::library_files(dir) else { continue };
        for path in files {
            match RemotePlugin::spawn(&path, RemoteOptions::default()) {
                Ok(plugin) if plugin.name() == name => {
                    if best.as_ref().is_none_or(|b| plugin.version() > b.version()) {
                        best = Some(plugin);
                    }
                }
                Ok(plugin) => available.push(plugin.name().to_owned()),
                // No runner can start at all: that is the answer, not a refused library.
                Err(err @ (host::Error::RunnerNotFound { .. } | host::Error::Spawn { .. })) => {
                    return Err(err.into())
                }
                Err(err) => tracing::warn!(error = %err, "refused"),
            }
        }
    }
    if let Some(plugin) = best {
        return Ok(Box::new(plugin));
    }
    if let Some(plugin) = find_executable(dirs, name) {
        return Ok(plugin);
    }
    available.sort();
    available.dedup();
    Err(host::Error::UnknownPlugin { name: name.to_owned(), available }.into())
}

/// The plugin executable named `name` in `dirs`, if one is: each is started to ask its name.
fn find_executable(dirs: &[PathBuf], name: &str) -> Option<Box<dyn PluginHandle>> {
    let executables = dirs.iter().filter_map(|dir| host::plugin_executables(dir).ok()).flatten();
    for path in executables {
        match RemotePlugin::spawn(&path, RemoteOptions::default()) {
            Ok(plugin) if plugin.name() == name => return Some(Box::new(plugin)),
            Ok(_) => {}
            Err(err) => tracing::warn!(error = %err, "refused"),
        }
    }
    None
}

fn info(dirs: &[PathBuf], name: &str, as_json: bool, isolate: bool) -> anyhow::Result<ExitCode> {
    let plugin = find_handle(dirs, name, isolate)?;
    let plugin = plugin.as_ref();
    let meta = plugin.metadata();
    let status = plugin.status()?;
    let mut out = io::stdout().lock();
    if as_json {
        let value = json!({
            "name": plugin.name(),
            "version": plugin.version().to_string(),
            "interface_version": plugin.interface_version().to_string(),
            "path": plugin.path().display().to_string(),
            "description": meta.description,
            "operations": meta.operations,
            "extensions": plugin.extensions().iter().map(|e| e.name()).collect::<Vec<_>>(),
            "scientific": plugin.has_scientific(),
            "config": meta.config.iter().map(|k| json!({
                "key": k.key, "default": k.default, "description": k.description,
            })).collect::<Vec<_>>(),
            "status": {
                "state": status.state.name(),
                "message": status.message,
                "request_count": status.request_count,
            },
        });
        serde_json::to_writer_pretty(&mut out, &value)?;
        writeln!(out)?;
        return Ok(ExitCode::SUCCESS);
    }
    writeln!(out, "name:        {}", plugin.name())?;
    writeln!(out, "version:     {}", plugin.version())?;
    writeln!(out, "description: {}", meta.description)?;
    writeln!(out, "interface:   {}", plugin.interface_version())?;
    writeln!(out, "path:        {}", plugin.path().display())?;
    writeln!(out, "operations:  {}", meta.operations.join(", "))?;
    writeln!(out, "extensions:  {}", extensions_line(plugin))?;
    let mode = match plugin.transport() {
        "shm" => "out-of-process (calcplug-runner, shared memory)",
        "socket" => "out-of-process (calcplug-runner, Unix socket)",
        "grpc" => "out-of-process (gRPC, go-plugin protocol)",
        other => other,
    };
    writeln!(out, "mode:        {mode}")?;
    if meta.config.is_empty() {
        writeln!(out, "config:      (none)")?;
    } else {
        writeln!(out, "config:")?;
        for key in &meta.config {
            writeln!(out, "  {:<12} default {:<8} {}", key.key, key.default, key.description)?;
        }
    }
    writeln!(out, "state:       {} ({})", status.state, status.message)?;
    Ok(ExitCode::SUCCESS)
}

/// Which extension fields the plugin's root module has, for `info`.
fn extensions_line(plugin: &dyn PluginHandle) -> String {
    let implemented = if plugin.has_scientific() {
        ""
    } else {
        ": its functions are present, but the plugin does not implement them all"
    };
    let present: Vec<String> = plugin
        .extensions()
        .iter()
        .map(|e| format!("{e} (interface {}){implemented}", e.since()))
        .collect();
    if present.is_empty() {
        format!(
            "none: built against interface {}, the scientific extension is absent",
            plugin.interface_version()
        )
    } else {
        present.join(", ")
    }
}

/// `x` in plain notation, or in scientific notation when plain would be very long.
fn number(x: f64) -> String {
    if x != 0.0 && x.is_finite() && !(1e-6..1e15).contains(&x.abs()) {
        format!("{x:e}")
    } else {
        format!("{x}")
    }
}

fn parse_config(settings: &[String]) -> anyhow::Result<Config> {
    let mut config = Config::new();
    for setting in settings {
        let Some((key, value)) = setting.split_once('=') else {
            bail!("--set {setting:?}: expected KEY=VALUE");
        };
        config = config.with(key.trim(), value.trim());
    }
    Ok(config)
}

fn call(
    dirs: &[PathBuf],
    name: &str,
    op_name: &str,
    (a, b): (f64, Option<f64>),
    settings: &[String],
    isolate: bool,
) -> anyhow::Result<ExitCode> {
    let Some(op) = Op::from_name(op_name) else {
        let known: Vec<_> = Op::ALL.iter().map(|op| op.name()).collect();
        bail!("unknown operation `{op_name}` (known: {})", known.join(", "));
    };
    let b = match (op.arity(), b) {
        (2, None) => bail!("`{op}` takes two operands: calcplug call {name} {op} A B"),
        (1, Some(_)) => bail!("`{op}` takes one operand: calcplug call {name} {op} A"),
        (_, b) => b.unwrap_or(0.0),
    };
    let config = parse_config(settings)?;
    let plugin = find_handle(dirs, name, isolate)?;
    plugin.initialize(&config)?;
    let result = plugin.call(op, a, b);
    let shutdown = plugin.shutdown();
    let value = result?;
    shutdown?;
    writeln!(io::stdout().lock(), "{value}")?;
    Ok(ExitCode::SUCCESS)
}

fn demo(dirs: &[PathBuf]) -> anyhow::Result<ExitCode> {
    let mut out = io::stdout().lock();
    let found = discover(dirs);
    let shown: Vec<_> = dirs.iter().map(|d| d.display().to_string()).collect();
    writeln!(out, "calcplug demo: plugins from {}", shown.join(", "))?;
    let mut plugins = Vec::new();
    for Found { path, outcome } in found {
        match outcome {
            Ok(plugin) => plugins.push(plugin),
            Err(err) => writeln!(out, "  refused {}: {}", path.display(), err.reason())?,
        }
    }
    if plugins.is_empty() {
        bail!("no plugin could be loaded: run `cargo xtask build-plugins` first");
    }
    for plugin in &plugins {
        tour(&mut out, plugin)?;
    }
    writeln!(out, "\ndemo finished: {} plugin(s) toured", plugins.len())?;
    Ok(ExitCode::SUCCESS)
}

fn tour(out: &mut impl Write, plugin: &Plugin) -> anyhow::Result<()> {
    let meta = plugin.metadata();
    writeln!(out, "\n== {} {} — {}", plugin.name(), plugin.version(), meta.description)?;
    writeln!(out, "   interface {}, {}", plugin.interface_version(), plugin.path().display())?;
    writeln!(out, "   state before initialize: {}", plugin.status()?.state)?;
    match plugin.add(1.0, 2.0) {
        Ok(v) => writeln!(out, "   add(1, 2) before initialize = {v} (unexpected)")?,
        Err(err) => writeln!(out, "   add(1, 2) before initialize -> {err}")?,
    }
    plugin.initialize(&Config::new())?;
    writeln!(out, "   initialized with defaults: {}", plugin.status()?.state)?;

    writeln!(out, "-- operations")?;
    for op in Op::BASIC.into_iter().filter(|op| meta.supports(*op)) {
        let (a, b) = (7.5, 2.5);
        match plugin.call(op, a, b) {
            Ok(v) => writeln!(out, "   {op}({a}, {b}) = {v}")?,
            Err(err) => writeln!(out, "   {op}({a}, {b}) -> {err}")?,
        }
    }
    writeln!(out, "-- validation")?;
    let cases = [
        (Op::Add, 0.1, 0.2),
        (Op::Divide, 1.0, 0.0),
        (Op::Add, f64::NAN, 1.0),
        (Op::Add, 2e100, 1.0),
        (Op::Multiply, 1e99, 1e99),
    ];
    for (op, a, b) in cases {
        let (a, b, v) = (number(a), number(b), plugin.call(op, a, b));
        match v {
            Ok(v) => writeln!(out, "   {op}({a}, {b}) = {v}")?,
            Err(err) => {
                writeln!(out, "   {op}({a}, {b}) -> {}", err.code().map_or("?", |c| c.name()))?
            }
        }
    }
    if plugin.has_scientific() {
        plugin.set_angle_unit(host::AngleUnit::Degrees)?;
        writeln!(out, "-- scientific extension (angle unit {})", plugin.angle_unit()?)?;
        let cases = [
            (Op::Sin, 30.0, 0.0),
            (Op::Cos, 60.0, 0.0),
            (Op::Tan, 45.0, 0.0),
            (Op::Tan, 90.0, 0.0),
            (Op::Log, 2.0, 1024.0),
            (Op::Pow, 2.0, 0.5),
            (Op::Sqrt, 2.0, 0.0),
            (Op::Sqrt, -1.0, 0.0),
        ];
        for (op, a, b) in cases {
            let shown =
                if op.arity() == 1 { format!("{op}({a})") } else { format!("{op}({a}, {b})") };
            match plugin.call(op, a, b) {
                Ok(v) => writeln!(out, "   {shown} = {v}")?,
                Err(err) => {
                    writeln!(out, "   {shown} -> {}", err.code().map_or("?", |c| c.name()))?
                }
            }
        }
    } else {
        writeln!(out, "-- scientific extension: {}", extensions_line(plugin))?;
    }
    writeln!(out, "-- batch (one call, one bad item does not fail the others)")?;
    let ops = [
        BatchOp::new(Op::Add, 1.0, 2.0),
        BatchOp::new(Op::Divide, 10.0, 4.0),
        BatchOp::new(Op::Divide, 1.0, 0.0),
        BatchOp::new(Op::Multiply, 6.0, 7.0),
    ];
    for (item, result) in ops.iter().zip(plugin.batch(&ops)?) {
        let op = item.op.op().map_or("?", |op| op.name());
        match result.result() {
            Ok(v) => writeln!(out, "   {op}({}, {}) = {v}", item.a, item.b)?,
            Err(code) => writeln!(out, "   {op}({}, {}) -> {}", item.a, item.b, code.name())?,
        }
    }
    let status = plugin.status()?;
    writeln!(out, "-- status")?;
    writeln!(
        out,
        "   state {} ({}), {} requests, uptime {:?}",
        status.state, status.message, status.request_count, status.uptime
    )?;
    if let Some(latency) = status.average_latency {
        writeln!(out, "   average latency (sampled) {latency:?}")?;
    }
    plugin.shutdown()?;
    writeln!(out, "-- shut down: {}", plugin.status()?.state)?;
    match plugin.add(1.0, 2.0) {
        Ok(v) => writeln!(out, "   add(1, 2) after shutdown = {v} (unexpected)")?,
        Err(err) => writeln!(out, "   add(1, 2) after shutdown -> {err}")?,
    }
    Ok(())
}
