//! `calcplug demo`: a tour of every bundled plugin; and how the CLI shows numbers and
//! extensions.

use std::io::{self, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::bail;
use host::{BatchOp, Config, Found, Op, Plugin, PluginHandle};

/// What each extension group of the plugin's library holds, for `info` and the demo: its name
/// alone when the plugin implements all of its operations (its library has the function and
/// its metadata lists the operation), else which it implements.
pub(crate) fn extensions_line(plugin: &dyn PluginHandle) -> String {
    let present: Vec<String> = plugin
        .extensions()
        .iter()
        .map(|extension| {
            let ops: &[Op] = match extension {
                host::Extension::Scientific => &Op::SCIENTIFIC,
                _ => &[],
            };
            let implemented: Vec<&str> =
                ops.iter().filter(|op| plugin.supports(**op)).map(|op| op.name()).collect();
            let what = if implemented.len() == ops.len() {
                String::new()
            } else if implemented.is_empty() {
                ": present in the library, none of its operations implemented".to_owned()
            } else {
                format!(
                    ": {} of its {} operations implemented ({})",
                    implemented.len(),
                    ops.len(),
                    implemented.join(", ")
                )
            };
            format!("{extension} (interface {}){what}", extension.since())
        })
        .collect();
    if present.is_empty() {
        format!(
            "none: built against interface {}, the scientific extension is absent",
            plugin.interface_version()
        )
    } else {
        present.join(", ")
    }
}

/// `x` in its shortest form that reads back as the same `f64` (Rust's `{}` and `{:e}` both
/// give the shortest digits), written as Python's `repr` writes it: with an exponent when the
/// decimal exponent is below -4 or 16 and above (`1e+80`, `3.3333333333333335e-31`, `1e-05`),
/// else plainly (`5`, `0.3333`, `1000000000000000`), never an 81-digit integer.
pub(crate) fn number(x: f64) -> String {
    if x == 0.0 || !x.is_finite() {
        return format!("{x}");
    }
    let scientific = format!("{x:e}");
    let Some((mantissa, exponent)) = scientific.split_once('e') else { return scientific };
    let Ok(exponent) = exponent.parse::<i32>() else { return scientific };
    if (-4..16).contains(&exponent) {
        return format!("{x}");
    }
    let sign = if exponent < 0 { '-' } else { '+' };
    format!("{mantissa}e{sign}{:02}", exponent.unsigned_abs())
}

pub(crate) fn demo(dirs: &[PathBuf]) -> anyhow::Result<ExitCode> {
    let mut out = io::stdout().lock();
    let found = crate::discover(dirs);
    let shown: Vec<_> = dirs.iter().map(|d| d.display().to_string()).collect();
    writeln!(out, "calcplug demo: plugins from {}", shown.join(", "))?;
    let mut plugins = Vec::new();
    for Found { path, outcome } in found {
        match outcome {
            Ok(plugin) => plugins.push(plugin),
            Err(err) => writeln!(out, "  refused {}: {}", path.display(), err.reason())?,
        }
    }
    if plugins.is_empty() {
        bail!("no plugin could be loaded: run `cargo xtask build-plugins` first");
    }
    for plugin in &plugins {
        tour(&mut out, plugin)?;
    }
    writeln!(out, "\ndemo finished: {} plugin(s) toured", plugins.len())?;
    Ok(ExitCode::SUCCESS)
}

fn tour(out: &mut impl Write, plugin: &Plugin) -> anyhow::Result<()> {
    let meta = plugin.metadata();
    writeln!(out, "\n== {} {} — {}", plugin.name(), plugin.version(), meta.description)?;
    writeln!(out, "   interface {}, {}", plugin.interface_version(), plugin.path().display())?;
    writeln!(out, "   state before initialize: {}", plugin.status()?.state)?;
    match plugin.add(1.0, 2.0) {
        Ok(v) => writeln!(out, "   add(1, 2) before initialize = {} (unexpected)", number(v))?,
        Err(err) => writeln!(out, "   add(1, 2) before initialize -> {err}")?,
    }
    plugin.initialize(&Config::new())?;
    writeln!(out, "   initialized with defaults: {}", plugin.status()?.state)?;

    writeln!(out, "-- operations")?;
    for op in Op::BASIC.into_iter().filter(|op| meta.supports(*op)) {
        let (a, b) = (7.5, 2.5);
        match plugin.call(op, a, b) {
            Ok(v) => writeln!(out, "   {op}({a}, {b}) = {}", number(v))?,
            Err(err) => writeln!(out, "   {op}({a}, {b}) -> {err}")?,
        }
    }
    writeln!(out, "-- validation")?;
    let cases = [
        (Op::Add, 0.1, 0.2),
        (Op::Divide, 1.0, 0.0),
        (Op::Add, f64::NAN, 1.0),
        (Op::Add, 2e100, 1.0),
        (Op::Multiply, 1e99, 1e99),
    ];
    for (op, a, b) in cases {
        let (a, b, v) = (number(a), number(b), plugin.call(op, a, b));
        match v {
            Ok(v) => writeln!(out, "   {op}({a}, {b}) = {}", number(v))?,
            Err(err) => {
                writeln!(out, "   {op}({a}, {b}) -> {}", err.code().map_or("?", |c| c.name()))?
            }
        }
    }
    if plugin.has_scientific() {
        plugin.set_angle_unit(host::AngleUnit::Degrees)?;
        writeln!(out, "-- scientific extension (angle unit {})", plugin.angle_unit()?)?;
        let cases = [
            (Op::Sin, 30.0, 0.0),
            (Op::Cos, 60.0, 0.0),
            (Op::Tan, 45.0, 0.0),
            (Op::Tan, 90.0, 0.0),
            (Op::Log, 2.0, 1024.0),
            (Op::Pow, 2.0, 0.5),
            (Op::Sqrt, 2.0, 0.0),
            (Op::Sqrt, -1.0, 0.0),
        ];
        for (op, a, b) in cases {
            let shown =
                if op.arity() == 1 { format!("{op}({a})") } else { format!("{op}({a}, {b})") };
            match plugin.call(op, a, b) {
                Ok(v) => writeln!(out, "   {shown} = {}", number(v))?,
                Err(err) => {
                    writeln!(out, "   {shown} -> {}", err.code().map_or("?", |c| c.name()))?
                }
            }
        }
    } else {
        writeln!(out, "-- scientific extension: {}", extensions_line(plugin))?;
    }
    writeln!(out, "-- batch (one call, one bad item does not fail the others)")?;
    let ops = [
        BatchOp::new(Op::Add, 1.0, 2.0),
        BatchOp::new(Op::Divide, 10.0, 4.0),
        BatchOp::new(Op::Divide, 1.0, 0.0),
        BatchOp::new(Op::Multiply, 6.0, 7.0),
    ];
    for (item, result) in ops.iter().zip(plugin.batch(&ops)?) {
        let op = item.op.op().map_or("?", |op| op.name());
        match result.result() {
            Ok(v) => writeln!(out, "   {op}({}, {}) = {}", item.a, item.b, number(v))?,
            Err(code) => writeln!(out, "   {op}({}, {}) -> {}", item.a, item.b, code.name())?,
        }
    }
    let status = plugin.status()?;
    writeln!(out, "-- status")?;
    writeln!(
        out,
        "   state {} ({}), {} requests, uptime {:?}",
        status.state, status.message, status.request_count, status.uptime
    )?;
    if let Some(latency) = status.average_latency {
        writeln!(out, "   average latency (sampled) {latency:?}")?;
    }
    plugin.shutdown()?;
    writeln!(out, "-- shut down: {}", plugin.status()?.state)?;
    match plugin.add(1.0, 2.0) {
        Ok(v) => writeln!(out, "   add(1, 2) after shutdown = {} (unexpected)", number(v))?,
        Err(err) => writeln!(out, "   add(1, 2) after shutdown -> {err}")?,
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::number;

    #[test]
    fn numbers_are_written_as_python_repr_writes_them() {
        let cases = [
            (5.0, "5"),
            (-2.5, "-2.5"),
            (0.0, "0"),
            (0.3333, "0.3333"),
            (1e-4, "0.0001"),
            (1e-5, "1e-05"),
            (1e15, "1000000000000000"),
            (1e16, "1e+16"),
            (1e80, "1e+80"),
            (-1.5e300, "-1.5e+300"),
            (1.0 / 3e30, "3.3333333333333338e-31"),
            (f64::MIN_POSITIVE, "2.2250738585072014e-308"),
            (5e-324, "5e-324"),
            (f64::INFINITY, "inf"),
            (f64::NAN, "NaN"),
        ];
        for (x, shown) in cases {
            assert_eq!(number(x), shown, "{x:?}");
            if x.is_finite() {
                assert_eq!(number(x).parse::<f64>().unwrap(), x, "{shown} reads back");
            }
        }
    }
}
