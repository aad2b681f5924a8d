//! partner-center-client: work in progress.

pub mod webhook;
