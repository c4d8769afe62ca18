//! The integration tests: one crate (rust-analyzer's habit), modules by capability.

mod cli;
mod collector;
mod emulator_sdk;
mod faults;
mod prometheus;
mod support;
mod traces;
