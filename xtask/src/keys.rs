//! `cargo xtask keygen`, `sign` and `manifest`: the files the host's `[security]` checks use.

use anyhow::Context;

use crate::{build_plugins::installed_libraries, display_relative, flags};

impl flags::Keygen {
    pub(crate) fn run(&self) -> anyhow::Result<()> {
        let root = xtask::try_workspace_root()?;
        let dir = if self.out.is_absolute() { self.out.clone() } else { root.join(&self.out) };
        let keys = xtask::signing::keygen(&dir, &self.name)?;
        println!("secret key  {} (keep it private)", display_relative(root, &keys.secret));
        println!("public key  {}", display_relative(root, &keys.public));
        println!();
        println!("trust it in calcplug.toml:");
        println!("[security]");
        println!("integrity = \"enforce\"");
        println!("trusted_keys = [\"{}\"]", keys.public_hex);
        Ok(())
    }
}

impl flags::Sign {
    pub(crate) fn run(&self) -> anyhow::Result<()> {
        let key = xtask::signing::read_secret_key(&self.key)?;
        for library in &self.libraries {
            let sig = xtask::signing::sign(&key, library)?;
            println!("signed {}", sig.display());
        }
        Ok(())
    }
}

impl flags::Manifest {
    pub(crate) fn run(&self) -> anyhow::Result<()> {
        let libraries = installed_libraries(&self.dir)
            .with_context(|| format!("cannot list {}", self.dir.display()))?;
        let text = xtask::signing::manifest(&libraries)?;
        let out = self.out.clone().unwrap_or_else(|| self.dir.join("SHA256SUMS"));
        std::fs::write(&out, &text).with_context(|| format!("cannot write {}", out.display()))?;
        print!("{text}");
        println!("wrote {} ({} libraries)", out.display(), libraries.len());
        Ok(())
    }
}
