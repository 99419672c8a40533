//! `cargo xtask bench-report [--quick]`: runs the benchmark suite and writes `BENCHMARKS.md`.
//!
//! 1. Builds the bench and the `basic` plugin in one `cargo bench --no-run` (one feature
//!    resolution, so their shared dependencies are compiled once).
//! 2. Runs `cargo bench -p host --bench calls` with `CALCPLUG_BENCH_PLUGIN` naming that library,
//!    `CRITERION_HOME` set to `<target>/criterion` and, for `--quick`, `CALCPLUG_BENCH_QUICK=1`.
//! 3. Reads what that run measured: the run file `<target>/criterion/calcplug-run.json` written
//!    by the bench (which criterion benchmarks ran, the hand-made figures, the rows not measured
//!    and why), and for each criterion benchmark its median, `median.point_estimate` in
//!    `<target>/criterion/<group>/<name>[/<size>]/new/estimates.json`. A result file older than
//!    the run is an error: every figure in the report comes from this run.
//! 4. Writes `BENCHMARKS.md` (tables, goals, the machine and the command) and its charts,
//!    `benchmarks/latency.svg`, `benchmarks/batch.svg` and `benchmarks/grpc.svg`.
//!
//! The charts are written by hand rather than with `plotters`: they are two bar charts, and the
//! `xtask` library is a dependency of the integration tests, so every dependency added here would
//! be compiled by every `cargo test`. Criterion's own HTML report stays under `target/criterion`.

mod markdown;
mod svg;

use markdown::Report;

use std::{
    fs,
    path::Path,
    process::{Command, Stdio},
    time::{SystemTime, UNIX_EPOCH},
};

use anyhow::{bail, Context};
use serde_json::Value;
use xtask::ArtifactKind;

use crate::{display_relative, flags, ChildFailed};

/// The batch sizes the bench measures.
const BATCH_SIZES: [u64; 4] = [1, 100, 10_000, 1_000_000];
/// The thread counts the bench measures.
const THREADS: [u64; 4] = [1, 2, 4, 8];

impl flags::BenchReport {
    pub(crate) fn run(&self) -> anyhow::Result<()> {
        let root = xtask::try_workspace_root()?;
        let target = match std::env::var_os("CARGO_TARGET_DIR") {
            Some(dir) => root.join(dir),
            None => root.join("target"),
        };
        let criterion = target.join("criterion");
        let run_file = criterion.join("calcplug-run.json");
        let command = if self.quick {
            "cargo xtask bench-report --quick"
        } else {
            "cargo xtask bench-report"
        };
        let load_before = load_average();

        // One cargo run builds the bench and the plugin: features unify as in the bench run
        // that follows, so what they share (abi_stable, serde, …) is compiled once, not once
        // for a `--release` build of the plugin alone and again for the bench.
        let build = "cargo bench --no-run --package host --bench calls --package basic";
        eprintln!("==> {build}");
        let output = xtask::cargo_command(root)
            .args(["bench", "--no-run", "--message-format=json-render-diagnostics"])
            .args(["--package", "host", "--bench", "calls", "--package", "basic"])
            .stderr(Stdio::inherit())
            .output()
            .with_context(|| format!("failed to run `{build}`"))?;
        if !output.status.success() {
            return Err(ChildFailed { what: build.to_owned(), status: output.status }.into());
        }
        let built = xtask::parse_artifacts(&String::from_utf8_lossy(&output.stdout))?;
        let Some(library) =
            built.into_iter().find(|a| a.kind == ArtifactKind::Cdylib && a.package == "basic")
        else {
            bail!("cargo built no library for the basic plugin");
        };

        let bench = "cargo bench --package host --bench calls";
        eprintln!("==> {bench}{}", if self.quick { " (quick)" } else { "" });
        let _ = fs::remove_file(&run_file);
        let mut cargo = xtask::cargo_command(root);
        cargo
            .args(["bench", "--package", "host", "--bench", "calls"])
            .env("CALCPLUG_BENCH_PLUGIN", &library.path)
            .env("CRITERION_HOME", &criterion)
            .env("CALCPLUG_BENCH_RUN_FILE", &run_file);
        if self.quick {
            cargo.env("CALCPLUG_BENCH_QUICK", "1");
        }
        let status = cargo.status().with_context(|| format!("failed to run `{bench}`"))?;
        if !status.success() {
            return Err(ChildFailed { what: bench.to_owned(), status }.into());
        }

        let run = read_run(&run_file, &criterion)?;
        let machine = Machine::describe(load_before);
        let report = Report { run: &run, machine: &machine, command, quick: self.quick };
        let chart_dir = root.join("benchmarks");
        fs::create_dir_all(&chart_dir)
            .with_context(|| format!("{}: failed to create directory", chart_dir.display()))?;
        let outputs = [
            (chart_dir.join("latency.svg"), report.latency_chart()),
            (chart_dir.join("batch.svg"), report.batch_chart()),
            (chart_dir.join("grpc.svg"), report.grpc_chart()),
            (root.join("BENCHMARKS.md"), report.markdown()),
        ];
        for (path, text) in outputs {
            fs::write(&path, text)
                .with_context(|| format!("{}: failed to write", path.display()))?;
            println!("wrote {}", display_relative(root, &path));
        }
        Ok(())
    }
}

/// What one bench run measured.
#[derive(Debug, Default)]
struct Run {
    quick: bool,
    started_unix: u64,
    finished_unix: u64,
    /// Criterion benchmark id → median, in nanoseconds per iteration.
    medians: Vec<(String, f64)>,
    /// Hand-made figures by id (`threads/in_process/2`, `cold/…`, `memory/…`).
    extras: serde_json::Map<String, Value>,
    /// Rows the run could not measure, by id, with the reason.
    not_measured: serde_json::Map<String, Value>,
}

impl Run {
    fn median(&self, id: &str) -> Option<f64> {
        self.medians.iter().find(|(i, _)| i == id).map(|(_, v)| *v)
    }

    fn extra(&self, id: &str, field: &str) -> Option<f64> {
        self.extras.get(id)?.get(field)?.as_f64()
    }

    /// Why `id` has no figure: the run's reason, or that it did not run.
    fn why_missing(&self, id: &str) -> String {
        match self.not_measured.get(id).and_then(Value::as_str) {
            Some(why) => format!("not measured: {why}"),
            None => "not measured in this run".to_owned(),
        }
    }
}

fn read_run(run_file: &Path, criterion: &Path) -> anyhow::Result<Run> {
    let text = fs::read_to_string(run_file).with_context(|| {
        format!("{}: the bench wrote no run file (did it run to the end?)", run_file.display())
    })?;
    let json: Value = serde_json::from_str(&text)
        .with_context(|| format!("{}: invalid JSON", run_file.display()))?;
    let mut run = Run {
        quick: json["quick"].as_bool().unwrap_or(false),
        started_unix: json["started_unix"].as_u64().unwrap_or(0),
        finished_unix: json["finished_unix"].as_u64().unwrap_or(0),
        extras: json["extras"].as_object().cloned().unwrap_or_default(),
        not_measured: json["not_measured"].as_object().cloned().unwrap_or_default(),
        ..Run::default()
    };
    for id in json["criterion"].as_array().into_iter().flatten().filter_map(Value::as_str) {
        let path = criterion.join(id).join("new").join("estimates.json");
        let modified = fs::metadata(&path).and_then(|m| m.modified()).with_context(|| {
            format!("{}: criterion wrote no estimates for {id}", path.display())
        })?;
        let modified = modified.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        if modified < run.started_unix {
            bail!("{}: older than this run; criterion did not measure {id}", path.display());
        }
        let estimates: Value = serde_json::from_str(&fs::read_to_string(&path)?)
            .with_context(|| format!("{}: invalid JSON", path.display()))?;
        let Some(median) = estimates["median"]["point_estimate"].as_f64() else {
            bail!("{}: no median.point_estimate", path.display());
        };
        run.medians.push((id.to_owned(), median));
    }
    Ok(run)
}

/// The machine a run happened on.
#[derive(Debug, Default)]
struct Machine {
    cpus: usize,
    cpu_model: String,
    kernel: String,
    arch: &'static str,
    rustc: String,
    date: String,
    load_before: String,
    load_after: String,
}

impl Machine {
    fn describe(load_before: String) -> Machine {
        let cpu_model = fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|info| {
                info.lines()
                    .find(|l| l.starts_with("model name"))
                    .and_then(|l| l.split_once(':'))
                    .map(|(_, model)| model.trim().to_owned())
            })
            .unwrap_or_else(|| "unknown".to_owned());
        let kernel = fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|k| format!("Linux {}", k.trim()))
            .unwrap_or_else(|_| std::env::consts::OS.to_owned());
        let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
        let rustc = Command::new(rustc)
            .arg("-V")
            .output()
            .ok()
            .and_then(|out| String::from_utf8(out.stdout).ok())
            .map(|v| v.trim().to_owned())
            .unwrap_or_else(|| "unknown".to_owned());
        Machine {
            cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
            cpu_model,
            kernel,
            arch: std::env::consts::ARCH,
            rustc,
            date: utc_date(SystemTime::now()),
            load_before,
            load_after: load_average(),
        }
    }
}

/// The 1, 5 and 15 minute load averages, from `/proc/loadavg`.
fn load_average() -> String {
    fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".to_owned())
}

/// `YYYY-MM-DD HH:MM UTC`.
fn utc_date(time: SystemTime) -> String {
    // `2024-02-29T12:34:56Z`: the date, then the hours and minutes.
    let text = humantime::format_rfc3339_seconds(time).to_string();
    format!("{} {} UTC", &text[..10], &text[11..16])
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn dates_are_utc_calendar_dates() {
        assert_eq!(utc_date(UNIX_EPOCH), "1970-01-01 00:00 UTC");
        let t = UNIX_EPOCH + std::time::Duration::from_secs(1_709_210_096); // 2024-02-29 12:34:56
        assert_eq!(utc_date(t), "2024-02-29 12:34 UTC");
    }
}
