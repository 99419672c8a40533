//! A minimal host built against the frozen interface 1.0: the "old host" of the compatibility
//! matrix.
//!
//! `host-v1_0 LIBRARY` loads the library the way a 1.0 host would (abi_stable's version and
//! layout checks, then the handshake), initializes it, and prints one line per step:
//! `loaded NAME VERSION`, `add 2 3 = 5`, `batch add 1 2 = 3`, …, or `refused: REASON` on one
//! line (exit 3).

use std::path::PathBuf;
use std::process::ExitCode;

use abi_stable::library::lib_header_from_path;
use abi_stable::std_types::{RSlice, RSliceMut};
use interface::ffi::{CalculatorModRef, FfiConfigEntry, InstancePtr};
use interface::{BatchOp, BatchResult, Op, MAGIC_COOKIE_KEY, MAGIC_COOKIE_VALUE, PROTOCOL_VERSION};

fn main() -> ExitCode {
    let Some(path) = std::env::args_os().nth(1).map(PathBuf::from) else {
        eprintln!("usage: host-v1_0 LIBRARY");
        return ExitCode::from(2);
    };
    match run(&path) {
        Ok(()) => ExitCode::SUCCESS,
        Err(reason) => {
            // abi_stable's reports span many lines: one line, for the matrix to check.
            let reason: Vec<&str> = reason.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
            println!("refused: {}", reason.join(" "));
            ExitCode::from(3)
        }
    }
}

fn run(path: &std::path::Path) -> Result<(), String> {
    let header = lib_header_from_path(path).map_err(|e| e.to_string())?;
    let module = header.init_root_module::<CalculatorModRef>().map_err(|e| e.to_string())?;
    let handshake = module.handshake();
    if handshake.magic_cookie_key.as_str() != MAGIC_COOKIE_KEY
        || handshake.magic_cookie_value.as_str() != MAGIC_COOKIE_VALUE
    {
        return Err("wrong magic cookie".to_owned());
    }
    if handshake.protocol_version != PROTOCOL_VERSION {
        return Err(format!("protocol {}", handshake.protocol_version));
    }
    let instance: InstancePtr =
        (module.new_instance())().into_result().map_err(|e| e.message.to_string())?;
    // SAFETY: `instance` comes from this module's `new_instance` and is dropped last, below;
    // the module passed abi_stable's layout check.
    unsafe {
        let meta = (module.metadata())(instance).into_result().map_err(|e| e.message.to_string())?;
        println!("loaded {} {} interface {}", meta.name, meta.version, handshake.interface_version);
        let config: [FfiConfigEntry<'_>; 0] = [];
        (module.initialize())(instance, RSlice::from_slice(&config))
            .into_result()
            .map_err(|e| e.message.to_string())?;
        let sum = (module.add())(instance, 2.0, 3.0).into_result().map_err(|e| e.message.to_string())?;
        println!("add 2 3 = {sum}");
        let quotient =
            (module.divide())(instance, 1.0, 4.0).into_result().map_err(|e| e.message.to_string())?;
        println!("divide 1 4 = {quotient}");
        let ops = [BatchOp::new(Op::Add, 1.0, 2.0), BatchOp::new(Op::Divide, 1.0, 0.0)];
        let mut results = [BatchResult::PENDING; 2];
        (module.process_batch())(instance, RSlice::from_slice(&ops), RSliceMut::from_mut_slice(&mut results))
            .into_result()
            .map_err(|e| e.message.to_string())?;
        for (op, result) in ops.iter().zip(results) {
            let name = op.op.op().map_or("?", |op| op.name());
            match result.result() {
                Ok(value) => println!("batch {name} {} {} = {value}", op.a, op.b),
                Err(code) => println!("batch {name} {} {} -> {}", op.a, op.b, code.name()),
            }
        }
        (module.shutdown())(instance).into_result().map_err(|e| e.message.to_string())?;
        (module.drop_instance())(instance);
    }
    println!("ok");
    Ok(())
}
