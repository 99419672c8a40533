//! `cargo xtask demo`: builds the plugins in release mode and runs `calcplug demo` with them.

use anyhow::Context;

use crate::{display_relative, flags, ChildFailed};

impl flags::Demo {
    pub(crate) fn run(&self) -> anyhow::Result<()> {
        flags::BuildPlugins { release: true, fixtures: false, sign: None }.run()?;

        let root = xtask::workspace_root();
        let dir = xtask::plugin_dir(&root, true);
        let mut command = xtask::cargo_command(&root);
        command
            .args(["run", "--quiet", "--release", "--package", "host", "--bin", "calcplug", "--"])
            .arg("--plugin-dir")
            .arg(&dir)
            .arg("demo");
        let what = format!(
            "cargo run --release -p host --bin calcplug -- --plugin-dir {} demo",
            display_relative(&root, &dir)
        );
        let status = command.status().with_context(|| format!("failed to run `{what}`"))?;
        if !status.success() {
            return Err(ChildFailed { what, status }.into());
        }
        Ok(())
    }
}
