//! The basic plugin's 1.0 source, built against an interface 1.0.0 whose root module gained a
//! field in the middle (the `__incompatible_layout` feature): a change that needed a major
//! version but did not get one. Hosts must refuse it with abi_stable's layout explanation.

#[path = "../../basic-v1_0/src/lib.rs"]
mod basic;
