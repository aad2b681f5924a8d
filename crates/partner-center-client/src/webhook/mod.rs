//! Partner Center webhooks: the typed callback and its verification.

pub mod callback;
#[cfg(feature = "webhook")]
pub mod verify;
