//! From a path to a callable [`Plugin`]: every check a library must pass, in order.
//!
//! 1. The path exists and is a regular file with this platform's library suffix.
//! 2. Its contents are a complete dynamic library for this platform and architecture (read from
//!    the file's headers, before the system loader maps anything: a truncated copy would
//!    otherwise kill the process with `SIGBUS` inside `dlopen`).
//! 3. It maps, and exports an abi_stable root module with a compatible abi_stable header.
//! 4. abi_stable's checks: the interface major version, then the root module's type layout.
//! 5. The handshake: magic cookie, protocol version, interface semver.
//! 6. A plugin instance is created and its metadata read and validated.
//!
//! Each step fails with its own [`Error`] variant naming the file.

mod ffi;
mod image;

use std::fs::{self, File};
use std::path::{Path, PathBuf};

use interface::ffi::{CalculatorModRef, Handshake};
use interface::{MAGIC_COOKIE_KEY, MAGIC_COOKIE_VALUE, PROTOCOL_VERSION};
use object::read::ReadCache;
use object::{Object, ObjectSegment};
use semver::Version;

use crate::{Error, Plugin};

pub(crate) use ffi::Instance;

/// This platform's dynamic library suffix, with its dot: `.so`, `.dylib` or `.dll`.
pub const LIBRARY_SUFFIX: &str = std::env::consts::DLL_SUFFIX;

/// Loads the plugin library at `path`, checks it and creates an instance of the plugin.
///
/// The instance is not initialized yet: call [`Plugin::initialize`] before calculating.
///
/// # Errors
///
/// One [`Error`] variant per failed check (see the module documentation); each names the file.
///
/// # Platform-specific behaviour
///
/// A library, once mapped, stays mapped until the process exits (see ARCHITECTURE.md); loading
/// the same path again creates a new instance of the already mapped library.
pub fn load(path: impl AsRef<Path>) -> Result<Plugin, Error> {
    load_path(path.as_ref())
}

/// Creates an instance of plugin type `T` compiled into this binary, called through the same
/// root module and checks (handshake, metadata) as a library, just without a file: for a host
/// that ships a plugin built in, for tests, and for the benchmarks' floor of a plugin call.
///
/// Its [`Identity::path`](crate::Identity::path) is `<built-in NAME>`, `NAME` being `T`'s type name.
///
/// # Errors
///
/// [`Error::Setup`] if `new_instance` or `metadata` fail, [`Error::BadMetadata`] for metadata
/// that does not pass the checks a library's does.
pub fn load_builtin<T: interface::plugin::Calculator + Default>() -> Result<Plugin, Error> {
    let path = PathBuf::from(format!("<built-in {}>", std::any::type_name::<T>()));
    let module = interface::plugin::root_module::<T>();
    let host_version = host_interface_version();
    let verified = handshake(&path, module, &host_version)?;
    Plugin::new(path, verified, host_version)
}

pub(crate) fn load_path(path: &Path) -> Result<Plugin, Error> {
    let _span = tracing::info_span!("load", path = %path.display()).entered();
    let path = inspect_file(path)?;
    let file =
        File::open(&path).map_err(|source| Error::Io { error: source }.with_path(path.clone()))?;
    let len = file
        .metadata()
        .map_err(|source| Error::Io { error: source }.with_path(path.clone()))?
        .len();
    check_format(&path, &ReadCache::new(file), len)?;
    let header = ffi::open(&path, &path)?;
    finish_load(path, header)
}

/// Loads a library from `bytes` already read from `path` (and verified by the caller): the
/// checks run on the bytes, and the bytes are what gets mapped, from a sealed in-memory file.
pub(crate) fn load_bytes(path: &Path, bytes: Vec<u8>) -> Result<Plugin, Error> {
    let _span = tracing::info_span!("load", path = %path.display(), from = "memory").entered();
    let path = inspect_file(path)?;
    check_format(&path, bytes.as_slice(), bytes.len() as u64)?;
    let image = image::Image::new(&path, &bytes)?;
    let header = ffi::open(&path, image.path())?;
    drop(image);
    finish_load(path, header)
}

fn finish_load(
    path: PathBuf,
    header: &'static abi_stable::library::LibHeader,
) -> Result<Plugin, Error> {
    let host_version = host_interface_version();
    let found = ffi::interface_version(&path, header)?;
    // abi_stable compares major versions too, but reports them without the file: check first.
    if !interface_compatible(&host_version, &found) {
        return Err(Error::IncompatibleVersion { host: host_version, found }.with_path(path));
    }
    let module = ffi::root_module(&path, header, &host_version, &found)?;
    let verified = handshake(&path, module, &host_version)?;
    tracing::debug!(interface = %found, "handshake passed");
    Plugin::new(path, verified, found)
}

/// A root module that passed every load check; only [`handshake`] creates one.
pub(crate) struct VerifiedModule {
    module: CalculatorModRef,
}

/// The interface version this host was built against.
pub fn host_interface_version() -> Version {
    // The interface crate's own version is always valid semver; cargo refuses anything else.
    Version::parse(interface::INTERFACE_VERSION).unwrap_or_else(|_| Version::new(0, 0, 0))
}

/// Whether a host built against interface `host` can use a plugin built against `plugin`.
///
/// Within a major version ≥ 1 any minor version works both ways: a newer plugin's extra root
/// module fields are ignored, an older plugin's missing ones read as absent. Before 1.0 every
/// minor version is a breaking one.
pub fn interface_compatible(host: &Version, plugin: &Version) -> bool {
    if host.major == 0 {
        plugin.major == 0 && plugin.minor == host.minor
    } else {
        plugin.major == host.major
    }
}

fn inspect_file(path: &Path) -> Result<PathBuf, Error> {
    let metadata = match fs::metadata(path) {
        Ok(metadata) => metadata,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
            return Err(Error::NotFound.with_path(path.to_owned()));
        }
        Err(source) => return Err(Error::Io { error: source }.with_path(path.to_owned())),
    };
    if !metadata.is_file() {
        return Err(Error::NotAFile { found: file_kind(&metadata) }.with_path(path.to_owned()));
    }
    let has_suffix = path
        .file_name()
        .and_then(|name| name.to_str())
        .is_some_and(|name| name.len() > LIBRARY_SUFFIX.len() && name.ends_with(LIBRARY_SUFFIX));
    if !has_suffix {
        return Err(Error::WrongExtension { expected: LIBRARY_SUFFIX }.with_path(path.to_owned()));
    }
    // An absolute path, so that the system loader never searches its library path for it.
    std::path::absolute(path)
        .map_err(|source| Error::Io { error: source }.with_path(path.to_owned()))
}

fn file_kind(metadata: &fs::Metadata) -> &'static str {
    if metadata.is_dir() {
        return "directory";
    }
    use std::os::unix::fs::FileTypeExt;
    let kind = metadata.file_type();
    if kind.is_socket() {
        return "socket";
    }
    if kind.is_fifo() {
        return "fifo";
    }
    if kind.is_block_device() || kind.is_char_device() {
        return "device";
    }
    "special file"
}

/// Checks, from the file's headers alone, that it is a complete dynamic library that this
/// process could map.
fn check_format<'data, R: object::ReadRef<'data>>(
    path: &Path,
    data: R,
    len: u64,
) -> Result<(), Error> {
    let not_a_library = |reason: String| Error::NotALibrary { reason }.with_path(path.to_owned());
    if len == 0 {
        return Err(not_a_library("the file is empty".to_owned()));
    }
    let object = match object::File::parse(data) {
        Ok(object) => object,
        Err(err) => {
            let reason = match object::FileKind::parse(data) {
                Err(_) => "unrecognized file format (not an object file)".to_owned(),
                Ok(kind) => format!("truncated or corrupt {kind:?} file ({err})"),
            };
            return Err(not_a_library(reason));
        }
    };
    let native = object::BinaryFormat::native_object();
    if object.format() != native {
        return Err(not_a_library(format!(
            "it is a {:?} file, this platform loads {native:?}",
            object.format()
        )));
    }
    if let Some(native_arch) = native_architecture() {
        if object.architecture() != native_arch
            || object.is_64() != cfg!(target_pointer_width = "64")
        {
            return Err(not_a_library(format!(
                "it is built for {:?}{}, this process is {native_arch:?}",
                object.architecture(),
                if object.is_64() { " (64-bit)" } else { " (32-bit)" },
            )));
        }
    }
    if object.kind() != object::ObjectKind::Dynamic {
        return Err(not_a_library(format!(
            "it is a {:?} object, not a dynamic library",
            object.kind()
        )));
    }
    for segment in object.segments() {
        let (offset, size) = segment.file_range();
        let end = offset.saturating_add(size);
        if end > len {
            return Err(not_a_library(format!(
                "truncated: its segments need {end} bytes but the file has {len}"
            )));
        }
    }
    Ok(())
}

fn native_architecture() -> Option<object::Architecture> {
    use object::Architecture as A;
    Some(match std::env::consts::ARCH {
        "x86_64" => A::X86_64,
        "x86" => A::I386,
        "aarch64" => A::Aarch64,
        "arm" => A::Arm,
        "riscv64" => A::Riscv64,
        "powerpc64" => A::PowerPc64,
        "s390x" => A::S390x,
        "loongarch64" => A::LoongArch64,
        _ => return None,
    })
}

/// The go-plugin handshake, read from the root module: cookie, protocol, interface version.
fn handshake(
    path: &Path,
    module: CalculatorModRef,
    host_version: &Version,
) -> Result<VerifiedModule, Error> {
    let Handshake { magic_cookie_key, magic_cookie_value, protocol_version, interface_version } =
        module.handshake();
    if magic_cookie_key.as_str() != MAGIC_COOKIE_KEY
        || magic_cookie_value.as_str() != MAGIC_COOKIE_VALUE
    {
        return Err(Error::BadCookie {
            expected_key: MAGIC_COOKIE_KEY,
            expected_value: MAGIC_COOKIE_VALUE,
            found_key: magic_cookie_key.to_string(),
            found_value: magic_cookie_value.to_string(),
        }
        .with_path(path.to_owned()));
    }
    if protocol_version != PROTOCOL_VERSION {
        return Err(Error::ProtocolMismatch { host: PROTOCOL_VERSION, plugin: protocol_version }
            .with_path(path.to_owned()));
    }
    let declared = Version::parse(interface_version.as_str()).map_err(|err| {
        Error::BadMetadata {
            reason: format!(
                "handshake interface version {interface_version:?} is not semver: {err}"
            ),
        }
        .with_path(path.to_owned())
    })?;
    if !interface_compatible(host_version, &declared) {
        return Err(Error::IncompatibleVersion { host: host_version.clone(), found: declared }
            .with_path(path.to_owned()));
    }
    Ok(VerifiedModule { module })
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        /// Within a major version ≥ 1 every pair is compatible both ways; across majors none is.
        #[test]
        fn fuzz_version_compatibility(a in 0u64..4, b in 0u64..4, c in 0u64..30, d in 0u64..30, e in 0u64..9, f in 0u64..9) {
            let host = Version::new(a, c, e);
            let plugin = Version::new(b, d, f);
            let compatible = interface_compatible(&host, &plugin);
            if a == 0 {
                proptest::prop_assert_eq!(compatible, b == 0 && c == d);
            } else {
                proptest::prop_assert_eq!(compatible, a == b);
                proptest::prop_assert_eq!(compatible, interface_compatible(&plugin, &host));
            }
        }
    }

    #[test]
    fn compatibility_is_same_major_from_one_on() {
        let v = |s: &str| Version::parse(s).unwrap();
        assert!(interface_compatible(&v("1.1.0"), &v("1.0.0")));
        assert!(interface_compatible(&v("1.0.0"), &v("1.1.3")));
        assert!(!interface_compatible(&v("1.0.0"), &v("2.0.0")));
        assert!(!interface_compatible(&v("2.0.0"), &v("1.9.0")));
        assert!(interface_compatible(&v("0.3.1"), &v("0.3.0")));
        assert!(!interface_compatible(&v("0.3.0"), &v("0.4.0")));
        assert!(!interface_compatible(&v("0.3.0"), &v("1.3.0")));
    }

    #[test]
    fn host_version_is_the_interface_crate_version() {
        assert_eq!(host_interface_version().to_string(), interface::INTERFACE_VERSION);
    }
}
