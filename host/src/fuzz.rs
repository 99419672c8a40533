//! Property tests over untrusted input that has no better home: the config file parser.
//!
//! The other fuzz targets sit next to their code (`remote::wire`, `remote::runner`,
//! `loader`, `loader::ffi`, `plugin`, `security`), all named `fuzz_*`. They run in the normal
//! test suite with proptest's default 256 cases; for a longer run:
//! `PROPTEST_CASES=100000 cargo test -p host --release fuzz_`.

use std::path::Path;

use crate::{Error, ManagerConfig};

proptest::proptest! {
    /// Any text gives a config or an error naming the file, never a panic.
    #[test]
    fn fuzz_config_text_never_panics(text in "\\PC{0,400}") {
        if let Err(err) = ManagerConfig::parse(&text, Path::new("calcplug.toml")) {
            proptest::prop_assert!(err.to_string().contains("calcplug.toml"), "{}", err);
        }
    }

    /// Config-shaped text with arbitrary keys and values, which reaches the key and type
    /// checks: it parses, or the error names the line and the dotted key at fault.
    #[test]
    fn fuzz_config_shaped_text_is_parsed_or_blamed_on_its_line_and_key(
        section in "(discovery|security|plugins\\.basic|metrics|retry|[a-z]{1,8})",
        key in "[a-z_]{1,16}",
        value in "(\"[ -~]{0,20}\"|[0-9]{1,12}|true|false|\\[\\]|[0-9.e+-]{1,10})",
    ) {
        let text = format!("[{section}]\n{key} = {value}\n");
        match ManagerConfig::parse(&text, Path::new("calcplug.toml")) {
            Ok(_) => {}
            Err(Error::Config { line, key: at, message, .. }) => {
                let dotted = format!("{section}.{key}");
                proptest::prop_assert!(
                    // A value that is not TOML (`1e`, `-`) is a syntax error on its line, or at
                    // the end of the text for an unclosed one (`""""` opens a multi-line string).
                    (line == 2 && at == dotted)
                        || ((line == 2 || line == 3) && at == "(syntax)")
                        || (line == 1 && at == section),
                    "{text:?}: line {line}, key {at:?}: {message}"
                );
            }
            Err(other) => proptest::prop_assert!(false, "{text:?}: not a config error: {other}"),
        }
    }
}
