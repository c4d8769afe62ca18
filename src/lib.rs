//! bedrock-flow-exporter: makes Amazon Bedrock Flows asynchronous executions observable.
//! See ARCHITECTURE.md for the data flow and the module map.

pub mod app;
pub mod collector;
pub mod config;
pub mod convert;
pub mod demo;
pub mod emulator;
pub mod export;
pub mod http;
pub mod httpserve;
pub mod metrics;
pub mod model;
pub mod source;
pub mod span;
pub mod state;
pub mod timefmt;
