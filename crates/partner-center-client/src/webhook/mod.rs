//! Partner Center webhooks: the registration API, the typed callback and its verification.

pub mod callback;
pub mod registration;
#[cfg(feature = "webhook")]
pub mod verify;
