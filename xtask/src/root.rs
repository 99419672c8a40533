//! `cargo xtask root`: prints the root of the workspace that the other tasks work in.

use crate::flags;

impl flags::Root {
    pub(crate) fn run(&self) -> anyhow::Result<()> {
        println!("{}", xtask::try_workspace_root()?.display());
        Ok(())
    }
}
