//! `CALCPLUG_*` environment variables over the file: every key of `calcplug.toml` has one.
//!
//! `[section] key` is `CALCPLUG_<SECTION>_<KEY>` (`isolation.call_timeout` is
//! `CALCPLUG_ISOLATION_CALL_TIMEOUT`); a `[plugins.NAME]` key is
//! `CALCPLUG_PLUGINS__<NAME>__<KEY>`, with `-` in a name written `_`. A value is read as a
//! TOML value when it is one (`5`, `true`, `["a", "b"]`), else as a string (`5s`,
//! `0.0.0.0:7443`). Each variable becomes a one-key TOML document of its own, read with the
//! file's schema, so a wrong type or an unknown key is the same error as in the file, naming
//! the variable.

use super::raw::RawConfig;
use crate::Error;

/// The prefix of every variable this module reads.
const PREFIX: &str = "CALCPLUG_";
/// `CALCPLUG_PLUGINS__<NAME>__<KEY>`: names and keys may hold `_`, so `__` separates them.
const PLUGINS: &str = "PLUGINS__";

/// One variable that sets one key.
#[derive(Debug, Clone)]
pub(super) struct Override {
    /// The variable, e.g. `CALCPLUG_ISOLATION_CALL_TIMEOUT`.
    pub(super) var: String,
    /// The dotted key it sets, e.g. `isolation.call_timeout`.
    pub(super) key: String,
    /// The key and its value as a TOML document.
    document: String,
}

impl Override {
    /// The error for a bad value of this variable.
    #[cold]
    pub(super) fn fail(&self, key: &str, message: String) -> Error {
        Error::ConfigEnv { var: self.var.clone(), key: key.to_owned(), message }
    }

    /// Reads the variable's document with the file's schema.
    pub(super) fn layer(&self) -> Result<RawConfig, Error> {
        toml::from_str(&self.document).map_err(|err| self.fail(&self.key, err.message().into()))
    }
}

/// The overrides among `vars` (sorted by key, so that the first error is always the same one);
/// `plugins` are the file's plugin tables, for the names a variable cannot spell (`go-calc`).
/// Variables whose name starts with neither `CALCPLUG_PLUGINS__` nor `CALCPLUG_<SECTION>_` are
/// not config keys (`CALCPLUG_LOG`, `CALCPLUG_CONFIG`, …) and are left alone.
///
/// # Errors
///
/// [`Error::ConfigEnv`] for a variable that names a section but no key of it, or a plugin
/// variable without both a name and a key.
pub(super) fn overrides<'a>(
    vars: impl IntoIterator<Item = (String, String)>,
    plugins: impl Iterator<Item = &'a String> + Clone,
) -> Result<Vec<Override>, Error> {
    let mut found = Vec::new();
    for (var, value) in vars {
        let Some(rest) = var.strip_prefix(PREFIX) else { continue };
        let (table, key) = if let Some(plugin) = rest.strip_prefix(PLUGINS) {
            let Some((name, key)) =
                plugin.split_once("__").filter(|(n, k)| !n.is_empty() && !k.is_empty())
            else {
                return Err(Error::ConfigEnv {
                    var,
                    key: "plugins".into(),
                    message: "expected CALCPLUG_PLUGINS__<NAME>__<KEY>, e.g. \
                              CALCPLUG_PLUGINS__BASIC__PRECISION"
                        .into(),
                });
            };
            let spelled = |known: &&String| known.to_uppercase().replace('-', "_") == name;
            let name = match plugins.clone().find(spelled) {
                Some(known) => known.clone(),
                None => name.to_lowercase(),
            };
            (format!("plugins.{}", quoted(&name)), key.to_lowercase())
        } else {
            let Some((section, keys, key)) = section_of(rest) else { continue };
            let key = key.to_lowercase();
            if !keys.contains(&key.as_str()) {
                let spelled: Vec<String> = keys.iter().map(|key| variable(section, key)).collect();
                return Err(Error::ConfigEnv {
                    var,
                    key: format!("{section}.{key}"),
                    message: format!(
                        "[{section}] has no such key (its variables: {})",
                        spelled.join(", ")
                    ),
                });
            }
            ((*section).to_owned(), key)
        };
        let value = if is_toml_value(&value) { value } else { quoted(&value) };
        let document = format!("[{table}]\n{key} = {value}\n");
        let key = format!("{}.{key}", table.replace('"', ""));
        found.push(Override { var, key, document });
    }
    found.sort_by(|a, b| a.key.cmp(&b.key));
    Ok(found)
}

/// The section `rest` (a variable's name after `CALCPLUG_`) names, its keys, and the rest of
/// the name after `<SECTION>_`.
fn section_of(rest: &str) -> Option<(&'static str, &'static [&'static str], &str)> {
    RawConfig::SECTIONS.iter().find_map(|&(section, keys)| {
        let head = rest.get(..section.len())?;
        let key = rest.get(section.len()..)?.strip_prefix('_')?;
        (head.eq_ignore_ascii_case(section) && !key.is_empty()).then_some((section, keys, key))
    })
}

/// Whether `var` is one of the config's variables, right or wrong: `CALCPLUG_PLUGINS__…` or
/// `CALCPLUG_<SECTION>_…` for a section of the file.
pub(super) fn is_config_variable(var: &str) -> bool {
    var.strip_prefix(PREFIX)
        .is_some_and(|rest| rest.starts_with(PLUGINS) || section_of(rest).is_some())
}

/// The variable for `[section] key`.
pub(super) fn variable(section: &str, key: &str) -> String {
    format!("{PREFIX}{}_{}", section.to_uppercase(), key.to_uppercase())
}

/// Whether `text` is a TOML value as it stands (a number, a boolean, an array, a quoted string).
fn is_toml_value(text: &str) -> bool {
    // One line, so that a value cannot add keys of its own.
    !text.contains(['\n', '\r']) && toml::from_str::<toml::Table>(&format!("v = {text}")).is_ok()
}

/// `text` as a TOML basic string.
fn quoted(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}
