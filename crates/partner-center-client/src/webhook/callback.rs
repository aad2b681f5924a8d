//! The callback Partner Center posts to a registered URL (work in progress).
