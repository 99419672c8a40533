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
//!
//! `call_path paired LIB SECONDS` times `Plugin::add` and `Handle::add` in interleaved rounds
//! instead and prints what the manager adds, paired within each round as `calcplug bench`
//! does; `CALCPLUG_SAMPLE_EVERY` sets the manager's `metrics.sample_every` for it.

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
        eprintln!("       call_path paired LIBRARY SECONDS");
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
            let (dir, name) = dir_and_name(&library);
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
        "paired" => paired(&library, n),
        other => {
            eprintln!("call_path: `{other}` is not a mode (plugin, handle, paired, bare, checked, counted)");
            return ExitCode::from(2);
        }
    };
    if n > 0 && how != "paired" {
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

/// `Plugin::add` and `Handle::add` on the same library, timed in interleaved rounds for
/// `seconds`: prints each one's median and the median of their difference within a round
/// (what `calcplug bench` calls `metrics_overhead_paired`), with its middle half.
fn paired(library: &std::path::Path, seconds: u64) -> Result<(), host::Error> {
    let plugin = host::load(library)?;
    plugin.initialize(&Config::new())?;
    let (dir, name) = dir_and_name(library);
    // `CALCPLUG_SAMPLE_EVERY` sets `metrics.sample_every`, to see what timing costs.
    let config = match std::env::var("CALCPLUG_SAMPLE_EVERY") {
        Ok(every) => ManagerConfig::parse(
            &format!("[metrics]\nsample_every = {every}\n"),
            std::path::Path::new("CALCPLUG_SAMPLE_EVERY"),
        )?,
        Err(_) => ManagerConfig::defaults(),
    };
    let config = config.with_paths(&[dir]).with_auto_scan(false);
    let manager = PluginManager::start(config)?;
    let Some(handle) = manager.get(&name) else {
        eprintln!("call_path: the manager does not serve `{name}`");
        return Ok(());
    };
    let budget = std::time::Duration::from_secs(seconds.max(1));
    let rounds = host::reference::interleaved(
        budget,
        budget / 5,
        5,
        100_000,
        &mut [&mut |n| host::reference::add_calls(n, |a, b| plugin.add(a, b)), &mut |n| {
            host::reference::add_calls(n, |a, b| handle.add(a, b))
        }],
    );
    let diff = |p| rounds.percentile_of(p, |round| round[1] - round[0]);
    eprintln!(
        "call_path: {} rounds: Plugin::add {:.2} ns, Handle::add {:.2} ns, paired difference {:.2} ns (middle half {:.2} to {:.2})",
        rounds.0.len(),
        rounds.median(0),
        rounds.median(1),
        diff(0.5),
        diff(0.25),
        diff(0.75)
    );
    plugin.shutdown()
}

/// The directory of `library` and the plugin name its file carries (`libbasic.so`: `basic`).
fn dir_and_name(library: &std::path::Path) -> (PathBuf, String) {
    let dir = library.parent().map(PathBuf::from).unwrap_or_default();
    let name = library
        .file_stem()
        .and_then(|s| s.to_str())
        .map(|s| s.trim_start_matches("lib").to_owned())
        .unwrap_or_default();
    (dir, name)
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
