//! `cargo xtask ci`: runs the same checks as CI, in the same order; and `cargo xtask test`, the
//! whole test suite.

use anyhow::Context;

use crate::{flags, ChildFailed};

/// A cargo invocation: its arguments and its extra environment.
type Step = (&'static [&'static str], &'static [(&'static str, &'static str)]);

/// The cargo invocations CI runs, in order. `.ci/run` runs the same list.
const STEPS: &[Step] = &[
    (&["xtask", "test"], &[]),
    (&["fmt", "--all", "--check"], &[]),
    (&["clippy", "--workspace", "--all-targets", "--", "-D", "warnings"], &[]),
    (&["doc", "--workspace", "--all-features", "--no-deps"], &[("RUSTDOCFLAGS", "-D warnings")]),
];

impl flags::Ci {
    pub(crate) fn run(&self) -> anyhow::Result<()> {
        run_steps(STEPS)
    }
}

impl flags::Test {
    pub(crate) fn run(&self) -> anyhow::Result<()> {
        // The gRPC interop tests run real go-plugin peers. Install them when missing (CI runs
        // as root on a fresh machine); if that cannot be done, those tests fail saying what is
        // missing.
        let missing = xtask::peers::install_go_peers()?;
        if !missing.is_empty() {
            eprintln!("==> warning: {}", xtask::peers::go_install_hint(&missing));
        }
        let root = xtask::try_workspace_root()?;
        let python = root.join("target").join("test-artifacts").join("python");
        if let Err(err) = xtask::peers::build_python_peer(root, &python) {
            eprintln!("==> warning: the Python plugin cannot be set up: {err:#}");
        }
        run_steps(&[
            (&["test", "--workspace"], &[]),
            // A bare test-name filter makes cargo build and run every library's test harness,
            // `test = false` or not: that must not crash (it once ran a fixture's constructor).
            // The filter matches no test, so nothing the first step ran runs again.
            (&["test", "--workspace", NO_TEST], &[]),
        ])?;
        flags::WalkReadme {}.run()
    }
}

/// A test-name filter that matches no test.
const NO_TEST: &str = "no-test-is-named-this";

fn run_steps(steps: &[Step]) -> anyhow::Result<()> {
    let root = xtask::try_workspace_root()?;
    for (index, (args, env)) in steps.iter().enumerate() {
        let what = format!("cargo {}", args.join(" "));
        eprintln!("==> [{}/{}] {what}", index + 1, steps.len());
        let status = xtask::cargo_command(root)
            .args(args.iter())
            .envs(env.iter().copied())
            .status()
            .with_context(|| format!("failed to run `{what}`"))?;
        if !status.success() {
            return Err(ChildFailed { what, status }.into());
        }
    }
    eprintln!("==> all {} steps passed", steps.len());
    Ok(())
}
