//! bedrock-flow-exporter: makes Amazon Bedrock Flows asynchronous executions observable.
//! See ARCHITECTURE.md for the data flow and the module map.

pub mod app;
pub mod collector;
pub mod config;
pub mod convert;
pub mod export;
pub mod http;
pub mod metrics;
pub mod source;
pub mod span;
pub mod state;

/// The wire model and timestamps live in their own crate, shared with the emulator.
pub use bedrock_flow_wire::{model, timefmt};
