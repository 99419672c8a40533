//! Finding plugin libraries in directories and loading each one, keeping going past bad files.

use std::fs;
use std::path::{Path, PathBuf};

use crate::loader::LIBRARY_SUFFIX;
use crate::security::LoadPolicy;
use crate::{Error, Plugin};

/// What became of one library file (or one unreadable directory) found during a scan.
#[derive(Debug)]
pub struct Found {
    /// The file (or directory) concerned.
    pub path: PathBuf,
    /// The loaded plugin, or why it was refused.
    pub outcome: Result<Plugin, Error>,
}

/// The library files in `dir`: entries whose name ends in this platform's library suffix,
/// sorted by name. Directories and other non-files named like libraries are included, so that
/// loading them reports what they are.
///
/// # Errors
///
/// [`Error::NotFound`] or [`Error::Io`] if the directory cannot be listed.
pub fn library_files(dir: &Path) -> Result<Vec<PathBuf>, Error> {
    let entries = fs::read_dir(dir).map_err(|source| {
        if source.kind() == std::io::ErrorKind::NotFound {
            Error::NotFound.with_path(dir.to_owned())
        } else {
            Error::Io { error: source }.with_path(dir.to_owned())
        }
    })?;
    let mut files = Vec::new();
    for entry in entries {
        let entry =
            entry.map_err(|source| Error::Io { error: source }.with_path(dir.to_owned()))?;
        let name = entry.file_name();
        let is_library = name.to_str().is_some_and(|name| {
            name.len() > LIBRARY_SUFFIX.len() && name.ends_with(LIBRARY_SUFFIX)
        });
        if is_library {
            files.push(entry.path());
        } else {
            tracing::debug!(path = %entry.path().display(), "skipped: not named like a library");
        }
    }
    files.sort();
    Ok(files)
}

/// The plugin executables in `dir`: regular files that anyone may execute, not named like a
/// library and not hidden, sorted by name. They speak go-plugin's gRPC protocol;
/// [`RemotePlugin::spawn`](crate::remote::RemotePlugin::spawn) starts one.
///
/// # Errors
///
/// [`Error::NotFound`] or [`Error::Io`] if the directory cannot be listed.
pub fn plugin_executables(dir: &Path) -> Result<Vec<PathBuf>, Error> {
    use std::os::unix::fs::PermissionsExt;
    let entries = fs::read_dir(dir).map_err(|source| {
        if source.kind() == std::io::ErrorKind::NotFound {
            Error::NotFound.with_path(dir.to_owned())
        } else {
            Error::Io { error: source }.with_path(dir.to_owned())
        }
    })?;
    let mut files = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.starts_with('.') || name.ends_with(LIBRARY_SUFFIX) {
            continue;
        }
        let Ok(meta) = fs::metadata(entry.path()) else { continue };
        if meta.is_file() && meta.permissions().mode() & 0o111 == 0o111 {
            files.push(entry.path());
        }
    }
    files.sort();
    Ok(files)
}

/// Loads every library in each of `dirs`, in order.
///
/// A directory that cannot be listed or a library that is refused becomes a `Found` with an
/// error; it never stops the scan.
pub fn discover(dirs: &[PathBuf]) -> Vec<Found> {
    discover_with(dirs, &LoadPolicy::development())
}

/// [`discover`], loading each library with [`load_with`](crate::security::load_with) under
/// `policy`.
pub fn discover_with(dirs: &[PathBuf], policy: &LoadPolicy) -> Vec<Found> {
    let mut found = Vec::new();
    for dir in dirs {
        let _span = tracing::info_span!("discover", dir = %dir.display()).entered();
        match library_files(dir) {
            Ok(files) => {
                for path in files {
                    let outcome = crate::security::load_with(&path, policy);
                    if let Err(err) = &outcome {
                        tracing::warn!(error = %err, "refused");
                    }
                    found.push(Found { path, outcome });
                }
            }
            Err(err) => {
                tracing::warn!(error = %err, "cannot scan");
                found.push(Found { path: dir.clone(), outcome: Err(err) });
            }
        }
    }
    found
}
