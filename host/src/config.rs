//! The plugin manager's configuration: `calcplug.toml`.
//!
//! Every key has a default, so no file is needed; a file that is there must be right: an unknown
//! key, a value of the wrong type or a malformed duration is an [`Error::Config`] naming the
//! file, the line and the key, never a panic or a silent default.
//! `calcplug.example.toml` at the root of the repository documents every key.
//!
//! ```toml
//! [discovery]
//! paths = ["plugins"]          # relative to this file's directory
//! auto_scan = true             # watch the directories, load new libraries, hot-reload changed ones
//! scan_interval = "30s"        # fallback polling when file events are missed
//!
//! [plugins.basic]              # passed to the plugin's `initialize`, values as strings
//! precision = 4
//! max_value = 1e100
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::fs;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use interface::{Config, ErrorCode};
use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;
use toml::Spanned;

use crate::security::{Enforcement, LoadPolicy, Manifest, ProbeSettings, TrustedKey};
use crate::Error;

/// The file name the CLI looks for in the current directory when no `--config` is given.
pub const CONFIG_FILE_NAME: &str = "calcplug.toml";

/// Everything a [`PluginManager`](crate::PluginManager) needs to know, from `calcplug.toml`.
///
/// Build one with [`ManagerConfig::from_file`], [`ManagerConfig::parse`] or
/// [`ManagerConfig::defaults`]; the getters return what the file said, or the documented
/// default for a key it did not set.
#[derive(Debug, Clone)]
pub struct ManagerConfig {
    origin: PathBuf,
    paths: Vec<ConfigPath>,
    auto_scan: bool,
    scan_interval: Duration,
    shutdown_timeout: Duration,
    health_interval: Option<Duration>,
    sample_every: u64,
    retry: RetryPolicy,
    security: SecurityConfig,
    isolation: IsolationConfig,
    modes: BTreeMap<String, Mode>,
    plugins: BTreeMap<String, Config>,
}

/// A plugin directory from the config, with the line that named it.
#[derive(Debug, Clone)]
struct ConfigPath {
    path: PathBuf,
    line: usize,
}

/// How calls that failed with a retryable error code are retried (`[retry]`).
///
/// Business errors (`DivisionByZero`, `InvalidInput`, `OutOfRange`, `Overflow`, `Unsupported`)
/// are never retried: the same operands would fail the same way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    max_retries: u32,
    backoff: Duration,
    max_backoff: Duration,
    retryable: Vec<ErrorCode>,
}

impl RetryPolicy {
    /// How many times a failed call is tried again (`max_retries`, default 3).
    pub fn max_retries(&self) -> u32 {
        self.max_retries
    }

    /// The wait before the first retry (`backoff`, default `10ms`); it doubles for each further
    /// one.
    pub fn backoff(&self) -> Duration {
        self.backoff
    }

    /// The longest wait between two tries (`max_backoff`, default `1s`).
    pub fn max_backoff(&self) -> Duration {
        self.max_backoff
    }

    /// The error codes that are retried (`retryable`, default `["Internal"]`).
    pub fn retryable(&self) -> &[ErrorCode] {
        &self.retryable
    }

    /// The wait before retry number `retry` (0-based): `backoff × 2^retry`, at most
    /// `max_backoff`.
    pub fn delay(&self, retry: u32) -> Duration {
        let factor = 1u32.checked_shl(retry.min(31)).unwrap_or(u32::MAX);
        self.backoff.saturating_mul(factor).min(self.max_backoff)
    }
}

/// What the manager does with a plugin that panicked (`security.on_panic`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PanicPolicy {
    /// Report the panic (the call fails with `PluginPanicked`) and keep serving (the default).
    KeepServing,
    /// Report the panic and move the plugin to `Error`: later calls are refused until a reload.
    Disable,
}

/// The `[security]` table: what a library must pass before it is mapped into the process.
#[derive(Debug, Clone)]
pub struct SecurityConfig {
    integrity: Enforcement,
    manifest: Option<(PathBuf, usize)>,
    trusted_keys: Vec<TrustedKey>,
    check_permissions: bool,
    probe: bool,
    probe_timeout: Duration,
    on_panic: PanicPolicy,
    origin: PathBuf,
}

impl Default for SecurityConfig {
    fn default() -> SecurityConfig {
        SecurityConfig {
            integrity: Enforcement::Off,
            manifest: None,
            trusted_keys: Vec::new(),
            check_permissions: true,
            probe: false,
            probe_timeout: Duration::from_secs(5),
            on_panic: PanicPolicy::KeepServing,
            origin: PathBuf::from("<defaults>"),
        }
    }
}

impl SecurityConfig {
    /// `integrity`: `off` (default), `warn` or `enforce`.
    pub fn integrity(&self) -> Enforcement {
        self.integrity
    }

    /// `trusted_keys`: ed25519 public keys, 64 hex digits each (default none).
    pub fn trusted_keys(&self) -> &[TrustedKey] {
        &self.trusted_keys
    }

    /// `manifest`: a SHA-256 allowlist in `sha256sum` format, relative to the config file.
    pub fn manifest(&self) -> Option<&Path> {
        self.manifest.as_ref().map(|(path, _)| path.as_path())
    }

    /// `check_permissions` (default `true`): refuse group/world-writable or foreign-owned
    /// libraries and directories, and symlinks leaving the plugin directory.
    pub fn check_permissions(&self) -> bool {
        self.check_permissions
    }

    /// `probe` (default `false`): load each library in a child process first.
    pub fn probe(&self) -> bool {
        self.probe
    }

    /// `on_panic`: `keep-serving` (default) or `disable`.
    pub fn on_panic(&self) -> PanicPolicy {
        self.on_panic
    }

    /// The [`LoadPolicy`] these settings describe (reads the manifest file).
    ///
    /// # Errors
    ///
    /// [`Error::Config`] naming `security.manifest` if the manifest cannot be read or parsed.
    pub fn load_policy(&self) -> Result<LoadPolicy, Error> {
        let manifest = match &self.manifest {
            None => None,
            Some((path, line)) => Some(Manifest::read(path).map_err(|err| Error::Config {
                path: self.origin.clone(),
                line: *line,
                key: "security.manifest".to_owned(),
                message: err.to_string(),
            })?),
        };
        Ok(LoadPolicy {
            enforcement: self.integrity,
            manifest,
            trusted_keys: self.trusted_keys.clone(),
            check_permissions: self.check_permissions,
            probe: self
                .probe
                .then_some(ProbeSettings { runner: None, timeout: self.probe_timeout }),
        })
    }
}

/// Where plugins run (`[isolation]`, and `mode` in a `[plugins.NAME]` table).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// In this process, through the stable ABI: nanoseconds per call (the default).
    InProcess,
    /// In a `calcplug-runner` child over a local socket: crash isolation, microseconds per call.
    OutOfProcess,
}

impl Mode {
    /// `in-process` or `out-of-process`.
    pub const fn name(self) -> &'static str {
        match self {
            Mode::InProcess => "in-process",
            Mode::OutOfProcess => "out-of-process",
        }
    }

    fn parse(text: &str) -> Option<Mode> {
        [Mode::InProcess, Mode::OutOfProcess].into_iter().find(|m| m.name() == text)
    }
}

/// The `[isolation]` table: the default [`Mode`] and how runners are supervised.
#[derive(Debug, Clone)]
pub struct IsolationConfig {
    mode: Mode,
    options: crate::remote::RemoteOptions,
}

impl IsolationConfig {
    /// `mode` (default `in-process`); `[plugins.NAME] mode` overrides it per plugin.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// `call_timeout`, `start_timeout`, `retries`, `max_failures`, `failure_window`,
    /// `circuit_cooldown`, `max_circuit_cooldown`, `runner`.
    pub fn options(&self) -> &crate::remote::RemoteOptions {
        &self.options
    }
}

impl ManagerConfig {
    /// The configuration of an empty file: every key at its default.
    pub fn defaults() -> ManagerConfig {
        // An empty document always parses; the fallback is never reached.
        ManagerConfig::parse("", Path::new("<defaults>")).unwrap_or_else(|_| ManagerConfig {
            origin: PathBuf::from("<defaults>"),
            paths: Vec::new(),
            auto_scan: false,
            scan_interval: Duration::from_secs(30),
            shutdown_timeout: Duration::from_secs(5),
            health_interval: None,
            sample_every: 64,
            retry: RetryPolicy {
                max_retries: 3,
                backoff: Duration::from_millis(10),
                max_backoff: Duration::from_secs(1),
                retryable: vec![ErrorCode::Internal],
            },
            security: SecurityConfig::default(),
            isolation: IsolationConfig {
                mode: Mode::InProcess,
                options: crate::remote::RemoteOptions::default(),
            },
            modes: BTreeMap::new(),
            plugins: BTreeMap::new(),
        })
    }

    /// Reads and parses the config file at `path`.
    ///
    /// # Errors
    ///
    /// [`Error::NotFound`]/[`Error::Io`] if it cannot be read, [`Error::Config`] naming the line
    /// and key of the first problem.
    pub fn from_file(path: impl AsRef<Path>) -> Result<ManagerConfig, Error> {
        let path = path.as_ref();
        let text = fs::read_to_string(path).map_err(|source| {
            if source.kind() == std::io::ErrorKind::NotFound {
                Error::NotFound { path: path.to_owned() }
            } else {
                Error::Io { path: path.to_owned(), source }
            }
        })?;
        ManagerConfig::parse(&text, path)
    }

    /// Parses `text`, the contents of the file `origin` (used in errors and as the base of
    /// relative `discovery.paths`).
    ///
    /// Directories are not checked here; [`ManagerConfig::check_paths`] does it.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] naming `origin`, the line and the key of the first problem.
    pub fn parse(text: &str, origin: &Path) -> Result<ManagerConfig, Error> {
        let raw: RawConfig =
            toml::from_str(text).map_err(|err| config_error_from_toml(origin, text, &err))?;
        let fail = |span: Range<usize>, key: &str, message: String| Error::Config {
            path: origin.to_owned(),
            line: line_of(text, span.start),
            key: key.to_owned(),
            message,
        };
        let base = origin.parent().map(Path::to_owned).unwrap_or_default();

        let discovery = raw.discovery.unwrap_or_default();
        let mut paths = Vec::new();
        for entry in discovery.paths.map(Spanned::into_inner).unwrap_or_default() {
            let span = entry.span();
            let text_path = entry.into_inner();
            if text_path.trim().is_empty() {
                return Err(fail(span, "discovery.paths", "a path may not be empty".to_owned()));
            }
            let path = Path::new(&text_path);
            let path = if path.is_absolute() { path.to_owned() } else { base.join(path) };
            paths.push(ConfigPath { path, line: line_of(text, span.start) });
        }
        let duration = |value: Option<Spanned<String>>, key: &str, default: Duration| match value {
            None => Ok(default),
            Some(value) => {
                parse_duration(value.get_ref()).map_err(|message| fail(value.span(), key, message))
            }
        };
        let scan_interval =
            duration(discovery.scan_interval, "discovery.scan_interval", Duration::from_secs(30))?;
        if scan_interval.is_zero() {
            let span = 0..0;
            return Err(fail(span, "discovery.scan_interval", "must be more than 0s".to_owned()));
        }

        let manager = raw.manager.unwrap_or_default();
        let shutdown_timeout =
            duration(manager.shutdown_timeout, "manager.shutdown_timeout", Duration::from_secs(5))?;
        let health_interval =
            duration(manager.health_interval, "manager.health_interval", Duration::ZERO)?;
        let health_interval = (!health_interval.is_zero()).then_some(health_interval);

        let metrics = raw.metrics.unwrap_or_default();
        let sample_every = match metrics.sample_every {
            None => 64,
            Some(value) => {
                let n = *value.get_ref();
                if n != 0 && !n.is_power_of_two() {
                    return Err(fail(
                        value.span(),
                        "metrics.sample_every",
                        format!("{n} is not a power of two (0 turns timing off)"),
                    ));
                }
                n
            }
        };

        let retry_raw = raw.retry.unwrap_or_default();
        let mut retryable = Vec::new();
        match retry_raw.retryable {
            None => retryable.push(ErrorCode::Internal),
            Some(list) => {
                for name in list.into_inner() {
                    let code = ErrorCode::ALL.into_iter().find(|c| c.name() == name.get_ref());
                    match code {
                        Some(code) if !is_business_error(code) => retryable.push(code),
                        Some(code) => {
                            return Err(fail(
                                name.span(),
                                "retry.retryable",
                                format!(
                                    "{} is a business error: retrying it would fail the same way",
                                    code.name()
                                ),
                            ));
                        }
                        None => {
                            let known: Vec<_> = ErrorCode::ALL
                                .into_iter()
                                .filter(|c| !is_business_error(*c))
                                .map(ErrorCode::name)
                                .collect();
                            return Err(fail(
                                name.span(),
                                "retry.retryable",
                                format!(
                                    "unknown error code {:?} (retryable ones: {})",
                                    name.get_ref(),
                                    known.join(", ")
                                ),
                            ));
                        }
                    }
                }
            }
        }
        let retry = RetryPolicy {
            max_retries: retry_raw.max_retries.unwrap_or(3),
            backoff: duration(retry_raw.backoff, "retry.backoff", Duration::from_millis(10))?,
            max_backoff: duration(
                retry_raw.max_backoff,
                "retry.max_backoff",
                Duration::from_secs(1),
            )?,
            retryable,
        };

        let security_raw = raw.security.unwrap_or_default();
        let integrity = match security_raw.integrity {
            None if security_raw.verify_signatures == Some(true) => Enforcement::Enforce,
            None => Enforcement::Off,
            Some(value) => Enforcement::from_name(value.get_ref()).ok_or_else(|| {
                fail(
                    value.span(),
                    "security.integrity",
                    format!("{:?} is not off, warn or enforce", value.get_ref()),
                )
            })?,
        };
        let mut trusted_keys = Vec::new();
        for key in security_raw.trusted_keys.unwrap_or_default() {
            let parsed = TrustedKey::from_hex(key.get_ref())
                .map_err(|message| fail(key.span(), "security.trusted_keys", message))?;
            trusted_keys.push(parsed);
        }
        let manifest = security_raw.manifest.map(|value| {
            let line = line_of(text, value.span().start);
            let path = Path::new(value.get_ref());
            (if path.is_absolute() { path.to_owned() } else { base.join(path) }, line)
        });
        if integrity != Enforcement::Off && manifest.is_none() && trusted_keys.is_empty() {
            return Err(fail(
                0..0,
                "security.integrity",
                format!(
                    "`{}` needs `security.manifest` or `security.trusted_keys`",
                    integrity.name()
                ),
            ));
        }
        let on_panic = match security_raw.on_panic {
            None => PanicPolicy::KeepServing,
            Some(value) => match value.get_ref().as_str() {
                "keep-serving" => PanicPolicy::KeepServing,
                "disable" => PanicPolicy::Disable,
                other => {
                    return Err(fail(
                        value.span(),
                        "security.on_panic",
                        format!("{other:?} is not keep-serving or disable"),
                    ))
                }
            },
        };
        let security = SecurityConfig {
            integrity,
            manifest,
            trusted_keys,
            check_permissions: security_raw.check_permissions.unwrap_or(true),
            probe: security_raw.probe.unwrap_or(false),
            probe_timeout: duration(
                security_raw.probe_timeout,
                "security.probe_timeout",
                Duration::from_secs(5),
            )?,
            on_panic,
            origin: origin.to_owned(),
        };

        let isolation_raw = raw.isolation.unwrap_or_default();
        let mode_of = |value: &Spanned<String>, key: &str| {
            Mode::parse(value.get_ref()).ok_or_else(|| {
                fail(
                    value.span(),
                    key,
                    format!("{:?} is not in-process or out-of-process", value.get_ref()),
                )
            })
        };
        let default_options = crate::remote::RemoteOptions::default();
        let isolation = IsolationConfig {
            mode: match &isolation_raw.mode {
                None => Mode::InProcess,
                Some(value) => mode_of(value, "isolation.mode")?,
            },
            options: crate::remote::RemoteOptions {
                runner: isolation_raw.runner.map(|runner| {
                    let path = Path::new(&runner);
                    if path.is_absolute() {
                        path.to_owned()
                    } else {
                        base.join(path)
                    }
                }),
                call_timeout: duration(
                    isolation_raw.call_timeout,
                    "isolation.call_timeout",
                    default_options.call_timeout,
                )?,
                start_timeout: duration(
                    isolation_raw.start_timeout,
                    "isolation.start_timeout",
                    default_options.start_timeout,
                )?,
                retries: isolation_raw.retries.unwrap_or(default_options.retries),
                max_failures: isolation_raw.max_failures.unwrap_or(default_options.max_failures),
                failure_window: duration(
                    isolation_raw.failure_window,
                    "isolation.failure_window",
                    default_options.failure_window,
                )?,
                circuit_cooldown: duration(
                    isolation_raw.circuit_cooldown,
                    "isolation.circuit_cooldown",
                    default_options.circuit_cooldown,
                )?,
                max_circuit_cooldown: duration(
                    isolation_raw.max_circuit_cooldown,
                    "isolation.max_circuit_cooldown",
                    default_options.max_circuit_cooldown,
                )?,
                ..default_options
            },
        };

        let mut plugins = BTreeMap::new();
        let mut modes = BTreeMap::new();
        for (name, mut table) in raw.plugins.unwrap_or_default() {
            // `mode` is for the manager, not for the plugin's `initialize`.
            if let Some(value) = table.remove("mode") {
                let span = value.span();
                let text_value = Spanned::new(span, value.into_inner().0);
                modes.insert(name.clone(), mode_of(&text_value, &format!("plugins.{name}.mode"))?);
            }
            let config: Config =
                table.into_iter().map(|(key, value)| (key, value.into_inner().0)).collect();
            plugins.insert(name, config);
        }

        Ok(ManagerConfig {
            origin: origin.to_owned(),
            paths,
            auto_scan: discovery.auto_scan.unwrap_or(false),
            scan_interval,
            shutdown_timeout,
            health_interval,
            sample_every,
            retry,
            security,
            isolation,
            modes,
            plugins,
        })
    }

    /// The same configuration with `dirs` as the plugin directories (what `--plugin-dir` does).
    pub fn with_paths(mut self, dirs: &[PathBuf]) -> ManagerConfig {
        self.paths = dirs.iter().map(|path| ConfigPath { path: path.clone(), line: 0 }).collect();
        self
    }

    /// The same configuration with `auto_scan` set (what `calcplug watch` does).
    pub fn with_auto_scan(mut self, auto_scan: bool) -> ManagerConfig {
        self.auto_scan = auto_scan;
        self
    }

    /// Checks that every plugin directory exists and is a directory.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] naming the line of the first bad path (line 0 for a path that came from
    /// [`ManagerConfig::with_paths`]).
    pub fn check_paths(&self) -> Result<(), Error> {
        for ConfigPath { path, line } in &self.paths {
            let problem = match fs::metadata(path) {
                Ok(meta) if meta.is_dir() => continue,
                Ok(_) => "is not a directory",
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => "does not exist",
                Err(_) => "cannot be read",
            };
            return Err(Error::Config {
                path: self.origin.clone(),
                line: *line,
                key: "discovery.paths".to_owned(),
                message: format!("{} {problem}", path.display()),
            });
        }
        Ok(())
    }

    /// The file this configuration came from (`<defaults>` for [`ManagerConfig::defaults`]).
    pub fn origin(&self) -> &Path {
        &self.origin
    }

    /// The directories scanned for plugin libraries (`discovery.paths`, default none).
    pub fn paths(&self) -> impl Iterator<Item = &Path> {
        self.paths.iter().map(|p| p.path.as_path())
    }

    /// Whether the directories are watched (`discovery.auto_scan`, default `false`).
    pub fn auto_scan(&self) -> bool {
        self.auto_scan
    }

    /// The fallback polling interval of auto-scan (`discovery.scan_interval`, default `30s`).
    pub fn scan_interval(&self) -> Duration {
        self.scan_interval
    }

    /// How long shutdown waits for calls in flight (`manager.shutdown_timeout`, default `5s`).
    /// A reload waits as long for calls on the replaced library before shutting it down.
    pub fn shutdown_timeout(&self) -> Duration {
        self.shutdown_timeout
    }

    /// How often every plugin's health is checked (`manager.health_interval`, default `0s`:
    /// never).
    pub fn health_interval(&self) -> Option<Duration> {
        self.health_interval
    }

    /// One call in this many is timed (`metrics.sample_every`, a power of two, default 64;
    /// 0 turns timing off).
    pub fn sample_every(&self) -> u64 {
        self.sample_every
    }

    /// The retry policy (`[retry]`).
    pub fn retry(&self) -> &RetryPolicy {
        &self.retry
    }

    /// The `[security]` settings.
    pub fn security(&self) -> &SecurityConfig {
        &self.security
    }

    /// The `[isolation]` settings.
    pub fn isolation(&self) -> &IsolationConfig {
        &self.isolation
    }

    /// Where the plugin `name` runs: its `[plugins.NAME] mode`, else `isolation.mode`.
    pub fn mode_of(&self, name: &str) -> Mode {
        self.modes.get(name).copied().unwrap_or(self.isolation.mode)
    }

    /// Whether any plugin may run out of process, so that each library must be opened by a
    /// runner first (its name decides its mode).
    pub fn any_out_of_process(&self) -> bool {
        self.isolation.mode == Mode::OutOfProcess
            || self.modes.values().any(|mode| *mode == Mode::OutOfProcess)
    }

    /// The same configuration with every plugin out of process (what `--isolate` does).
    pub fn isolated(mut self) -> ManagerConfig {
        self.isolation.mode = Mode::OutOfProcess;
        self.modes.clear();
        self
    }

    /// The `initialize` config of the plugin `name` (`[plugins.NAME]`, default empty).
    pub fn plugin(&self, name: &str) -> Config {
        self.plugins.get(name).cloned().unwrap_or_default()
    }

    /// The names that have a `[plugins.NAME]` table.
    pub fn configured_plugins(&self) -> impl Iterator<Item = &str> {
        self.plugins.keys().map(String::as_str)
    }
}

fn is_business_error(code: ErrorCode) -> bool {
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
fn parse_duration(text: &str) -> Result<Duration, String> {
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

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    discovery: Option<RawDiscovery>,
    manager: Option<RawManager>,
    metrics: Option<RawMetrics>,
    retry: Option<RawRetry>,
    security: Option<RawSecurity>,
    isolation: Option<RawIsolation>,
    plugins: Option<BTreeMap<String, BTreeMap<String, Spanned<PluginValue>>>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDiscovery {
    paths: Option<Spanned<Vec<Spanned<String>>>>,
    auto_scan: Option<bool>,
    scan_interval: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawManager {
    shutdown_timeout: Option<Spanned<String>>,
    health_interval: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMetrics {
    sample_every: Option<Spanned<u64>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRetry {
    max_retries: Option<u32>,
    backoff: Option<Spanned<String>>,
    max_backoff: Option<Spanned<String>>,
    retryable: Option<Spanned<Vec<Spanned<String>>>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSecurity {
    integrity: Option<Spanned<String>>,
    manifest: Option<Spanned<String>>,
    trusted_keys: Option<Vec<Spanned<String>>>,
    check_permissions: Option<bool>,
    probe: Option<bool>,
    probe_timeout: Option<Spanned<String>>,
    on_panic: Option<Spanned<String>>,
    /// The seed's name for it: `true` is `integrity = "enforce"`.
    verify_signatures: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawIsolation {
    mode: Option<Spanned<String>>,
    call_timeout: Option<Spanned<String>>,
    start_timeout: Option<Spanned<String>>,
    retries: Option<u32>,
    max_failures: Option<u32>,
    failure_window: Option<Spanned<String>>,
    circuit_cooldown: Option<Spanned<String>>,
    max_circuit_cooldown: Option<Spanned<String>>,
    runner: Option<String>,
}

/// A plugin config value: a string, number or boolean, handed to `initialize` as a string.
#[derive(Debug)]
struct PluginValue(String);

impl<'de> Deserialize<'de> for PluginValue {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<PluginValue, D::Error> {
        struct Scalar;
        impl Visitor<'_> for Scalar {
            type Value = PluginValue;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string, number or boolean")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<PluginValue, E> {
                Ok(PluginValue(v.to_owned()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<PluginValue, E> {
                Ok(PluginValue(v.to_string()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<PluginValue, E> {
                Ok(PluginValue(v.to_string()))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<PluginValue, E> {
                // `Debug` keeps `1e100` short where `Display` writes out 101 digits.
                Ok(PluginValue(format!("{v:?}")))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<PluginValue, E> {
                Ok(PluginValue(v.to_string()))
            }
        }
        deserializer.deserialize_any(Scalar)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<ManagerConfig, Error> {
        ManagerConfig::parse(text, Path::new("/etc/calcplug.toml"))
    }

    #[track_caller]
    fn fails(text: &str, line: usize, key: &str, fragment: &str) {
        match parse(text) {
            Err(Error::Config { line: l, key: k, message, .. }) => {
                assert_eq!((l, k.as_str()), (line, key), "{message}");
                assert!(message.contains(fragment), "{message}");
            }
            other => panic!("expected a config error, got {other:?}"),
        }
    }

    #[test]
    fn defaults_need_no_file() {
        let config = ManagerConfig::defaults();
        assert_eq!(config.paths().count(), 0);
        assert!(!config.auto_scan());
        assert_eq!(config.scan_interval(), Duration::from_secs(30));
        assert_eq!(config.retry().max_retries(), 3);
        assert_eq!(config.retry().retryable(), &[ErrorCode::Internal]);
        assert_eq!(config.sample_every(), 64);
        assert!(config.plugin("basic").is_empty());
    }

    #[test]
    fn values_and_relative_paths() {
        let config = parse(
            "[discovery]\npaths = [\"plugins\", \"/abs\"]\nauto_scan = true\nscan_interval = \"250ms\"\n\
             [plugins.basic]\nprecision = 4\nmax_value = 1e100\nangle_unit = \"degrees\"\nexact = true\n",
        )
        .unwrap();
        let paths: Vec<_> = config.paths().collect();
        assert_eq!(paths, [Path::new("/etc/plugins"), Path::new("/abs")]);
        assert!(config.auto_scan());
        assert_eq!(config.scan_interval(), Duration::from_millis(250));
        let basic = config.plugin("basic");
        assert_eq!(basic.get("precision"), Some("4"));
        assert_eq!(basic.get("max_value"), Some("1e100"));
        assert_eq!(basic.get("angle_unit"), Some("degrees"));
        assert_eq!(basic.get("exact"), Some("true"));
    }

    #[test]
    fn errors_name_line_and_key() {
        fails("[discovery]\nauto_scan = true\npaht = []\n", 3, "discovery.paht", "unknown field");
        fails("[discovery]\nauto_scan = \"yes\"\n", 2, "discovery.auto_scan", "invalid type");
        fails(
            "[discovery]\nscan_interval = \"soon\"\n",
            2,
            "discovery.scan_interval",
            "not a duration",
        );
        fails("\n[metrics]\nsample_every = 48\n", 3, "metrics.sample_every", "power of two");
        fails(
            "[retry]\nretryable = [\"DivisionByZero\"]\n",
            2,
            "retry.retryable",
            "business error",
        );
        fails(
            "[plugins.basic]\nprecision = [1, 2]\n",
            2,
            "plugins.basic.precision",
            "a string, number or boolean",
        );
        fails("[discovery\n", 1, "(syntax)", "");
        fails("[dicovery]\n", 1, "dicovery", "unknown field");
    }

    #[test]
    fn retry_delay_doubles_up_to_the_cap() {
        let retry = ManagerConfig::defaults().retry().clone();
        assert_eq!(retry.delay(0), Duration::from_millis(10));
        assert_eq!(retry.delay(2), Duration::from_millis(40));
        assert_eq!(retry.delay(40), Duration::from_secs(1));
    }
}
