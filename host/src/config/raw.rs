//! The config file's schema, as `serde` reads it: every key optional, with its span for
//! errors that name the line. What the values mean is `parse`'s business.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;
use toml::Spanned;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    pub(super) discovery: Option<RawDiscovery>,
    pub(super) manager: Option<RawManager>,
    pub(super) metrics: Option<RawMetrics>,
    pub(super) retry: Option<RawRetry>,
    pub(super) security: Option<RawSecurity>,
    pub(super) isolation: Option<RawIsolation>,
    pub(super) plugins: Option<BTreeMap<String, BTreeMap<String, Spanned<PluginValue>>>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDiscovery {
    pub(super) paths: Option<Spanned<Vec<Spanned<String>>>>,
    pub(super) auto_scan: Option<bool>,
    pub(super) scan_interval: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawManager {
    pub(super) shutdown_timeout: Option<Spanned<String>>,
    pub(super) health_interval: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawMetrics {
    pub(super) sample_every: Option<Spanned<u64>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRetry {
    pub(super) max_retries: Option<u32>,
    pub(super) backoff: Option<Spanned<String>>,
    pub(super) max_backoff: Option<Spanned<String>>,
    pub(super) retryable: Option<Spanned<Vec<Spanned<String>>>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSecurity {
    pub(super) integrity: Option<Spanned<String>>,
    pub(super) manifest: Option<Spanned<String>>,
    pub(super) trusted_keys: Option<Vec<Spanned<String>>>,
    pub(super) check_permissions: Option<bool>,
    pub(super) probe: Option<bool>,
    pub(super) probe_timeout: Option<Spanned<String>>,
    pub(super) on_panic: Option<Spanned<String>>,
    /// The seed's name for it: `true` is `integrity = "enforce"`.
    pub(super) verify_signatures: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawIsolation {
    pub(super) mode: Option<Spanned<String>>,
    pub(super) call_timeout: Option<Spanned<String>>,
    pub(super) start_timeout: Option<Spanned<String>>,
    pub(super) retries: Option<u32>,
    pub(super) max_failures: Option<u32>,
    pub(super) failure_window: Option<Spanned<String>>,
    pub(super) circuit_cooldown: Option<Spanned<String>>,
    pub(super) max_circuit_cooldown: Option<Spanned<String>>,
    pub(super) runner: Option<String>,
    pub(super) auto_mtls: Option<bool>,
}

/// A value of a `[plugins.NAME]` table: a string, number or boolean (handed to `initialize` as
/// a string), or an array of strings (`command`).
#[derive(Debug)]
pub(super) enum PluginValue {
    Scalar(String),
    List(Vec<String>),
}

impl<'de> Deserialize<'de> for PluginValue {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<PluginValue, D::Error> {
        struct Value;
        impl<'de> Visitor<'de> for Value {
            type Value = PluginValue;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string, number, boolean or array of strings")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<PluginValue, E> {
                Ok(PluginValue::Scalar(v.to_owned()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<PluginValue, E> {
                Ok(PluginValue::Scalar(v.to_string()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<PluginValue, E> {
                Ok(PluginValue::Scalar(v.to_string()))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<PluginValue, E> {
                // `Debug` keeps `1e100` short where `Display` writes out 101 digits.
                Ok(PluginValue::Scalar(format!("{v:?}")))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<PluginValue, E> {
                Ok(PluginValue::Scalar(v.to_string()))
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<PluginValue, A::Error> {
                let mut items = Vec::new();
                while let Some(item) = seq.next_element::<PluginValue>()? {
                    match item {
                        PluginValue::Scalar(text) => items.push(text),
                        PluginValue::List(_) => {
                            return Err(de::Error::custom("expected no array inside an array"))
                        }
                    }
                }
                Ok(PluginValue::List(items))
            }
        }
        deserializer.deserialize_any(Value)
    }
}
