//! The real go-plugin peers of the gRPC interop tests and benchmarks: what they need installed,
//! installing it, and building them.
//!
//! The Go side is built in GOPATH mode from Debian's packages (`GO111MODULE=off`, `GOPATH` =
//! `tests/go`, the generated `calcplug.v1` code, `/usr/share/gocode`), so no module proxy is
//! needed: a Go plugin (`tests/go/src/calc-plugin`) and a Go host (`tests/go/src/calc-host`),
//! both using go-plugin. The Python side is a plugin written with grpcio
//! (`tests/python/calc_plugin.py`), run from a virtualenv that is made, and filled from PyPI,
//! when it is missing.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context};

/// The Debian packages the Go peers are built from.
pub const GO_PACKAGES: &[&str] = &[
    "golang-go",
    "golang-github-hashicorp-go-plugin-dev",
    "golang-google-grpc-dev",
    "golang-goprotobuf-dev",
    "protobuf-compiler",
];

/// Where Debian's Go packages put their sources.
const GOCODE: &str = "/usr/share/gocode";

/// What is missing for the Go peers, one entry per missing piece; empty when all is there.
pub fn go_missing() -> Vec<String> {
    let mut missing = Vec::new();
    for (program, package) in [
        ("go", "golang-go"),
        ("protoc", "protobuf-compiler"),
        ("protoc-gen-go", "golang-goprotobuf-dev"),
    ] {
        if which(program).is_none() {
            missing.push(format!("`{program}` (Debian package {package})"));
        }
    }
    for (dir, package) in [
        ("github.com/hashicorp/go-plugin", "golang-github-hashicorp-go-plugin-dev"),
        ("google.golang.org/grpc", "golang-google-grpc-dev"),
    ] {
        if !Path::new(GOCODE).join("src").join(dir).is_dir() {
            missing.push(format!("Go package {dir} (Debian package {package})"));
        }
    }
    missing
}

/// Installs the Go peers' packages with `apt-get` when some are missing and this process may
/// (it runs as root and `apt-get` exists); returns what is still missing.
pub fn install_go_peers() -> anyhow::Result<Vec<String>> {
    let missing = go_missing();
    if missing.is_empty() {
        return Ok(missing);
    }
    let root = running_as_root();
    if !root || which("apt-get").is_none() {
        return Ok(missing);
    }
    let apt = |args: &[&str]| -> anyhow::Result<()> {
        let status = Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .context("cannot run apt-get")?;
        if !status.success() {
            bail!("`apt-get {}` failed ({status})", args.join(" "));
        }
        Ok(())
    };
    apt(&["update", "-q"])?;
    let mut install = vec!["install", "-y", "-q", "--no-install-recommends"];
    install.extend_from_slice(GO_PACKAGES);
    apt(&install)?;
    Ok(go_missing())
}

/// The one-line explanation of what to install, for a test that cannot run without the peers.
pub fn go_install_hint(missing: &[String]) -> String {
    format!(
        "the Go peers cannot be built: missing {}; install them with `apt-get install {}` \
         (`cargo xtask test` does this itself when it runs as root)",
        missing.join(", "),
        GO_PACKAGES.join(" ")
    )
}

/// The built Go peers.
#[derive(Debug, Clone)]
pub struct GoPeers {
    /// A Calculator plugin written in Go with go-plugin (gRPC).
    pub plugin: PathBuf,
    /// A go-plugin host that runs a plugin command and prints one line per command it runs.
    pub host: PathBuf,
}

/// Builds the Go plugin and host into `out` (`out/bin`), with `cookie` as the magic cookie
/// value: generates the Go code of the frozen `calcplug.v1` (`tests/compat/proto-v1`) with
/// `protoc` into `out/gen`, then `go build`s in GOPATH mode with its cache in `out/cache`.
pub fn build_go_peers(root: &Path, out: &Path, cookie: &str) -> anyhow::Result<GoPeers> {
    let missing = go_missing();
    if !missing.is_empty() {
        bail!("{}", go_install_hint(&missing));
    }
    // The frozen v1 contract, not the current one: the Go peers are the cross-version test (a
    // v1 host against the current runner, the current host against a v1 plugin).
    let proto_dir = root.join("tests").join("compat").join("proto-v1");
    let gen = out.join("gen");
    let gen_src = gen.join("src");
    std::fs::create_dir_all(&gen_src)
        .with_context(|| format!("cannot create {}", gen_src.display()))?;
    run(Command::new("protoc")
        .arg("-I")
        .arg(&proto_dir)
        .arg(format!("--go_out=plugins=grpc:{}", gen_src.display()))
        .arg(proto_dir.join("calcplug").join("v1").join("calculator.proto")))?;
    let bin = out.join("bin");
    let mut peers = Vec::new();
    for package in ["calc-plugin", "calc-host"] {
        let output = bin.join(package);
        go_build(root, out, &[], package, &output, cookie)?;
        peers.push(output);
    }
    let host = peers.pop().context("built no Go host")?;
    let plugin = peers.pop().context("built no Go plugin")?;
    Ok(GoPeers { plugin, host })
}

/// Builds a one-file Go program, `main_go`, as package `name` beside the Go peers (it may
/// import `calcshared`, `calcplug/v1`, go-plugin and gRPC) into `out/bin/name`. The peers must
/// have been built into the same `out` first ([`build_go_peers`] generates the code it uses).
pub fn build_go_program(
    root: &Path,
    out: &Path,
    name: &str,
    main_go: &str,
    cookie: &str,
) -> anyhow::Result<PathBuf> {
    let programs = out.join("programs");
    let dir = programs.join("src").join(name);
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let source = dir.join("main.go");
    std::fs::write(&source, main_go)
        .with_context(|| format!("cannot write {}", source.display()))?;
    let output = out.join("bin").join(name);
    go_build(root, out, &[programs], name, &output, cookie)?;
    Ok(output)
}

/// `go build`s `package` in GOPATH mode into `output`: the GOPATH is `extra`, `tests/go`, the
/// generated code in `out/gen` and Debian's Go sources; the cache is `out/cache`.
fn go_build(
    root: &Path,
    out: &Path,
    extra: &[PathBuf],
    package: &str,
    output: &Path,
    cookie: &str,
) -> anyhow::Result<()> {
    let gopath = std::env::join_paths(extra.iter().cloned().chain([
        root.join("tests").join("go"),
        out.join("gen"),
        PathBuf::from(GOCODE),
    ]))
    .context("a GOPATH entry contains a path separator")?;
    run(Command::new("go")
        .current_dir(root.join("tests").join("go"))
        .args(["build", "-ldflags"])
        .arg(format!("-X calcshared.CookieValue={cookie}"))
        .arg("-o")
        .arg(output)
        .arg(package)
        .env("GO111MODULE", "off")
        .env("GOPATH", &gopath)
        .env("GOCACHE", out.join("cache"))
        .env("GOFLAGS", "")
        .env("CGO_ENABLED", "0"))
}

/// The PyPI packages of the Python plugin, pinned; and Prometheus' own Python client, whose
/// text-format parser the tests read `calcplug serve`'s `/metrics` with.
pub const PYTHON_PACKAGES: &[&str] = &[
    "grpcio==1.85.3",
    "grpcio-tools==1.85.1",
    "grpcio-health-checking==1.85.1",
    "prometheus-client==0.21.1",
];

/// The Python plugin, ready to run: `python script GENERATED COOKIE`.
#[derive(Debug, Clone)]
pub struct PythonPeer {
    /// The virtualenv's interpreter.
    pub python: PathBuf,
    /// `tests/python/calc_plugin.py`.
    pub script: PathBuf,
    /// The generated `calcplug.v1` and go-plugin Python code.
    pub generated: PathBuf,
}

/// Makes the Python plugin runnable from `out`: a virtualenv in `out/venv` with grpcio
/// ([`PYTHON_PACKAGES`], installed from PyPI when they are not there yet), and the Python code
/// of `calcplug.v1` and go-plugin's controller generated into `out/gen`.
pub fn build_python_peer(root: &Path, out: &Path) -> anyhow::Result<PythonPeer> {
    let venv = out.join("venv");
    let python = venv.join("bin").join("python");
    if !python.is_file() {
        let system = which("python3").context(
            "the Python plugin needs `python3` with the venv module (Debian: python3-venv)",
        )?;
        run(Command::new(system).args(["-m", "venv"]).arg(&venv))
            .context("cannot make the Python virtualenv")?;
    }
    let ready = Command::new(&python)
        .args(["-c", "import grpc, grpc_tools, grpc_health, prometheus_client"])
        .output()
        .is_ok_and(|out| out.status.success());
    if !ready {
        run(Command::new(&python)
            .args(["-m", "pip", "install", "--quiet", "--disable-pip-version-check"])
            .args(PYTHON_PACKAGES))
        .with_context(|| {
            format!("cannot install the Python plugin's packages ({})", PYTHON_PACKAGES.join(" "))
        })?;
    }
    let generated = out.join("gen");
    std::fs::create_dir_all(&generated)
        .with_context(|| format!("cannot create {}", generated.display()))?;
    run(Command::new(&python)
        .args(["-m", "grpc_tools.protoc", "-I"])
        .arg(root.join("interface").join("proto"))
        .arg("-I")
        .arg(root.join("host").join("proto"))
        .arg(format!("--python_out={}", generated.display()))
        .arg(format!("--grpc_python_out={}", generated.display()))
        .args(["calcplug/v1/calculator.proto", "go_plugin.proto"]))?;
    let script = root.join("tests").join("python").join("calc_plugin.py");
    Ok(PythonPeer { python, script, generated })
}

fn run(command: &mut Command) -> anyhow::Result<()> {
    let output = command.output().with_context(|| format!("cannot run {command:?}"))?;
    if !output.status.success() {
        bail!(
            "{:?} failed ({}): {}",
            command.get_program(),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}

/// The program's path if it is on `PATH`.
fn which(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|dir| dir.join(program)).find(|candidate| candidate.is_file())
}

fn running_as_root() -> bool {
    // `id -u` rather than a libc dependency for one call.
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).trim() == "0")
}
