//! The commands that reach one plugin at a time, outside the plugin manager: `list`, `info` and
//! `call`. Each sees every plugin the config names (`[plugins.NAME] command`, `endpoints`,
//! `discovery`) besides the plugin directories' libraries and executables, and runs plugins out
//! of process with the config's `[isolation]` options (timeouts, retries, `auto_mtls`).

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::bail;
use host::remote::{RemoteOptions, RemotePlugin};
use host::{Config, Found, ManagerConfig, Op, Plugin, PluginHandle};
use serde_json::json;

use crate::demo::{extensions_line, number};

/// A plugin found: loaded (in process, started as an executable, or reached as a fleet), or
/// refused and why.
type Listed = Result<Box<dyn PluginHandle>, host::Error>;

/// How this run starts plugins out of process: the config's `[isolation]` options.
fn options(config: &ManagerConfig) -> RemoteOptions {
    config.isolation().options().clone()
}

pub(crate) fn list(
    config: &ManagerConfig,
    dirs: &[PathBuf],
    as_json: bool,
) -> anyhow::Result<ExitCode> {
    let mut found: Vec<(PathBuf, Listed)> = crate::discover(dirs)
        .into_iter()
        .map(|Found { path, outcome }| {
            (path, outcome.map(|plugin| Box::new(plugin) as Box<dyn PluginHandle>))
        })
        .collect();
    // Plugin executables next to the libraries, each started to ask what it is.
    for path in dirs.iter().filter_map(|dir| host::plugin_executables(dir).ok()).flatten() {
        let outcome = RemotePlugin::spawn(&path, options(config))
            .map(|plugin| Box::new(plugin) as Box<dyn PluginHandle>);
        found.push((path, outcome));
    }
    // The executables and fleets the config names. A directory may hold anything, so a refused
    // file there is a listing's finding; a plugin the config names is promised, so one that
    // cannot be reached makes the command fail.
    let mut unreachable = false;
    for name in config.configured_remotes() {
        let Some(outcome) = config.open_configured(name) else { continue };
        unreachable |= outcome.is_err();
        let place = match &outcome {
            Ok(plugin) => plugin.path().to_owned(),
            Err(err) => err.place_and_reason().0.unwrap_or_else(|| PathBuf::from(name)),
        };
        found.push((place, outcome));
    }
    let mut out = io::stdout().lock();
    if as_json {
        let entries: Vec<_> =
            found.iter().map(|(path, outcome)| found_json(path, outcome)).collect();
        serde_json::to_writer_pretty(&mut out, &entries)?;
        writeln!(out)?;
        return Ok(exit_code(unreachable));
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
            Err(err) => writeln!(out, "refused  {}: {}", path.display(), err.place_and_reason().1)?,
        }
    }
    Ok(exit_code(unreachable))
}

/// 1 when a plugin the config names could not be reached, 0 otherwise.
fn exit_code(unreachable: bool) -> ExitCode {
    if unreachable {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

fn found_json(path: &Path, outcome: &Listed) -> serde_json::Value {
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
            "error": err.place_and_reason().1,
        }),
    }
}

/// Loads every plugin in `dirs` and keeps the highest version of the one named `name`.
pub(crate) fn find_plugin(dirs: &[PathBuf], name: &str) -> anyhow::Result<Plugin> {
    find_library(dirs, name).map_err(|available| not_found(name, available, Vec::new()))
}

/// [`find_plugin`], or the names of the plugins there are.
fn find_library(dirs: &[PathBuf], name: &str) -> Result<Plugin, Vec<String>> {
    let mut available = Vec::new();
    let mut best: Option<Plugin> = None;
    for found in crate::discover(dirs) {
        let Ok(plugin) = found.outcome else { continue };
        if plugin.name() != name {
            available.push(plugin.name().to_owned());
            continue;
        }
        if best.as_ref().is_none_or(|b| plugin.version() > b.version()) {
            best = Some(plugin);
        }
    }
    best.ok_or(available)
}

/// No plugin called `name`: the names there are, and the plugins that could not be asked
/// theirs, each with its reason.
fn not_found(name: &str, mut available: Vec<String>, refused: Vec<host::Error>) -> anyhow::Error {
    available.sort();
    available.dedup();
    let unknown = host::Error::UnknownPlugin { name: name.to_owned(), available };
    if refused.is_empty() {
        return unknown.into();
    }
    let refused: Vec<String> = refused.iter().map(ToString::to_string).collect();
    anyhow::anyhow!("{unknown}; refused: {}", refused.join("; "))
}

/// The plugin named `name`: the executable or fleet the config names so, else the library in
/// the plugin directories, in process or (with `isolate`) served by a runner process, else an
/// executable there; or, when `name` is a path (it has a `/`), the plugin in that file: a
/// library, or a plugin executable speaking go-plugin's gRPC protocol.
///
/// Out of process, every library is opened by a runner of its own, never by this process.
fn find_handle(
    config: &ManagerConfig,
    dirs: &[PathBuf],
    name: &str,
    isolate: bool,
) -> anyhow::Result<Box<dyn PluginHandle>> {
    if let Some(opened) = config.open_configured(name) {
        return Ok(opened?);
    }
    if name.contains('/') {
        let path = Path::new(name);
        let library = path.to_str().is_some_and(|p| p.ends_with(host::LIBRARY_SUFFIX));
        return Ok(if library && !isolate {
            Box::new(host::load(path)?)
        } else {
            Box::new(RemotePlugin::spawn(path, options(config))?)
        });
    }
    let mut available = Vec::new();
    let mut refused = Vec::new();
    if !isolate {
        match find_library(dirs, name) {
            Ok(plugin) => return Ok(Box::new(plugin)),
            Err(names) => available = names,
        }
    } else if let Some(plugin) = find_isolated(config, dirs, name, &mut available)? {
        return Ok(plugin);
    }
    let executables = dirs.iter().filter_map(|dir| host::plugin_executables(dir).ok()).flatten();
    for path in executables {
        match RemotePlugin::spawn(&path, options(config)) {
            Ok(plugin) if plugin.name() == name => return Ok(Box::new(plugin)),
            Ok(plugin) => available.push(plugin.name().to_owned()),
            Err(err) => refused.push(err),
        }
    }
    Err(not_found(name, available, refused))
}

/// The highest version of the library named `name` in `dirs`, each library opened by a runner
/// of its own; the other names go to `available`.
fn find_isolated(
    config: &ManagerConfig,
    dirs: &[PathBuf],
    name: &str,
    available: &mut Vec<String>,
) -> anyhow::Result<Option<Box<dyn PluginHandle>>> {
    let mut best: Option<RemotePlugin> = None;
    for dir in dirs {
        let Ok(files) = host::library_files(dir) else { continue };
        for path in files {
            match RemotePlugin::spawn(&path, options(config)) {
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
    Ok(best.map(|plugin| Box::new(plugin) as Box<dyn PluginHandle>))
}

pub(crate) fn info(
    config: &ManagerConfig,
    dirs: &[PathBuf],
    name: &str,
    as_json: bool,
    isolate: bool,
) -> anyhow::Result<ExitCode> {
    let plugin = find_handle(config, dirs, name, isolate)?;
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
            "transport": plugin.transport(),
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
        "fleet" => "remote (gRPC to calcplug serve instances, balanced)",
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

pub(crate) fn call(
    config: &ManagerConfig,
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
    let plugin_config = parse_config(settings)?;
    let plugin = find_handle(config, dirs, name, isolate)?;
    plugin.initialize(&plugin_config)?;
    let result = plugin.call(op, a, b);
    let shutdown = plugin.shutdown();
    let value = result?;
    shutdown?;
    writeln!(io::stdout().lock(), "{}", number(value))?;
    if let Some(exact) = rounded_away(plugin.as_ref(), op, a, b, value) {
        eprintln!("note: {exact}");
    }
    Ok(ExitCode::SUCCESS)
}

/// When a plugin with a `precision` setting answered 0 for one of the four basic operations
/// whose `f64` result is not 0, what was rounded away (`divide 1 3e30` at 4 places is 0).
fn rounded_away(plugin: &dyn PluginHandle, op: Op, a: f64, b: f64, value: f64) -> Option<String> {
    if value != 0.0 || !plugin.metadata().config.iter().any(|key| key.key == "precision") {
        return None;
    }
    let exact = match op {
        Op::Add => a + b,
        Op::Subtract => a - b,
        Op::Multiply => a * b,
        Op::Divide => a / b,
        _ => return None,
    };
    (exact != 0.0 && exact.is_finite()).then(|| {
        format!(
            "{op}({}, {}) is {}, rounded to 0 by {}'s `precision` setting (--set precision=N \
             keeps N decimal places)",
            number(a),
            number(b),
            number(exact),
            plugin.name()
        )
    })
}
