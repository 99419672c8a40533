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
}

/// Build the plugins in release mode and run `calcplug demo` with them.
#[derive(Debug, Args)]
pub(crate) struct Demo {}

/// Run the checks CI runs: tests, formatting and clippy, stopping at the first failure.
#[derive(Debug, Args)]
pub(crate) struct Ci {}

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
}
