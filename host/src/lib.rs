//! The calcplug host: loads Calculator plugin libraries, checks them and calls them.
//!
//! ```no_run
//! use interface::Config;
//!
//! let plugin = host::load("target/plugins/release/libbasic.so")?;
//! plugin.initialize(&Config::new().with("precision", "4"))?;
//! assert_eq!(plugin.divide(2.0, 3.0)?, 0.6667);
//! plugin.shutdown()?;
//! # Ok::<(), host::Error>(())
//! ```
//!
//! [`load`] runs every check (file, format, abi_stable layout and version, magic cookie,
//! protocol version, interface semver) before the first call and fails with a typed [`Error`]
//! naming the file; [`discover`] loads a whole directory and keeps going past bad files.
//! [`PluginManager`] runs many plugins by name from a [`ManagerConfig`] (`calcplug.toml`): a
//! lifecycle state machine, metrics, hot reload and a graceful shutdown.
//!
//! **Architecture Invariant:** this crate's `unsafe` lives in two files, `loader/ffi.rs` (every
//! library mapping) and `manager/generations.rs` (one dereference on the call path); ARCHITECTURE.md
//! says why, and a tidy test keeps the two lists equal.

#![warn(missing_docs)]
#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

// The out-of-process mode (Unix sockets, signals, `argv[0]`), file ownership checks and the
// loader's flags are written for Unix; there is no other build to keep half-working.
#[cfg(not(unix))]
compile_error!("calcplug's host supports Unix (Linux and macOS) only for now");

mod asynchronous;
mod config;
mod discovery;
mod error;
pub mod fleet;
#[cfg(test)]
mod fuzz;
mod handle;
mod identity;
mod lifecycle;
mod loader;
mod manager;
mod plugin;
pub mod reference;
pub mod remote;
pub mod security;

pub use asynchronous::{AsyncHandle, BlockingHandle, Call};
pub use discovery::{discover, discover_with, library_files, plugin_executables, Found};
pub use error::Error;
pub use handle::{CallFuture, PluginHandle};
pub use identity::{Extension, Identity};
pub use loader::{
    host_interface_version, interface_compatible, load, load_builtin, LIBRARY_SUFFIX,
};
pub use plugin::Plugin;
pub use security::{load_with, Enforcement, LoadPolicy, Manifest, TrustedKey};

pub use config::{
    IsolationConfig, ManagerConfig, Mode, PanicPolicy, PluginCommand, RetryPolicy, SecurityConfig,
    CONFIG_FILE_NAME,
};
pub use manager::{
    FileProblem, Handle, Health, Latency, LifecycleState, ManagerStatus, OpMetrics, PluginManager,
    PluginStatus, ScanReport, ShutdownReport, StateMachine,
};

/// The plugin-facing types hosts also use.
pub use interface::{
    AngleUnit, BatchOp, BatchResult, CalcError, Config, ErrorCode, Metadata, Op, PluginState,
    Status,
};
