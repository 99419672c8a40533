//! Plain Rust types shared by hosts and plugins.
//!
//! [`BatchOp`] and [`BatchResult`] cross the ABI boundary as they are (a borrowed slice of them is
//! handed to the plugin), so they are `#[repr(C)]` and `StableAbi`; everything else is converted
//! to its counterpart in [`crate::ffi`] at the boundary.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::time::{Duration, SystemTime};

use abi_stable::StableAbi;

use crate::Op;

/// Why a call failed: the stable error code that crosses the boundary.
///
/// The numeric values are part of the ABI and never change.
/// Codes added by later minor versions are reported to older hosts as [`ErrorCode::Internal`].
#[repr(u8)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorCode {
    /// The divisor was zero.
    DivisionByZero = 1,
    /// An operand or a config value is not acceptable (NaN, infinity, out of a function's domain,
    /// a malformed or unknown config key).
    InvalidInput = 2,
    /// An operand is above the plugin's configured `max_value`.
    OutOfRange = 3,
    /// The result is not finite or is above the plugin's configured `max_value`.
    Overflow = 4,
    /// The plugin has not been initialized, or has been shut down.
    NotInitialized = 5,
    /// The plugin does not implement this operation.
    Unsupported = 6,
    /// The plugin panicked; the message is the panic's.
    PluginPanicked = 7,
    /// Any other failure inside the plugin.
    Internal = 8,
}

impl ErrorCode {
    /// Every code, in numeric order.
    pub const ALL: [ErrorCode; 8] = [
        ErrorCode::DivisionByZero,
        ErrorCode::InvalidInput,
        ErrorCode::OutOfRange,
        ErrorCode::Overflow,
        ErrorCode::NotInitialized,
        ErrorCode::Unsupported,
        ErrorCode::PluginPanicked,
        ErrorCode::Internal,
    ];

    /// The number that crosses the boundary.
    pub const fn as_u8(self) -> u8 {
        self as u8
    }

    /// The code for a number received across the boundary, or `None` if this version does not
    /// know it.
    pub const fn from_u8(raw: u8) -> Option<ErrorCode> {
        Some(match raw {
            1 => ErrorCode::DivisionByZero,
            2 => ErrorCode::InvalidInput,
            3 => ErrorCode::OutOfRange,
            4 => ErrorCode::Overflow,
            5 => ErrorCode::NotInitialized,
            6 => ErrorCode::Unsupported,
            7 => ErrorCode::PluginPanicked,
            8 => ErrorCode::Internal,
            _ => return None,
        })
    }

    /// The code's name as written in this enum, e.g. `DivisionByZero`.
    pub const fn name(self) -> &'static str {
        match self {
            ErrorCode::DivisionByZero => "DivisionByZero",
            ErrorCode::InvalidInput => "InvalidInput",
            ErrorCode::OutOfRange => "OutOfRange",
            ErrorCode::Overflow => "Overflow",
            ErrorCode::NotInitialized => "NotInitialized",
            ErrorCode::Unsupported => "Unsupported",
            ErrorCode::PluginPanicked => "PluginPanicked",
            ErrorCode::Internal => "Internal",
        }
    }

    /// A short lowercase description, e.g. `division by zero`.
    pub const fn description(self) -> &'static str {
        match self {
            ErrorCode::DivisionByZero => "division by zero",
            ErrorCode::InvalidInput => "invalid input",
            ErrorCode::OutOfRange => "input out of range",
            ErrorCode::Overflow => "result overflow",
            ErrorCode::NotInitialized => "plugin not initialized",
            ErrorCode::Unsupported => "unsupported operation",
            ErrorCode::PluginPanicked => "plugin panicked",
            ErrorCode::Internal => "internal plugin error",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.description())
    }
}

/// An error returned by a plugin: a stable [`ErrorCode`] and a human-readable message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CalcError {
    code: ErrorCode,
    message: String,
}

impl CalcError {
    /// An error with `code` and a message saying what exactly was wrong.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> CalcError {
        CalcError { code, message: message.into() }
    }

    /// The error's code.
    pub fn code(&self) -> ErrorCode {
        self.code
    }

    /// The error's message (without the code's description).
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for CalcError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.message.is_empty() {
            write!(f, "{}", self.code)
        } else {
            write!(f, "{}: {}", self.code, self.message)
        }
    }
}

impl std::error::Error for CalcError {}

/// The unit trigonometric operations read their operand in (interface 1.1).
#[repr(u8)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum AngleUnit {
    /// Radians (the default).
    #[default]
    Radians = 0,
    /// Degrees.
    Degrees = 1,
}

impl AngleUnit {
    /// The unit's name in config and on the command line: `radians` or `degrees`.
    pub const fn name(self) -> &'static str {
        match self {
            AngleUnit::Radians => "radians",
            AngleUnit::Degrees => "degrees",
        }
    }

    /// The unit for a number received across the boundary.
    pub const fn from_u8(raw: u8) -> Option<AngleUnit> {
        match raw {
            0 => Some(AngleUnit::Radians),
            1 => Some(AngleUnit::Degrees),
            _ => None,
        }
    }
}

impl fmt::Display for AngleUnit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for AngleUnit {
    type Err = String;

    fn from_str(s: &str) -> Result<AngleUnit, String> {
        match s {
            "radians" | "rad" => Ok(AngleUnit::Radians),
            "degrees" | "deg" => Ok(AngleUnit::Degrees),
            other => Err(format!("unknown angle unit {other:?} (expected radians or degrees)")),
        }
    }
}

/// The numeric code of an operation inside a [`BatchOp`].
///
/// This is a number rather than an enum because a host may send an operation that a plugin
/// built against an older interface does not know; the plugin answers
/// [`ErrorCode::Unsupported`] for that item.
#[repr(transparent)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct OpCode(u8);

impl OpCode {
    /// The raw number.
    pub const fn as_u8(self) -> u8 {
        self.0
    }

    /// A code from its raw number, known to this version or not.
    pub const fn from_u8(raw: u8) -> OpCode {
        OpCode(raw)
    }

    /// The operation, if this version of the interface knows the code.
    pub fn op(self) -> Option<Op> {
        Op::ALL.into_iter().find(|op| op.code() == self)
    }
}

/// One item of a batch: an operation and its operands.
///
/// For one-operand operations (`sin`, `cos`, `tan`, `sqrt`), `b` is ignored.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq)]
pub struct BatchOp {
    /// What to compute.
    pub op: OpCode,
    /// The first operand.
    pub a: f64,
    /// The second operand.
    pub b: f64,
}

impl BatchOp {
    /// A batch item for `op(a, b)`.
    pub const fn new(op: Op, a: f64, b: f64) -> BatchOp {
        BatchOp { op: op.code(), a, b }
    }
}

/// The result of one batch item: a value, or the code of the error that item hit.
///
/// Batch results carry no message, so that a batch allocates nothing;
/// [`ErrorCode::description`] says what the code means.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq)]
pub struct BatchResult {
    value: f64,
    /// `0` for success, else an [`ErrorCode`] number.
    code: u8,
}

impl BatchResult {
    /// A placeholder for a slot a plugin has not filled yet.
    pub const PENDING: BatchResult =
        BatchResult { value: f64::NAN, code: ErrorCode::Internal as u8 };

    /// A successful item.
    pub const fn ok(value: f64) -> BatchResult {
        BatchResult { value, code: 0 }
    }

    /// A failed item.
    pub const fn err(code: ErrorCode) -> BatchResult {
        BatchResult { value: f64::NAN, code: code.as_u8() }
    }

    /// A result from an ordinary `Result`.
    pub fn from_result(result: Result<f64, ErrorCode>) -> BatchResult {
        match result {
            Ok(value) => BatchResult::ok(value),
            Err(code) => BatchResult::err(code),
        }
    }

    /// The item's value, or its error code.
    ///
    /// A code this version does not know reads as [`ErrorCode::Internal`].
    pub fn result(&self) -> Result<f64, ErrorCode> {
        match self.code {
            0 => Ok(self.value),
            raw => Err(ErrorCode::from_u8(raw).unwrap_or(ErrorCode::Internal)),
        }
    }
}

/// The lifecycle state a plugin reports about itself in its [`Status`].
#[repr(u8)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum PluginState {
    /// Loaded, not yet initialized: calls are refused with [`ErrorCode::NotInitialized`].
    Uninitialized = 0,
    /// `initialize` is running.
    Initializing = 1,
    /// Serving calls.
    Ready = 2,
    /// The last `initialize` failed; the plugin may be initialized again.
    Error = 3,
    /// `shutdown` is running.
    ShuttingDown = 4,
    /// Shut down for good: calls are refused.
    Closed = 5,
}

impl PluginState {
    /// The state for a number received across the boundary.
    pub const fn from_u8(raw: u8) -> Option<PluginState> {
        Some(match raw {
            0 => PluginState::Uninitialized,
            1 => PluginState::Initializing,
            2 => PluginState::Ready,
            3 => PluginState::Error,
            4 => PluginState::ShuttingDown,
            5 => PluginState::Closed,
            _ => return None,
        })
    }

    /// The state's name, e.g. `ready`.
    pub const fn name(self) -> &'static str {
        match self {
            PluginState::Uninitialized => "uninitialized",
            PluginState::Initializing => "initializing",
            PluginState::Ready => "ready",
            PluginState::Error => "error",
            PluginState::ShuttingDown => "shutting-down",
            PluginState::Closed => "closed",
        }
    }
}

impl fmt::Display for PluginState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What a plugin says about itself: the seed's `StatusResponse`.
#[derive(Debug, Clone, PartialEq)]
pub struct Status {
    /// The plugin's lifecycle state.
    pub state: PluginState,
    /// A human-readable word on the state (e.g. why the last `initialize` failed).
    pub message: String,
    /// When the plugin was initialized, if it has been.
    pub started_at: Option<SystemTime>,
    /// How long the plugin has been initialized.
    pub uptime: Duration,
    /// How many calculations the plugin has been asked for (a batch counts each item).
    pub request_count: u64,
    /// The mean latency of the calculations the plugin timed, if it timed any.
    pub average_latency: Option<Duration>,
}

/// A config key a plugin accepts, for its [`Metadata`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigKey {
    /// The key, e.g. `precision`.
    pub key: String,
    /// The value used when the key is absent.
    pub default: String,
    /// What the key does and which values it takes.
    pub description: String,
}

/// What a plugin is: the seed's `MetadataResponse`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Metadata {
    /// The name hosts address the plugin by, e.g. `basic`.
    pub name: String,
    /// The plugin's own version, which must be valid semver.
    pub version: String,
    /// One line on what the plugin does.
    pub description: String,
    /// The names of the operations the plugin supports (see [`Op::name`]).
    pub operations: Vec<String>,
    /// The config keys `initialize` accepts.
    pub config: Vec<ConfigKey>,
}

impl Metadata {
    /// Metadata for a plugin that supports the four basic operations and takes no config.
    pub fn new(name: &str, version: &str, description: &str) -> Metadata {
        Metadata {
            name: name.to_owned(),
            version: version.to_owned(),
            description: description.to_owned(),
            operations: Op::BASIC.iter().map(|op| op.name().to_owned()).collect(),
            config: Vec::new(),
        }
    }

    /// The same metadata, also declaring the config key `key`.
    pub fn with_config_key(mut self, key: &str, default: &str, description: &str) -> Metadata {
        self.config.push(ConfigKey {
            key: key.to_owned(),
            default: default.to_owned(),
            description: description.to_owned(),
        });
        self
    }

    /// The same metadata, also listing `ops` among the supported operations.
    pub fn with_operations(mut self, ops: &[Op]) -> Metadata {
        for op in ops {
            if !self.supports(*op) {
                self.operations.push(op.name().to_owned());
            }
        }
        self
    }

    /// Whether the plugin lists `op` among its operations.
    pub fn supports(&self, op: Op) -> bool {
        self.operations.iter().any(|name| name == op.name())
    }
}

/// The string key/value configuration handed to `initialize`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Config {
    entries: BTreeMap<String, String>,
}

impl Config {
    /// An empty config: every key takes its default.
    pub fn new() -> Config {
        Config::default()
    }

    /// The same config with `key` set to `value`.
    pub fn with(mut self, key: &str, value: &str) -> Config {
        self.entries.insert(key.to_owned(), value.to_owned());
        self
    }

    /// The raw value of `key`, if set.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.entries.get(key).map(String::as_str)
    }

    /// Every entry, sorted by key.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.entries.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// Whether no key is set.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// How many keys are set.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// `key` parsed as a `T`, `None` if it is not set.
    ///
    /// # Errors
    ///
    /// [`ErrorCode::InvalidInput`] naming the key and the value if the value does not parse.
    pub fn parse<T: FromStr>(&self, key: &str) -> Result<Option<T>, CalcError>
    where
        T::Err: fmt::Display,
    {
        let Some(raw) = self.get(key) else { return Ok(None) };
        match raw.trim().parse::<T>() {
            Ok(value) => Ok(Some(value)),
            Err(err) => Err(CalcError::new(
                ErrorCode::InvalidInput,
                format!("config `{key}` = {raw:?}: {err}"),
            )),
        }
    }

    /// Refuses keys the plugin does not know, so that a typo is an error rather than a silently
    /// ignored setting.
    ///
    /// # Errors
    ///
    /// [`ErrorCode::InvalidInput`] naming the first unknown key and the accepted ones.
    pub fn expect_only(&self, known: &[&str]) -> Result<(), CalcError> {
        match self.entries.keys().find(|key| !known.contains(&key.as_str())) {
            None => Ok(()),
            Some(key) => Err(CalcError::new(
                ErrorCode::InvalidInput,
                format!("unknown config key `{key}` (accepted: {})", known.join(", ")),
            )),
        }
    }
}

impl<K: Into<String>, V: Into<String>> FromIterator<(K, V)> for Config {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Config {
        Config { entries: iter.into_iter().map(|(k, v)| (k.into(), v.into())).collect() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn angle_units_parse_and_round_trip() {
        assert_eq!("degrees".parse::<AngleUnit>(), Ok(AngleUnit::Degrees));
        assert_eq!("rad".parse::<AngleUnit>(), Ok(AngleUnit::Radians));
        assert!("gradians".parse::<AngleUnit>().is_err());
        for unit in [AngleUnit::Radians, AngleUnit::Degrees] {
            assert_eq!(AngleUnit::from_u8(unit as u8), Some(unit));
        }
        assert_eq!(AngleUnit::from_u8(7), None);
    }

    #[test]
    fn error_codes_round_trip_and_unknown_codes_are_none() {
        for code in ErrorCode::ALL {
            assert_eq!(ErrorCode::from_u8(code.as_u8()), Some(code));
        }
        assert_eq!(ErrorCode::from_u8(0), None);
        assert_eq!(ErrorCode::from_u8(200), None);
    }

    #[test]
    fn unknown_op_codes_are_none() {
        assert_eq!(OpCode::from_u8(0).op(), None);
        assert_eq!(OpCode::from_u8(99).op(), None);
    }

    #[test]
    fn batch_result_reads_back_what_was_written() {
        assert_eq!(BatchResult::ok(2.5).result(), Ok(2.5));
        assert_eq!(BatchResult::err(ErrorCode::Overflow).result(), Err(ErrorCode::Overflow));
        assert_eq!(BatchResult::PENDING.result(), Err(ErrorCode::Internal));
    }

    #[test]
    fn config_parse_names_the_key_on_error() {
        let config: Config = [("precision", "ten"), ("max_value", " 1e10 ")].into_iter().collect();
        assert_eq!(config.parse::<f64>("max_value"), Ok(Some(1e10)));
        assert_eq!(config.parse::<u32>("absent"), Ok(None));
        let err = config.parse::<u32>("precision").unwrap_err();
        assert_eq!(err.code(), ErrorCode::InvalidInput);
        assert!(err.to_string().contains("`precision` = \"ten\""), "{err}");
    }

    #[test]
    fn config_expect_only_names_the_unknown_key() {
        let config = Config::new().with("precison", "3");
        let err = config.expect_only(&["precision", "max_value"]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid input: unknown config key `precison` (accepted: precision, max_value)"
        );
        assert_eq!(Config::new().with("precision", "3").expect_only(&["precision"]), Ok(()));
    }
}
