//! [`PluginHandle`]: what in-process ([`Plugin`]) and out-of-process
//! ([`RemotePlugin`](crate::remote::RemotePlugin)) plugins have in common, so that code (the
//! plugin manager, the CLI, the conformance tests) can treat both alike.

use std::fmt;
use std::path::Path;

use interface::{AngleUnit, BatchOp, BatchResult, Config, Metadata, Op, Status};
use semver::Version;

use crate::{Error, Extension, Identity, Plugin};

/// A loaded plugin, in this process or in a runner process.
///
/// Every method behaves as the [`Plugin`] method of the same name; an out-of-process handle
/// can also fail with the process errors ([`Error::PluginCrashed`], [`Error::CallTimeout`],
/// [`Error::CircuitOpen`], [`Error::Wire`]).
pub trait PluginHandle: Send + Sync + fmt::Debug {
    /// What the plugin is: name, versions, metadata, library file, extension groups.
    fn identity(&self) -> &Identity;

    /// The name the plugin is addressed by (from its metadata).
    fn name(&self) -> &str {
        self.identity().name()
    }
    /// The plugin's own version (from its metadata).
    fn version(&self) -> &Version {
        self.identity().version()
    }
    /// The interface version the plugin was built against.
    fn interface_version(&self) -> &Version {
        self.identity().interface_version()
    }
    /// The plugin's metadata, as read once at load.
    fn metadata(&self) -> &Metadata {
        self.identity().metadata()
    }
    /// The library file.
    fn path(&self) -> &Path {
        self.identity().path()
    }
    /// The extension groups the plugin's library has.
    fn extensions(&self) -> &[Extension] {
        self.identity().extensions()
    }
    /// Whether the plugin can perform `op`: its library has the function, and its metadata
    /// lists the operation.
    fn supports(&self, op: Op) -> bool {
        self.identity().supports(op)
    }
    /// Whether the plugin implements the whole scientific extension (interface 1.1).
    fn has_scientific(&self) -> bool {
        self.identity().has_scientific()
    }
    /// Whether the plugin runs in a runner process.
    fn is_isolated(&self) -> bool;
    /// How calls reach the plugin: `in-process`, `child` (a calcplug runner over its socket
    /// transport) or `grpc` (a plugin executable speaking go-plugin's gRPC protocol).
    fn transport(&self) -> &'static str;

    /// Initializes the plugin.
    ///
    /// # Errors
    ///
    /// See [`Plugin::initialize`].
    fn initialize(&self, config: &Config) -> Result<(), Error>;
    /// Shuts the plugin down.
    ///
    /// # Errors
    ///
    /// See [`Plugin::shutdown`].
    fn shutdown(&self) -> Result<(), Error>;
    /// The plugin's status.
    ///
    /// # Errors
    ///
    /// See [`Plugin::status`].
    fn status(&self) -> Result<Status, Error>;
    /// `op(a, b)`.
    ///
    /// # Errors
    ///
    /// See [`Plugin::call`].
    fn call(&self, op: Op, a: f64, b: f64) -> Result<f64, Error>;
    /// A batch.
    ///
    /// # Errors
    ///
    /// See [`Plugin::process_batch`].
    fn process_batch(&self, ops: &[BatchOp], results: &mut [BatchResult]) -> Result<(), Error>;
    /// Sets the angle unit.
    ///
    /// # Errors
    ///
    /// See [`Plugin::set_angle_unit`].
    fn set_angle_unit(&self, unit: AngleUnit) -> Result<(), Error>;
    /// The angle unit.
    ///
    /// # Errors
    ///
    /// See [`Plugin::angle_unit`].
    fn angle_unit(&self) -> Result<AngleUnit, Error>;

    /// The call as a future of the handle's own, for a handle whose calls are asynchronous by
    /// nature (a [`Fleet`](crate::remote::Fleet)): [`AsyncHandle`](crate::AsyncHandle) awaits
    /// it instead of running [`PluginHandle::call`] on its pool. `None`, the default, for the
    /// others.
    fn call_future(&self, op: Op, a: f64, b: f64) -> Option<CallFuture<'_>> {
        let _ = (op, a, b);
        None
    }

    /// [`PluginHandle::process_batch`] into a new vector.
    ///
    /// # Errors
    ///
    /// As [`PluginHandle::process_batch`].
    fn batch(&self, ops: &[BatchOp]) -> Result<Vec<BatchResult>, Error> {
        let mut results = vec![BatchResult::PENDING; ops.len()];
        self.process_batch(ops, &mut results)?;
        Ok(results)
    }
}

/// A call's answer, to be awaited: [`PluginHandle::call_future`].
pub type CallFuture<'a> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<f64, Error>> + Send + 'a>>;

/// A boxed handle is a handle, so `Box<dyn PluginHandle>` serves wherever one is expected
/// ([`AsyncHandle`](crate::AsyncHandle) included).
impl<P: PluginHandle + ?Sized> PluginHandle for Box<P> {
    fn identity(&self) -> &Identity {
        (**self).identity()
    }
    fn is_isolated(&self) -> bool {
        (**self).is_isolated()
    }
    fn transport(&self) -> &'static str {
        (**self).transport()
    }
    fn initialize(&self, config: &Config) -> Result<(), Error> {
        (**self).initialize(config)
    }
    fn shutdown(&self) -> Result<(), Error> {
        (**self).shutdown()
    }
    fn status(&self) -> Result<Status, Error> {
        (**self).status()
    }
    fn call(&self, op: Op, a: f64, b: f64) -> Result<f64, Error> {
        (**self).call(op, a, b)
    }
    fn call_future(&self, op: Op, a: f64, b: f64) -> Option<CallFuture<'_>> {
        (**self).call_future(op, a, b)
    }
    fn process_batch(&self, ops: &[BatchOp], results: &mut [BatchResult]) -> Result<(), Error> {
        (**self).process_batch(ops, results)
    }
    fn set_angle_unit(&self, unit: AngleUnit) -> Result<(), Error> {
        (**self).set_angle_unit(unit)
    }
    fn angle_unit(&self) -> Result<AngleUnit, Error> {
        (**self).angle_unit()
    }
}

/// Implements [`PluginHandle`] by calling the type's inherent methods of the same names.
macro_rules! delegate_handle {
    ($ty:ty, isolated = $isolated:expr, transport = $transport:expr $(, $extra:item)*) => {
        impl PluginHandle for $ty {
            fn identity(&self) -> &Identity {
                <$ty>::identity(self)
            }
            fn is_isolated(&self) -> bool {
                $isolated
            }
            fn transport(&self) -> &'static str {
                let transport: fn(&$ty) -> &'static str = $transport;
                transport(self)
            }
            fn initialize(&self, config: &Config) -> Result<(), Error> {
                <$ty>::initialize(self, config)
            }
            fn shutdown(&self) -> Result<(), Error> {
                <$ty>::shutdown(self)
            }
            fn status(&self) -> Result<Status, Error> {
                <$ty>::status(self)
            }
            fn call(&self, op: Op, a: f64, b: f64) -> Result<f64, Error> {
                <$ty>::call(self, op, a, b)
            }
            fn process_batch(
                &self,
                ops: &[BatchOp],
                results: &mut [BatchResult],
            ) -> Result<(), Error> {
                <$ty>::process_batch(self, ops, results)
            }
            fn set_angle_unit(&self, unit: AngleUnit) -> Result<(), Error> {
                <$ty>::set_angle_unit(self, unit)
            }
            fn angle_unit(&self) -> Result<AngleUnit, Error> {
                <$ty>::angle_unit(self)
            }
            $($extra)*
        }
    };
}

delegate_handle!(Plugin, isolated = false, transport = |_| "in-process");
delegate_handle!(
    crate::remote::RemotePlugin,
    isolated = true,
    transport = crate::remote::RemotePlugin::transport
);
delegate_handle!(
    crate::remote::Fleet,
    isolated = true,
    transport = |_| "fleet",
    fn call_future(&self, op: Op, a: f64, b: f64) -> Option<CallFuture<'_>> {
        Some(Box::pin(self.call_async(op, a, b)))
    }
);
