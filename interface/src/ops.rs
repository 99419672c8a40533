//! The Calculator's operations, declared once.
//!
//! [`calculator_ops!`](crate::calculator_ops) holds the one table of operations: name, operands,
//! op code, the minor version of interface 1 that added them and what they compute. Everything
//! that has one item per operation is generated from it: [`Op`] here, the root module's fields
//! ([`crate::ffi::CalculatorMod`]), the plugin trait's methods and the export shims (`plugin`),
//! and in the host the `Instance`, `Plugin`, `RemotePlugin`, `Handle` and backend methods and the
//! dispatch by [`Op`]. Adding an operation means adding a row here and implementing it in the
//! plugins; nothing else is written by hand.
//!
//! The table is grouped the way the root module is laid out: the `core` group is interface 1.0
//! (its fields sit before `process_batch`, the last prefix field, and every library has them);
//! each `extension` group is a later minor version, appended after everything before it,
//! followed by the group's non-operation `fields` (such as the angle unit). A new minor version
//! adds a new `extension` group at the end; rows and groups are never reordered or removed, and
//! op codes are never reused (`BatchOp` carries them across the boundary).

/// Calls `$callback!` with the table of operations.
///
/// `calculator_ops!(grouped my_macro)` passes the table as it is written below;
/// `calculator_ops!(flat my_macro)` passes one bracketed row per operation,
/// `[core Add add 1 (a: f64, b: f64) "doc" 0]` (group kind, variant, method, op code, operands,
/// description, minor version). Every group ends with its `fields`: the root module fields it
/// adds that are not operations, possibly none. Tokens in braces after the callback's name are
/// passed first: `calculator_ops!(flat my_macro { self })`.
///
/// Not part of the API: the host and the interface's own modules are its only users.
#[doc(hidden)]
#[macro_export]
macro_rules! calculator_ops {
    ($mode:ident $($callback:ident)::+ $({ $($extra:tt)* })?) => {
        $crate::__calculator_ops_as! { $mode [$($callback)::+] [$($($extra)*)?]
            core BASIC 0 {
                Add add 1 (a: f64, b: f64) "`a + b`";
                Subtract subtract 2 (a: f64, b: f64) "`a - b`";
                Multiply multiply 3 (a: f64, b: f64) "`a * b`";
                Divide divide 4 (a: f64, b: f64) "`a / b`";
            } fields {}
            extension SCIENTIFIC 1 {
                Sin sin 5 (x: f64) "`sin(x)`, `x` in the angle unit";
                Cos cos 6 (x: f64) "`cos(x)`, `x` in the angle unit";
                Tan tan 7 (x: f64) "`tan(x)`, `x` in the angle unit";
                Log log 8 (base: f64, value: f64) "The logarithm of `value` in base `base`";
                Pow pow 9 (base: f64, exp: f64) "`base` raised to the power `exp`";
                Sqrt sqrt 10 (x: f64) "The square root of `x`";
            } fields {
                set_angle_unit (unit: u8) -> (),
                    "Sets the angle unit, an [`AngleUnit`](crate::AngleUnit) number";
                angle_unit () -> u8,
                    "The angle unit, an [`AngleUnit`](crate::AngleUnit) number";
            }
        }
    };
}

/// Passes the table of [`calculator_ops!`](crate::calculator_ops) on in the requested form.
#[doc(hidden)]
#[macro_export]
macro_rules! __calculator_ops_as {
    (grouped [$($callback:ident)::+] [$($extra:tt)*] $($table:tt)*) => {
        $($callback)::+! { $($extra)* $($table)* }
    };
    (flat [$($callback:ident)::+] [$($extra:tt)*]
        $(
            $kind:ident $group:ident $minor:literal {
                $( $variant:ident $method:ident $code:literal ($($arg:ident: $ty:ident),*) $doc:literal; )*
            }
            fields { $($fields:tt)* }
        )*
    ) => {
        $($callback)::+! { $($extra)*
            $($( [$kind $variant $method $code ($($arg: $ty),*) $doc $minor] )*)*
        }
    };
}

/// Expands to `$receiver.$method(a)` or `$receiver.$method(a, b)`: the first operands of
/// `(a, b)`, as many as the operation (whose operand names are given) takes.
#[doc(hidden)]
#[macro_export]
macro_rules! __calculator_call_with {
    ($receiver:expr, $method:ident, ($x:ident: $xt:ident), $a:expr, $b:expr) => {
        $receiver.$method($a)
    };
    ($receiver:expr, $method:ident, ($x:ident: $xt:ident, $y:ident: $yt:ident), $a:expr, $b:expr) => {
        $receiver.$method($a, $b)
    };
}

/// Expands to `($x, 0.0)` or `($x, $y)`: an operation's operands as the pair `(a, b)` that
/// [`Op`]-based calls take, `b` being ignored by one-operand operations.
#[doc(hidden)]
#[macro_export]
macro_rules! __calculator_operand_pair {
    (($x:ident: $xt:ident)) => {
        ($x, 0.0)
    };
    (($x:ident: $xt:ident, $y:ident: $yt:ident)) => {
        ($x, $y)
    };
}

macro_rules! declare_op {
    ($( [$kind:ident $variant:ident $method:ident $code:literal ($($arg:ident: $ty:ident),*) $doc:literal $minor:literal] )*) => {
        /// An operation a Calculator can perform.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[non_exhaustive]
        pub enum Op {
            $(
                #[doc = concat!($doc, " (interface 1.", $minor, ").")]
                $variant,
            )*
        }

        impl Op {
            /// How many operations this version of the interface knows.
            const COUNT: usize = [$(stringify!($variant)),*].len();

            /// Every operation this version of the interface knows, in op code order.
            pub const ALL: [Op; Op::COUNT] = [$(Op::$variant),*];

            /// The operation's name, as used on the command line and in metadata: `add`,
            /// `divide`, …
            pub const fn name(self) -> &'static str {
                match self {
                    $(Op::$variant => stringify!($method),)*
                }
            }

            /// How many operands the operation takes.
            pub const fn arity(self) -> usize {
                match self {
                    $(Op::$variant => [$(stringify!($arg)),*].len(),)*
                }
            }

            /// The code this operation has in a [`BatchOp`](crate::BatchOp). Codes never change.
            pub const fn code(self) -> OpCode {
                match self {
                    $(Op::$variant => OpCode::from_u8($code),)*
                }
            }

            /// The minor version of interface 1 that added the operation: 0 for the basic
            /// operations, 1 for the scientific extension.
            pub const fn since_minor(self) -> u64 {
                match self {
                    $(Op::$variant => $minor,)*
                }
            }
        }
    };
}

macro_rules! declare_op_groups {
    ($(
        $kind:ident $group:ident $minor:literal {
            $( $variant:ident $method:ident $code:literal ($($arg:ident: $ty:ident),*) $doc:literal; )*
        }
        fields { $($fields:tt)* }
    )*) => {
        impl Op {
            $(
                #[doc = concat!("The operations interface 1.", $minor, " added.")]
                pub const $group: [Op; [$(stringify!($variant)),*].len()] = [$(Op::$variant),*];
            )*
        }
    };
}

crate::calculator_ops!(flat declare_op);
crate::calculator_ops!(grouped declare_op_groups);

use crate::OpCode;

impl Op {
    /// Whether the operation belongs to the scientific extension (interface 1.1).
    pub const fn is_scientific(self) -> bool {
        let mut i = 0;
        while i < Op::SCIENTIFIC.len() {
            if Op::SCIENTIFIC[i] as u8 == self as u8 {
                return true;
            }
            i += 1;
        }
        false
    }

    /// The operation with this name, if this version knows it.
    pub fn from_name(name: &str) -> Option<Op> {
        Op::ALL.into_iter().find(|op| op.name() == name)
    }
}

impl std::fmt::Display for Op {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_lists_each_operation_once_in_code_order() {
        let codes: Vec<u8> = Op::ALL.iter().map(|op| op.code().as_u8()).collect();
        assert_eq!(codes, (1..=10).collect::<Vec<u8>>());
        let names: Vec<&str> = Op::ALL.iter().map(|op| op.name()).collect();
        assert_eq!(
            names,
            ["add", "subtract", "multiply", "divide", "sin", "cos", "tan", "log", "pow", "sqrt"]
        );
        for op in Op::ALL {
            assert_eq!(Op::from_name(op.name()), Some(op));
            assert_eq!(op.code().op(), Some(op));
        }
        assert_eq!(Op::from_name("modulo"), None);
    }

    #[test]
    fn groups_partition_all_and_carry_their_minor_version() {
        let grouped: Vec<Op> = Op::BASIC.into_iter().chain(Op::SCIENTIFIC).collect();
        assert_eq!(grouped, Op::ALL);
        assert!(Op::BASIC.iter().all(|op| op.since_minor() == 0 && !op.is_scientific()));
        assert!(Op::SCIENTIFIC.iter().all(|op| op.since_minor() == 1 && op.is_scientific()));
        let arities: Vec<usize> = Op::ALL.iter().map(|op| op.arity()).collect();
        assert_eq!(arities, [2, 2, 2, 2, 1, 1, 1, 2, 2, 1]);
    }

    /// A callback that adds a fake operation shows that a row added to the table reaches every
    /// form: the flat rows carry it with its group, code and operands.
    #[test]
    fn a_row_added_to_the_table_reaches_the_flat_form() {
        macro_rules! rows {
            ($( [$kind:ident $variant:ident $method:ident $code:literal ($($arg:ident: $ty:ident),*) $doc:literal $minor:literal] )*) => {
                [$((stringify!($kind), stringify!($method), $code, [$(stringify!($arg)),*].len(), $minor)),*]
            };
        }
        let rows = crate::__calculator_ops_as! { flat [rows] []
            core BASIC 0 { Add add 1 (a: f64, b: f64) "`a + b`"; } fields {}
            extension FAKE 2 { Negate negate 11 (x: f64) "`-x`"; } fields {}
        };
        assert_eq!(rows, [("core", "add", 1, 2, 0), ("extension", "negate", 11, 1, 2)]);
    }
}
