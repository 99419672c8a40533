//! What the plugin manager adds to a call: `Plugin::add` directly, then `Handle::add` with
//! latency timing off, sampled 1 in 1024 (the default) and 1 in 64, and on every call, then
//! `PluginManager::call` (which also looks the plugin up by name). Each keeps the call's value
//! (NaN for an error), as a caller does, rather than the whole `Result` (see `value` in
//! `calls.rs`).
//!
//! `cargo bench -p host --bench manager`; `cargo xtask bench-report` records the default path as
//! the `metrics on` row of `BENCHMARKS.md`.
//! The `basic` plugin is built in release mode for it, into `target/bench-artifacts`.

use std::hint::black_box;
use std::path::{Path, PathBuf};

use criterion::{criterion_group, criterion_main, Criterion};
use host::{Config, ManagerConfig, Op, PluginManager};

fn manager(dir: &Path, sample_every: u64) -> PluginManager {
    let text = format!(
        "[discovery]\npaths = [{:?}]\n[metrics]\nsample_every = {sample_every}\n",
        dir.display().to_string()
    );
    let config = ManagerConfig::parse(&text, Path::new("bench.toml")).expect("valid config");
    PluginManager::start(config).expect("the manager starts")
}

/// Builds the `basic` plugin in release mode and installs it in a directory of its own.
fn release_plugin_dir() -> PathBuf {
    let root = xtask::workspace_root();
    let out = root.join("target").join("bench-artifacts");
    let packages = ["basic".to_owned()];
    let request = xtask::BuildRequest {
        packages: &packages,
        release: true,
        target_dir: Some(&out),
        quiet: true,
    };
    let built = xtask::build(&root, &request).expect("build the basic plugin");
    let libraries: Vec<_> =
        built.into_iter().filter(|a| a.kind == xtask::ArtifactKind::Cdylib).collect();
    let dir = out.join("plugins");
    xtask::install(&libraries, &dir).expect("install the basic plugin");
    dir
}

fn calls(c: &mut Criterion) {
    let plugin_dir = release_plugin_dir();
    let plugin =
        host::load(plugin_dir.join(tests::library_file_name("basic"))).expect("basic loads");
    plugin.initialize(&Config::new()).expect("basic initializes");
    let mut group = c.benchmark_group("add");
    group.bench_function("plugin", |b| {
        b.iter(|| plugin.add(black_box(1.0), black_box(2.0)).unwrap_or(f64::NAN));
    });
    for (label, sample_every) in [
        ("handle_timing_off", 0),
        ("handle_sampled_1_in_1024", 1024),
        ("handle_sampled_1_in_64", 64),
        ("handle_timed_every_call", 1),
    ] {
        let manager = manager(&plugin_dir, sample_every);
        let handle = manager.get("basic").expect("basic is managed");
        group.bench_function(label, |b| {
            b.iter(|| handle.add(black_box(1.0), black_box(2.0)).unwrap_or(f64::NAN));
        });
        if sample_every == 1024 {
            group.bench_function("manager_call_by_name", |b| {
                b.iter(|| {
                    manager
                        .call(black_box("basic"), Op::Add, black_box(1.0), black_box(2.0))
                        .unwrap_or(f64::NAN)
                });
            });
        }
    }
    group.finish();
}

criterion_group!(benches, calls);
criterion_main!(benches);
