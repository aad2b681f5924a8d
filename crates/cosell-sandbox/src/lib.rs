//! cosell-sandbox: work in progress (see the crate README once written).
