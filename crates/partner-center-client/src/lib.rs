//! partner-center-client: a typed async client for the Microsoft Partner Center Referrals API
//! and the webhook registration API.

pub mod models;
pub mod webhook;
