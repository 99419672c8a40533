//! The ABI boundary: the root module a plugin library exports, and the `#[repr(C)]` types its
//! functions take and return.
//!
//! Plugin authors never touch this module: [`export_plugin!`](crate::export_plugin) builds the
//! root module from a plain Rust trait. Hosts go through the `host` crate's loader, which checks
//! the layout, the versions and the handshake before it calls anything here.
//!
//! # Versioning rules
//!
//! [`CalculatorMod`] is an abi_stable *prefix type*. Every field up to the one marked
//! `#[sabi(last_prefix_field)]` existed in 1.0 and is always present; a minor version may only
//! append fields after it, and the accessors of appended fields return `Option`, which is `None`
//! when the library was built against an older minor version. Reordering, removing or retyping a
//! field, or moving the `last_prefix_field` marker, needs a major version.
//! The accessors never panic on a missing field: this module does not opt into
//! `#[sabi(missing_field(panic))]`.
//!
//! # Ownership
//!
//! Values returned by plugin functions (`RString`, `RVec`) carry their own deallocation vtable,
//! so the host may drop them even though they were allocated by the plugin's allocator. Hosts
//! copy them into their own types right away anyway.

use std::ptr::NonNull;

use abi_stable::library::RootModule;
use abi_stable::marker_type::ErasedObject;
use abi_stable::sabi_types::VersionStrings;
use abi_stable::std_types::{ROption, RResult, RSlice, RSliceMut, RString, RVec};
use abi_stable::{declare_root_module_statics, package_version_strings, StableAbi};

use crate::{BatchOp, BatchResult, MAGIC_COOKIE_KEY, MAGIC_COOKIE_VALUE, PROTOCOL_VERSION};

/// abi_stable's borrowed string, re-exported for code that builds a [`Handshake`].
pub use abi_stable::std_types::RStr;

/// The data a host checks before it trusts a library: go-plugin's `HandshakeConfig`, carried
/// inside the root module.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, Copy)]
pub struct Handshake {
    /// Must be [`MAGIC_COOKIE_KEY`].
    pub magic_cookie_key: RStr<'static>,
    /// Must be [`MAGIC_COOKIE_VALUE`].
    pub magic_cookie_value: RStr<'static>,
    /// Must be [`PROTOCOL_VERSION`].
    pub protocol_version: u32,
    /// The version of the `interface` crate the plugin was built against, as semver.
    pub interface_version: RStr<'static>,
}

impl Handshake {
    /// The handshake of a plugin built against this version of the interface.
    pub const CURRENT: Handshake = Handshake {
        magic_cookie_key: RStr::from_str(MAGIC_COOKIE_KEY),
        magic_cookie_value: RStr::from_str(MAGIC_COOKIE_VALUE),
        protocol_version: PROTOCOL_VERSION,
        interface_version: RStr::from_str(crate::INTERFACE_VERSION),
    };
}

/// An error crossing the boundary: an [`ErrorCode`](crate::ErrorCode) number and a message.
#[repr(C)]
#[derive(StableAbi, Debug)]
pub struct FfiError {
    /// An [`ErrorCode`](crate::ErrorCode) number; unknown numbers read as `Internal`.
    pub code: u8,
    /// What went wrong, for a human.
    pub message: RString,
}

/// One `key = value` pair of the config handed to `initialize`, borrowed from the host.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, Copy)]
pub struct FfiConfigEntry<'a> {
    /// The key.
    pub key: RStr<'a>,
    /// The value, as written in the config.
    pub value: RStr<'a>,
}

/// A config key a plugin declares in its metadata.
#[repr(C)]
#[derive(StableAbi, Debug)]
pub struct FfiConfigKey {
    /// The key.
    pub key: RString,
    /// Its default value.
    pub default: RString,
    /// What it does.
    pub description: RString,
}

/// The metadata a plugin returns.
#[repr(C)]
#[derive(StableAbi, Debug)]
pub struct FfiMetadata {
    /// The name hosts address the plugin by.
    pub name: RString,
    /// The plugin's semver version.
    pub version: RString,
    /// One line on what the plugin does.
    pub description: RString,
    /// The names of the supported operations.
    pub operations: RVec<RString>,
    /// The config keys `initialize` accepts.
    pub config: RVec<FfiConfigKey>,
}

/// The status a plugin returns.
#[repr(C)]
#[derive(StableAbi, Debug)]
pub struct FfiStatus {
    /// A [`PluginState`](crate::PluginState) number.
    pub state: u8,
    /// A word on the state.
    pub message: RString,
    /// When the plugin was initialized, in nanoseconds since the Unix epoch.
    pub started_at_unix_nanos: ROption<u64>,
    /// How long it has been initialized, in nanoseconds.
    pub uptime_nanos: u64,
    /// How many calculations it was asked for.
    pub request_count: u64,
    /// The mean latency of the timed calculations, in nanoseconds.
    pub average_latency_nanos: ROption<u64>,
}

/// An opaque pointer to one plugin instance, created by [`CalculatorMod::new_instance`].
///
/// It is only meaningful to the library that created it, and only until it is passed to that
/// library's [`CalculatorMod::drop_instance`].
#[repr(transparent)]
#[derive(StableAbi, Debug, Clone, Copy)]
pub struct InstancePtr(NonNull<ErasedObject>);

impl InstancePtr {
    /// Wraps a pointer to a plugin's instance.
    pub fn new(ptr: NonNull<ErasedObject>) -> InstancePtr {
        InstancePtr(ptr)
    }

    /// The pointer.
    pub fn as_ptr(self) -> NonNull<ErasedObject> {
        self.0
    }
}

/// Declares a root module struct from the table of [`calculator_ops!`](crate::calculator_ops):
/// the fields of 1.0, then, with `extensions: all`, every extension group's operations and
/// fields in table order.
///
/// Used twice, so that [`CalculatorMod`] and [`baseline::CalculatorMod`] cannot drift apart.
macro_rules! declare_calculator_mod {
    (
        { $(#[$attr:meta])* extensions: none }
        core $core:ident $core_minor:literal { $($core_ops:tt)* } fields {}
        $($extensions:tt)*
    ) => {
        declare_calculator_mod! { @struct [$(#[$attr])*] [$core_minor] [$($core_ops)*] [] }
    };
    (
        { $(#[$attr:meta])* extensions: all }
        core $core:ident $core_minor:literal { $($core_ops:tt)* } fields {}
        $(
            extension $group:ident $minor:literal {
                $( $variant:ident $method:ident $code:literal ($($arg:ident: $ty:ident),*) $doc:literal; )*
            }
            fields {
                $( $field:ident ($($name:ident: $field_ty:ty),*) -> $ret:ty, $field_doc:literal; )*
            }
        )*
    ) => {
        declare_calculator_mod! { @struct [$(#[$attr])*] [$core_minor] [$($core_ops)*] [$(
            $(
                #[doc = concat!("Since 1.", $minor, ": ", $doc, ".")]
                pub $method: unsafe extern "C" fn(InstancePtr $(, $ty)*)
                    -> RResult<f64, FfiError>,
            )*
            $(
                #[doc = concat!("Since 1.", $minor, ": ", $field_doc, ".")]
                pub $field: unsafe extern "C" fn(InstancePtr $(, $field_ty)*) -> RResult<$ret, FfiError>,
            )*
        )*] }
    };
    (
        @struct [$($attr:tt)*] [$core_minor:literal]
        [$( $variant:ident $method:ident $code:literal ($($arg:ident: $ty:ident),*) $doc:literal; )*]
        [$($extension_fields:tt)*]
    ) => {
        $($attr)*
        #[repr(C)]
        #[derive(StableAbi)]
        #[sabi(kind(Prefix(prefix_ref = CalculatorModRef)))]
        pub struct CalculatorMod {
            /// Since 1.0: the handshake the host checks before the first call.
            pub handshake: Handshake,
            /// Since 1.0: creates a new, uninitialized plugin instance.
            pub new_instance: extern "C" fn() -> RResult<InstancePtr, FfiError>,
            /// Since 1.0: frees an instance.
            pub drop_instance: unsafe extern "C" fn(InstancePtr),
            /// Since 1.0: the plugin's metadata.
            pub metadata: unsafe extern "C" fn(InstancePtr) -> RResult<FfiMetadata, FfiError>,
            /// Since 1.0: initializes the instance with a string key/value config.
            pub initialize: unsafe extern "C" fn(
                InstancePtr,
                RSlice<'_, FfiConfigEntry<'_>>,
            ) -> RResult<(), FfiError>,
            /// Since 1.0: shuts the instance down; later calls fail with `NotInitialized`.
            pub shutdown: unsafe extern "C" fn(InstancePtr) -> RResult<(), FfiError>,
            /// Since 1.0: the instance's status.
            pub status: unsafe extern "C" fn(InstancePtr) -> RResult<FfiStatus, FfiError>,
            $(
                #[doc = concat!("Since 1.", $core_minor, ": ", $doc, ".")]
                pub $method: unsafe extern "C" fn(InstancePtr $(, $ty)*)
                    -> RResult<f64, FfiError>,
            )*
            /// Since 1.0: computes every item of `ops` into the slot of `results` with the same
            /// index.
            ///
            /// The slices have the same length. One failing item does not stop the others; an
            /// `Err` means the batch as a whole failed (e.g. a panic) and `results` must not be
            /// read.
            ///
            /// This is the last field of 1.0: fields added by later minor versions go below it,
            /// and the marker never moves within major version 1. The accessors of later fields
            /// return `None` for a library built against an earlier minor version; a library
            /// built against a later one always has them (they answer `Unsupported` if the
            /// plugin does not implement the operation).
            #[sabi(last_prefix_field)]
            pub process_batch: unsafe extern "C" fn(
                InstancePtr,
                RSlice<'_, BatchOp>,
                RSliceMut<'_, BatchResult>,
            ) -> RResult<(), FfiError>,
            $($extension_fields)*
        }

        impl RootModule for CalculatorModRef {
            declare_root_module_statics! {CalculatorModRef}

            const BASE_NAME: &'static str = "calcplug_calculator";
            const NAME: &'static str = "calcplug Calculator plugin";
            const VERSION_STRINGS: VersionStrings = package_version_strings!();
        }
    };
}

crate::calculator_ops!(grouped declare_calculator_mod {
    {
        /// The root module of a Calculator plugin library: its handshake and its function table.
        ///
        /// Every function that takes an [`InstancePtr`] is `unsafe`: the pointer must come from
        /// this same module's `new_instance` and must not have been passed to `drop_instance`
        /// yet. Every function catches panics inside the plugin and reports them as
        /// `PluginPanicked`.
        extensions: all
    }
});

/// The root module as major version 1 first declared it (1.0.0): the fields every 1.x library
/// has.
///
/// abi_stable's layout check only lets a library satisfy a loader whose view of a prefix type
/// has *as many fields or fewer* than the library's: it supports old hosts with new libraries,
/// not new hosts with old libraries. A host that also wants to load libraries built against an
/// older minor version checks them against this baseline, then reads the later fields through
/// [`CalculatorModRef`]'s accessors, which return `None` for fields the library's own metadata
/// says it does not have.
pub mod baseline {
    use super::*;

    crate::calculator_ops!(grouped declare_calculator_mod {
        {
            /// [`super::CalculatorMod`] without any extension field.
            extensions: none
        }
    });
}
/// The symbol under which abi_stable looks for a library's root module header.
///
/// [`export_plugin!`](crate::export_plugin) needs it as a literal; a test checks that it matches
/// abi_stable's own [`ROOT_MODULE_LOADER_NAME`](abi_stable::library::ROOT_MODULE_LOADER_NAME).
#[doc(hidden)]
pub const ROOT_MODULE_SYMBOL: &str = "_1as_0lib_1header_0root_bmodule_bloader";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_module_symbol_matches_abi_stable() {
        assert_eq!(ROOT_MODULE_SYMBOL, abi_stable::library::ROOT_MODULE_LOADER_NAME);
    }

    #[test]
    fn the_current_root_module_is_a_compatible_extension_of_the_baseline() {
        use abi_stable::abi_stability::abi_checking::check_layout_compatibility;
        use abi_stable::StableAbi;
        // A loader with the baseline view accepts a library with the current layout...
        let result = check_layout_compatibility(
            <baseline::CalculatorModRef as StableAbi>::LAYOUT,
            <CalculatorModRef as StableAbi>::LAYOUT,
        );
        assert!(result.is_ok(), "{:?}", result.err().map(|e| e.to_string()));
        // ...and abi_stable alone refuses the reverse, which is why the baseline exists.
        let result = check_layout_compatibility(
            <CalculatorModRef as StableAbi>::LAYOUT,
            <baseline::CalculatorModRef as StableAbi>::LAYOUT,
        );
        assert!(result.is_err());
    }

    #[test]
    fn current_handshake_carries_the_crate_constants() {
        let handshake = Handshake::CURRENT;
        assert_eq!(handshake.magic_cookie_key.as_str(), "CALCULATOR_PLUGIN");
        assert_eq!(handshake.protocol_version, 1);
        assert_eq!(handshake.interface_version.as_str(), env!("CARGO_PKG_VERSION"));
    }
}
