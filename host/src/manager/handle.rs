//! `Handle`: the cheap, cloneable way a host calls one managed plugin.

use std::sync::atomic::Ordering;

use interface::{BatchOp, BatchResult, Op};

use super::metrics::{op_index, BATCH};
use super::{Handle, Health, LifecycleState, PluginStatus};
use crate::{Error, Identity};

impl Handle {
    /// The plugin's name.
    pub fn name(&self) -> &str {
        &self.slot.name
    }

    /// What the library serving the name now is: its version, metadata, extension groups, and
    /// as its path the file the user put in place (not the manager's private copy).
    pub fn identity(&self) -> Identity {
        let generation = self.slot.generation();
        generation.plugin.identity().clone().at(generation.source.clone())
    }

    /// Which load of this name serves now: 1 for the first library, +1 per reload.
    pub fn generation(&self) -> u64 {
        self.slot.reloads.load(Ordering::Relaxed) + 1
    }

    /// Whether the library serving the name now runs out of this process (a runner, a plugin
    /// executable or a fleet), where a call may wait on another process.
    pub fn is_isolated(&self) -> bool {
        self.slot.generation().plugin.is_isolated()
    }

    /// The lifecycle state: `Processing` while calls are in flight. Never blocks.
    pub fn state(&self) -> LifecycleState {
        self.slot.state()
    }

    /// Checks the plugin's health now (its own status, and the manager's state for it).
    pub fn health(&self) -> Health {
        self.slot.health()
    }

    /// This plugin's status and metrics.
    pub fn status(&self) -> PluginStatus {
        self.slot.status()
    }

    /// `op(a, b)`; errors with a retryable code are retried per the `[retry]` policy.
    ///
    /// # Errors
    ///
    /// [`Error::Call`] with the plugin's code (after the retries, for a retryable one);
    /// [`Error::ShuttingDown`] once the manager shuts down; [`Error::NotServing`] if the
    /// plugin's `initialize` failed.
    pub fn call(&self, op: Op, a: f64, b: f64) -> Result<f64, Error> {
        self.slot.call(op, a, b)
    }

    /// [`Plugin::process_batch`](crate::Plugin::process_batch) through the manager (counted as one `process_batch` call).
    ///
    /// # Errors
    ///
    /// As [`Plugin::process_batch`](crate::Plugin::process_batch), and as [`Handle::call`].
    pub fn process_batch(&self, ops: &[BatchOp], results: &mut [BatchResult]) -> Result<(), Error> {
        let results = std::cell::RefCell::new(results);
        self.slot.run(
            BATCH,
            "process_batch",
            |p| p.process_batch(ops, &mut results.borrow_mut()).map_err(Box::new),
            |p| p.process_batch(ops, &mut results.borrow_mut()),
        )
    }
}

/// The method of every operation, each counted under its own name.
macro_rules! handle_operations {
    ($( [$kind:ident $variant:ident $method:ident $code:literal ($($arg:ident: $ty:ident),*) $doc:literal $minor:literal] )*) => {
        impl Handle {
            $(
                #[doc = concat!($doc, " (interface 1.", $minor, ").")]
                ///
                /// # Errors
                ///
                /// As [`Handle::call`].
                #[inline]
                pub fn $method(&self, $($arg: $ty),*) -> Result<f64, Error> {
                    self.slot.run(
                        op_index(Op::$variant),
                        stringify!($method),
                        move |p| p.$method($($arg),*).map_err(Box::new),
                        move |p| p.$method($($arg),*),
                    )
                }
            )*
        }
    };
}

interface::calculator_ops!(flat handle_operations);

impl std::fmt::Debug for Handle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handle").field("name", &self.slot.name).finish_non_exhaustive()
    }
}
