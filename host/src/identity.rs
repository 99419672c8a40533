//! [`Identity`]: what a loaded plugin is, the same for every way of loading it.

use std::fmt;
use std::path::{Path, PathBuf};

use interface::{Metadata, Op};
use semver::Version;

use crate::Error;

/// What a loaded plugin is: its name, versions, metadata, library file and extension groups.
///
/// [`Plugin`](crate::Plugin), [`RemotePlugin`](crate::remote::RemotePlugin) and the manager's
/// [`Handle`](crate::Handle) all describe their plugin with it; through
/// [`PluginHandle`](crate::PluginHandle), `plugin.name()` and the other accessors read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    version: Version,
    interface_version: Version,
    metadata: Metadata,
    path: PathBuf,
    extensions: Vec<Extension>,
}

impl Identity {
    /// Checks what a plugin said about itself: the name must be 1–64 of `a-z0-9-_`, the
    /// version semver.
    ///
    /// # Errors
    ///
    /// [`Error::BadMetadata`] about `path`.
    pub(crate) fn new(
        path: PathBuf,
        metadata: Metadata,
        interface_version: Version,
        extensions: Vec<Extension>,
    ) -> Result<Identity, Error> {
        let bad = |reason: String| Error::BadMetadata { reason }.with_path(path.clone());
        if !valid_name(&metadata.name) {
            return Err(bad(format!(
                "plugin name {:?} must be 1-64 characters of a-z, 0-9, `-` and `_`",
                metadata.name
            )));
        }
        let version = Version::parse(&metadata.version).map_err(|err| {
            bad(format!("plugin version {:?} is not semver: {err}", metadata.version))
        })?;
        Ok(Identity { version, interface_version, metadata, path, extensions })
    }

    /// The name the plugin is addressed by (from its metadata).
    pub fn name(&self) -> &str {
        &self.metadata.name
    }

    /// The plugin's own version (from its metadata).
    pub fn version(&self) -> &Version {
        &self.version
    }

    /// The interface version the plugin was built against.
    pub fn interface_version(&self) -> &Version {
        &self.interface_version
    }

    /// The plugin's metadata, as read once at load.
    pub fn metadata(&self) -> &Metadata {
        &self.metadata
    }

    /// The library file: as loaded for a [`Plugin`](crate::Plugin) or a
    /// [`RemotePlugin`](crate::remote::RemotePlugin), the file the user put in place for a
    /// [`Handle`](crate::Handle).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The extensions (groups of root module functions added by interface minor versions) the
    /// plugin's library has. Empty for a plugin built against interface 1.0.
    pub fn extensions(&self) -> &[Extension] {
        &self.extensions
    }

    /// Whether the plugin can perform `op`: its library has the function, and its metadata
    /// lists the operation.
    pub fn supports(&self, op: Op) -> bool {
        let present = !op.is_scientific() || self.extensions.contains(&Extension::Scientific);
        present && self.metadata.supports(op)
    }

    /// Whether the plugin implements the whole scientific extension (interface 1.1).
    /// `false`, never an error, for a plugin built against 1.0.
    pub fn has_scientific(&self) -> bool {
        Op::SCIENTIFIC.iter().all(|op| self.supports(*op))
    }

    /// The same identity for the library at `path`.
    pub(crate) fn at(mut self, path: PathBuf) -> Identity {
        self.path = path;
        self
    }
}

/// A group of root module functions added by an interface minor version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Extension {
    /// `sin`, `cos`, `tan`, `log`, `pow`, `sqrt`, `set_angle_unit`, `angle_unit` (interface 1.1).
    Scientific,
}

impl Extension {
    /// The extension's name, e.g. `scientific`.
    pub const fn name(self) -> &'static str {
        match self {
            Extension::Scientific => "scientific",
        }
    }

    /// The interface version that added it.
    pub const fn since(self) -> &'static str {
        match self {
            Extension::Scientific => "1.1",
        }
    }
}

impl fmt::Display for Extension {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        #[test]
        fn fuzz_plugin_names_are_checked_without_panics(name in "\\PC{0,80}") {
            let valid = valid_name(&name);
            proptest::prop_assert_eq!(
                valid,
                !name.is_empty() && name.len() <= 64 && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
            );
        }
    }

    #[test]
    fn plugin_names_are_restricted() {
        assert!(valid_name("basic"));
        assert!(valid_name("sci-calc_2"));
        assert!(!valid_name(""));
        assert!(!valid_name("Basic"));
        assert!(!valid_name("../evil"));
        assert!(!valid_name(&"a".repeat(65)));
    }

    #[test]
    fn metadata_is_checked_and_the_error_names_the_file() {
        let path = PathBuf::from("/plugins/libx.so");
        let identity = |name: &str, version: &str| {
            let metadata = Metadata::new(name, version, "");
            Identity::new(path.clone(), metadata, Version::new(1, 1, 0), Vec::new())
        };
        let ok = identity("basic", "1.2.3").unwrap();
        assert_eq!((ok.name(), ok.version()), ("basic", &Version::new(1, 2, 3)));
        assert!(ok.supports(Op::Add) && !ok.supports(Op::Sin) && !ok.has_scientific());
        assert_eq!(
            identity("Basic", "1.0.0").unwrap_err().to_string(),
            "/plugins/libx.so: invalid plugin metadata: plugin name \"Basic\" must be 1-64 \
             characters of a-z, 0-9, `-` and `_`"
        );
        assert_eq!(
            identity("basic", "one").unwrap_err().to_string(),
            "/plugins/libx.so: invalid plugin metadata: plugin version \"one\" is not semver: \
             unexpected character 'o' while parsing major version number"
        );
    }
}
