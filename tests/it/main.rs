//! The integration tests: one crate (rust-analyzer's habit), modules by capability. The parts
//! they share (the OTLP receiver, the emulator on port 0, the binary with a generated config) are
//! the crate `bedrock-flow-test-support`, which the benchmarks use too.

mod cli;
mod collector;
mod emulator_sdk;
mod faults;
mod otlp_tls;
mod prometheus;
mod replicas;
mod traces;
