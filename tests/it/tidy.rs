//! House rules, checked mechanically over the workspace's sources.

use std::fs;
use std::path::{Path, PathBuf};

/// Files allowed to contain `unsafe` blocks, `unsafe impl` or `unsafe fn` bodies.
const UNSAFE_ALLOWED: &[&str] = &[
    "host/src/loader/ffi.rs",
    // The serving library read without a reference count on the manager's call path.
    "host/src/manager/generations.rs",
    "interface/src/plugin.rs",
    // Fixtures that raise SIGSEGV on purpose.
    "tests/fixtures/crashy/src/lib.rs",
    "tests/fixtures/hostile-ctor-crash/src/lib.rs",
    // The frozen interface 1.0 and the minimal host built against it.
    "tests/compat/interface-v1_0/src/plugin.rs",
    "tests/compat/host-v1_0/src/main.rs",
];

/// Files allowed to print: binaries and test support.
const PRINT_ALLOWED_PREFIXES: &[&str] =
    &["host/src/main.rs", "host/src/cli_", "host/benches/", "xtask/", "tests/"];

fn root() -> PathBuf {
    xtask::workspace_root()
}

fn rust_files() -> Vec<(String, String)> {
    let root = root();
    let mut files = Vec::new();
    for top in ["interface", "host", "plugins", "tests", "xtask"] {
        collect(&root.join(top), &mut files);
    }
    files
        .into_iter()
        .map(|path| {
            let rel = path.strip_prefix(&root).unwrap().to_string_lossy().replace('\\', "/");
            let text = fs::read_to_string(&path).unwrap();
            (rel, text)
        })
        .collect()
}

fn collect(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            if path.file_name().is_some_and(|n| n == "target") {
                continue;
            }
            collect(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn every_rust_file_starts_with_a_module_doc() {
    for (path, text) in rust_files() {
        assert!(text.starts_with("//!"), "{path} does not start with a `//!` module doc");
    }
}

#[test]
fn unsafe_only_where_allowed_and_always_justified() {
    let block = ["unsafe", " {"].concat();
    let implementation = ["unsafe", " impl"].concat();
    for (path, text) in rust_files() {
        let lines: Vec<&str> = text.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            let code = line.split("//").next().unwrap_or("");
            if !(code.contains(&block) || code.contains(&implementation)) {
                continue;
            }
            assert!(
                UNSAFE_ALLOWED.contains(&path.as_str()),
                "{path}:{}: `unsafe` outside {UNSAFE_ALLOWED:?}",
                i + 1
            );
            let justified = lines[i.saturating_sub(12)..=i].iter().any(|l| l.contains("SAFETY:"));
            assert!(justified, "{path}:{}: `unsafe` without a `// SAFETY:` comment above", i + 1);
        }
    }
}

#[test]
fn libraries_do_not_print() {
    let macros = [["print", "ln!"].concat(), ["eprint", "ln!"].concat(), ["db", "g!"].concat()];
    for (path, text) in rust_files() {
        if PRINT_ALLOWED_PREFIXES.iter().any(|p| path.starts_with(p)) {
            continue;
        }
        for m in &macros {
            assert!(!text.contains(m.as_str()), "{path} uses {m}: library code logs with tracing");
        }
    }
}

#[test]
fn no_should_panic_or_ignored_tests() {
    let banned = [["#[should", "_panic"].concat(), ["#[ig", "nore"].concat()];
    for (path, text) in rust_files() {
        for b in &banned {
            assert!(!text.contains(b.as_str()), "{path} uses {b}: assert the behaviour instead");
        }
    }
}

#[test]
fn architecture_names_every_crate() {
    let architecture = fs::read_to_string(root().join("ARCHITECTURE.md")).unwrap();
    let packages = xtask::plugin_packages(&root(), xtask::PackageSet::All).unwrap();
    let mut names: Vec<String> = packages.into_iter().map(|p| p.name).collect();
    names.extend(["interface", "host", "tests", "xtask"].map(String::from));
    for name in names {
        assert!(
            architecture.contains(&format!("`{name}`"))
                || architecture.contains(&format!("{name}`")),
            "ARCHITECTURE.md does not name the crate `{name}`"
        );
    }
}
