//! cosell-mapping: work in progress.
