//! calcplug's integration tests: one binary, real plugin libraries built from this workspace.
//!
//! The first test to need a library builds every plugin, fixture and the CLI once
//! (see the `tests` support crate); nothing here mocks the loader.

/// Loading and handshake: what loads, and every way a library is refused.
mod load;

/// Hosts and plugins built against different interface versions (the frozen 1.0 in
/// `tests/compat` and the live one).
mod compat_matrix;

/// Calls into a loaded plugin: every operation, every error code, the lifecycle, threads, batches.
mod calls;

/// Plugins that panic or fail: the host turns it into errors and keeps serving.
mod panics;

/// The out-of-process mode: conformance in both modes, crashes, hangs, kills, hostile bytes.
mod ipc;

/// The shared-memory channel to runners: used, equal to the socket, safe from its runner.
mod lanes;

mod grpc;

mod proto_evolution;

/// Runners killed now and then, or in a storm, under four calling threads: no lost call, and
/// the circuit breaker opening and closing.
mod supervision;

/// `calcplug serve` and hosts calling it over the network: mutual TLS, refusals, the drain.
mod fleet;

/// Every backend called through the blocking API from inside a tokio runtime of each flavour.
mod runtimes;

/// Integrity checks, permissions, symlinks, probe-before-load, a corpus of hostile files.
mod security;

/// The `calcplug` binary, run as a user would.
mod cli;

/// The CLI honouring its config: executables, `[isolation]`, exit codes, numbers.
mod cli_config;

/// What the README promises of the CLI that no other module covers.
mod readme_claims;

/// Every fenced block of the README checked, or marked with why not.
mod readme_blocks;

/// House rules over the sources (module docs, `unsafe`, printing, test attributes, docs).
mod tidy;

/// Helpers shared by the modules above.
mod util;

/// The plugin manager: discovery, lifecycle, metrics, retries, shutdown, hot reload, config, CLI.
mod manager;
