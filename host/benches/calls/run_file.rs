//! The run file: what this run measured, for `cargo xtask bench-report`.

use super::*;

/// What this run measured, for `cargo xtask bench-report`: the criterion benchmarks it ran (their
/// figures are in `<criterion home>/<id>/new/estimates.json`), the hand-made figures, and the
/// rows it could not measure and why.
pub(super) struct RunFile {
    quick: bool,
    started: SystemTime,
    criterion: Vec<String>,
    extras: serde_json::Map<String, Value>,
    not_measured: serde_json::Map<String, Value>,
}

impl RunFile {
    pub(super) fn new(quick: bool) -> RunFile {
        RunFile {
            quick,
            started: SystemTime::now(),
            criterion: Vec::new(),
            extras: serde_json::Map::new(),
            not_measured: serde_json::Map::new(),
        }
    }

    pub(super) fn criterion(&mut self, id: &str) {
        self.criterion.push(id.to_owned());
    }

    pub(super) fn extra(&mut self, id: &str, value: Value) {
        self.extras.insert(id.to_owned(), value);
    }

    pub(super) fn not_measured(&mut self, id: &str, why: &str) {
        self.not_measured.insert(id.to_owned(), Value::from(why));
    }

    pub(super) fn write(&self) {
        let path = match env::var_os("CALCPLUG_BENCH_RUN_FILE") {
            Some(path) => PathBuf::from(path),
            None => criterion_home().join("calcplug-run.json"),
        };
        let since_epoch = |t: SystemTime| t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let value = json!({
            "quick": self.quick,
            "started_unix": since_epoch(self.started),
            "finished_unix": since_epoch(SystemTime::now()),
            "criterion": self.criterion,
            "extras": self.extras,
            "not_measured": self.not_measured,
        });
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir).expect("the run file's directory");
        }
        let text = serde_json::to_string_pretty(&value).expect("JSON");
        fs::write(&path, text).expect("write the run file");
        note!("run file: {}", path.display());
    }
}

/// Where criterion writes its results: `$CRITERION_HOME`, else `$CARGO_TARGET_DIR/criterion`,
/// else `target/criterion` of the workspace (criterion asks `cargo metadata`, which says the same
/// unless the target directory is configured elsewhere).
pub(super) fn criterion_home() -> PathBuf {
    if let Some(home) = env::var_os("CRITERION_HOME") {
        return PathBuf::from(home);
    }
    if let Some(target) = env::var_os("CARGO_TARGET_DIR") {
        return PathBuf::from(target).join("criterion");
    }
    xtask::workspace_root().join("target").join("criterion")
}
