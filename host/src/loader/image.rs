//! A library image for `dlopen` that holds exactly the bytes the caller verified.
//!
//! On Linux it is a sealed `memfd` (no write, grow or shrink once sealed), opened through
//! `/proc/self/fd/N`: nothing on disk can change it between the check and the load. The file
//! descriptor stays open for the life of the process, like the mapping: the dynamic loader
//! recognises an already loaded library by the path string, so if `N` were closed and reused
//! by the next image, `dlopen` would hand back the previous library. Elsewhere
//! it is a read-only copy in a fresh private (0700) directory, removed when the image drops
//! (the mapping outlives the file).

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::Error;

/// The start of a verified image's `memfd` name; the library's file name follows.
#[cfg(target_os = "linux")]
pub(crate) const MEMFD_PREFIX: &str = "calcplug:";

/// The bytes to map, and the path to map them from; valid until dropped.
pub(crate) struct Image {
    path: PathBuf,
    #[cfg(target_os = "linux")]
    file: Option<File>,
    #[cfg(not(target_os = "linux"))]
    dir: tempfile::TempDir,
}

impl Image {
    #[cfg(target_os = "linux")]
    pub(crate) fn new(origin: &Path, bytes: &[u8]) -> Result<Image, Error> {
        use rustix::fs::{fcntl_add_seals, memfd_create, MemfdFlags, SealFlags};
        use std::os::fd::AsRawFd;

        let io = |source: std::io::Error| Error::Io { error: source }.with_path(origin.to_owned());
        // `/proc/PID/maps` shows it as `/memfd:calcplug:libbasic.so (deleted)`: which plugin
        // a mapping holds stays visible (the kernel keeps 249 bytes of a name).
        let file_name = origin.file_name().map_or_else(|| "plugin".into(), |n| n.to_string_lossy());
        let name: String = format!("{MEMFD_PREFIX}{file_name}").chars().take(200).collect();
        let fd = memfd_create(name.as_str(), MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING)
            .map_err(|errno| io(errno.into()))?;
        let mut file = File::from(fd);
        file.write_all(bytes).map_err(io)?;
        fcntl_add_seals(
            &file,
            SealFlags::SHRINK | SealFlags::GROW | SealFlags::WRITE | SealFlags::SEAL,
        )
        .map_err(|errno| io(errno.into()))?;
        let path = PathBuf::from(format!("/proc/self/fd/{}", file.as_raw_fd()));
        Ok(Image { path, file: Some(file) })
    }

    #[cfg(not(target_os = "linux"))]
    pub(crate) fn new(origin: &Path, bytes: &[u8]) -> Result<Image, Error> {
        let io = |source: std::io::Error| Error::Io { error: source }.with_path(origin.to_owned());
        let dir = tempfile::Builder::new().prefix("calcplug-image-").tempdir().map_err(io)?;
        let name = origin.file_name().unwrap_or_else(|| std::ffi::OsStr::new("plugin"));
        let path = dir.path().join(name);
        let mut file = File::create(&path).map_err(io)?;
        file.write_all(bytes).map_err(io)?;
        let mut permissions = file.metadata().map_err(io)?.permissions();
        permissions.set_readonly(true);
        file.set_permissions(permissions).map_err(io)?;
        Ok(Image { path, dir })
    }

    /// The path `dlopen` should open.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(target_os = "linux")]
impl Drop for Image {
    fn drop(&mut self) {
        // Never close the descriptor: see the module documentation.
        if let Some(file) = self.file.take() {
            std::mem::forget(file);
        }
    }
}
