//! The wire model of the six flow-execution APIs (WIRE-NOTES): events, summaries, errors and
//! the flow definition with their exact JSON names, and RFC 3339 timestamps with nanoseconds.
//! Data only: shared by the exporter (which builds it from the SDK's types) and the emulator
//! (which serializes it).

pub mod model;
pub mod timefmt;
