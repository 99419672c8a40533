//! Copying built plugin libraries into a plugin directory without disturbing running hosts.
//!
//! A host that has a plugin loaded has the library file mapped into memory. Overwriting that file
//! in place truncates it first, and touching a page of a truncated mapping kills the host with
//! `SIGBUS`. So each library is copied to a temporary file in the destination directory and then
//! renamed over the old one: the rename swaps the directory entry atomically, and the running host
//! keeps its mapping of the old, unlinked file.

use std::{
    fs,
    path::{Path, PathBuf},
};

use anyhow::Context;

use crate::{Artifact, ArtifactKind};

/// Copies every [`ArtifactKind::Cdylib`] in `artifacts` into `dir` under its own file name and
/// returns the destination paths, in the order of `artifacts`.
///
/// `dir` and its parents are created if missing. Other artifacts are skipped. Each destination is
/// replaced by a `rename` from a temporary file in `dir`, never written in place, so a process that
/// has the old library loaded keeps working.
///
/// # Errors
///
/// Fails if `dir` cannot be created, or if a library cannot be copied or renamed; the message
/// names the file. Libraries installed before the failure stay installed.
///
/// # Platform-specific behaviour
///
/// On Windows a loaded `.dll` cannot be replaced, so the rename fails while a host has it loaded.
pub fn install(artifacts: &[Artifact], dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    fs::create_dir_all(dir)
        .with_context(|| format!("{}: failed to create directory", dir.display()))?;
    let mut installed = Vec::new();
    for artifact in artifacts.iter().filter(|artifact| artifact.kind == ArtifactKind::Cdylib) {
        installed.push(install_one(&artifact.path, dir)?);
    }
    Ok(installed)
}

fn install_one(source: &Path, dir: &Path) -> anyhow::Result<PathBuf> {
    let Some(file_name) = source.file_name() else {
        anyhow::bail!("{}: library path has no file name", source.display());
    };
    let destination = dir.join(file_name);

    // The temporary name starts with a dot and carries the process id, so a plugin scan never
    // mistakes it for a library and two concurrent installs never share it.
    let mut temp_name = std::ffi::OsString::from(".");
    temp_name.push(file_name);
    temp_name.push(format!(".{}.tmp", std::process::id()));
    let temp = dir.join(temp_name);

    let result = fs::copy(source, &temp)
        .with_context(|| format!("{}: failed to copy to {}", source.display(), temp.display()))
        .and_then(|_| {
            fs::rename(&temp, &destination).with_context(|| {
                format!("{}: failed to replace with {}", destination.display(), temp.display())
            })
        });
    if result.is_err() {
        // Best effort: the original error is the one worth reporting.
        let _ = fs::remove_file(&temp);
    }
    result.map(|()| destination)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A scratch directory under the system temp directory, removed on drop.
    struct Scratch(PathBuf);

    impl Scratch {
        fn new(name: &str) -> Scratch {
            let path =
                std::env::temp_dir().join(format!("xtask-install-{name}-{}", std::process::id()));
            let _ = fs::remove_dir_all(&path);
            fs::create_dir_all(&path).unwrap();
            Scratch(path)
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn artifact(kind: ArtifactKind, path: PathBuf) -> Artifact {
        Artifact { package: "basic".to_owned(), kind, path }
    }

    #[test]
    fn installs_cdylibs_by_replacing_the_file() {
        let scratch = Scratch::new("replace");
        let lib_name = format!("libbasic{}", std::env::consts::DLL_SUFFIX);
        let source = scratch.0.join(&lib_name);
        let bin = scratch.0.join("calcplug");
        fs::write(&source, "first").unwrap();
        fs::write(&bin, "binary").unwrap();
        let artifacts =
            [artifact(ArtifactKind::Bin, bin), artifact(ArtifactKind::Cdylib, source.clone())];
        let dir = scratch.0.join("plugins").join("debug");

        let installed = install(&artifacts, &dir).unwrap();
        assert_eq!(installed, [dir.join(&lib_name)]);
        assert_eq!(fs::read_to_string(&installed[0]).unwrap(), "first");

        // Keep a handle on the installed file, as a host that mapped it would. Windows refuses to
        // replace an open file, so the handle is only kept elsewhere.
        let old = if cfg!(unix) { Some(fs::File::open(&installed[0]).unwrap()) } else { None };
        fs::write(&source, "second, longer").unwrap();
        let again = install(&artifacts, &dir).unwrap();
        assert_eq!(again, installed);
        assert_eq!(fs::read_to_string(&again[0]).unwrap(), "second, longer");
        // The old file was replaced, not truncated and rewritten: its handle still sees the old
        // contents.
        if let Some(old) = old {
            assert_eq!(old.metadata().unwrap().len(), "first".len() as u64);
        }

        let entries: Vec<_> = fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(entries, [std::ffi::OsString::from(&lib_name)], "no temporary files are left");
    }

    #[test]
    fn reports_missing_source() {
        let scratch = Scratch::new("missing");
        let source = scratch.0.join("libgone.so");
        let error =
            install(&[artifact(ArtifactKind::Cdylib, source.clone())], &scratch.0).unwrap_err();
        assert!(error.to_string().starts_with(&source.display().to_string()), "{error:#}");
    }
}
