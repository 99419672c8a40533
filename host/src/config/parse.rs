//! From the schema (`raw`) to a checked [`ManagerConfig`]: one validator per section, each
//! starting from [`ManagerConfig::defaults`], the one table of defaults, and failing with the
//! file, the line and the dotted key.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use interface::{Config, ErrorCode};
use toml::Spanned;

mod fleet;

use super::env::{self, Override};
use super::raw::{
    RawConfig, RawDiscovery, RawIsolation, RawManager, RawMetrics, RawRetry, RawSecurity, RawServe,
};
use super::{
    ConfigPath, IsolationConfig, ManagerConfig, Mode, PanicPolicy, PluginCommand, RetryPolicy,
    SecurityConfig, ServeConfig,
};
use crate::remote::{Channel, RemoteOptions};
use crate::security::{Enforcement, TrustedKey};
use crate::Error;

/// Parses `text`, the contents of the file `origin`, with the `CALCPLUG_*` variables among
/// `vars` over it; see [`ManagerConfig::parse`] and [`ManagerConfig::parse_with_env`].
pub(super) fn parse(
    text: &str,
    origin: &Path,
    vars: impl IntoIterator<Item = (String, String)>,
) -> Result<ManagerConfig, Error> {
    let mut raw: RawConfig =
        toml::from_str(text).map_err(|err| config_error_from_toml(origin, text, &err))?;
    let names: Vec<String> = raw.plugins.iter().flat_map(|tables| tables.keys()).cloned().collect();
    let overrides = env::overrides(vars, names.iter())?;
    for over in &overrides {
        raw.overlay(over.layer()?);
    }
    let cx = Cx {
        text,
        origin,
        base: origin.parent().map(Path::to_owned).unwrap_or_default(),
        overrides: &overrides,
    };
    let defaults = ManagerConfig::defaults();
    let discovery = raw.discovery.unwrap_or_default();
    let (paths, auto_scan, scan_interval) = cx.discovery(discovery, &defaults)?;
    let (shutdown_timeout, health_interval) =
        cx.manager(raw.manager.unwrap_or_default(), &defaults)?;
    let sample_every = cx.metrics(raw.metrics.unwrap_or_default(), &defaults)?;
    let retry = cx.retry(raw.retry.unwrap_or_default(), &defaults.retry)?;
    let mut raw_security = raw.security.unwrap_or_default();
    let serve = cx.serve(raw.serve.unwrap_or_default(), &mut raw_security, &defaults.serve)?;
    let security = cx.security(raw_security, &defaults.security)?;
    let isolation = cx.isolation(raw.isolation.unwrap_or_default(), &defaults.isolation)?;
    let PluginTables { plugins, modes, commands, fleets } =
        cx.plugins(raw.plugins.unwrap_or_default())?;
    Ok(ManagerConfig {
        origin: origin.to_owned(),
        paths,
        auto_scan,
        scan_interval,
        shutdown_timeout,
        health_interval,
        sample_every,
        retry,
        security,
        isolation,
        serve,
        modes,
        plugins,
        commands,
        fleets,
    })
}

/// What every validator needs: the text (for line numbers), the file, the directory that
/// relative paths are relative to, and the keys set by environment variables instead.
struct Cx<'a> {
    text: &'a str,
    origin: &'a Path,
    base: PathBuf,
    overrides: &'a [Override],
}

/// The `[plugins.NAME]` tables: each plugin's `initialize` config, and what the manager takes
/// out of them (`mode`; `command`, `transport` and `auto_mtls` for a plugin executable).
struct PluginTables {
    plugins: BTreeMap<String, Config>,
    modes: BTreeMap<String, Mode>,
    commands: BTreeMap<String, PluginCommand>,
    fleets: BTreeMap<String, crate::fleet::FleetOptions>,
}

impl Cx<'_> {
    #[cold]
    fn fail(&self, span: Range<usize>, key: &str, message: String) -> Error {
        match self.overridden(key) {
            Some(over) => over.fail(key, message),
            None => Error::Config {
                path: self.origin.to_owned(),
                line: line_of(self.text, span.start),
                key: key.to_owned(),
                message,
            },
        }
    }

    /// The variable that set `key` (or the table holding it), if one did.
    fn overridden(&self, key: &str) -> Option<&Override> {
        self.overrides.iter().find(|over| {
            key == over.key
                || key.strip_prefix(over.key.as_str()).is_some_and(|rest| rest.starts_with('.'))
        })
    }

    /// The file's line of the value of `key` at `span`; 0 when a variable set it.
    fn line(&self, span: Range<usize>, key: &str) -> usize {
        match self.overridden(key) {
            Some(_) => 0,
            None => line_of(self.text, span.start),
        }
    }

    fn duration(
        &self,
        value: Option<Spanned<String>>,
        key: &str,
        default: Duration,
    ) -> Result<Duration, Error> {
        match value {
            None => Ok(default),
            Some(value) => parse_duration(value.get_ref())
                .map_err(|message| self.fail(value.span(), key, message)),
        }
    }

    /// `path`, or `base/path` for a relative one.
    fn resolve(&self, path: &str) -> PathBuf {
        let path = Path::new(path);
        if path.is_absolute() {
            path.to_owned()
        } else {
            self.base.join(path)
        }
    }

    fn discovery(
        &self,
        raw: RawDiscovery,
        defaults: &ManagerConfig,
    ) -> Result<(Vec<ConfigPath>, bool, Duration), Error> {
        let mut paths = Vec::new();
        for entry in raw.paths.map(Spanned::into_inner).unwrap_or_default() {
            let span = entry.span();
            let text_path = entry.into_inner();
            if text_path.trim().is_empty() {
                return Err(self.fail(span, "discovery.paths", "a path may not be empty".into()));
            }
            let line = self.line(span, "discovery.paths");
            paths.push(ConfigPath { path: self.resolve(&text_path), line });
        }
        let scan_interval =
            self.duration(raw.scan_interval, "discovery.scan_interval", defaults.scan_interval)?;
        if scan_interval.is_zero() {
            return Err(self.fail(0..0, "discovery.scan_interval", "must be more than 0s".into()));
        }
        Ok((paths, raw.auto_scan.unwrap_or(defaults.auto_scan), scan_interval))
    }

    fn manager(
        &self,
        raw: RawManager,
        defaults: &ManagerConfig,
    ) -> Result<(Duration, Option<Duration>), Error> {
        let shutdown_timeout = self.duration(
            raw.shutdown_timeout,
            "manager.shutdown_timeout",
            defaults.shutdown_timeout,
        )?;
        let health_interval = self.duration(
            raw.health_interval,
            "manager.health_interval",
            defaults.health_interval.unwrap_or(Duration::ZERO),
        )?;
        Ok((shutdown_timeout, (!health_interval.is_zero()).then_some(health_interval)))
    }

    fn metrics(&self, raw: RawMetrics, defaults: &ManagerConfig) -> Result<u64, Error> {
        let Some(value) = raw.sample_every else { return Ok(defaults.sample_every) };
        let n = *value.get_ref();
        if n != 0 && !n.is_power_of_two() {
            return Err(self.fail(
                value.span(),
                "metrics.sample_every",
                format!("{n} is not a power of two (0 turns timing off)"),
            ));
        }
        Ok(n)
    }

    fn retry(&self, raw: RawRetry, defaults: &RetryPolicy) -> Result<RetryPolicy, Error> {
        let retryable = match raw.retryable {
            None => defaults.retryable.clone(),
            Some(list) => {
                let mut retryable = Vec::new();
                for name in list.into_inner() {
                    retryable.push(self.retryable_code(&name)?);
                }
                retryable
            }
        };
        Ok(RetryPolicy {
            max_retries: raw.max_retries.unwrap_or(defaults.max_retries),
            backoff: self.duration(raw.backoff, "retry.backoff", defaults.backoff)?,
            max_backoff: self.duration(
                raw.max_backoff,
                "retry.max_backoff",
                defaults.max_backoff,
            )?,
            retryable,
        })
    }

    fn retryable_code(&self, name: &Spanned<String>) -> Result<ErrorCode, Error> {
        let fail = |message| self.fail(name.span(), "retry.retryable", message);
        match ErrorCode::ALL.into_iter().find(|c| c.name() == name.get_ref()) {
            Some(code) if !is_business_error(code) => Ok(code),
            Some(code) => Err(fail(format!(
                "{} is a business error: retrying it would fail the same way",
                code.name()
            ))),
            None => {
                let known: Vec<_> = ErrorCode::ALL
                    .into_iter()
                    .filter(|c| !is_business_error(*c))
                    .map(ErrorCode::name)
                    .collect();
                Err(fail(format!(
                    "unknown error code {:?} (retryable ones: {})",
                    name.get_ref(),
                    known.join(", ")
                )))
            }
        }
    }

    fn security(
        &self,
        raw: RawSecurity,
        defaults: &SecurityConfig,
    ) -> Result<SecurityConfig, Error> {
        let integrity = match raw.integrity {
            None if raw.verify_signatures == Some(true) => Enforcement::Enforce,
            None => defaults.integrity,
            Some(value) => self.named(
                &value,
                "security.integrity",
                Enforcement::from_name,
                "off, warn or enforce",
            )?,
        };
        let mut trusted_keys = Vec::new();
        for key in raw.trusted_keys.unwrap_or_default() {
            let parsed = TrustedKey::from_hex(key.get_ref())
                .map_err(|message| self.fail(key.span(), "security.trusted_keys", message))?;
            trusted_keys.push(parsed);
        }
        let manifest = raw.manifest.map(|value| {
            (self.resolve(value.get_ref()), self.line(value.span(), "security.manifest"))
        });
        if integrity != Enforcement::Off && manifest.is_none() && trusted_keys.is_empty() {
            return Err(self.fail(
                0..0,
                "security.integrity",
                format!(
                    "`{}` needs `security.manifest` or `security.trusted_keys`",
                    integrity.name()
                ),
            ));
        }
        let on_panic = match raw.on_panic {
            None => defaults.on_panic,
            Some(value) => match value.get_ref().as_str() {
                "keep-serving" => PanicPolicy::KeepServing,
                "disable" => PanicPolicy::Disable,
                other => {
                    return Err(self.fail(
                        value.span(),
                        "security.on_panic",
                        format!("{other:?} is not keep-serving or disable"),
                    ))
                }
            },
        };
        Ok(SecurityConfig {
            integrity,
            manifest,
            trusted_keys,
            check_permissions: raw.check_permissions.unwrap_or(defaults.check_permissions),
            probe: raw.probe.unwrap_or(defaults.probe),
            probe_timeout: self.duration(
                raw.probe_timeout,
                "security.probe_timeout",
                defaults.probe_timeout,
            )?,
            on_panic,
            origin: self.origin.to_owned(),
        })
    }

    /// `[serve]`, and the TLS keys of `[security]` (taken out of `security`).
    fn serve(
        &self,
        raw: RawServe,
        security: &mut RawSecurity,
        defaults: &ServeConfig,
    ) -> Result<ServeConfig, Error> {
        let address = |value: Option<Spanned<String>>, key: &str| match value {
            None => Ok(None),
            Some(value) => match value.get_ref().parse::<SocketAddr>() {
                Ok(_) => Ok(Some(value.into_inner())),
                Err(_) => Err(self.fail(
                    value.span(),
                    key,
                    format!(
                        "{:?} is not an address: write IP:PORT, e.g. \"0.0.0.0:7443\"",
                        value.get_ref()
                    ),
                )),
            },
        };
        let file =
            |value: Option<Spanned<String>>| value.map(|value| self.resolve(value.get_ref()));
        Ok(ServeConfig {
            listen: address(raw.listen, "serve.listen")?.unwrap_or_else(|| defaults.listen.clone()),
            metrics_listen: address(raw.metrics_listen, "serve.metrics_listen")?
                .or_else(|| defaults.metrics_listen.clone()),
            health_listen: address(raw.health_listen, "serve.health_listen")?
                .or_else(|| defaults.health_listen.clone()),
            drain_grace: self.duration(
                raw.drain_grace,
                "serve.drain_grace",
                defaults.drain_grace,
            )?,
            enable_tls: security.enable_tls.take().unwrap_or(defaults.enable_tls),
            cert_file: file(security.cert_file.take()).or_else(|| defaults.cert_file.clone()),
            key_file: file(security.key_file.take()).or_else(|| defaults.key_file.clone()),
            client_ca_file: file(security.client_ca_file.take())
                .or_else(|| defaults.client_ca_file.clone()),
        })
    }

    fn mode(&self, value: &Spanned<String>, key: &str) -> Result<Mode, Error> {
        self.named(value, key, Mode::parse, "in-process or out-of-process")
    }

    /// One of a few named values, read with `parse`; else an error listing `choices`.
    fn named<T>(
        &self,
        value: &Spanned<String>,
        key: &str,
        parse: impl Fn(&str) -> Option<T>,
        choices: &str,
    ) -> Result<T, Error> {
        parse(value.get_ref()).ok_or_else(|| {
            self.fail(value.span(), key, format!("{:?} is not {choices}", value.get_ref()))
        })
    }

    fn isolation(
        &self,
        raw: RawIsolation,
        defaults: &IsolationConfig,
    ) -> Result<IsolationConfig, Error> {
        let d = &defaults.options;
        let mode = match &raw.mode {
            None => defaults.mode,
            Some(value) => self.mode(value, "isolation.mode")?,
        };
        let options = RemoteOptions {
            runner: raw.runner.map(|runner| self.resolve(&runner)).or_else(|| d.runner.clone()),
            call_timeout: self.duration(
                raw.call_timeout,
                "isolation.call_timeout",
                d.call_timeout,
            )?,
            start_timeout: self.duration(
                raw.start_timeout,
                "isolation.start_timeout",
                d.start_timeout,
            )?,
            retries: raw.retries.unwrap_or(d.retries),
            max_failures: raw.max_failures.unwrap_or(d.max_failures),
            failure_window: self.duration(
                raw.failure_window,
                "isolation.failure_window",
                d.failure_window,
            )?,
            circuit_cooldown: self.duration(
                raw.circuit_cooldown,
                "isolation.circuit_cooldown",
                d.circuit_cooldown,
            )?,
            max_circuit_cooldown: self.duration(
                raw.max_circuit_cooldown,
                "isolation.max_circuit_cooldown",
                d.max_circuit_cooldown,
            )?,
            auto_mtls: raw.auto_mtls.unwrap_or(d.auto_mtls),
            channel: match &raw.transport {
                None => d.channel,
                Some(value) => {
                    self.named(value, "isolation.transport", Channel::from_name, "shm or socket")?
                }
            },
            ..d.clone()
        };
        Ok(IsolationConfig { mode, options })
    }

    fn plugins(
        &self,
        raw: BTreeMap<String, BTreeMap<String, Spanned<super::raw::PluginValue>>>,
    ) -> Result<PluginTables, Error> {
        use super::raw::PluginValue;
        let mut tables = PluginTables {
            plugins: BTreeMap::new(),
            modes: BTreeMap::new(),
            commands: BTreeMap::new(),
            fleets: BTreeMap::new(),
        };
        for (name, mut table) in raw {
            let key = |key: &str| format!("plugins.{name}.{key}");
            // A scalar, as the key requires.
            let scalar = |value: Spanned<PluginValue>, key: &str| {
                let span = value.span();
                match value.into_inner() {
                    PluginValue::Scalar(text) => Ok(Spanned::new(span, text)),
                    PluginValue::List(_) => Err(self.fail(
                        span,
                        key,
                        "expected a string, number or boolean, found an array".to_owned(),
                    )),
                }
            };
            // `mode`, `command`, `transport` and `auto_mtls` are for the manager, not for the
            // plugin's `initialize`.
            if let Some(value) = table.remove("mode") {
                let value = scalar(value, &key("mode"))?;
                tables.modes.insert(name.clone(), self.mode(&value, &key("mode"))?);
            }
            let command = table.remove("command");
            let command_span = command.as_ref().map(Spanned::span);
            if let Some(value) = table.remove("transport") {
                let value = scalar(value, &key("transport"))?;
                if value.get_ref() != "grpc" {
                    return Err(self.fail(
                        value.span(),
                        &key("transport"),
                        format!(
                            "expected \"grpc\" (go-plugin's protocol, the one a plugin executable \
                             speaks), found {:?}",
                            value.get_ref()
                        ),
                    ));
                }
                if command.is_none() {
                    return Err(self.fail(
                        value.span(),
                        &key("transport"),
                        "needs `command`, the plugin executable: a library's is set by `mode`"
                            .to_owned(),
                    ));
                }
            }
            let auto_mtls = match table.remove("auto_mtls") {
                None => None,
                Some(value) => {
                    let value = scalar(value, &key("auto_mtls"))?;
                    match value.get_ref().as_str() {
                        "true" => Some((true, value.span())),
                        "false" => Some((false, value.span())),
                        other => {
                            return Err(self.fail(
                                value.span(),
                                &key("auto_mtls"),
                                format!("expected true or false, found {other:?}"),
                            ))
                        }
                    }
                }
            };
            match command {
                Some(value) => {
                    let span = value.span();
                    let usage = "expected the program and its arguments, an array of strings: \
                                 command = [\"./my-plugin\", \"--flag\"]";
                    let mut words = match value.into_inner() {
                        PluginValue::List(words) if !words.is_empty() => words.into_iter(),
                        _ => return Err(self.fail(span, &key("command"), usage.to_owned())),
                    };
                    let program = words.next().unwrap_or_default();
                    // A bare name is looked up in PATH; a path is relative to this file.
                    let program = if program.contains('/') {
                        self.resolve(&program)
                    } else {
                        PathBuf::from(program)
                    };
                    let auto_mtls = auto_mtls.map(|(on, _)| on);
                    let command = PluginCommand { program, args: words.collect(), auto_mtls };
                    tables.commands.insert(name.clone(), command);
                }
                None if auto_mtls.is_some() => {
                    let span = auto_mtls.map(|(_, span)| span).unwrap_or_default();
                    return Err(self.fail(
                        span,
                        &key("auto_mtls"),
                        "is for a plugin executable (`command`)".to_owned(),
                    ));
                }
                None => {}
            }
            if let Some(fleet) = self.fleet(&name, &mut table, command_span)? {
                tables.fleets.insert(name.clone(), fleet);
            }
            let mut config = Config::new();
            for (item, value) in table {
                let value = scalar(value, &key(&item))?;
                config = config.with(&item, value.get_ref());
            }
            tables.plugins.insert(name, config);
        }
        Ok(tables)
    }
}

/// Error codes that are the answer, not a failure: never retried.
pub(super) fn is_business_error(code: ErrorCode) -> bool {
    matches!(
        code,
        ErrorCode::DivisionByZero
            | ErrorCode::InvalidInput
            | ErrorCode::OutOfRange
            | ErrorCode::Overflow
            | ErrorCode::Unsupported
    )
}

/// Parses `250ms`, `30s`, `2m`, `1h` (an integer and a unit).
pub(super) fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let bad = || {
        format!(
            "{text:?} is not a duration: write an integer and a unit (ms, s, m, h), e.g. \"30s\""
        )
    };
    let n: u64 = digits.parse().map_err(|_| bad())?;
    let millis_per = match unit.trim() {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        _ => return Err(bad()),
    };
    n.checked_mul(millis_per).map(Duration::from_millis).ok_or_else(bad)
}

/// The 1-based line of byte offset `offset` in `text`.
fn line_of(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()[..end].iter().filter(|&&b| b == b'\n').count() + 1
}

/// Turns a `toml` error into one naming the line and the dotted key.
fn config_error_from_toml(origin: &Path, text: &str, err: &toml::de::Error) -> Error {
    let line = err.span().map_or(0, |span| line_of(text, span.start));
    // `toml` only renders the key path when it has no input to quote: ask for that form.
    let mut bare = err.clone();
    bare.set_input(None);
    let rendered = bare.to_string();
    let mut key = rendered
        .lines()
        .find_map(|l| l.strip_prefix("in `").and_then(|l| l.strip_suffix('`')))
        .unwrap_or("")
        .to_owned();
    let message = err.message().trim().to_owned();
    // For an unknown key, the key is in the message; name it fully.
    if let Some(field) =
        message.strip_prefix("unknown field `").and_then(|rest| rest.split('`').next())
    {
        key = if key.is_empty() { field.to_owned() } else { format!("{key}.{field}") };
    }
    if key.is_empty() {
        key = "(syntax)".to_owned();
    }
    Error::Config { path: origin.to_owned(), line, key, message }
}

#[cfg(test)]
mod tests;
