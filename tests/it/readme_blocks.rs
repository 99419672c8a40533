//! Every fenced block of README.md is checked, or says in the README why not: a tidy test lists
//! each block with how it is checked; the plugin of "Writing a plugin" is built and called
//! exactly as written; the host-library snippets are compiled and run, against the README's own
//! `calcplug.toml`, with the values their comments promise.

use std::fmt::Write as _;
use std::path::Path;

use crate::util::{artifacts, copy_as, scratch};

/// A fenced block of a Markdown file.
#[derive(Debug)]
struct Block {
    /// The line of its opening fence, from 1.
    line: usize,
    /// Its info string: `sh`, `toml`, `rust`, …
    lang: String,
    /// The `##` or `###` heading it is under (`#` for the first screen).
    heading: String,
    /// Its text, without the fences.
    text: String,
    /// The reason of a `<!-- not checked: REASON -->` line right before the fence.
    not_checked: Option<String>,
}

/// The marker that says, in the README, why a block is not run or compiled by a test.
const MARKER: &str = "<!-- not checked: ";

fn blocks(markdown: &str) -> Vec<Block> {
    let mut out = Vec::new();
    let mut heading = String::new();
    let mut open: Option<Block> = None;
    let mut previous = "";
    for (index, line) in markdown.lines().enumerate() {
        if let Some(block) = open.as_mut() {
            if line.starts_with("```") {
                out.extend(open.take());
            } else {
                block.text.push_str(line);
                block.text.push('\n');
            }
            continue;
        }
        if let Some(lang) = line.strip_prefix("```") {
            let not_checked = previous
                .trim()
                .strip_prefix(MARKER)
                .and_then(|rest| rest.strip_suffix("-->"))
                .map(|reason| reason.trim().to_owned());
            open = Some(Block {
                line: index + 1,
                lang: lang.trim().to_owned(),
                heading: heading.clone(),
                text: String::new(),
                not_checked,
            });
        } else if line.starts_with('#') {
            heading = line.to_owned();
        }
        if !line.trim().is_empty() {
            previous = line;
        }
    }
    assert!(open.is_none(), "a fenced block is not closed");
    out
}

/// How each block is checked, by the start of its heading and its language.
const CHECKED: &[(&str, &str, &str)] = &[
    (
        "# calcplug",
        "sh",
        "`cargo xtask demo` is the README walk's first step; `cargo xtask test` is what .ci/run runs",
    ),
    ("## Using the CLI", "sh", "run by `cargo xtask walk-readme`, each outcome its comment states"),
    ("### The plugin manager", "sh", "run by `cargo xtask walk-readme` (its section is in the walk)"),
    (
        "### The plugin manager",
        "toml",
        "the calcplug.toml of host_library_snippets_compile_and_run_as_their_comments_say",
    ),
    ("## Out of process", "sh", "run by `cargo xtask walk-readme`"),
    (
        "### Run a fleet on one machine",
        "sh",
        "run as one bash script by `cargo xtask walk-readme`: the status line, each server's exit 0",
    ),
    ("## Writing a plugin", "toml", "the_hello_plugin_builds_and_answers_as_written"),
    ("## Writing a plugin", "rust", "the_hello_plugin_builds_and_answers_as_written"),
    ("## Using the host library", "rust", "host_library_snippets_compile_and_run_as_their_comments_say"),
    ("## go-plugin's gRPC protocol", "go", "the_go_host_excerpt_builds_and_answers_as_its_comment_says"),
];

fn readme() -> String {
    std::fs::read_to_string(xtask::workspace_root().join("README.md")).expect("read README.md")
}

fn how_checked(block: &Block) -> Option<&'static str> {
    CHECKED
        .iter()
        .find(|(heading, lang, _)| block.heading.starts_with(heading) && block.lang == *lang)
        .map(|(_, _, how)| *how)
}

#[test]
fn every_readme_block_is_checked_or_says_why_not() {
    let readme = readme();
    let blocks = blocks(&readme);
    let mut report = String::new();
    let mut unaccounted = Vec::new();
    for block in &blocks {
        let how = match (how_checked(block), &block.not_checked) {
            (Some(how), None) => how.to_owned(),
            (None, Some(reason)) if !reason.is_empty() => format!("not checked: {reason}"),
            (Some(how), Some(_)) => {
                unaccounted.push(format!(
                    "README.md:{}: checked ({how}) and marked not checked",
                    block.line
                ));
                continue;
            }
            (None, _) => {
                unaccounted.push(format!(
                    "README.md:{}: a ```{} block under `{}` is neither checked by a test nor \
                     marked `{MARKER}REASON -->`",
                    block.line, block.lang, block.heading
                ));
                continue;
            }
        };
        let _ = writeln!(
            report,
            "README.md:{} ```{} under `{}`: {how}",
            block.line, block.lang, block.heading
        );
    }
    // Every way of checking still has a block to check.
    for (heading, lang, how) in CHECKED {
        if !blocks.iter().any(|b| b.heading.starts_with(heading) && b.lang == *lang) {
            unaccounted.push(format!("no ```{lang} block under `{heading}` any more ({how})"));
        }
    }
    assert!(unaccounted.is_empty(), "{}\n\nthe blocks:\n{report}", unaccounted.join("\n"));
    // The list, for whoever runs this test with --nocapture.
    #[allow(clippy::print_stderr)]
    {
        eprint!("{report}");
    }
}

/// The only block under `heading` in `lang`.
fn the_block<'a>(blocks: &'a [Block], heading: &str, lang: &str) -> &'a Block {
    let found: Vec<&Block> =
        blocks.iter().filter(|b| b.heading.starts_with(heading) && b.lang == lang).collect();
    assert_eq!(found.len(), 1, "one ```{lang} block under `{heading}`: {found:#?}");
    found[0]
}

/// Builds `package` of a scratch workspace at `root` into cargo's own target directory (the
/// dependencies the tests were built with serve it), and returns its artifact of `kind`.
fn built(root: &Path, package: &str, kind: xtask::ArtifactKind) -> xtask::Artifact {
    let packages = vec![package.to_owned()];
    let target =
        xtask::target_directory(&xtask::workspace_root()).expect("cargo's target directory");
    let request = xtask::BuildRequest {
        packages: &packages,
        release: false,
        target_dir: Some(&target),
        quiet: true,
    };
    let built = xtask::build(root, &request)
        .unwrap_or_else(|err| panic!("building {package} in {}: {err:#}", root.display()));
    built
        .into_iter()
        .find(|a| a.kind == kind && a.package == package)
        .unwrap_or_else(|| panic!("cargo built no {kind:?} for {package}"))
}

/// A scratch workspace of the given members, with the repository's `interface` where the
/// README's `plugins/hello` expects it (`../../interface`) and the repository's lock file.
fn workspace(members: &[&str]) -> tempfile::TempDir {
    let dir = scratch();
    let root = xtask::workspace_root();
    std::os::unix::fs::symlink(root.join("interface"), dir.path().join("interface")).unwrap();
    std::fs::copy(root.join("Cargo.lock"), dir.path().join("Cargo.lock")).unwrap();
    // The repository's workspace manifest, for what `interface` inherits from it (edition,
    // lints, dependency versions), with these members alone.
    let manifest = std::fs::read_to_string(root.join("Cargo.toml")).unwrap();
    let start = manifest.find("\nmembers = [").expect("the workspace's members") + 1;
    let end = start + manifest[start..].find("]\n").expect("the end of its members") + 2;
    let quoted: Vec<String> = members.iter().map(|m| format!("{m:?}")).collect();
    let manifest =
        format!("{}members = [{}]\n{}", &manifest[..start], quoted.join(", "), &manifest[end..]);
    let manifest: String = manifest
        .lines()
        .filter(|line| !line.starts_with("exclude =") && !line.starts_with("default-members ="))
        .map(|line| format!("{line}\n"))
        .collect();
    std::fs::write(dir.path().join("Cargo.toml"), manifest).unwrap();
    dir
}

fn write(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

#[test]
fn the_hello_plugin_builds_and_answers_as_written() {
    let readme = readme();
    let blocks = blocks(&readme);
    let manifest = the_block(&blocks, "## Writing a plugin", "toml");
    let source = the_block(&blocks, "## Writing a plugin", "rust");
    let dir = workspace(&["plugins/hello"]);
    write(&dir.path().join("plugins/hello/Cargo.toml"), &manifest.text);
    write(&dir.path().join("plugins/hello/src/lib.rs"), &source.text);
    let library = built(dir.path(), "hello", xtask::ArtifactKind::Cdylib);
    let plugins = scratch();
    copy_as(&library.path, plugins.path(), &tests::library_file_name("hello"));
    let dir = plugins.path().display().to_string();
    let call = |args: &[&str]| {
        let out = crate::util::calcplug().args(["--plugin-dir", &dir]).args(args).output().unwrap();
        let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
        (out.status.code(), text(&out.stdout), text(&out.stderr))
    };
    // "`calcplug call hello add 2 3` prints `5`."
    assert_eq!(call(&["call", "hello", "add", "2", "3"]), (Some(0), "5\n".into(), String::new()));
    assert_eq!(
        call(&["call", "hello", "divide", "1", "0"]),
        (Some(1), String::new(), "error: hello: divide: division by zero: 1 / 0\n".into())
    );
    assert_eq!(
        call(&["--isolate", "call", "hello", "multiply", "2", "4"]),
        (Some(0), "8\n".into(), String::new())
    );
    // The Lifecycle refuses calls before initialize.
    let plugin = host::load(plugins.path().join(tests::library_file_name("hello"))).unwrap();
    assert_eq!(plugin.add(1.0, 1.0).unwrap_err().code(), Some(host::ErrorCode::NotInitialized));
}

/// A snippet as the body of a function returning a `Result`, with an assertion for each
/// `let NAME = …; // VALUE` whose comment is a number.
fn snippet_function(name: &str, snippet: &str) -> String {
    let mut body = String::new();
    for line in snippet.lines() {
        body.push_str("    ");
        body.push_str(line);
        body.push('\n');
        let (code, comment) = line.split_once("//").unwrap_or((line, ""));
        let value = comment.split_whitespace().next().unwrap_or("");
        let binding = code.trim().strip_prefix("let ").and_then(|rest| rest.split_once(" = "));
        if let (Some((binding, _)), Ok(value)) = (binding, value.parse::<f64>()) {
            let _ = writeln!(body, "    assert_eq!({binding}, {value:?}, \"{binding}\");");
        }
    }
    format!(
        "#[allow(unused_variables)]\nfn {name}() -> Result<(), Box<dyn std::error::Error>> {{\n{body}    Ok(())\n}}\n"
    )
}

#[test]
fn host_library_snippets_compile_and_run_as_their_comments_say() {
    let readme = readme();
    let blocks = blocks(&readme);
    let snippets: Vec<&Block> = blocks
        .iter()
        .filter(|b| b.heading.starts_with("## Using the host library") && b.lang == "rust")
        .collect();
    assert_eq!(snippets.len(), 2, "the load and the manager snippets: {snippets:#?}");
    let config = the_block(&blocks, "### The plugin manager", "toml");
    let dir = workspace(&["readme-host"]);
    let root = xtask::workspace_root();
    write(
        &dir.path().join("readme-host/Cargo.toml"),
        &format!(
            "[package]\nname = \"readme-host\"\nversion = \"0.0.0\"\nedition = \"2021\"\npublish = false\n\n\
             [dependencies]\nhost = {{ path = {:?} }}\n",
            root.join("host").display().to_string()
        ),
    );
    let mut main =
        String::from("// The README's host-library snippets, each as written, in a function.\n\n");
    let mut calls = String::new();
    for snippet in &snippets {
        let name = format!("snippet_at_line_{}", snippet.line);
        main.push_str(&snippet_function(&name, &snippet.text));
        let _ = writeln!(calls, "    {name}()?;");
    }
    let _ = write!(
        main,
        "\nfn main() -> Result<(), Box<dyn std::error::Error>> {{\n{calls}    Ok(())\n}}\n"
    );
    write(&dir.path().join("readme-host/src/main.rs"), &main);
    let program = built(dir.path(), "readme-host", xtask::ArtifactKind::Bin);
    // Where the snippets look: `target/plugins/release/libbasic.so`, and the README's
    // calcplug.toml (its `discovery.paths` are that directory, relative to the file).
    let cwd = scratch();
    let plugins = cwd.path().join("target/plugins/release");
    std::fs::create_dir_all(&plugins).unwrap();
    copy_as(&artifacts().library("basic"), &plugins, &tests::library_file_name("basic"));
    std::fs::write(cwd.path().join("calcplug.toml"), &config.text).unwrap();
    let out = std::process::Command::new(&program.path).current_dir(cwd.path()).output().unwrap();
    assert!(
        out.status.success(),
        "the snippets failed: {out:?}\n{}\nthe program:\n{main}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn snippets_get_an_assertion_for_each_value_their_comments_promise() {
    let function = snippet_function(
        "f",
        "let third = plugin.divide(1.0, 3.0)?;   // 0.3333\nlet x = y; // a comment\n",
    );
    assert!(function.contains("    assert_eq!(third, 0.3333, \"third\");\n"), "{function}");
    assert_eq!(function.matches("assert_eq!").count(), 1, "{function}");
}

/// The Go excerpt as the body of a program's `main`: after each line whose comment claims
/// `EXPR == VALUE` (several separated by `, `), the program prints `EXPR == VALUE: true` when
/// it holds; returns the program and the lines it must print.
fn go_excerpt_program(excerpt: &str) -> (String, String) {
    let mut body = String::new();
    let mut expected = String::new();
    for line in excerpt.lines() {
        let _ = writeln!(body, "\t{line}");
        let comment = line.rsplit_once("// ").map_or("", |(_, comment)| comment);
        for claim in comment.split(", ").filter(|claim| claim.contains(" == ")) {
            let _ = writeln!(body, "\tfmt.Println({claim:?} + \":\", {claim})");
            let _ = writeln!(expected, "{claim}: true");
        }
    }
    let program = format!(
        "package main\n\nimport (\n\t\"context\"\n\t\"fmt\"\n\t\"os/exec\"\n\n\
         \tcalcplugv1 \"calcplug/v1\"\n\t\"calcshared\"\n\n\
         \tplugin \"github.com/hashicorp/go-plugin\"\n)\n\n\
         // CalculatorPlugin is the GRPCPlugin the excerpt names.\n\
         type CalculatorPlugin = calcshared.CalculatorPlugin\n\n\
         func main() {{\n{body}}}\n"
    );
    (program, expected)
}

#[test]
fn the_go_host_excerpt_builds_and_answers_as_its_comment_says() {
    let readme = readme();
    let blocks = blocks(&readme);
    let excerpt = the_block(&blocks, "## go-plugin's gRPC protocol", "go");
    let (program, expected) = go_excerpt_program(&excerpt.text);
    assert_eq!(
        expected, "sum.Value == 5: true\nsum.Error == nil: true\n",
        "the excerpt's `// EXPR == VALUE` comments"
    );
    let host = tests::go_program("readme-go-host", &program);
    // Run where its relative paths point: `calcplug-runner` on the PATH and the release
    // library under `target/plugins/release`.
    let dir = scratch();
    let library = artifacts().library("basic");
    let plugins = dir.path().join("target/plugins/release");
    std::fs::create_dir_all(&plugins).unwrap();
    copy_as(&library, &plugins, &tests::library_file_name("basic"));
    let bin = dir.path().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    copy_as(&artifacts().runner, &bin, "calcplug-runner");
    let path = std::env::join_paths(
        std::iter::once(bin).chain(std::env::split_paths(&std::env::var_os("PATH").unwrap())),
    )
    .unwrap();
    let out = std::process::Command::new(&host)
        .current_dir(dir.path())
        .env("PATH", path)
        .output()
        .expect("run the README's Go host");
    assert!(
        out.status.success(),
        "the README's Go host failed ({}):\n{program}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), expected);
}
