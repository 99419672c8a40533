//! The host's error type: every way loading or calling a plugin can fail.

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use interface::ErrorCode;
use semver::Version;

use crate::lifecycle::LifecycleState;

/// Everything that can go wrong between a host and a plugin.
///
/// Load errors name the library file and say what was expected and what was found; call errors
/// name the plugin and the operation and carry the plugin's [`ErrorCode`].
/// Each renders as one line that says everything, the OS or loader error included, and has no
/// [`source`](std::error::Error::source): `{:#}` with `anyhow` prints it once.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An error about one file: the file, then what is wrong with it.
    ///
    /// Every error about a file comes wrapped in this variant, so the path is composed into the
    /// message in one place; [`Error::without_path`] gives the inner error to match on.
    #[error("{}: {err}", path.display())]
    WithPath {
        /// The file: a library as the caller named it (never the in-memory image mapped), a
        /// directory, a manifest or signature file.
        path: PathBuf,
        /// What is wrong with it.
        err: Box<Error>,
    },

    /// Nothing exists at the path.
    #[error("no such file")]
    NotFound,

    /// The path exists but is not a regular file.
    #[error("not a regular file (it is a {found})")]
    NotAFile {
        /// What it is instead: `directory`, `socket`, …
        found: &'static str,
    },

    /// The file or directory could not be read.
    #[error("cannot read: {error}")]
    Io {
        /// The OS error.
        error: io::Error,
    },

    /// The file name does not end in this platform's library suffix.
    #[error("not a plugin library: expected a file name ending in `{expected}`")]
    WrongExtension {
        /// This platform's suffix: `.so`, `.dylib` or `.dll`.
        expected: &'static str,
    },

    /// The file's contents are not a dynamic library this process can load: not an object file
    /// at all, one for another platform or architecture, or a truncated copy.
    #[error("not a dynamic library for this platform: {reason}")]
    NotALibrary {
        /// What is wrong with it, in one line.
        reason: String,
    },

    /// The system's dynamic loader refused the library.
    #[error("the dynamic loader refused it: {error}")]
    Open {
        /// The loader's error (`dlerror`).
        error: libloading::Error,
    },

    /// The library does not export an abi_stable root module: it is not a calcplug plugin.
    #[error(
        "not a calcplug plugin: it does not export the abi_stable root module (symbol `{symbol}`)"
    )]
    MissingRootModule {
        /// The symbol looked for.
        symbol: &'static str,
    },

    /// The library was built with an abi_stable whose ABI differs from this host's.
    #[error("built with an incompatible abi_stable: {detail}")]
    AbiStableMismatch {
        /// What differs.
        detail: String,
    },

    /// The plugin was built against an interface version this host cannot talk to.
    #[error("plugin built against interface {found}, this host speaks interface {host}: major versions must match")]
    IncompatibleVersion {
        /// The host's interface version.
        host: Version,
        /// The plugin's interface version.
        found: Version,
    },

    /// abi_stable's layout check found the root module's layout differs from this host's.
    #[error("root module layout differs from this host's interface {host} (a change that needed a major version): {summary}")]
    AbiMismatch {
        /// The host's interface version.
        host: Version,
        /// The first line of abi_stable's explanation.
        summary: String,
        /// abi_stable's whole explanation (it can be long).
        detail: String,
    },

    /// The library's root module constructor failed or panicked.
    #[error("the root module constructor failed: {detail}")]
    RootModule {
        /// abi_stable's error.
        detail: String,
    },

    /// The magic cookie is not the one calcplug plugins carry.
    #[error("wrong magic cookie: expected {expected_key}={expected_value:?}, found {found_key}={found_value:?}")]
    BadCookie {
        /// The key this host expects.
        expected_key: &'static str,
        /// The value this host expects.
        expected_value: &'static str,
        /// The key the plugin carries.
        found_key: String,
        /// The value the plugin carries.
        found_value: String,
    },

    /// Host and plugin speak different protocol versions.
    #[error(
        "protocol version mismatch: this host speaks protocol {host}, the plugin speaks {plugin}"
    )]
    ProtocolMismatch {
        /// The host's protocol version.
        host: u32,
        /// The plugin's protocol version.
        plugin: u32,
    },

    /// The plugin's handshake or metadata is malformed (e.g. a version that is not semver).
    #[error("invalid plugin metadata: {reason}")]
    BadMetadata {
        /// What is wrong.
        reason: String,
    },

    /// The plugin failed while being set up (creating its instance, reporting its metadata).
    #[error("{op} failed: {code}: {message}")]
    Setup {
        /// The entry point that failed.
        op: &'static str,
        /// The plugin's error code.
        code: ErrorCode,
        /// The plugin's message.
        message: String,
    },

    /// A call into a loaded plugin returned an error.
    #[error("{plugin}: {op}: {code}{}{message}", if message.is_empty() { "" } else { ": " })]
    Call {
        /// The plugin's name.
        plugin: String,
        /// The operation called.
        op: &'static str,
        /// The plugin's error code.
        code: ErrorCode,
        /// The plugin's message.
        message: String,
    },

    /// No loaded plugin has the requested name.
    #[error("no plugin named `{name}`{}", available_list(available))]
    UnknownPlugin {
        /// The name asked for.
        name: String,
        /// The names that were loaded.
        available: Vec<String>,
    },

    /// The manager's config file is wrong: an unknown key, a value of the wrong type, a bad
    /// path. `line` is 1-based (0 when the problem has no line, e.g. a `--plugin-dir`).
    #[error("{}:{line}: `{key}`: {message}", path.display())]
    Config {
        /// The config file.
        path: PathBuf,
        /// The line of the offending key or value.
        line: usize,
        /// The dotted key, e.g. `discovery.scan_interval`.
        key: String,
        /// What is wrong.
        message: String,
    },

    /// A `CALCPLUG_*` environment variable that overrides a config key is wrong: a value of the
    /// wrong type, or a name that is no key.
    #[error("environment variable {var}{}: {message}", if key.is_empty() { String::new() } else { format!(" (`{key}`)") })]
    ConfigEnv {
        /// The variable, e.g. `CALCPLUG_ISOLATION_CALL_TIMEOUT`.
        var: String,
        /// The dotted key it sets, e.g. `isolation.call_timeout` (empty when there is none).
        key: String,
        /// What is wrong.
        message: String,
    },

    /// Another library claims the same plugin name with a higher version; this one is not used.
    #[error("plugin `{name}` {version} is shadowed by {winner_version} from {}", winner_path.display())]
    Shadowed {
        /// The plugin name both claim.
        name: String,
        /// This library's plugin version.
        version: Version,
        /// The library that serves the name.
        winner_path: PathBuf,
        /// Its plugin version (boxed to keep `Error` small).
        winner_version: Box<Version>,
    },

    /// The plugin manager is shutting down (or has): the call was refused before reaching the
    /// plugin.
    #[error("{plugin}: {op}: refused: the plugin manager is shutting down")]
    ShuttingDown {
        /// The plugin called.
        plugin: String,
        /// The operation called.
        op: &'static str,
    },

    /// The plugin is not serving calls (its `initialize` failed, or it is still starting).
    #[error("{plugin}: {op}: refused: the plugin is {state}")]
    NotServing {
        /// The plugin called.
        plugin: String,
        /// The operation called.
        op: &'static str,
        /// Its state.
        state: LifecycleState,
    },

    /// An out-of-process plugin whose runner was stopped on purpose
    /// ([`RemotePlugin::stop`](crate::remote::RemotePlugin::stop)) was called.
    #[error("{plugin}: its runner was stopped (the plugin was replaced or shut down)")]
    Stopped {
        /// The plugin called.
        plugin: String,
    },

    /// Waiting for calls in flight took longer than the configured timeout.
    #[error(
        "{plugin}: timed out after {waited:?} waiting for {in_flight} call(s) in flight to finish"
    )]
    Timeout {
        /// The plugin waited for.
        plugin: String,
        /// How long the manager waited.
        waited: Duration,
        /// How many calls were still running.
        in_flight: u64,
    },

    /// A lifecycle transition the state machine does not allow.
    #[error("{plugin}: illegal state transition {from} -> {to}")]
    IllegalTransition {
        /// The plugin.
        plugin: String,
        /// The state it was in.
        from: LifecycleState,
        /// The state asked for.
        to: LifecycleState,
    },

    /// A directory could not be watched for changes.
    #[error("cannot watch for changes: {error}")]
    Watch {
        /// The file watcher's error.
        error: Box<notify::Error>,
    },

    /// The runner binary of the out-of-process mode could not be started.
    #[error("cannot start the plugin process {}: {error}", runner.display())]
    Spawn {
        /// The runner binary or plugin executable.
        runner: PathBuf,
        /// The OS error.
        error: io::Error,
    },

    /// The library's I/O runtime, which drives gRPC connections and async calls, could not
    /// start.
    #[error("cannot start calcplug's I/O runtime: {reason}")]
    Runtime {
        /// Why.
        reason: String,
    },

    /// No runner binary was found for the out-of-process mode.
    #[error("no `calcplug-runner` binary found (looked at {}); build it with `cargo build --bin calcplug-runner`, set CALCPLUG_RUNNER or `RemoteOptions::runner`, or call `host::remote::serve_if_runner()` first in `main` to be your own runner", display_paths(looked))]
    RunnerNotFound {
        /// Where it was looked for.
        looked: Vec<PathBuf>,
    },

    /// The runner could not serve the library: it refused it (with the same reasons as an
    /// in-process load), or its handshake failed.
    #[error("out-of-process runner failed: {reason}")]
    RunnerFailed {
        /// What the runner said, or what went wrong with it.
        reason: String,
    },

    /// A plugin executable did not complete go-plugin's handshake: it exited first, printed no
    /// or a garbled handshake line, speaks another protocol or version, or did not answer on the
    /// address it gave.
    #[error("plugin handshake failed: {reason}")]
    PluginHandshake {
        /// What was expected and what was found.
        reason: String,
    },

    /// TLS material that cannot be used (a missing or unreadable PEM file, no certificate or
    /// key in it, a key that does not match), or a TLS setting that cannot work.
    #[error("TLS: {reason}")]
    Tls {
        /// What is wrong.
        reason: String,
    },

    /// A fleet server or endpoint problem: an address that cannot be listened on or reached,
    /// a peer that refused the connection or the TLS handshake (the reason says which).
    #[error("{peer}: {reason}")]
    Fleet {
        /// The address, as given.
        peer: String,
        /// What went wrong.
        reason: String,
    },

    /// The runner serving the plugin died during the call (a crash in the plugin, `kill -9`, …).
    #[error("{plugin}: the plugin's runner process crashed: {status}")]
    PluginCrashed {
        /// The plugin.
        plugin: String,
        /// How it ended: "killed by signal 11 (SIGSEGV)", "exited with code 134", …
        status: String,
    },

    /// An out-of-process call got no answer in time; the runner was killed and will be
    /// restarted.
    #[error("{plugin}: {op}: no answer within {after:?}: the runner was killed")]
    CallTimeout {
        /// The plugin.
        plugin: String,
        /// The operation called.
        op: &'static str,
        /// The call timeout.
        after: Duration,
    },

    /// The runner's answer was not valid on the wire.
    #[error("{plugin}: invalid answer from the runner: {reason}")]
    Wire {
        /// The plugin.
        plugin: String,
        /// What was wrong.
        reason: String,
    },

    /// The runner failed too often recently: calls are refused, and no runner is started,
    /// until a trial runner may start.
    #[error(
        "{plugin}: circuit open: the runner failed {failures} times within {window:?}; next trial in {:.1}s",
        next_trial_in.as_secs_f64()
    )]
    CircuitOpen {
        /// The plugin.
        plugin: String,
        /// Failures within the window.
        failures: usize,
        /// The window.
        window: Duration,
        /// The time left before a call may start a trial runner.
        next_trial_in: Duration,
    },
    /// The library failed an integrity check (allowlist or signature); the path names the
    /// library, or the manifest or signature file at fault.
    #[error("integrity check failed: {reason}")]
    Integrity {
        /// What failed: not listed, digest mismatch, unsigned, bad signature, …
        reason: String,
    },

    /// The library or its directory could be replaced by someone else.
    #[error("insecure: {reason}")]
    InsecurePermissions {
        /// What is wrong and how to fix it.
        reason: String,
    },

    /// The library is a symlink that points outside its plugin directory.
    #[error("refused: a symlink to {}, outside the plugin directory", target.display())]
    SymlinkEscape {
        /// Where it points.
        target: PathBuf,
    },

    /// Loading the library in a probe process failed: it crashed, hung or failed the handshake
    /// there, so it was never mapped into this process.
    #[error("refused by the probe: {reason}")]
    ProbeFailed {
        /// What happened in the probe process.
        reason: String,
    },
}

fn display_paths(paths: &[PathBuf]) -> String {
    let shown: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
    if shown.is_empty() {
        "nowhere".to_owned()
    } else {
        shown.join(", ")
    }
}

fn available_list(available: &[String]) -> String {
    if available.is_empty() {
        " (no plugin was loaded)".to_owned()
    } else {
        format!(" (loaded: {})", available.join(", "))
    }
}

impl Error {
    /// The file the error is about: the library, directory or config file.
    pub fn path(&self) -> Option<&Path> {
        match self {
            Error::WithPath { path, .. } | Error::Config { path, .. } => Some(path),
            _ => None,
        }
    }

    /// The error without the file it is about: what to match on.
    ///
    /// ```
    /// # use host::Error;
    /// let err = host::load("/nonexistent/libbasic.so").unwrap_err();
    /// assert!(matches!(err.without_path(), Error::NotFound));
    /// assert_eq!(err.to_string(), "/nonexistent/libbasic.so: no such file");
    /// ```
    pub fn without_path(&self) -> &Error {
        match self {
            Error::WithPath { err, .. } => err,
            other => other,
        }
    }

    /// This error about `path`: wraps it, or replaces the file it names (the manager loads a
    /// private copy of each library and reports errors against the file the user put in
    /// place).
    pub(crate) fn with_path(self, path: impl Into<PathBuf>) -> Error {
        let path = path.into();
        match self {
            Error::WithPath { err, .. } => Error::WithPath { path, err },
            err => Error::WithPath { path, err: Box::new(err) },
        }
    }

    /// The plugin's error code, for errors a plugin returned.
    pub fn code(&self) -> Option<ErrorCode> {
        match self.without_path() {
            Error::Call { code, .. } | Error::Setup { code, .. } => Some(*code),
            _ => None,
        }
    }

    /// The reason without the path prefix: what `calcplug list` shows next to each file.
    pub fn reason(&self) -> String {
        self.without_path().to_string()
    }

    /// A listing's two columns: what the error is about (the file, or a fleet's targets) and
    /// the reason without it; `None` for an error about neither.
    pub fn place_and_reason(&self) -> (Option<PathBuf>, String) {
        match self.without_path() {
            Error::Fleet { peer, reason } => (Some(PathBuf::from(peer)), reason.clone()),
            _ => (self.path().map(Path::to_owned), self.reason()),
        }
    }
}
