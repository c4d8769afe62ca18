//! A wire-compatible emulator of the six Bedrock flow-execution operations (SPEC §8), used by
//! the demo, every test and the benchmarks, and by users without AWS access.

pub mod flows;
pub mod generate;
pub mod rng;
pub mod scenario;
mod server;
pub mod world;

pub use scenario::Scenario;
pub use server::{start, EmulatorHandle, ExecutionFacts, ASSUMED_ACCESS_KEY_ID};
