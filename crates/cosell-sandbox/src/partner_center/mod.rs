//! The Partner Center emulator: referrals API, webhook registration API, signed callback
//! deliveries and the certificate host (being written; routes answer 404 until then).

use axum::Router;
use tokio::task::JoinSet;

use crate::EmulatorContext;

/// The Partner Center emulator (cheap to clone; clones share state).
#[derive(Debug, Clone)]
pub struct PartnerCenterEmulator {
    ctx: EmulatorContext,
}

impl PartnerCenterEmulator {
    /// Creates the emulator.
    pub fn new(ctx: EmulatorContext) -> Self {
        PartnerCenterEmulator { ctx }
    }

    /// The shared context.
    pub fn context(&self) -> &EmulatorContext {
        &self.ctx
    }

    /// Routes of the referrals host.
    pub fn referrals_router(&self) -> Router {
        Router::new()
    }

    /// Routes of the webhook API host.
    pub fn webhooks_router(&self) -> Router {
        Router::new()
    }

    /// Routes of the certificate host.
    pub fn certificates_router(&self) -> Router {
        Router::new()
    }

    /// Starts background work (webhook delivery) on the sandbox's task set.
    pub fn start_background(&self, _tasks: &mut JoinSet<()>) {}
}
