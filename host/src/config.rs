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

/// The `[security]` table: placeholders for the plugin-integrity issue, checked for type only.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SecurityConfig {
    verify_signatures: bool,
    trusted_keys: Vec<String>,
}

impl SecurityConfig {
    /// `verify_signatures` (default `false`). Not enforced yet.
    pub fn verify_signatures(&self) -> bool {
        self.verify_signatures
    }

    /// `trusted_keys` (default empty). Not used yet.
    pub fn trusted_keys(&self) -> &[String] {
        &self.trusted_keys
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
        let security = SecurityConfig {
            verify_signatures: security_raw.verify_signatures.unwrap_or(false),
            trusted_keys: security_raw.trusted_keys.unwrap_or_default(),
        };

        let mut plugins = BTreeMap::new();
        for (name, table) in raw.plugins.unwrap_or_default() {
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

    /// The `[security]` placeholders.
    pub fn security(&self) -> &SecurityConfig {
        &self.security
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
    verify_signatures: Option<bool>,
    trusted_keys: Option<Vec<String>>,
    // Placeholders from the seed's exercise, accepted so that its example parses.
    #[allow(dead_code)] // Read once the integrity issue lands.
    enable_tls: Option<bool>,
    #[allow(dead_code)] // Read once the integrity issue lands.
    cert_file: Option<String>,
    #[allow(dead_code)] // Read once the integrity issue lands.
    key_file: Option<String>,
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
