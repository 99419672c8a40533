//! The calcplug task runner, following the cargo-xtask convention: a plain workspace binary that
//! `.cargo/config.toml` makes available as `cargo xtask <task>`, so automation needs nothing but
//! cargo and runs the same on every platform.
//!
//! Tasks:
//!
//! - `cargo xtask build-plugins [--release] [--fixtures]` builds every crate under `plugins/` and
//!   installs its library into `target/plugins/<profile>/`. With `--fixtures` it also builds the
//!   deliberately broken plugins under `tests/fixtures/` into `target/plugins/<profile>/fixtures/`.
//! - `cargo xtask demo` runs `build-plugins --release`, then `calcplug demo` against the installed
//!   plugins, and exits with the demo's status.
//! - `cargo xtask test` is the whole test suite: `cargo test --workspace`, then
//!   `cargo test --workspace compat` (a bare filter builds every library's test harness), then
//!   `walk-readme`.
//! - `cargo xtask walk-readme` runs the README's commands as written on fresh copies of the
//!   repository, with the default target directory and with `CARGO_TARGET_DIR` set.
//! - `cargo xtask ci` runs what CI runs, in order: `cargo xtask test`, `cargo fmt --all --check`,
//!   `cargo clippy --workspace --all-targets -- -D warnings` and the docs with `-D warnings`.
//! - `cargo xtask bench-report [--quick]` runs the benchmarks (`host/benches/calls/main.rs`) and writes
//!   `BENCHMARKS.md` with its charts in `benchmarks/`.
//!
//! - `cargo xtask keygen`, `cargo xtask sign --key KEY LIB...`, `cargo xtask manifest DIR` make
//!   the keys, signatures and SHA-256 allowlist the host's `[security]` checks use;
//!   `build-plugins --sign KEY` signs what it installs.
//! - `cargo xtask root` prints the workspace root the tasks work in.
//!
//! The tasks work in the cargo workspace around the current directory (`cargo run` keeps the
//! caller's), found at run time: `xtask::try_workspace_root` says why not at compile time.
//!
//! The shared logic lives in the `xtask` library, which returns data; this binary prints it.

#![allow(clippy::print_stdout, clippy::print_stderr)]

mod bench_report;
mod build_plugins;
mod ci;
mod demo;
mod flags;
mod keys;
mod root;
mod walk_readme;

use std::{fmt, path::Path, process::ExitCode, process::ExitStatus};

use clap::Parser;

fn main() -> ExitCode {
    let flags = flags::Xtask::parse();
    let result = match &flags.subcommand {
        flags::XtaskCmd::BuildPlugins(cmd) => cmd.run(),
        flags::XtaskCmd::Demo(cmd) => cmd.run(),
        flags::XtaskCmd::Ci(cmd) => cmd.run(),
        flags::XtaskCmd::Test(cmd) => cmd.run(),
        flags::XtaskCmd::WalkReadme(cmd) => cmd.run(),
        flags::XtaskCmd::BenchReport(cmd) => cmd.run(),
        flags::XtaskCmd::Keygen(cmd) => cmd.run(),
        flags::XtaskCmd::Sign(cmd) => cmd.run(),
        flags::XtaskCmd::Manifest(cmd) => cmd.run(),
        flags::XtaskCmd::Root(cmd) => cmd.run(),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            // A failed child process passes its exit code on, so scripts see the demo's status.
            let code = error
                .downcast_ref::<ChildFailed>()
                .and_then(|failed| failed.status.code())
                .and_then(|code| u8::try_from(code).ok())
                .filter(|&code| code != 0)
                .unwrap_or(1);
            ExitCode::from(code)
        }
    }
}

/// The error of a child process that exited unsuccessfully.
#[derive(Debug)]
struct ChildFailed {
    /// The command, as shown to the user.
    what: String,
    status: ExitStatus,
}

impl fmt::Display for ChildFailed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "`{}` failed ({})", self.what, self.status)
    }
}

impl std::error::Error for ChildFailed {}

/// Returns `path` relative to `root` when it is inside `root`, for shorter output.
fn display_relative<'a>(root: &Path, path: &'a Path) -> std::path::Display<'a> {
    path.strip_prefix(root).unwrap_or(path).display()
}
