//! `N` calls of `add(1, 2)` on one plugin, for instruction counts of the call path:
//!
//! ```text
//! cargo build --release --example call_path -p host && cargo xtask build-plugins --release
//! valgrind --tool=callgrind target/release/examples/call_path plugin LIB 1000000
//! valgrind --tool=callgrind target/release/examples/call_path plugin LIB 0
//! ```
//!
//! The difference of the two totals over `N` is what one call costs (`plugin`: `Plugin::add`;
//! `handle`: `Handle::add`, through the plugin manager; the references of `host::reference`,
//! which ignore `LIB`: `bare`, `Plugin::add` of a built-in plugin that only adds; `checked`
//! and `counted`, `basic`'s work through `&dyn Calculator`, without and with its counters).
//! Run natively it also prints the time per call, loading included (so use a large `N`): a
//! rough figure beside `calcplug bench`'s.

#![allow(clippy::print_stderr)]

use std::hint::black_box;
use std::path::PathBuf;
use std::process::ExitCode;

use host::reference::{BareAdder, Checked, Counted};
use host::{Config, ManagerConfig, PluginManager};
use interface::plugin::Calculator;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [how, library, n] = args.as_slice() else {
        eprintln!("usage: call_path plugin|handle|bare|checked|counted LIBRARY N");
        return ExitCode::from(2);
    };
    let Ok(n) = n.parse::<u64>() else {
        eprintln!("call_path: N must be a number, not `{n}`");
        return ExitCode::from(2);
    };
    let library = PathBuf::from(library);
    let started = std::time::Instant::now();
    let result = match how.as_str() {
        "plugin" => host::load(&library).and_then(|plugin| {
            plugin.initialize(&Config::new())?;
            for _ in 0..n {
                black_box(plugin.add(black_box(1.0), black_box(2.0)).unwrap_or(f64::NAN));
            }
            plugin.shutdown()
        }),
        "bare" => host::load_builtin::<BareAdder>().map(|plugin| {
            for _ in 0..n {
                black_box(plugin.add(black_box(1.0), black_box(2.0)).unwrap_or(f64::NAN));
            }
        }),
        "checked" => {
            dyn_calls(&Checked::default(), n);
            Ok(())
        }
        "counted" => {
            dyn_calls(&Counted::default(), n);
            Ok(())
        }
        "handle" => {
            let dir = library.parent().map(PathBuf::from).unwrap_or_default();
            let name = library
                .file_stem()
                .and_then(|s| s.to_str())
                .map(|s| s.trim_start_matches("lib").to_owned())
                .unwrap_or_default();
            let config = ManagerConfig::defaults().with_paths(&[dir]).with_auto_scan(false);
            PluginManager::start(config).map(|manager| {
                let Some(handle) = manager.get(&name) else {
                    eprintln!("call_path: the manager does not serve `{name}`");
                    return;
                };
                for _ in 0..n {
                    black_box(handle.add(black_box(1.0), black_box(2.0)).unwrap_or(f64::NAN));
                }
            })
        }
        other => {
            eprintln!("call_path: `{other}` is neither `plugin` nor `handle`");
            return ExitCode::from(2);
        }
    };
    if n > 0 {
        let ns = started.elapsed().as_secs_f64() * 1e9 / n as f64;
        eprintln!("call_path: {n} calls ({how}), {ns:.2} ns each, loading included");
    }
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("call_path: {err}");
            ExitCode::FAILURE
        }
    }
}

fn dyn_calls(reference: &dyn Calculator, n: u64) {
    if let Err(err) = reference.initialize(&Config::new()) {
        eprintln!("call_path: {err}");
        return;
    }
    for _ in 0..n {
        black_box(black_box(reference).add(black_box(1.0), black_box(2.0)).unwrap_or(f64::NAN));
    }
}
