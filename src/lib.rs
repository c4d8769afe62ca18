//! bedrock-flow-exporter: makes Amazon Bedrock Flows asynchronous executions observable.
//! See ARCHITECTURE.md for the data flow and the module map.

pub mod emulator;
pub mod httpserve;
pub mod model;
pub mod timefmt;
pub mod config;
pub mod convert;
pub mod export;
pub mod span;
pub mod metrics;
