//! partner-center-client: work in progress (see the crate README once written).
