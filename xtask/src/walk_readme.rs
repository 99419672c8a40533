//! `cargo xtask walk-readme`: runs the README's commands exactly as written, on a copy of the
//! repository, the way a newcomer meets them.
//!
//! The README is the script: the first command of its opening block, then every command of its
//! "Using the CLI" and "Out of process" sections, in order. A command's trailing comment says
//! what it must do:
//!
//! - `# prints X` (or `# prints X, commentary`): exits 0 and prints exactly `X` on stdout;
//! - `# error: PREFIX… (exit N)`: exits with `N` and its one `error:` line starts with `PREFIX`;
//! - `# installs target/…/FILE`: exits 0 and `FILE` exists under cargo's target directory
//!   (wherever `CARGO_TARGET_DIR` puts it);
//! - a comment that says `Ctrl-C`: runs until it logs its first plugin, then gets SIGINT and
//!   must exit 0;
//! - `# shows A … B`: exits 0, and its stdout, with runs of white space squeezed to one space
//!   (tables are padded), holds each of `A`, `B`, …;
//!
//! a command without one of these is an error in the README, not a step that anything passes.
//!
//! Then the block of "Run a fleet on one machine" runs as one `bash` script, as a reader would
//! paste it (`calcplug` the release binary on the `PATH`): the host's status line must show
//! what its comment says, and each of the three servers must exit 0 once killed.
//!
//! No command may write an escape byte to its (piped) stderr. The walk runs twice, on fresh
//! copies: once with cargo's default target directory, once with `CARGO_TARGET_DIR` pointing
//! elsewhere (to the first walk's target directory stripped of everything but cargo's caches of
//! compiled dependencies, so that the second walk does not spend minutes rebuilding them).

use std::{
    fs,
    io::{BufRead, BufReader, Read},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use std::os::unix::process::CommandExt;

use anyhow::{bail, ensure, Context};

use crate::flags;

/// The README sections whose commands are walked, by heading prefix.
const SECTIONS: &[&str] = &["## Using the CLI", "## Out of process"];

/// How long a Ctrl-C command may take to show its first plugin.
const WATCH_DEADLINE: Duration = Duration::from_secs(120);

impl flags::WalkReadme {
    pub(crate) fn run(&self) -> anyhow::Result<()> {
        let root = xtask::try_workspace_root()?;
        let readme = fs::read_to_string(root.join("README.md")).context("reading README.md")?;
        let script = Script::parse(&readme)?;
        let scratch = Scratch::new()?;
        for shared_target in [false, true] {
            let clone = scratch.0.join(if shared_target { "clone-shared" } else { "clone" });
            copy_tracked_files(root, &clone)?;
            let target_dir = shared_target.then(|| scratch.0.join("shared-target"));
            if let Some(shared) = &target_dir {
                reuse_dependencies(&scratch.0.join("clone").join("target"), shared)?;
            }
            let walk = Walk { clone: &clone, target_dir: target_dir.as_deref() };
            eprintln!("==> README walk in {} ({})", clone.display(), walk.describe());
            for step in &script.steps {
                walk.run(step)?;
            }
            walk.run_fleet(&script.fleet)?;
        }
        eprintln!("==> the README's commands all did what they say, twice");
        Ok(())
    }
}

/// Gives the second walk the first walk's compiled dependencies and nothing else: moves the
/// first clone's target directory to `shared` and removes every artifact a README command makes
/// or finds (the binaries and libraries cargo copies to the top of each profile directory, the
/// installed plugins), keeping only cargo's caches (`deps`, `build`, `.fingerprint`). The
/// workspace's own crates build again (their paths differ), so a command that needs a binary
/// nobody built still fails; what is saved is rebuilding tonic, rustls and aws-lc from scratch.
fn reuse_dependencies(first: &Path, shared: &Path) -> anyhow::Result<()> {
    fs::rename(first, shared)
        .with_context(|| format!("moving {} to {}", first.display(), shared.display()))?;
    let _ = fs::remove_dir_all(shared.join("plugins"));
    for profile in ["debug", "release"] {
        let Ok(entries) = fs::read_dir(shared.join(profile)) else { continue };
        for entry in entries {
            let path = entry?.path();
            let keep = path
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| ["deps", "build", ".fingerprint"].contains(&n));
            if keep {
                continue;
            }
            if path.is_dir() {
                fs::remove_dir_all(&path)?;
            } else {
                fs::remove_file(&path)?;
            }
        }
    }
    Ok(())
}

/// The commands to run, in order.
#[derive(Debug)]
struct Script {
    steps: Vec<Step>,
    /// The block of [`FLEET`], run as one shell script.
    fleet: String,
}

/// The README section whose block runs as one script: three servers in the background, a host
/// calling through them, then the servers stopped.
const FLEET: &str = "### Run a fleet on one machine";

/// How long the fleet script may take.
const FLEET_DEADLINE: Duration = Duration::from_secs(120);

#[derive(Debug, Clone, PartialEq, Eq)]
struct Step {
    command: String,
    expect: Expect,
}

impl Step {
    fn new(command: &str, expect: Expect) -> Step {
        Step { command: command.to_owned(), expect }
    }
}

/// What a command's comment promises.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Expect {
    Prints(String),
    Error {
        prefix: String,
        code: i32,
    },
    Installs(PathBuf),
    RunsUntilCtrlC,
    /// Exits 0, and stdout, its runs of white space squeezed to one space, holds each piece.
    Shows(Vec<String>),
    /// Exits 0.
    Success,
}

impl Script {
    fn parse(readme: &str) -> anyhow::Result<Script> {
        let mut steps = Vec::new();
        // The opening block: run its first command (the second is the test suite, which is
        // what runs this walk).
        let first = code_blocks(readme).next().context("README.md has no code block")?;
        let run = first.first().context("README.md's first code block is empty")?;
        steps.push(Step::new(&command_of(run), Expect::Success));
        for heading in SECTIONS {
            let start = readme
                .find(&format!("\n{heading}"))
                .with_context(|| format!("README.md has no section `{heading}`"))?;
            let body = &readme[start + 1..];
            let end = body[heading.len()..].find("\n## ").map_or(body.len(), |i| i + heading.len());
            let before = steps.len();
            for block in code_blocks(&body[..end]) {
                for line in block {
                    steps.push(parse_step(&line)?);
                }
            }
            ensure!(steps.len() > before, "README.md's `{heading}` has no commands");
        }
        let start = readme
            .find(&format!("\n{FLEET}"))
            .with_context(|| format!("README.md has no section `{FLEET}`"))?;
        let fleet = readme[start..]
            .split("```sh\n")
            .nth(1)
            .and_then(|rest| rest.split("```").next())
            .with_context(|| format!("README.md's `{FLEET}` has no sh block"))?
            .to_owned();
        Ok(Script { steps, fleet })
    }
}

/// The lines of each ```sh block, in order.
fn code_blocks(text: &str) -> impl Iterator<Item = Vec<String>> + '_ {
    text.split("```sh\n").skip(1).map(|rest| {
        let block = rest.split("```").next().unwrap_or("");
        block.lines().map(str::trim).filter(|l| !l.is_empty()).map(str::to_owned).collect()
    })
}

/// The pieces of a comment's text between its `…`, each trimmed.
fn pieces(text: &str) -> Vec<String> {
    text.split('…').map(str::trim).filter(|p| !p.is_empty()).map(str::to_owned).collect()
}

/// `text` with each run of white space squeezed to one space.
fn squeezed(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn command_of(line: &str) -> String {
    line.split(" #").next().unwrap_or(line).trim().to_owned()
}

fn parse_step(line: &str) -> anyhow::Result<Step> {
    let command = command_of(line);
    let comment = line.split_once(" #").map_or("", |(_, c)| c.trim());
    let expect = if let Some(printed) = comment.strip_prefix("prints ") {
        // `prints 5, computed in a runner`: what follows a comma is commentary.
        Expect::Prints(printed.split(", ").next().unwrap_or(printed).trim().to_owned())
    } else if let Some(rest) = comment.strip_prefix("error: ") {
        let (message, code) = rest
            .rsplit_once("(exit ")
            .and_then(|(m, c)| Some((m, c.strip_suffix(')')?.parse().ok()?)))
            .with_context(|| format!("`{line}`: an error comment ends with `(exit N)`"))?;
        let prefix = message.split('…').next().unwrap_or(message).trim_end();
        Expect::Error { prefix: format!("error: {prefix}"), code }
    } else if let Some(path) = comment.strip_prefix("installs ") {
        let path = path.split_whitespace().next().unwrap_or(path);
        let relative = path.strip_prefix("target/").with_context(|| {
            format!("`{line}`: an installed file is named under target/, as cargo puts it")
        })?;
        Expect::Installs(PathBuf::from(relative))
    } else if let Some(shown) = comment.strip_prefix("shows ") {
        Expect::Shows(pieces(shown))
    } else if comment.contains("Ctrl-C") {
        Expect::RunsUntilCtrlC
    } else {
        bail!(
            "`{line}` states no outcome: end it with `# prints X`, `# shows A … B`, \
             `# error: PREFIX… (exit N)`, `# installs target/…/FILE` or a comment saying Ctrl-C"
        );
    };
    Ok(Step { command, expect })
}

/// One walk: a copy of the repository and the target directory it builds into.
struct Walk<'a> {
    clone: &'a Path,
    /// `CARGO_TARGET_DIR`, if set.
    target_dir: Option<&'a Path>,
}

impl Walk<'_> {
    fn describe(&self) -> String {
        match self.target_dir {
            Some(dir) => format!("CARGO_TARGET_DIR={}", dir.display()),
            None => "default target directory".to_owned(),
        }
    }

    fn command(&self, line: &str) -> Command {
        self.command_in("sh", line)
    }

    /// [`Walk::command`] with another shell.
    fn command_in(&self, shell: &str, line: &str) -> Command {
        let mut command = Command::new(shell);
        command.arg("-c").arg(line).current_dir(self.clone).stdin(Stdio::null());
        // Nothing of the caller's environment that would point the newcomer's commands
        // elsewhere: only what a fresh shell has.
        for (key, _) in std::env::vars_os() {
            let key = key.to_string_lossy();
            if (key.starts_with("CARGO") && key != "CARGO_HOME")
                || key.starts_with("CALCPLUG_")
                || key.starts_with("RUSTC")
                || key == "RUST_BACKTRACE"
            {
                command.env_remove(&*key);
            }
        }
        if let Some(dir) = self.target_dir {
            command.env("CARGO_TARGET_DIR", dir);
        }
        command
    }

    fn run(&self, step: &Step) -> anyhow::Result<()> {
        eprintln!("--> {}", step.command);
        let started = Instant::now();
        if step.expect == Expect::RunsUntilCtrlC {
            self.run_until_ctrl_c(&step.command)?;
        } else {
            let output = self
                .command(&step.command)
                .output()
                .with_context(|| format!("cannot run `{}`", step.command))?;
            let stdout = String::from_utf8_lossy(&output.stdout);
            let stderr = String::from_utf8_lossy(&output.stderr);
            let failed = |why: String| {
                anyhow::anyhow!(
                    "README walk ({}): `{}` {why}\n--- stdout ---\n{stdout}--- stderr ---\n{stderr}",
                    self.describe(),
                    step.command
                )
            };
            if output.stderr.contains(&0x1b) {
                return Err(failed("wrote an escape byte into piped stderr".to_owned()));
            }
            let code = output.status.code();
            match &step.expect {
                Expect::Error { prefix, code: expected } => {
                    if code != Some(*expected) {
                        return Err(failed(format!("exited with {:?}, not {expected}", code)));
                    }
                    let errors: Vec<&str> =
                        stderr.lines().filter(|l| l.starts_with("error:")).collect();
                    if errors.len() != 1 || !errors[0].starts_with(prefix.as_str()) {
                        return Err(failed(format!(
                            "should print one line starting `{prefix}`, printed {errors:?}"
                        )));
                    }
                }
                _ if !output.status.success() => {
                    return Err(failed(format!("failed ({})", output.status)));
                }
                Expect::Prints(expected) => {
                    if stdout.trim() != expected {
                        return Err(failed(format!("should print `{expected}`")));
                    }
                }
                Expect::Installs(relative) => {
                    let file = self.target_directory().join(relative);
                    if !file.is_file() {
                        return Err(failed(format!("did not install {}", file.display())));
                    }
                }
                Expect::Shows(pieces) => {
                    let shown = squeezed(&stdout);
                    if let Some(piece) = pieces.iter().find(|piece| !shown.contains(piece.as_str()))
                    {
                        return Err(failed(format!("should show `{piece}`")));
                    }
                }
                Expect::Success | Expect::RunsUntilCtrlC => {}
            }
        }
        eprintln!("    ok ({:.1}s)", started.elapsed().as_secs_f64());
        Ok(())
    }

    /// Runs the fleet block as one `bash` script, as a reader would paste it, with `calcplug`
    /// the release binary, in a directory of its own; then waits for the three servers. The
    /// comments it checks: the host's status line (`# basic 1.0.0 ready remote … URL, …`, with
    /// the table's padding squeezed), and `# each drains and exits 0`.
    fn run_fleet(&self, block: &str) -> anyhow::Result<()> {
        eprintln!("--> the `{FLEET}` block, as one script");
        let started = Instant::now();
        let dir = self.clone.join("fleet-walk");
        fs::create_dir_all(&dir)?;
        let release = self.target_directory().join("release");
        let path = std::env::var_os("PATH").unwrap_or_default();
        let path =
            std::env::join_paths(std::iter::once(release).chain(std::env::split_paths(&path)))?;
        // After the block: each server's exit status, as `# each drains and exits 0` says. The
        // jobs' pids are taken as the block kills them (bash forgets a job once another `wait`
        // has reaped it, but keeps the status of a pid).
        let mut script = String::new();
        for line in block.lines() {
            if line.trim_start().starts_with("kill %") {
                script.push_str("calcplug_walk_pids=\"$(jobs -p)\"; ");
            }
            script.push_str(line);
            script.push('\n');
        }
        script.push_str(
            "for pid in $calcplug_walk_pids; do wait \"$pid\" || { echo \"server $pid exited with \
             $?\" >&2; exit 1; }; done\n",
        );
        let mut child = self
            .command_in("bash", &script)
            .env("PATH", path)
            .current_dir(&dir)
            // A group of its own, so that a script that fails or hangs is ended with its
            // background servers, which hold its output pipes open.
            .process_group(0)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("cannot run the fleet block")?;
        // The whole output, read on threads so that neither pipe fills up.
        let stdout = read_all(child.stdout.take());
        let stderr = read_all(child.stderr.take());
        let status = wait_with_deadline(&mut child, FLEET_DEADLINE)?;
        if !status.is_some_and(|status| status.success()) {
            let group = format!("-{}", child.id());
            let _ = Command::new("kill").args(["-KILL", "--", &group]).status();
        }
        let (stdout, stderr) =
            (stdout.join().unwrap_or_default(), stderr.join().unwrap_or_default());
        let failed = |why: String| {
            anyhow::anyhow!(
                "README walk ({}): the `{FLEET}` block {why}\n--- stdout ---\n{stdout}--- stderr ---\n{stderr}",
                self.describe()
            )
        };
        match status {
            Some(status) if status.success() => {}
            Some(status) => return Err(failed(format!("failed ({status})"))),
            None => return Err(failed(format!("did not end within {FLEET_DEADLINE:?}"))),
        }
        for line in block.lines() {
            let Some((_, comment)) = line.split_once(" # ") else { continue };
            if !line.trim_start().starts_with("calcplug --config") {
                continue;
            }
            let shown = squeezed(&stdout);
            for piece in pieces(comment) {
                if !shown.contains(&piece) {
                    return Err(failed(format!("printed no `{piece}` (its comment: `{comment}`)")));
                }
            }
        }
        let _ = fs::remove_dir_all(&dir);
        eprintln!("    ok ({:.1}s)", started.elapsed().as_secs_f64());
        Ok(())
    }

    /// Where cargo builds in this walk.
    fn target_directory(&self) -> PathBuf {
        self.target_dir.map_or_else(|| self.clone.join("target"), Path::to_path_buf)
    }

    /// Runs a long-lived command (`watch`) until it logs a plugin, then interrupts it as Ctrl-C
    /// would and expects a graceful exit.
    fn run_until_ctrl_c(&self, line: &str) -> anyhow::Result<()> {
        // `exec`, so that the signal reaches cargo, which passes it to the program it runs.
        let mut child = self
            .command(&format!("exec {line}"))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("cannot run `{line}`"))?;
        let stderr = child.stderr.take().context("no stderr")?;
        let (lines, seen) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if lines.send(line).is_err() {
                    break;
                }
            }
        });
        let deadline = Instant::now() + WATCH_DEADLINE;
        let mut log = Vec::new();
        let ready = loop {
            match seen.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(line) => {
                    // The manager's own word that it serves the plugin, not any line naming it
                    // (a refusal of it would).
                    let found = line.contains("serving plugin=basic");
                    log.push(line);
                    if found {
                        break true;
                    }
                }
                Err(_) => break false,
            }
        };
        // SIGINT to the process group's leader, which is cargo (or the program, without it).
        let pid = child.id().to_string();
        let _ = Command::new("kill").args(["-INT", &pid]).status();
        let status = wait_with_deadline(&mut child, Duration::from_secs(30))?;
        let mut stdout = String::new();
        if let Some(mut out) = child.stdout.take() {
            let _ = out.read_to_string(&mut stdout);
        }
        log.extend(seen.try_iter());
        let log = log.join("\n");
        ensure!(ready, "`{line}` logged no plugin within {WATCH_DEADLINE:?}:\n{log}");
        ensure!(!log.contains('\u{1b}'), "`{line}` wrote an escape byte into piped stderr");
        match status {
            Some(status) if status.success() => Ok(()),
            Some(status) => bail!("`{line}` ended with {status} after Ctrl-C:\n{log}"),
            None => bail!("`{line}` did not stop within 30 s of Ctrl-C:\n{log}"),
        }
    }
}

/// Reads `pipe` to its end on a thread of its own.
fn read_all<R: std::io::Read + Send + 'static>(pipe: Option<R>) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut text = String::new();
        if let Some(mut pipe) = pipe {
            let _ = pipe.read_to_string(&mut text);
        }
        text
    })
}

fn wait_with_deadline(
    child: &mut std::process::Child,
    limit: Duration,
) -> anyhow::Result<Option<std::process::ExitStatus>> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Ok(None);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Copies the files git tracks (and new ones it does not ignore) from `root` to `to`: what a
/// fresh clone of the working tree would hold, build products excluded.
fn copy_tracked_files(root: &Path, to: &Path) -> anyhow::Result<()> {
    let output = Command::new("git")
        .args(["ls-files", "-z", "--cached", "--others", "--exclude-standard"])
        .current_dir(root)
        .output()
        .context("running git ls-files (the walk copies what git tracks)")?;
    ensure!(output.status.success(), "git ls-files failed in {}", root.display());
    for name in output.stdout.split(|&b| b == 0).filter(|n| !n.is_empty()) {
        let name = Path::new(std::str::from_utf8(name).context("a file name is not UTF-8")?);
        let from = root.join(name);
        if !from.is_file() {
            continue; // deleted in the working tree, not yet committed
        }
        let dest = to.join(name);
        if let Some(parent) = dest.parent() {
            fs::create_dir_all(parent)?;
        }
        fs::copy(&from, &dest).with_context(|| format!("copying {}", from.display()))?;
    }
    Ok(())
}

/// A scratch directory, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> anyhow::Result<Scratch> {
        let dir = std::env::temp_dir().join(format!("calcplug-readme-walk-{}", std::process::id()));
        if dir.exists() {
            fs::remove_dir_all(&dir)?;
        }
        fs::create_dir_all(&dir)?;
        Ok(Scratch(dir))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comments_become_expectations() {
        let step = |line: &str| parse_step(line).unwrap();
        assert_eq!(
            step("cargo run -- call basic add 2 3    # prints 5"),
            Step::new("cargo run -- call basic add 2 3", Expect::Prints("5".to_owned()))
        );
        assert_eq!(
            step("calcplug call basic divide 1 0    # error: basic: divide: division by zero: … (exit 1)"),
            Step::new(
                "calcplug call basic divide 1 0",
                Expect::Error { prefix: "error: basic: divide: division by zero:".to_owned(), code: 1 }
            )
        );
        assert_eq!(
            step("cargo xtask build-plugins --release    # installs target/plugins/release/libbasic.so"),
            Step::new(
                "cargo xtask build-plugins --release",
                Expect::Installs(PathBuf::from("plugins/release/libbasic.so"))
            )
        );
        assert_eq!(step("x  # prints 5, in a runner").expect, Expect::Prints("5".to_owned()));
        assert_eq!(step("calcplug watch   # reload; Ctrl-C stops").expect, Expect::RunsUntilCtrlC);
        assert_eq!(
            step("calcplug list   # shows loaded basic 1.0.0 … libbasic.so").expect,
            Expect::Shows(vec!["loaded basic 1.0.0".to_owned(), "libbasic.so".to_owned()])
        );
        assert!(parse_step("calcplug list   # every library").is_err());
        assert!(parse_step("calcplug list").is_err());
        assert!(parse_step("x # installs /abs/libbasic.so").is_err());
        assert!(parse_step("x # error: boom").is_err());
    }

    #[test]
    fn the_readme_has_a_script() {
        let readme = fs::read_to_string(xtask::workspace_root().join("README.md")).unwrap();
        let script = Script::parse(&readme).unwrap();
        assert_eq!(script.steps[0], Step::new("cargo xtask demo", Expect::Success));
        let isolated = script
            .steps
            .iter()
            .find(|s| s.command.contains("--isolate"))
            .expect("the out-of-process section has a command");
        assert_eq!(isolated.expect, Expect::Prints("5".to_owned()));
    }
}
