//! [`Backend`]: a plugin the manager serves, in this process or in a runner process.
//!
//! An enum rather than `dyn PluginHandle` so that the in-process call path stays a direct,
//! inlinable call: the match on the variant is one predictable branch.

use interface::{BatchOp, BatchResult, Config, Op, Status};

use crate::remote::{Fleet, RemotePlugin};
use crate::{Error, Identity, Plugin};

/// A plugin, in process or out of process.
#[derive(Debug)]
// The in-process variant stays inline so a call reaches it without another pointer hop; the enum
// lives once per loaded library, inside an `Arc`, so its size costs nothing per call.
#[allow(clippy::large_enum_variant)]
#[repr(u8)]
pub(crate) enum Backend {
    /// Mapped into this process.
    Local(Plugin),
    /// Served by a `calcplug-runner` child.
    Remote(Box<RemotePlugin>),
    /// Served by `calcplug serve` instances on other machines (`[plugins.NAME] endpoints` or
    /// `discovery`).
    Fleet(Box<Fleet>),
}

macro_rules! both {
    ($self:ident, $plugin:ident => $call:expr) => {
        match $self {
            Backend::Local($plugin) => $call,
            Backend::Remote($plugin) => $call,
            Backend::Fleet($plugin) => $call,
        }
    };
}

impl Backend {
    pub(crate) fn identity(&self) -> &Identity {
        both!(self, p => p.identity())
    }

    pub(crate) fn transport(&self) -> &'static str {
        match self {
            Backend::Local(_) => "in-process",
            Backend::Remote(plugin) => plugin.transport(),
            Backend::Fleet(_) => "fleet",
        }
    }

    pub(crate) fn runner_pid(&self) -> Option<u32> {
        match self {
            Backend::Local(_) | Backend::Fleet(_) => None,
            Backend::Remote(plugin) => plugin.runner_pid(),
        }
    }

    pub(crate) fn circuit(&self) -> Option<crate::remote::Circuit> {
        match self {
            Backend::Local(_) | Backend::Fleet(_) => None,
            Backend::Remote(plugin) => Some(plugin.circuit()),
        }
    }

    /// Calls retried on a new process after theirs died, by operation (out of process).
    pub(crate) fn process_retries(&self, op: &str) -> u64 {
        match self {
            Backend::Local(_) | Backend::Fleet(_) => 0,
            Backend::Remote(plugin) => {
                plugin.retried().into_iter().find(|(name, _)| *name == op).map_or(0, |(_, n)| n)
            }
        }
    }

    pub(crate) fn is_isolated(&self) -> bool {
        matches!(self, Backend::Remote(_) | Backend::Fleet(_))
    }

    /// Frees what a replaced library holds besides memory: the runner process of an
    /// out-of-process plugin. (An in-process library stays mapped for good: abi_stable never
    /// unloads one.)
    pub(crate) fn release(&self) {
        if let Backend::Remote(plugin) = self {
            plugin.stop();
        }
    }

    pub(crate) fn initialize(&self, config: &Config) -> Result<(), Error> {
        both!(self, p => p.initialize(config))
    }

    pub(crate) fn shutdown(&self) -> Result<(), Error> {
        both!(self, p => p.shutdown())
    }

    pub(crate) fn status(&self) -> Result<Status, Error> {
        both!(self, p => p.status())
    }

    #[inline]
    pub(crate) fn call(&self, op: Op, a: f64, b: f64) -> Result<f64, Error> {
        both!(self, p => p.call(op, a, b))
    }

    pub(crate) fn process_batch(
        &self,
        ops: &[BatchOp],
        results: &mut [BatchResult],
    ) -> Result<(), Error> {
        both!(self, p => p.process_batch(ops, results))
    }
}

/// The method of every operation, on whichever side the plugin is.
macro_rules! backend_operations {
    ($( [$kind:ident $variant:ident $method:ident $code:literal ($($arg:ident: $ty:ident),*) $doc:literal $minor:literal] )*) => {
        impl Backend {
            $(
                #[inline]
                pub(crate) fn $method(&self, $($arg: $ty),*) -> Result<f64, Error> {
                    both!(self, p => p.$method($($arg),*))
                }
            )*
        }
    };
}

interface::calculator_ops!(flat backend_operations);
