//! [`Plugin`]: a loaded, checked plugin instance with a safe Rust API.

use std::fmt;
use std::path::PathBuf;
use std::time::{Duration, UNIX_EPOCH};

use abi_stable::std_types::{RResult, RStr};
use interface::ffi::{FfiConfigEntry, FfiError, FfiMetadata, FfiStatus};
use interface::{
    AngleUnit, BatchOp, BatchResult, Config, ConfigKey, ErrorCode, Metadata, Op, PluginState,
    Status,
};
use semver::Version;

use crate::loader::{Instance, VerifiedModule};
use crate::{Error, Extension, Identity};

/// The method of every operation, and [`Plugin::call`], which dispatches to them.
macro_rules! plugin_operations {
    ($( [$kind:ident $variant:ident $method:ident $code:literal ($($arg:ident: $ty:ident),*) $doc:literal $minor:literal] )*) => {
        impl Plugin {
            $(
                #[doc = concat!($doc, " (interface 1.", $minor, ").")]
                ///
                /// # Errors
                ///
                /// [`Error::Call`] with the plugin's code, e.g. `DivisionByZero` or `Overflow`;
                /// `Unsupported` if the plugin does not have the operation.
                #[inline]
                pub fn $method(&self, $($arg: $ty),*) -> Result<f64, Error> {
                    plugin_operations!(@call $kind self $method ($($arg),*))
                }
            )*

            /// `op(a, b)`; `b` is ignored by one-operand operations.
            ///
            /// # Errors
            ///
            /// [`Error::Call`] with the plugin's code; `Unsupported` for an operation this
            /// plugin's interface version does not have.
            #[inline]
            pub fn call(&self, op: Op, a: f64, b: f64) -> Result<f64, Error> {
                match op {
                    $(Op::$variant => interface::__calculator_call_with!(self, $method, ($($arg: $ty),*), a, b),)*
                    _ => Err(self.call_error(
                        "call",
                        ErrorCode::Unsupported,
                        format!("this host cannot call `{op}` on {}", self.identity.name()),
                    )),
                }
            }
        }
    };
    (@call core $self:ident $method:ident ($($arg:ident),*)) => {
        $self.check(stringify!($method), $self.instance.$method($($arg),*))
    };
    (@call extension $self:ident $method:ident ($($arg:ident),*)) => {
        $self.extension(stringify!($method), $self.instance.$method($($arg),*))
    };
}

interface::calculator_ops!(flat plugin_operations);

/// A loaded plugin instance.
///
/// Calls go straight through the library's function table: no lock, no allocation unless the
/// plugin returns an error. A `Plugin` is `Send + Sync`; share it between threads with an `Arc`.
/// Dropping it frees the instance (the library itself stays mapped).
pub struct Plugin {
    instance: Instance,
    identity: Identity,
}

impl fmt::Debug for Plugin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Plugin").field("identity", &self.identity).finish_non_exhaustive()
    }
}

impl Plugin {
    pub(crate) fn new(
        path: PathBuf,
        module: VerifiedModule,
        interface_version: Version,
    ) -> Result<Plugin, Error> {
        let setup_error = |op: &'static str, err: FfiError| {
            let (code, message) = decode_error(err);
            Error::Setup { op, code, message }.with_path(path.clone())
        };
        let instance = Instance::new(&module).map_err(|err| setup_error("new_instance", err))?;
        let metadata =
            instance.metadata().into_result().map_err(|err| setup_error("metadata", err))?;
        let metadata = convert_metadata(metadata);
        let extensions =
            if instance.has_scientific() { vec![Extension::Scientific] } else { Vec::new() };
        let identity = Identity::new(path, metadata, interface_version, extensions)?;
        tracing::info!(
            plugin = identity.name(),
            version = %identity.version(),
            interface = %identity.interface_version(),
            extensions = ?identity.extensions(),
            "loaded"
        );
        Ok(Plugin { instance, identity })
    }

    /// What the plugin is: name, versions, metadata, library file, extension groups.
    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// Initializes the plugin with `config`.
    ///
    /// # Errors
    ///
    /// [`Error::Call`] with the plugin's code, e.g. `InvalidInput` for a bad config value.
    pub fn initialize(&self, config: &Config) -> Result<(), Error> {
        let _span = tracing::info_span!("initialize", plugin = %self.identity.name()).entered();
        let entries: Vec<FfiConfigEntry<'_>> = config
            .iter()
            .map(|(key, value)| FfiConfigEntry { key: RStr::from(key), value: RStr::from(value) })
            .collect();
        let result = self.check("initialize", self.instance.initialize(&entries));
        match &result {
            Ok(()) => tracing::info!(keys = entries.len(), "initialized"),
            Err(err) => tracing::warn!(error = %err, "initialize failed"),
        }
        result
    }

    /// Shuts the plugin down; later calls fail with `NotInitialized`.
    ///
    /// # Errors
    ///
    /// [`Error::Call`] if the plugin reports a failure while shutting down.
    pub fn shutdown(&self) -> Result<(), Error> {
        let _span = tracing::info_span!("shutdown", plugin = %self.identity.name()).entered();
        let result = self.check("shutdown", self.instance.shutdown());
        if let Err(err) = &result {
            tracing::warn!(error = %err, "shutdown failed");
        }
        result
    }

    /// The plugin's status.
    ///
    /// # Errors
    ///
    /// [`Error::Call`] if the plugin fails to report it (e.g. it panicked).
    pub fn status(&self) -> Result<Status, Error> {
        self.check("status", self.instance.status()).map(convert_status)
    }

    /// Sets the unit `sin`, `cos` and `tan` read their operand in (interface 1.1).
    ///
    /// # Errors
    ///
    /// [`Error::Call`] with the plugin's code; `Unsupported` if the plugin does not have it.
    pub fn set_angle_unit(&self, unit: AngleUnit) -> Result<(), Error> {
        self.extension("set_angle_unit", self.instance.set_angle_unit(unit as u8))
    }

    /// The unit `sin`, `cos` and `tan` read their operand in (interface 1.1).
    ///
    /// # Errors
    ///
    /// [`Error::Call`] with the plugin's code; `Unsupported` if the plugin does not have it.
    pub fn angle_unit(&self) -> Result<AngleUnit, Error> {
        let raw = self.extension("angle_unit", self.instance.angle_unit())?;
        AngleUnit::from_u8(raw).ok_or_else(|| {
            self.call_error(
                "angle_unit",
                ErrorCode::Internal,
                format!("unknown angle unit code {raw}"),
            )
        })
    }

    /// Computes every item of `ops` into the slot of `results` with the same index; one failing
    /// item does not stop the others.
    ///
    /// The operations are passed to the plugin as they are, without a copy.
    ///
    /// # Errors
    ///
    /// `InvalidInput` if the slices differ in length; the plugin's error if the batch as a whole
    /// failed (e.g. it panicked), in which case `results` is unspecified.
    #[inline]
    pub fn process_batch(&self, ops: &[BatchOp], results: &mut [BatchResult]) -> Result<(), Error> {
        if ops.len() != results.len() {
            return Err(self.call_error(
                "process_batch",
                ErrorCode::InvalidInput,
                format!("{} operations but {} result slots", ops.len(), results.len()),
            ));
        }
        self.check("process_batch", self.instance.process_batch(ops, results))
    }

    /// [`Plugin::process_batch`] into a new vector.
    ///
    /// # Errors
    ///
    /// As [`Plugin::process_batch`].
    pub fn batch(&self, ops: &[BatchOp]) -> Result<Vec<BatchResult>, Error> {
        let mut results = vec![BatchResult::PENDING; ops.len()];
        self.process_batch(ops, &mut results)?;
        Ok(results)
    }

    #[inline(always)]
    fn check<T>(&self, op: &'static str, result: RResult<T, FfiError>) -> Result<T, Error> {
        match result {
            RResult::ROk(value) => Ok(value),
            RResult::RErr(err) => Err(self.ffi_error(op, err)),
        }
    }

    #[inline(always)]
    fn extension<T>(
        &self,
        op: &'static str,
        result: Option<RResult<T, FfiError>>,
    ) -> Result<T, Error> {
        match result {
            Some(result) => self.check(op, result),
            None => Err(self.call_error(
                op,
                ErrorCode::Unsupported,
                format!(
                    "the plugin was built against interface {}, which has no `{op}` (added in 1.1)",
                    self.identity.interface_version()
                ),
            )),
        }
    }

    #[cold]
    #[inline(never)]
    fn ffi_error(&self, op: &'static str, err: FfiError) -> Error {
        let (code, message) = decode_error(err);
        if code == ErrorCode::PluginPanicked {
            tracing::warn!(plugin = %self.identity.name(), op, %message, "plugin panicked");
        }
        self.call_error(op, code, message)
    }

    #[cold]
    fn call_error(&self, op: &'static str, code: ErrorCode, message: String) -> Error {
        Error::Call { plugin: self.identity.name().to_owned(), op, code, message }
    }
}

fn decode_error(err: FfiError) -> (ErrorCode, String) {
    match ErrorCode::from_u8(err.code) {
        Some(code) => (code, err.message.into_string()),
        None => (
            ErrorCode::Internal,
            format!("unknown error code {} from a newer plugin: {}", err.code, err.message),
        ),
    }
}

fn convert_metadata(raw: FfiMetadata) -> Metadata {
    Metadata {
        name: raw.name.into_string(),
        version: raw.version.into_string(),
        description: raw.description.into_string(),
        operations: raw.operations.into_iter().map(|op| op.into_string()).collect(),
        config: raw
            .config
            .into_iter()
            .map(|key| ConfigKey {
                key: key.key.into_string(),
                default: key.default.into_string(),
                description: key.description.into_string(),
            })
            .collect(),
    }
}

fn convert_status(raw: FfiStatus) -> Status {
    Status {
        state: PluginState::from_u8(raw.state).unwrap_or(PluginState::Error),
        message: raw.message.into_string(),
        started_at: raw
            .started_at_unix_nanos
            .into_option()
            .map(|nanos| UNIX_EPOCH + Duration::from_nanos(nanos)),
        uptime: Duration::from_nanos(raw.uptime_nanos),
        request_count: raw.request_count,
        average_latency: raw.average_latency_nanos.into_option().map(Duration::from_nanos),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_error_codes_become_internal_with_the_number() {
        let (code, message) =
            decode_error(FfiError { code: 77, message: abi_stable::std_types::RString::from("x") });
        assert_eq!(code, ErrorCode::Internal);
        assert!(message.contains("77"), "{message}");
    }
}
