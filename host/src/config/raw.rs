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
    pub(super) serve: Option<RawServe>,
    pub(super) plugins: Option<BTreeMap<String, RawPlugin>>,
}

/// A `[plugins.NAME]` table, key by key.
pub(super) type RawPlugin = BTreeMap<String, Spanned<PluginValue>>;

impl RawConfig {
    /// Each section's name and keys: what `CALCPLUG_<SECTION>_<KEY>` may name.
    pub(super) const SECTIONS: [(&'static str, &'static [&'static str]); 7] = [
        ("discovery", RawDiscovery::KEYS),
        ("manager", RawManager::KEYS),
        ("metrics", RawMetrics::KEYS),
        ("retry", RawRetry::KEYS),
        ("security", RawSecurity::KEYS),
        ("isolation", RawIsolation::KEYS),
        ("serve", RawServe::KEYS),
    ];

    /// `layer`'s keys replace this one's (an environment variable over the file).
    pub(super) fn overlay(&mut self, layer: RawConfig) {
        fn section<T: Default>(mine: &mut Option<T>, theirs: Option<T>, overlay: fn(&mut T, T)) {
            if let Some(theirs) = theirs {
                overlay(mine.get_or_insert_with(T::default), theirs);
            }
        }
        section(&mut self.discovery, layer.discovery, RawDiscovery::overlay);
        section(&mut self.manager, layer.manager, RawManager::overlay);
        section(&mut self.metrics, layer.metrics, RawMetrics::overlay);
        section(&mut self.retry, layer.retry, RawRetry::overlay);
        section(&mut self.security, layer.security, RawSecurity::overlay);
        section(&mut self.isolation, layer.isolation, RawIsolation::overlay);
        section(&mut self.serve, layer.serve, RawServe::overlay);
        section(&mut self.plugins, layer.plugins, |mine, theirs| {
            for (name, table) in theirs {
                mine.entry(name).or_default().extend(table);
            }
        });
    }
}

/// A section of the file: its struct with every key optional, its list of keys, and how a
/// layer over it replaces the keys it sets. Written once per section so that the three cannot
/// disagree.
macro_rules! section {
    ($(#[$doc:meta])* $name:ident { $($(#[$key_doc:meta])* $key:ident: $ty:ty,)* }) => {
        $(#[$doc])*
        #[derive(Debug, Default, Deserialize)]
        #[serde(deny_unknown_fields)]
        pub(super) struct $name {
            $($(#[$key_doc])* pub(super) $key: Option<$ty>,)*
        }

        impl $name {
            pub(super) const KEYS: &'static [&'static str] = &[$(stringify!($key)),*];

            fn overlay(&mut self, layer: $name) {
                $(if layer.$key.is_some() {
                    self.$key = layer.$key;
                })*
            }
        }
    };
}

section!(RawDiscovery {
    paths: Spanned<Vec<Spanned<String>>>,
    auto_scan: bool,
    scan_interval: Spanned<String>,
});

section!(RawManager {
    shutdown_timeout: Spanned<String>,
    health_interval: Spanned<String>,
});

section!(RawMetrics {
    sample_every: Spanned<u64>,
});

section!(RawRetry {
    max_retries: u32,
    backoff: Spanned<String>,
    max_backoff: Spanned<String>,
    retryable: Spanned<Vec<Spanned<String>>>,
});

section!(RawSecurity {
    integrity: Spanned<String>,
    manifest: Spanned<String>,
    trusted_keys: Vec<Spanned<String>>,
    check_permissions: bool,
    probe: bool,
    probe_timeout: Spanned<String>,
    on_panic: Spanned<String>,
    /// The seed's name for it: `true` is `integrity = "enforce"`.
    verify_signatures: bool,
    /// `calcplug serve`: TLS on its listener (the seed's key); `false` serves plaintext.
    enable_tls: bool,
    cert_file: Spanned<String>,
    key_file: Spanned<String>,
    client_ca_file: Spanned<String>,
});

section!(RawIsolation {
    mode: Spanned<String>,
    call_timeout: Spanned<String>,
    start_timeout: Spanned<String>,
    retries: u32,
    max_failures: u32,
    failure_window: Spanned<String>,
    circuit_cooldown: Spanned<String>,
    max_circuit_cooldown: Spanned<String>,
    runner: String,
    auto_mtls: bool,
    transport: Spanned<String>,
});

section!(RawServe {
    listen: Spanned<String>,
    metrics_listen: Spanned<String>,
    health_listen: Spanned<String>,
    drain_grace: Spanned<String>,
});

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
