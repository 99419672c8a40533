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

mod env;
mod open;
mod parse;
mod raw;

pub(crate) use open::locate;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use interface::{Config, ErrorCode};

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
    serve: ServeConfig,
    modes: BTreeMap<String, Mode>,
    plugins: BTreeMap<String, Config>,
    commands: BTreeMap<String, PluginCommand>,
    fleets: BTreeMap<String, crate::fleet::FleetOptions>,
}

/// A plugin that is an executable speaking go-plugin's gRPC protocol, in any language:
/// `[plugins.NAME] command = ["./my-plugin", "--flag"]` (and optionally `transport = "grpc"`,
/// the only one, and `auto_mtls`). The manager starts it, serves it as `NAME` (its metadata
/// must say that name) and restarts it when the program file changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginCommand {
    /// The program: relative to the config file's directory if it has a `/`, else looked up in
    /// `PATH`.
    pub program: PathBuf,
    /// Its arguments.
    pub args: Vec<String>,
    /// Overrides `[isolation] auto_mtls` for this plugin.
    pub auto_mtls: Option<bool>,
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

/// What `calcplug serve` does: `[serve]`, and the seed's TLS keys of `[security]`
/// (`enable_tls`, `cert_file`, `key_file`, plus `client_ca_file`). Its flags win over these.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServeConfig {
    /// `serve.listen`, `IP:PORT` (default `127.0.0.1:7443`).
    pub listen: String,
    /// `serve.metrics_listen`: where to serve `/metrics`, `IP:PORT` (default none).
    pub metrics_listen: Option<String>,
    /// `serve.health_listen`: where to serve the plaintext health service (default none).
    pub health_listen: Option<String>,
    /// `serve.drain_grace`: how long a stop reports `NOT_SERVING` while still answering
    /// (default `1s`).
    pub drain_grace: Duration,
    /// `security.enable_tls` (default `true`); `false` serves plaintext.
    pub enable_tls: bool,
    /// `security.cert_file`: the server's certificate chain (PEM), relative to the config file.
    pub cert_file: Option<PathBuf>,
    /// `security.key_file`: the server's private key (PEM).
    pub key_file: Option<PathBuf>,
    /// `security.client_ca_file`: the CA of the clients' certificates (PEM): clients without
    /// one are refused (mutual TLS).
    pub client_ca_file: Option<PathBuf>,
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
    /// `circuit_cooldown`, `max_circuit_cooldown`, `runner`, `auto_mtls`, `transport`.
    pub fn options(&self) -> &crate::remote::RemoteOptions {
        &self.options
    }
}

impl ManagerConfig {
    /// The configuration of an empty file: every key at its default. This is the one table of
    /// defaults: parsing starts from it, and `calcplug.example.toml` documents it.
    pub fn defaults() -> ManagerConfig {
        ManagerConfig {
            origin: PathBuf::from("<defaults>"),
            paths: Vec::new(),
            auto_scan: false,
            scan_interval: Duration::from_secs(30),
            shutdown_timeout: Duration::from_secs(5),
            health_interval: None,
            sample_every: 1024,
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
            serve: ServeConfig {
                listen: "127.0.0.1:7443".to_owned(),
                metrics_listen: None,
                health_listen: None,
                drain_grace: Duration::from_secs(1),
                enable_tls: true,
                cert_file: None,
                key_file: None,
                client_ca_file: None,
            },
            modes: BTreeMap::new(),
            plugins: BTreeMap::new(),
            commands: BTreeMap::new(),
            fleets: BTreeMap::new(),
        }
    }

    /// Reads and parses the config file at `path`.
    ///
    /// # Errors
    ///
    /// [`Error::NotFound`]/[`Error::Io`] if it cannot be read, [`Error::Config`] naming the line
    /// and key of the first problem.
    pub fn from_file(path: impl AsRef<Path>) -> Result<ManagerConfig, Error> {
        let path = path.as_ref();
        ManagerConfig::parse(&read_config(path)?, path)
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
        parse::parse(text, origin, [])
    }

    /// [`ManagerConfig::parse`] with the `CALCPLUG_*` variables among `vars` over the file: each
    /// key `[section] key` can be set by `CALCPLUG_<SECTION>_<KEY>` (e.g.
    /// `CALCPLUG_ISOLATION_CALL_TIMEOUT=2s`), and a `[plugins.NAME]` key by
    /// `CALCPLUG_PLUGINS__<NAME>__<KEY>` (`-` in a name written `_`). A value is read as TOML
    /// when it is a TOML value (`5`, `true`, `["a", "b"]`), else as a string. Other variables,
    /// and `CALCPLUG_` ones that name no section (`CALCPLUG_LOG`), are ignored.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for the file, [`Error::ConfigEnv`] naming the variable for a value of
    /// the wrong type or a variable that names a section but none of its keys.
    pub fn parse_with_env(
        text: &str,
        origin: &Path,
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<ManagerConfig, Error> {
        parse::parse(text, origin, vars)
    }

    /// Whether the environment variable `var` is one of the config's, right or wrong
    /// (`CALCPLUG_<SECTION>_…` for a section of the file, or `CALCPLUG_PLUGINS__…`): what a
    /// program that has `CALCPLUG_` variables of its own needs to tell a misspelt one apart.
    pub fn is_config_variable(var: &str) -> bool {
        env::is_config_variable(var)
    }

    /// The sections a `CALCPLUG_<SECTION>_<KEY>` variable may name.
    pub fn sections() -> impl Iterator<Item = &'static str> {
        raw::RawConfig::SECTIONS.iter().map(|(section, _)| *section)
    }

    /// [`ManagerConfig::from_file`] (or, for `None`, the defaults) with this process's
    /// `CALCPLUG_*` environment over it; see [`ManagerConfig::parse_with_env`]. What the CLI
    /// reads.
    ///
    /// # Errors
    ///
    /// As [`ManagerConfig::from_file`] and [`ManagerConfig::parse_with_env`]; a `CALCPLUG_`
    /// config variable whose value is not UTF-8 is an [`Error::ConfigEnv`].
    pub fn from_file_with_env(path: Option<&Path>) -> Result<ManagerConfig, Error> {
        let mut vars = Vec::new();
        for (var, value) in std::env::vars_os() {
            let Some(var) = var.to_str().filter(|var| var.starts_with("CALCPLUG_")) else {
                continue;
            };
            match value.into_string() {
                Ok(value) => vars.push((var.to_owned(), value)),
                Err(_) => {
                    return Err(Error::ConfigEnv {
                        var: var.to_owned(),
                        key: String::new(),
                        message: "is not UTF-8".to_owned(),
                    })
                }
            }
        }
        match path {
            Some(path) => ManagerConfig::parse_with_env(&read_config(path)?, path, vars),
            None => ManagerConfig::parse_with_env("", &ManagerConfig::defaults().origin, vars),
        }
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

    /// One in-process call in this many is timed (`metrics.sample_every`, a power of two,
    /// default 1024); calls to another process are all timed; 0 turns timing off.
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

    /// What `calcplug serve` does (`[serve]` and `[security]`'s TLS keys).
    pub fn serve(&self) -> &ServeConfig {
        &self.serve
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

    /// The plugin executables (`[plugins.NAME] command`), by name.
    pub fn commands(&self) -> impl Iterator<Item = (&str, &PluginCommand)> {
        self.commands.iter().map(|(name, command)| (name.as_str(), command))
    }

    /// The plugins served by fleets of `calcplug serve` instances (`[plugins.NAME] endpoints`
    /// or `discovery`), by name.
    pub fn fleets(&self) -> impl Iterator<Item = (&str, &crate::fleet::FleetOptions)> {
        self.fleets.iter().map(|(name, options)| (name.as_str(), options))
    }
}

/// The text of the config file at `path`.
fn read_config(path: &Path) -> Result<String, Error> {
    fs::read_to_string(path).map_err(|source| {
        if source.kind() == std::io::ErrorKind::NotFound {
            Error::NotFound.with_path(path.to_owned())
        } else {
            Error::Io { error: source }.with_path(path.to_owned())
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_file_is_the_defaults_table() {
        let parsed = ManagerConfig::parse("", Path::new("<defaults>")).unwrap();
        assert_eq!(format!("{parsed:?}"), format!("{:?}", ManagerConfig::defaults()));
    }

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
        assert_eq!(config.sample_every(), 1024);
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
