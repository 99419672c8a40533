//! The only module of the host that talks to the dynamic loader and calls foreign code.
//!
//! Every `unsafe` block of the host is here, each with the reason it holds. Callers get safe
//! types: [`open`] returns a library whose abi_stable header was validated, [`root_module`]
//! one whose layout abi_stable checked, and [`Instance`] calls through a module that also passed
//! the handshake (it takes a [`VerifiedModule`], which only the handshake creates).
//!
//! # Platform-specific behaviour
//!
//! Libraries are opened with `RTLD_NOW | RTLD_LOCAL` on Unix, so a library with an unresolved
//! symbol is refused at load rather than failing at its first call, and its symbols do not
//! leak into other plugins. Libraries are never closed (`dlclose`): abi_stable hands out
//! `'static` references into them, and thread-local destructors registered by a library must
//! stay mapped until their threads exit.

use std::path::Path;

use abi_stable::library::{
    AbiHeader, AbiHeaderRef, LibHeader, LibraryError, ROOT_MODULE_LOADER_NAME,
    ROOT_MODULE_LOADER_NAME_WITH_NUL,
};
use abi_stable::std_types::{RResult, RSlice, RSliceMut};
use interface::ffi::{
    baseline, CalculatorModRef, FfiConfigEntry, FfiError, FfiMetadata, FfiStatus, InstancePtr,
};
use interface::{BatchOp, BatchResult};
use semver::Version;

use super::VerifiedModule;
use crate::Error;

/// Maps the library image at `image` and validates its abi_stable header; errors name `path`,
/// the file the user gave (the image is the same file, or a verified in-memory copy of it).
///
/// `image` must be absolute (a bare file name would make `dlopen` search the library path).
pub(crate) fn open(path: &Path, image: &Path) -> Result<&'static LibHeader, Error> {
    let library = open_library(path, image)?;

    // SAFETY: abi_stable's `#[export_root_module]` (and `export_plugin!`, which mirrors it) export
    // a `static LibHeader` under this name. libloading's `Symbol<T>` holds the symbol's address as
    // a `T`, so reading it as `AbiHeaderRef`, a `#[repr(transparent)]` reference to the
    // `AbiHeader` that starts every `LibHeader`, yields a reference to that static, as abi_stable's
    // own `abi_header_from_raw_library` does. If some other library exports a symbol with this
    // exact name, `is_valid` below reads 40 bytes from it: the symbol is in a mapped segment of a
    // library whose segments we checked are all in the file.
    let header: Result<AbiHeaderRef, _> =
        unsafe { library.get::<AbiHeaderRef>(ROOT_MODULE_LOADER_NAME_WITH_NUL.as_bytes()) }
            .map(|symbol| *symbol);
    let Ok(header) = header else {
        return Err(
            Error::MissingRootModule { symbol: ROOT_MODULE_LOADER_NAME }.with_path(path.to_owned())
        );
    };
    if !header.is_valid() {
        return Err(Error::AbiStableMismatch { detail: describe_abi_header(&header) }
            .with_path(path.to_owned()));
    }
    let header = header.upgrade().map_err(|err| {
        tracing::debug!(error = %err, "abi_stable header upgrade failed");
        Error::AbiStableMismatch { detail: first_line(&err.to_string()) }.with_path(path.to_owned())
    })?;
    // The library stays mapped for the life of the process: `header` and everything reached
    // through it are `'static` references into it.
    std::mem::forget(library);
    Ok(header)
}

#[allow(clippy::disallowed_methods)] // This is the one place allowed to map a library.
fn open_library(path: &Path, image: &Path) -> Result<libloading::Library, Error> {
    use libloading::os::unix::{Library, RTLD_LOCAL, RTLD_NOW};
    // SAFETY: mapping a library runs its initializers, which is foreign code. The loader has
    // checked that the file is a complete dynamic library for this platform and architecture,
    // so the system loader will not fault on a truncated mapping; what the initializers do is
    // the library's responsibility (calcplug plugins have none beyond the Rust runtime's).
    let library = unsafe { Library::open(Some(image), RTLD_NOW | RTLD_LOCAL) };
    library
        .map(libloading::Library::from)
        .map_err(|source| Error::Open { error: source }.with_path(path.to_owned()))
}

fn describe_abi_header(header: &AbiHeader) -> String {
    let ours = AbiHeader::VALUE;
    if header.magic_string != ours.magic_string {
        "its abi_stable header is unrecognized (not an abi_stable library, or a corrupted one)"
            .to_owned()
    } else {
        format!(
            "it uses abi_stable ABI {}.{}, this host uses {}.{}",
            header.abi_major, header.abi_minor, ours.abi_major, ours.abi_minor
        )
    }
}

/// The interface version the library was built against, read from its header without running
/// any of its code.
pub(crate) fn interface_version(path: &Path, header: &LibHeader) -> Result<Version, Error> {
    let text = header.version_strings().version.as_str();
    Version::parse(text).map_err(|err| {
        Error::BadMetadata { reason: format!("interface version {text:?} is not semver: {err}") }
            .with_path(path.to_owned())
    })
}

/// Runs abi_stable's version and layout checks, then the root module's constructor.
///
/// A library built against an older minor version than the host (`found` < `host`) lacks the
/// fields added since, which abi_stable's check alone refuses; such a library is checked
/// against the 1.0 [`baseline`] instead, and its later fields read as absent.
pub(crate) fn root_module(
    path: &Path,
    header: &'static LibHeader,
    host: &Version,
    found: &Version,
) -> Result<CalculatorModRef, Error> {
    let error = |err: LibraryError| library_error(path, host, err);
    match header.init_root_module::<CalculatorModRef>() {
        Ok(module) => Ok(module),
        Err(LibraryError::AbiInstability(full)) if found.major == host.major && found < host => {
            tracing::debug!(
                detail = %full,
                "layout differs from this host's; checking against the 1.0 baseline"
            );
            let module = header.init_root_module::<baseline::CalculatorModRef>().map_err(error)?;
            // SAFETY: abi_stable checked the library's root module against the baseline, whose
            // fields are the first fields of `CalculatorMod` (both come from one declaration,
            // and `interface`'s tests check that the current layout extends the baseline). Both
            // `Ref` types are a `PrefixRef` to the same `WithMetadata` data; the accessors of
            // fields past the baseline consult the library's own field metadata, so the fields
            // it lacks read as `None` and are never dereferenced.
            Ok(CalculatorModRef(unsafe { module.0.cast() }))
        }
        Err(err) => Err(error(err)),
    }
}

fn library_error(path: &Path, host: &Version, err: LibraryError) -> Error {
    match err {
        LibraryError::AbiInstability(explanation) => {
            let detail = explanation.to_string();
            tracing::debug!(%detail, "abi_stable layout check failed");
            Error::AbiMismatch {
                host: host.clone(),
                summary: summarize_layout_error(&detail),
                detail,
            }
            .with_path(path.to_owned())
        }
        LibraryError::IncompatibleVersionNumber { actual_version, .. } => {
            Error::IncompatibleVersion {
                host: host.clone(),
                found: Version::new(
                    u64::from(actual_version.major),
                    u64::from(actual_version.minor),
                    u64::from(actual_version.patch),
                ),
            }
            .with_path(path.to_owned())
        }
        other => {
            let detail = other.to_string();
            tracing::debug!(%detail, "root module initialization failed");
            Error::RootModule { detail: first_line(&detail) }.with_path(path.to_owned())
        }
    }
}

/// The gist of abi_stable's (long, nested) layout report: its first errors with what was
/// expected and found, e.g. "unexpected field (expected `new_instance`, found `extra`)".
fn summarize_layout_error(detail: &str) -> String {
    let lines: Vec<&str> = detail.lines().map(str::trim).collect();
    let mut items = Vec::new();
    let mut total = 0;
    for (i, line) in lines.iter().enumerate() {
        let Some(what) = line.strip_prefix("Error:") else { continue };
        total += 1;
        if items.len() < 2 {
            let item = match (
                block_value(&lines[i + 1..], "Expected:"),
                block_value(&lines[i + 1..], "Found:"),
            ) {
                (Some(expected), Some(found)) => {
                    format!("{} (expected {expected}, found {found})", what.trim())
                }
                _ => what.trim().to_owned(),
            };
            items.push(item);
        }
    }
    if items.is_empty() {
        return first_line(detail);
    }
    let mut summary = items.join("; ");
    if total > items.len() {
        summary.push_str(&format!("; and {} more", total - items.len()));
    }
    summary
}

/// The value of the `header` block ("Expected:" or "Found:") of one abi_stable error: the field
/// name if the block describes a field, else its first line.
fn block_value(lines: &[&str], header: &str) -> Option<String> {
    let start = lines.iter().take_while(|l| !l.starts_with("Error:")).position(|l| *l == header)?;
    let block = lines[start + 1..]
        .iter()
        .take_while(|l| !l.is_empty() && !l.ends_with(':') && !l.starts_with("Error:"));
    let mut first = None;
    for line in block {
        if let Some(name) = line.strip_prefix("field_name:") {
            return Some(format!("`{name}`"));
        }
        first.get_or_insert(*line);
    }
    first.map(str::to_owned)
}

fn first_line(text: &str) -> String {
    let line = text.lines().map(str::trim).find(|line| !line.is_empty()).unwrap_or("");
    const MAX: usize = 200;
    match line.char_indices().nth(MAX) {
        Some((cut, _)) => format!("{}…", &line[..cut]),
        None => line.to_owned(),
    }
}

/// One plugin instance, called straight through its library's function table.
pub(crate) struct Instance {
    module: CalculatorModRef,
    ptr: InstancePtr,
}

// SAFETY: an instance is a value of the plugin's `T: interface::plugin::Calculator`, a trait that
// requires `Send + Sync`; every entry point takes it by shared reference. The module is a
// `'static` table of functions and constants.
unsafe impl Send for Instance {}
// SAFETY: see `Send` above.
unsafe impl Sync for Instance {}

impl Instance {
    /// Creates a new instance of the plugin behind `module`.
    pub(crate) fn new(module: &VerifiedModule) -> Result<Instance, FfiError> {
        let module = module.module;
        (module.new_instance())().into_result().map(|ptr| Instance { module, ptr })
    }

    pub(crate) fn metadata(&self) -> RResult<FfiMetadata, FfiError> {
        // SAFETY: (this and every call below) `self.ptr` was returned by this module's
        // `new_instance` and is only passed to `drop_instance` in `Drop`, so it is live; the
        // module passed the layout check, so the function pointers have the declared types.
        unsafe { (self.module.metadata())(self.ptr) }
    }

    pub(crate) fn initialize(&self, config: &[FfiConfigEntry<'_>]) -> RResult<(), FfiError> {
        // SAFETY: see `metadata`.
        unsafe { (self.module.initialize())(self.ptr, RSlice::from_slice(config)) }
    }

    pub(crate) fn shutdown(&self) -> RResult<(), FfiError> {
        // SAFETY: see `metadata`.
        unsafe { (self.module.shutdown())(self.ptr) }
    }

    pub(crate) fn status(&self) -> RResult<FfiStatus, FfiError> {
        // SAFETY: see `metadata`.
        unsafe { (self.module.status())(self.ptr) }
    }

    #[inline]
    pub(crate) fn process_batch(
        &self,
        ops: &[BatchOp],
        results: &mut [BatchResult],
    ) -> RResult<(), FfiError> {
        // SAFETY: see `metadata`. The slices are borrowed for the duration of the call only.
        unsafe {
            (self.module.process_batch())(
                self.ptr,
                RSlice::from_slice(ops),
                RSliceMut::from_mut_slice(results),
            )
        }
    }
}

/// The wrapper of every operation and extension field of the root module: the operations of
/// 1.0 return the plugin's answer; those of later minor versions `None` when the library's root
/// module does not have the field (it was built against an earlier minor version).
macro_rules! instance_calls {
    (
        core $core:ident $core_minor:literal {
            $( $variant:ident $method:ident $code:literal ($($arg:ident: $ty:ident),*) $doc:literal; )*
        } fields {}
        $(
            extension $group:ident $minor:literal {
                $( $ext_variant:ident $ext_method:ident $ext_code:literal ($($ext_arg:ident: $ext_ty:ident),*) $ext_doc:literal; )*
            }
            fields {
                $( $field:ident ($($name:ident: $field_ty:ty),*) -> $ret:ty, $field_doc:literal; )*
            }
        )*
    ) => {
        impl Instance {
            $(
                #[inline]
                pub(crate) fn $method(&self, $($arg: $ty),*) -> RResult<f64, FfiError> {
                    // SAFETY: see `metadata`.
                    unsafe { (self.module.$method())(self.ptr, $($arg),*) }
                }
            )*
            $(
                $(instance_calls! { @extension $ext_method ($($ext_arg: $ext_ty),*) -> f64 })*
                $(instance_calls! { @extension $field ($($name: $field_ty),*) -> $ret })*
            )*
        }
    };
    (@extension $name:ident ($($arg:ident: $ty:ty),*) -> $ret:ty) => {
        #[inline]
        pub(crate) fn $name(&self, $($arg: $ty),*) -> Option<RResult<$ret, FfiError>> {
            let function = self.module.$name()?;
            // SAFETY: see `metadata`; the field exists, so the library was built against an
            // interface that declares it with this type (the layout check compared every field
            // the library has).
            Some(unsafe { function(self.ptr, $($arg),*) })
        }
    };
}

interface::calculator_ops!(grouped instance_calls);

impl Instance {
    /// Whether the root module has the scientific extension's fields (interface ≥ 1.1).
    ///
    /// Fields are only ever appended, so the last one of the extension being present means
    /// all of them are.
    pub(crate) fn has_scientific(&self) -> bool {
        self.module.angle_unit().is_some()
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        // SAFETY: `self.ptr` came from this module's `new_instance` and this is the only place
        // it is handed back, once, after which `self` is gone.
        unsafe { (self.module.drop_instance())(self.ptr) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        /// Whatever abi_stable's report looks like, the summary is one line.
        #[test]
        fn fuzz_layout_summaries_are_one_line(report in "(Error:[a-z ]{0,20}\n|Expected:\n|Found:\n|    field_name:[a-z_]{0,10}\n|[ -~]{0,30}\n){0,30}") {
            let summary = summarize_layout_error(&report);
            proptest::prop_assert!(!summary.contains('\n'));
        }
    }

    #[test]
    fn layout_report_is_summarized_to_its_first_errors() {
        let report = "Compared <this>:\n    --- Type Layout ---\n\n0 error(s).\n\n\
            Error:prefix-types have a different prefix\nExpected:\n    12\nFound:\n    13\n\n\
            Error:unexpected field\nExpected:\n    field_name:new_instance\n    type:AFunctionPointer\n\
            Found:\n    field_name:extra\n    type:u64\n\n\
            Error:unexpected field\nExpected:\n    field_name:drop_instance\nFound:\n    field_name:x\n";
        assert_eq!(
            summarize_layout_error(report),
            "prefix-types have a different prefix (expected 12, found 13); \
             unexpected field (expected `new_instance`, found `extra`); and 1 more"
        );
        assert_eq!(summarize_layout_error("something odd\nmore"), "something odd");
    }
}
