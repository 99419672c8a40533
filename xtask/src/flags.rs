//! Command-line flags of `cargo xtask`, declared in one place.
//!
//! Each command struct gets its `run` method in the module named after it.

use clap::{Args, Parser, Subcommand};

/// Automation for the calcplug workspace.
#[derive(Debug, Parser)]
#[command(name = "cargo xtask", bin_name = "cargo xtask")]
pub(crate) struct Xtask {
    #[command(subcommand)]
    pub(crate) subcommand: XtaskCmd,
}

#[derive(Debug, Subcommand)]
pub(crate) enum XtaskCmd {
    BuildPlugins(BuildPlugins),
    Demo(Demo),
    Ci(Ci),
    Test(Test),
    WalkReadme(WalkReadme),
    BenchReport(BenchReport),
    Keygen(Keygen),
    Sign(Sign),
    Manifest(Manifest),
    Root(Root),
}

/// Build every plugin crate and install the libraries into target/plugins/<profile>/.
#[derive(Debug, Args)]
pub(crate) struct BuildPlugins {
    /// Build with the release profile and install into target/plugins/release/.
    #[arg(long)]
    pub(crate) release: bool,
    /// Also build the fixture plugins under tests/fixtures/ into target/plugins/<profile>/fixtures/.
    #[arg(long)]
    pub(crate) fixtures: bool,
    /// Sign each installed plugin with this secret key (see `keygen`), writing `<library>.sig`.
    #[arg(long, value_name = "KEY")]
    pub(crate) sign: Option<std::path::PathBuf>,
}

/// Generate an ed25519 key pair for signing plugins: `<name>.key` (secret, mode 0600) and
/// `<name>.pub` (the value for `[security] trusted_keys`).
#[derive(Debug, Args)]
pub(crate) struct Keygen {
    /// The directory to write the keys into.
    #[arg(long, default_value = "target/keys")]
    pub(crate) out: std::path::PathBuf,
    /// The key files' base name.
    #[arg(long, default_value = "calcplug-signing")]
    pub(crate) name: String,
}

/// Sign plugin libraries: writes a detached `<library>.sig` beside each.
#[derive(Debug, Args)]
pub(crate) struct Sign {
    /// The secret key file written by `keygen`.
    #[arg(long, value_name = "KEY")]
    pub(crate) key: std::path::PathBuf,
    /// The libraries to sign.
    #[arg(required = true)]
    pub(crate) libraries: Vec<std::path::PathBuf>,
}

/// Write a SHA-256 allowlist (`sha256sum` format) of the libraries in a directory, for
/// `[security] manifest`.
#[derive(Debug, Args)]
pub(crate) struct Manifest {
    /// The plugin directory.
    pub(crate) dir: std::path::PathBuf,
    /// Where to write it (default: `SHA256SUMS` in the directory).
    #[arg(long)]
    pub(crate) out: Option<std::path::PathBuf>,
}

/// Print the root of the workspace the tasks work in: the cargo workspace around the current
/// directory, found when the task runs.
#[derive(Debug, Args)]
pub(crate) struct Root {}

/// Build the plugins in release mode and run `calcplug demo` with them.
#[derive(Debug, Args)]
pub(crate) struct Demo {}

/// Run the checks CI runs: tests, formatting and clippy, stopping at the first failure.
#[derive(Debug, Args)]
pub(crate) struct Ci {}

/// The whole test suite, the README's test command: `cargo test --workspace`, the same with a
/// bare filter that matches no test (every test harness starts, none runs a test again), then `walk-readme`.
#[derive(Debug, Args)]
pub(crate) struct Test {}

/// Run README.md's commands exactly as written on fresh copies of the repository, with the
/// default target directory and with `CARGO_TARGET_DIR` set, and check what each prints.
#[derive(Debug, Args)]
pub(crate) struct WalkReadme {}

/// Run the benchmarks (`cargo bench -p host --bench calls`) and write BENCHMARKS.md with its
/// charts in benchmarks/.
#[derive(Debug, Args)]
pub(crate) struct BenchReport {
    /// Short measurements: the whole run, build included, takes a few minutes on 2 cores.
    #[arg(long)]
    pub(crate) quick: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_are_consistent() {
        use clap::CommandFactory;
        Xtask::command().debug_assert();
    }

    #[test]
    fn parses_build_plugins() {
        let flags = Xtask::try_parse_from(["xtask", "build-plugins", "--release", "--fixtures"]);
        let Ok(Xtask { subcommand: XtaskCmd::BuildPlugins(cmd) }) = flags else {
            panic!("unexpected parse result: {flags:?}");
        };
        assert!(cmd.release && cmd.fixtures);
    }

    #[test]
    fn parses_bench_report() {
        let flags = Xtask::try_parse_from(["xtask", "bench-report", "--quick"]);
        let Ok(Xtask { subcommand: XtaskCmd::BenchReport(cmd) }) = flags else {
            panic!("unexpected parse result: {flags:?}");
        };
        assert!(cmd.quick);
    }
}
