//! `cargo xtask demo`: builds the plugins in release mode and runs `calcplug demo` with them.

use anyhow::Context;

use crate::{display_relative, flags, ChildFailed};

impl flags::Demo {
    pub(crate) fn run(&self) -> anyhow::Result<()> {
        flags::BuildPlugins { release: true, fixtures: false, sign: None }.run()?;

        let root = xtask::try_workspace_root()?;
        let dir = xtask::plugin_dir(&xtask::target_directory(root)?, true);
        let mut command = xtask::cargo_command(root);
        command
            // The README's own command, so the calcplug it builds is the one the README's next
            // commands run, with no rebuild (`--package host` would resolve features apart).
            .args(["run", "--quiet", "--release", "--bin", "calcplug", "--"])
            .arg("--plugin-dir")
            .arg(&dir)
            .arg("demo");
        let what = format!(
            "cargo run --release --bin calcplug -- --plugin-dir {} demo",
            display_relative(root, &dir)
        );
        let status = command.status().with_context(|| format!("failed to run `{what}`"))?;
        if !status.success() {
            return Err(ChildFailed { what, status }.into());
        }
        Ok(())
    }
}
