//! `cargo xtask ci`: runs the same checks as CI, in the same order.

use anyhow::Context;

use crate::{flags, ChildFailed};

/// The cargo invocations CI runs, in order.
const STEPS: &[&[&str]] = &[
    &["test", "--workspace"],
    &["fmt", "--all", "--check"],
    &["clippy", "--workspace", "--all-targets", "--", "-D", "warnings"],
];

impl flags::Ci {
    pub(crate) fn run(&self) -> anyhow::Result<()> {
        let root = xtask::workspace_root();
        for (index, args) in STEPS.iter().enumerate() {
            let what = format!("cargo {}", args.join(" "));
            eprintln!("==> [{}/{}] {what}", index + 1, STEPS.len());
            let status = xtask::cargo_command(&root)
                .args(args.iter())
                .status()
                .with_context(|| format!("failed to run `{what}`"))?;
            if !status.success() {
                return Err(ChildFailed { what, status }.into());
            }
        }
        eprintln!("==> all {} CI steps passed", STEPS.len());
        Ok(())
    }
}
