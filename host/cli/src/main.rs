//! `calcplug`: the command-line host for Calculator plugins.
//!
//! `list` shows every library found and why any was refused, `info` a plugin's metadata and
//! status, `call` runs one operation, `demo` tours every bundled plugin; `status` and `watch`
//! run the plugin manager (`manager`). `--config` (every command) reads `calcplug.toml`.
//! Results go to stdout; errors go to stderr with exit code 1 (2 for usage errors).

// This binary talks to a terminal.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::env;
use std::io;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::{ArgAction, Parser, Subcommand};
use host::{Found, LoadPolicy};

mod bench;
mod certs;
mod demo;
mod manager;
mod plugins;
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
        (true, true) if by_path || config.configured_remotes().next().is_some() => Vec::new(),
        (true, true) => default_plugin_dirs()?,
    };
    let config = config.with_paths(&dirs);
    let config = if cli.isolate { config.isolated() } else { config };
    // `list`, `info`, `call` and `demo` load under the same `[security]` policy as the manager.
    let _ = POLICY.set(config.security().load_policy()?);
    match cli.command {
        Command::List { json } => plugins::list(&config, &dirs, json),
        Command::Info { plugin, json } => plugins::info(&config, &dirs, &plugin, json, cli.isolate),
        Command::Call { plugin, op, a, b, set } => {
            // The config file's `[plugins.NAME]` table first, so that `--set` wins.
            let set = manager::settings_for(&config, &plugin, set);
            plugins::call(&config, &dirs, &plugin, &op, (a, b), &set, cli.isolate)
        }
        Command::Demo => demo::demo(&dirs),
        Command::Status { json, prometheus, calls } => {
            manager::status(config, &dirs, json, prometheus, &calls)
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
pub(crate) fn discover(dirs: &[PathBuf]) -> Vec<Found> {
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
