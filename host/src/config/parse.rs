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
use crate::remote::RemoteOptions;
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
            Some(value) => Enforcement::from_name(value.get_ref()).ok_or_else(|| {
                self.fail(
                    value.span(),
                    "security.integrity",
                    format!("{:?} is not off, warn or enforce", value.get_ref()),
                )
            })?,
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
        Mode::parse(value.get_ref()).ok_or_else(|| {
            self.fail(
                value.span(),
                key,
                format!("{:?} is not in-process or out-of-process", value.get_ref()),
            )
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
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<ManagerConfig, Error> {
        ManagerConfig::parse(text, Path::new("/etc/calcplug/calcplug.toml"))
    }

    fn parse_env(text: &str, vars: &[(&str, &str)]) -> Result<ManagerConfig, Error> {
        let vars = vars.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned()));
        ManagerConfig::parse_with_env(text, Path::new("/etc/calcplug/calcplug.toml"), vars)
    }

    #[track_caller]
    fn fails(text: &str, key: &str, message: &str) {
        match parse(text) {
            Err(Error::Config { key: k, message: m, .. }) => {
                assert_eq!(k, key, "{text}");
                assert!(m.contains(message), "{text}: {m}");
            }
            other => panic!("{text}: {other:?}"),
        }
    }

    #[test]
    fn sample_every_is_a_power_of_two_or_zero() {
        assert_eq!(parse("[metrics]\nsample_every = 64\n").unwrap().sample_every(), 64);
        assert_eq!(parse("[metrics]\nsample_every = 1\n").unwrap().sample_every(), 1);
        assert_eq!(parse("[metrics]\nsample_every = 0\n").unwrap().sample_every(), 0);
        fails("[metrics]\nsample_every = 3\n", "metrics.sample_every", "3 is not a power of two");
    }

    #[test]
    fn only_failures_are_retryable_and_unknown_codes_list_the_retryable_ones() {
        let retry = parse("[retry]\nretryable = [\"Internal\"]\nmax_retries = 7\nbackoff = \"20ms\"\nmax_backoff = \"2s\"\n")
            .unwrap()
            .retry()
            .clone();
        assert_eq!(retry.retryable(), [ErrorCode::Internal]);
        assert_eq!(retry.max_retries(), 7);
        assert_eq!(
            (retry.backoff(), retry.max_backoff()),
            (Duration::from_millis(20), Duration::from_secs(2))
        );
        for business in ["DivisionByZero", "InvalidInput", "OutOfRange", "Overflow", "Unsupported"]
        {
            let text = format!("[retry]\nretryable = [{business:?}]\n");
            fails(&text, "retry.retryable", &format!("{business} is a business error"));
        }
        match parse("[retry]\nretryable = [\"Bogus\"]\n") {
            Err(Error::Config { message, .. }) => {
                assert!(
                    message.starts_with("unknown error code \"Bogus\" (retryable ones: "),
                    "{message}"
                );
                assert!(
                    message.contains("Internal") && !message.contains("DivisionByZero"),
                    "{message}"
                );
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn every_security_key_takes_effect() {
        let key = "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a";
        let text = format!(
            "[security]\nintegrity = \"warn\"\ntrusted_keys = [\"{key}\"]\nmanifest = \"SUMS\"\n\
             check_permissions = false\nprobe = true\nprobe_timeout = \"2s\"\non_panic = \"disable\"\n"
        );
        let config = parse(&text).unwrap();
        let security = config.security();
        assert_eq!(security.integrity(), Enforcement::Warn);
        assert_eq!(security.trusted_keys().len(), 1);
        assert_eq!(security.manifest(), Some(Path::new("/etc/calcplug/SUMS")));
        assert!(!security.check_permissions());
        assert!(security.probe());
        assert_eq!(security.on_panic(), PanicPolicy::Disable);
        assert_eq!(security.probe_timeout, Duration::from_secs(2));
        // The seed's `verify_signatures = true` means enforce.
        let seed = format!("[security]\nverify_signatures = true\ntrusted_keys = [\"{key}\"]\n");
        assert_eq!(parse(&seed).unwrap().security().integrity(), Enforcement::Enforce);
        fails(
            "[security]\nintegrity = \"enforce\"\n",
            "security.integrity",
            "needs `security.manifest`",
        );
    }

    #[test]
    fn every_isolation_key_takes_effect() {
        let text = "[isolation]\nmode = \"out-of-process\"\nrunner = \"bin/runner\"\ncall_timeout = \"7s\"\n\
                    start_timeout = \"8s\"\nretries = 9\nmax_failures = 10\nfailure_window = \"11m\"\n\
                    circuit_cooldown = \"12ms\"\nmax_circuit_cooldown = \"13s\"\n";
        let config = parse(text).unwrap();
        let isolation = config.isolation();
        assert_eq!(isolation.mode(), Mode::OutOfProcess);
        let o = isolation.options();
        assert_eq!(o.runner.as_deref(), Some(Path::new("/etc/calcplug/bin/runner")));
        assert_eq!(
            (o.call_timeout, o.start_timeout),
            (Duration::from_secs(7), Duration::from_secs(8))
        );
        assert_eq!((o.retries, o.max_failures), (9, 10));
        assert_eq!(o.failure_window, Duration::from_secs(660));
        assert_eq!(o.circuit_cooldown, Duration::from_millis(12));
        assert_eq!(o.max_circuit_cooldown, Duration::from_secs(13));
    }

    #[test]
    fn serve_keys_take_effect_with_paths_relative_to_the_file() {
        let text = "[serve]\nlisten = \"0.0.0.0:7443\"\nmetrics_listen = \"127.0.0.1:9464\"\n\
                    health_listen = \"127.0.0.1:7444\"\ndrain_grace = \"3s\"\n\
                    [security]\nenable_tls = true\ncert_file = \"tls/server.pem\"\n\
                    key_file = \"/keys/server.key\"\nclient_ca_file = \"tls/ca.pem\"\n";
        let serve = parse(text).unwrap().serve().clone();
        assert_eq!(
            serve,
            ServeConfig {
                listen: "0.0.0.0:7443".into(),
                metrics_listen: Some("127.0.0.1:9464".into()),
                health_listen: Some("127.0.0.1:7444".into()),
                drain_grace: Duration::from_secs(3),
                enable_tls: true,
                cert_file: Some("/etc/calcplug/tls/server.pem".into()),
                key_file: Some("/keys/server.key".into()),
                client_ca_file: Some("/etc/calcplug/tls/ca.pem".into()),
            }
        );
        fails("[serve]\nlisten = \"7443\"\n", "serve.listen", "\"7443\" is not an address");
        fails("[serve]\ndrain_grace = \"soon\"\n", "serve.drain_grace", "is not a duration");
    }

    #[test]
    fn a_variable_sets_its_key_over_the_file() {
        let text = "[isolation]\ncall_timeout = \"7s\"\nretries = 2\n\
                    [plugins.basic]\nprecision = 4\n[plugins.go-calc]\ncommand = [\"./go-calc\"]\n";
        let config = parse_env(
            text,
            &[
                ("CALCPLUG_ISOLATION_CALL_TIMEOUT", "2s"),
                ("CALCPLUG_DISCOVERY_PATHS", "[\"plugins\", \"/opt/plugins\"]"),
                ("CALCPLUG_RETRY_MAX_RETRIES", "9"),
                ("CALCPLUG_SECURITY_ENABLE_TLS", "false"),
                ("CALCPLUG_SERVE_LISTEN", "0.0.0.0:7443"),
                ("CALCPLUG_PLUGINS__BASIC__PRECISION", "2"),
                ("CALCPLUG_PLUGINS__GO_CALC__AUTO_MTLS", "false"),
                ("CALCPLUG_PLUGINS__SCIENTIFIC__ANGLE_UNIT", "degrees"),
                // Not config keys: left alone.
                ("CALCPLUG_LOG", "debug"),
                ("CALCPLUG_RUNNER", "/bin/false"),
                ("PATH", "/bin"),
            ],
        )
        .unwrap();
        let options = config.isolation().options();
        assert_eq!(options.call_timeout, Duration::from_secs(2));
        assert_eq!(options.retries, 2, "a key the variables leave alone keeps the file's value");
        let paths: Vec<&Path> = config.paths().collect();
        assert_eq!(paths, [Path::new("/etc/calcplug/plugins"), Path::new("/opt/plugins")]);
        assert_eq!(config.retry().max_retries(), 9);
        assert!(!config.serve().enable_tls);
        assert_eq!(config.serve().listen, "0.0.0.0:7443");
        assert_eq!(config.plugin("basic").get("precision"), Some("2"));
        assert_eq!(config.plugin("scientific").get("angle_unit"), Some("degrees"));
        let commands: Vec<_> = config.commands().collect();
        assert_eq!(commands.len(), 1);
        assert_eq!(commands[0].0, "go-calc", "GO_CALC is the file's go-calc");
        assert_eq!(commands[0].1.auto_mtls, Some(false));
    }

    #[track_caller]
    fn env_fails(vars: &[(&str, &str)], var: &str, key: &str, message: &str) {
        match parse_env("[plugins.basic]\nprecision = 4\n", vars) {
            Err(Error::ConfigEnv { var: v, key: k, message: m }) => {
                assert_eq!((v.as_str(), k.as_str()), (var, key), "{vars:?}");
                assert!(m.contains(message), "{vars:?}: {m}");
            }
            other => panic!("{vars:?}: {other:?}"),
        }
    }

    #[test]
    fn a_bad_variable_is_named_with_its_key() {
        env_fails(
            &[("CALCPLUG_ISOLATION_CALL_TIMOUT", "2s")],
            "CALCPLUG_ISOLATION_CALL_TIMOUT",
            "isolation.call_timout",
            "[isolation] has no such key (its variables: CALCPLUG_ISOLATION_MODE, \
             CALCPLUG_ISOLATION_CALL_TIMEOUT,",
        );
        env_fails(
            &[("CALCPLUG_ISOLATION_CALL_TIMEOUT", "fast")],
            "CALCPLUG_ISOLATION_CALL_TIMEOUT",
            "isolation.call_timeout",
            "\"fast\" is not a duration",
        );
        env_fails(
            &[("CALCPLUG_RETRY_MAX_RETRIES", "many")],
            "CALCPLUG_RETRY_MAX_RETRIES",
            "retry.max_retries",
            "invalid type: string \"many\", expected u32",
        );
        env_fails(
            &[("CALCPLUG_SERVE_HEALTH_LISTEN", "anywhere")],
            "CALCPLUG_SERVE_HEALTH_LISTEN",
            "serve.health_listen",
            "\"anywhere\" is not an address",
        );
        env_fails(
            &[("CALCPLUG_PLUGINS__BASIC__MODE", "sideways")],
            "CALCPLUG_PLUGINS__BASIC__MODE",
            "plugins.basic.mode",
            "\"sideways\" is not in-process or out-of-process",
        );
        env_fails(
            &[("CALCPLUG_PLUGINS__BASIC", "4")],
            "CALCPLUG_PLUGINS__BASIC",
            "plugins",
            "expected CALCPLUG_PLUGINS__<NAME>__<KEY>",
        );
        // A value cannot smuggle in a second key.
        env_fails(
            &[("CALCPLUG_RETRY_MAX_RETRIES", "3\nprobe = true")],
            "CALCPLUG_RETRY_MAX_RETRIES",
            "retry.max_retries",
            "invalid type: string",
        );
        let err = parse_env("", &[("CALCPLUG_ISOLATION_RETRIES", "x")]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "environment variable CALCPLUG_ISOLATION_RETRIES (`isolation.retries`): \
             invalid type: string \"x\", expected u32"
        );
    }

    #[test]
    fn which_variables_are_the_configs() {
        for var in [
            "CALCPLUG_ISOLATION_CALL_TIMEOUT",
            "CALCPLUG_isolation_mode",
            "CALCPLUG_ISOLATION_MOD",
            "CALCPLUG_SERVE_LISTEN",
            "CALCPLUG_PLUGINS__BASIC__PRECISION",
            "CALCPLUG_PLUGINS__",
        ] {
            assert!(ManagerConfig::is_config_variable(var), "{var}");
        }
        for var in [
            "CALCPLUG_LOG",
            "CALCPLUG_RUNNER_LOG",
            "CALCPLUG_ISOLATION",
            "CALCPLUG_ISOLATION_",
            "CALCPLUG_ISOLATON_MODE",
            "CALCPLUG_ISOLATIÖN_MODE",
            "CALCPLUG_",
            "PATH",
        ] {
            assert!(!ManagerConfig::is_config_variable(var), "{var}");
        }
        // A multi-byte character where a section's name would end is read, not a panic.
        let config = parse_env("", &[("CALCPLUG_ISOLATIÖN_MODE", "x"), ("CALCPLUG_SECURITŸ", "x")]);
        assert!(config.is_ok(), "{config:?}");
    }

    #[test]
    fn the_example_file_documents_every_key_of_every_section() {
        let example = include_str!("../../../calcplug.example.toml");
        for (section, keys) in RawConfig::SECTIONS {
            let header = format!("[{section}]\n");
            let start = example.find(&header).unwrap_or_else(|| panic!("no [{section}]"));
            let body = &example[start + header.len()..];
            let body = &body[..body.find("\n[").unwrap_or(body.len())];
            for key in keys {
                let set = body.lines().any(|line| {
                    line.trim_start_matches(['#', ' ']).starts_with(&format!("{key} ="))
                });
                assert!(set, "calcplug.example.toml's [{section}] has no `{key} =`");
            }
        }
    }

    #[test]
    fn durations_take_each_unit() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert!(parse_duration("5 parsecs").unwrap_err().contains("is not a duration"));
        assert!(parse_duration(&format!("{}h", u64::MAX)).is_err(), "overflow");
    }
}
