//! Verification of signed callbacks (work in progress).
