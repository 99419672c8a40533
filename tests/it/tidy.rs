//! House rules, checked mechanically over the workspace's sources.

use std::fs;
use std::path::{Path, PathBuf};

/// Files allowed to contain `unsafe` blocks, `unsafe impl` or `unsafe fn` bodies.
const UNSAFE_ALLOWED: &[&str] = &[
    "host/src/loader/ffi.rs",
    // The serving library read without a reference count on the manager's call path.
    "host/src/manager/generations.rs",
    // The shared-memory lanes to runners: mapping, header words, bounds-checked copies.
    "host/src/remote/shm.rs",
    "interface/src/plugin/export.rs",
    // The thread pointer: a plugin's counter shard without `__tls_get_addr`.
    "interface/src/plugin/thread.rs",
    // Fixtures that raise SIGSEGV on purpose.
    "tests/fixtures/crashy/src/lib.rs",
    "tests/fixtures/hostile-ctor-crash/src/lib.rs",
    // The frozen interface 1.0 and the minimal host built against it.
    "tests/compat/interface-v1_0/src/plugin.rs",
    "tests/compat/host-v1_0/src/main.rs",
];

/// Files allowed to print: binaries and test support.
const PRINT_ALLOWED_PREFIXES: &[&str] =
    &["host/cli/", "host/benches/", "host/examples/", "xtask/", "tests/"];

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
        // A build script talks to cargo on stdout (`cargo:rerun-if-changed=…`).
        if PRINT_ALLOWED_PREFIXES.iter().any(|p| path.starts_with(p)) || path.ends_with("/build.rs")
        {
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
    names.extend(["interface", "host", "calcplug", "tests", "xtask"].map(String::from));
    for name in names {
        assert!(
            architecture.contains(&format!("`{name}`"))
                || architecture.contains(&format!("{name}`")),
            "ARCHITECTURE.md does not name the crate `{name}`"
        );
    }
}

#[test]
fn architecture_names_exactly_the_library_files_allowed_unsafe() {
    let architecture = fs::read_to_string(root().join("ARCHITECTURE.md")).unwrap();
    let mut named: Vec<&str> = architecture
        .lines()
        .filter(|line| line.contains("Architecture Invariant") && line.contains("`unsafe`"))
        .flat_map(|line| line.split('`').skip(1).step_by(2))
        .filter(|word| word.ends_with(".rs"))
        .collect();
    named.sort_unstable();
    named.dedup();
    let mut allowed: Vec<&str> = UNSAFE_ALLOWED
        .iter()
        .copied()
        .filter(|path| path.starts_with("host/") || path.starts_with("interface/"))
        .collect();
    allowed.sort_unstable();
    assert_eq!(named, allowed, "ARCHITECTURE.md's `unsafe` invariants vs the tidy list");
}

/// The frozen copies are the compatibility tests' oracles: "fixing" one would make its test
/// test nothing. Each one's files hash to this (FNV-1a over each path and content, in order).
const FROZEN: &[(&str, u64)] =
    &[("interface-v1_0", 0x30ff_6b12_3e97_891f), ("proto-v1", 0xa646_f549_df1a_4509)];

#[test]
fn the_frozen_copies_are_unchanged() {
    for (name, expected) in FROZEN {
        let dir = root().join("tests").join("compat").join(name);
        let mut files = Vec::new();
        collect_all(&dir, &mut files);
        files.sort();
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        for path in &files {
            let rel = path.strip_prefix(&dir).unwrap().to_string_lossy().replace('\\', "/");
            for byte in rel.bytes().chain(fs::read(path).unwrap()) {
                hash = (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3);
            }
        }
        assert_eq!(
            hash,
            *expected,
            "tests/compat/{name} changed ({} files, hash {hash:#018x}): it is frozen; restore it",
            files.len()
        );
    }
}

fn collect_all(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            collect_all(&path, out);
        } else {
            out.push(path);
        }
    }
}

#[test]
fn the_host_library_has_no_cli_dependencies() {
    let manifest = fs::read_to_string(root().join("host").join("Cargo.toml")).unwrap();
    let mut section = "";
    let mut found = Vec::new();
    for line in manifest.lines().map(str::trim) {
        if line.starts_with('[') {
            section = line;
            continue;
        }
        let name = line.split(['=', '.', ' ']).next().unwrap_or("");
        let cli = ["clap", "anyhow", "ctrlc", "serde_json", "tracing-subscriber"];
        if section.ends_with("dependencies]") && !section.contains("dev-") && cli.contains(&name) {
            found.push(format!("{section} {name}"));
        }
    }
    assert!(found.is_empty(), "host/Cargo.toml: CLI crates belong to host/cli: {found:?}");
}
