//! The evolution rules of `calcplug.v1`, tested like the ABI matrix: the current contract
//! (`interface/proto`) must only extend the frozen v1 copy (`tests/compat/proto-v1`). The Go
//! peers are built from the frozen copy, so the interop tests in `grpc.rs` also run a v1 client
//! against the current server and the current client against a v1 plugin.

use std::collections::BTreeMap;
use std::path::Path;

use prost_types::{DescriptorProto, EnumDescriptorProto, FileDescriptorSet};

const PROTO: &str = "calcplug/v1/calculator.proto";

fn compile(include: &Path) -> FileDescriptorSet {
    protox::compile([PROTO], [include]).unwrap_or_else(|err| panic!("{}: {err}", include.display()))
}

/// `text` compiled as [`PROTO`] in a scratch directory (returned with it, for a look when the
/// compiler refuses it).
fn compile_text(text: &str) -> (tempfile::TempDir, FileDescriptorSet) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join(PROTO);
    std::fs::create_dir_all(file.parent().unwrap()).unwrap();
    std::fs::write(&file, text).unwrap();
    let set = compile(dir.path());
    (dir, set)
}

fn messages(set: &FileDescriptorSet) -> BTreeMap<String, &DescriptorProto> {
    fn walk<'a>(
        prefix: &str,
        list: &'a [DescriptorProto],
        out: &mut BTreeMap<String, &'a DescriptorProto>,
    ) {
        for message in list {
            let name = format!("{prefix}.{}", message.name());
            walk(&name, &message.nested_type, out);
            out.insert(name, message);
        }
    }
    let mut out = BTreeMap::new();
    for file in &set.file {
        walk(&format!(".{}", file.package()), &file.message_type, &mut out);
    }
    out
}

/// Every enum, at any depth of nesting, by its full name.
fn enums(set: &FileDescriptorSet) -> BTreeMap<String, &EnumDescriptorProto> {
    fn walk<'a>(
        prefix: &str,
        enums: &'a [EnumDescriptorProto],
        messages: &'a [DescriptorProto],
        out: &mut BTreeMap<String, &'a EnumDescriptorProto>,
    ) {
        for e in enums {
            out.insert(format!("{prefix}.{}", e.name()), e);
        }
        for message in messages {
            let name = format!("{prefix}.{}", message.name());
            walk(&name, &message.enum_type, &message.nested_type, out);
        }
    }
    let mut out = BTreeMap::new();
    for file in &set.file {
        walk(&format!(".{}", file.package()), &file.enum_type, &file.message_type, &mut out);
    }
    out
}

/// Every way `new` breaks a peer built from `old`, one line each.
fn incompatibilities(old: &FileDescriptorSet, new: &FileDescriptorSet) -> Vec<String> {
    let mut found = Vec::new();
    let new_messages = messages(new);
    for (name, old_message) in messages(old) {
        let Some(new_message) = new_messages.get(&name) else {
            found.push(format!("message {name} was removed"));
            continue;
        };
        let reserved = |number: i32| {
            new_message.reserved_range.iter().any(|r| (r.start()..r.end()).contains(&number))
        };
        for field in &old_message.field {
            let same = new_message.field.iter().find(|f| f.number() == field.number());
            match same {
                None if reserved(field.number()) => {}
                None => found.push(format!(
                    "{name}.{} (number {}) was removed without reserving its number",
                    field.name(),
                    field.number()
                )),
                Some(now) if now.name() != field.name() => found.push(format!(
                    "{name}: field number {} was `{}` and is now `{}`",
                    field.number(),
                    field.name(),
                    now.name()
                )),
                Some(now)
                    if (now.r#type(), now.type_name(), now.label())
                        != (field.r#type(), field.type_name(), field.label()) =>
                {
                    found.push(format!("{name}.{} changed its type", field.name()))
                }
                Some(_) => {}
            }
        }
        for range in &old_message.reserved_range {
            for field in &new_message.field {
                if (range.start()..range.end()).contains(&field.number()) {
                    found.push(format!(
                        "{name}.{} reuses reserved number {}",
                        field.name(),
                        field.number()
                    ));
                }
            }
        }
    }
    let new_enums = enums(new);
    for (name, old_enum) in enums(old) {
        let Some(new_enum) = new_enums.get(&name) else {
            found.push(format!("enum {name} was removed"));
            continue;
        };
        for value in &old_enum.value {
            if !new_enum
                .value
                .iter()
                .any(|v| v.number() == value.number() && v.name() == value.name())
            {
                found.push(format!(
                    "{name}: {} = {} was removed or renumbered",
                    value.name(),
                    value.number()
                ));
            }
        }
    }
    let new_methods: BTreeMap<String, _> = new
        .file
        .iter()
        .flat_map(|f| {
            f.service.iter().flat_map(move |s| {
                s.method
                    .iter()
                    .map(move |m| (format!("{}.{}.{}", f.package(), s.name(), m.name()), m))
            })
        })
        .collect();
    for file in &old.file {
        for service in &file.service {
            for method in &service.method {
                let name = format!("{}.{}.{}", file.package(), service.name(), method.name());
                match new_methods.get(&name) {
                    None => found.push(format!("call {name} was removed")),
                    Some(now)
                        if (
                            now.input_type(),
                            now.output_type(),
                            now.client_streaming(),
                            now.server_streaming(),
                        ) != (
                            method.input_type(),
                            method.output_type(),
                            method.client_streaming(),
                            method.server_streaming(),
                        ) =>
                    {
                        found.push(format!("call {name} changed its request or answer"))
                    }
                    Some(_) => {}
                }
            }
        }
    }
    found
}

fn root() -> std::path::PathBuf {
    xtask::workspace_root()
}

#[test]
fn the_current_contract_only_extends_the_frozen_v1() {
    let frozen = compile(&root().join("tests/compat/proto-v1"));
    let current = compile(&root().join("interface/proto"));
    assert_eq!(incompatibilities(&frozen, &current), Vec::<String>::new());
}

/// The check itself: each kind of forbidden change to a copy of the contract is reported, and
/// an allowed one (a new field, a new call, a new enum value) is not.
#[test]
fn each_forbidden_change_is_reported_and_additions_are_not() {
    let original =
        std::fs::read_to_string(root().join("tests/compat/proto-v1").join(PROTO)).unwrap();
    let frozen = compile(&root().join("tests/compat/proto-v1"));
    let changed = |from: &str, to: &str| {
        assert!(original.contains(from), "{from:?} is not in the contract");
        incompatibilities(&frozen, &compile_text(&original.replacen(from, to, 1)).1)
    };
    assert_eq!(
        changed("  double b = 2;\n}", "  double b = 3;\n}"),
        [".calcplug.v1.Operands.b (number 2) was removed without reserving its number"]
    );
    assert_eq!(
        changed("  double b = 2;\n}", "  reserved 2;\n}"),
        Vec::<String>::new(),
        "a removed field whose number is reserved is allowed"
    );
    assert_eq!(
        changed(
            "  double value = 1;\n  Error error = 2;",
            "  float value = 1;\n  Error error = 2;"
        ),
        [".calcplug.v1.Result.value changed its type"]
    );
    assert_eq!(
        changed("  rpc Sqrt(Operands) returns (Result);\n", ""),
        ["call calcplug.v1.Calculator.Sqrt was removed"]
    );
    assert_eq!(
        changed("  ERROR_CODE_INTERNAL = 8;", "  ERROR_CODE_INTERNAL = 9;"),
        [".calcplug.v1.ErrorCode: ERROR_CODE_INTERNAL = 8 was removed or renumbered"]
    );
    assert_eq!(
        changed(
            "  rpc Sqrt(Operands) returns (Result);\n",
            "  rpc Sqrt(Operands) returns (Result);\n  rpc Cbrt(Operands) returns (Result);\n"
        ),
        Vec::<String>::new(),
        "a new call is allowed"
    );
    assert_eq!(
        changed("  double b = 2;\n}", "  double b = 2;\n  double c = 3;\n}"),
        Vec::<String>::new(),
        "a new field is allowed"
    );
    assert_eq!(
        changed("  double b = 2;\n}", "  double c = 2;\n}"),
        [".calcplug.v1.Operands: field number 2 was `b` and is now `c`"]
    );
    assert_eq!(
        changed(
            "  rpc Sqrt(Operands) returns (Result);\n",
            "  rpc Sqrt(Operands) returns (Outcome);\n"
        ),
        ["call calcplug.v1.Calculator.Sqrt changed its request or answer"]
    );
    assert_eq!(
        changed(
            "  rpc Sqrt(Operands) returns (Result);\n",
            "  rpc Sqrt(stream Operands) returns (Result);\n"
        ),
        ["call calcplug.v1.Calculator.Sqrt changed its request or answer"]
    );
    assert_eq!(
        changed(
            "  ERROR_CODE_INTERNAL = 8;\n",
            "  ERROR_CODE_INTERNAL = 8;\n  ERROR_CODE_TIMEOUT = 9;\n"
        ),
        Vec::<String>::new(),
        "a new enum value is allowed"
    );
}

/// The rest of the check, on a small contract of its own with what `calcplug.v1` lacks: a
/// message and an enum nobody uses (so that removing them compiles), a reserved number, and an
/// enum nested three messages deep.
#[test]
fn removals_reserved_numbers_and_deeply_nested_enums_are_checked() {
    let original = r#"syntax = "proto3";
package evolution.v1;
message Outer {
  reserved 3;
  double a = 1;
  message Middle {
    message Inner {
      enum Deep {
        DEEP_UNSPECIFIED = 0;
        DEEP_ONE = 1;
      }
      Deep deep = 1;
    }
    Inner inner = 1;
  }
  Middle middle = 2;
}
message Unused {}
enum Level {
  LEVEL_UNSPECIFIED = 0;
  LEVEL_HIGH = 1;
}
"#;
    let (_dir, old) = compile_text(original);
    assert_eq!(incompatibilities(&old, &old), Vec::<String>::new());
    let changed = |from: &str, to: &str| {
        assert!(original.contains(from), "{from:?} is not in the contract");
        incompatibilities(&old, &compile_text(&original.replacen(from, to, 1)).1)
    };
    assert_eq!(changed("message Unused {}\n", ""), ["message .evolution.v1.Unused was removed"]);
    assert_eq!(
        changed("enum Level {\n  LEVEL_UNSPECIFIED = 0;\n  LEVEL_HIGH = 1;\n}\n", ""),
        ["enum .evolution.v1.Level was removed"]
    );
    assert_eq!(
        changed("  reserved 3;\n", "  double c = 3;\n"),
        [".evolution.v1.Outer.c reuses reserved number 3"]
    );
    assert_eq!(
        changed("DEEP_ONE = 1;", "DEEP_ONE = 2;"),
        [".evolution.v1.Outer.Middle.Inner.Deep: DEEP_ONE = 1 was removed or renumbered"]
    );
    assert_eq!(
        changed("DEEP_ONE = 1;\n", "DEEP_ONE = 1;\n        DEEP_TWO = 2;\n"),
        Vec::<String>::new(),
        "a new enum value is allowed, however deep the enum"
    );
}
