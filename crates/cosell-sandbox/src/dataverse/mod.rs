//! The Dataverse emulator (being written; routes answer 404 until then).

use axum::Router;

use crate::EmulatorContext;

/// Tables, columns and alternate keys the emulator serves.
#[derive(Debug, Clone, Default)]
pub struct DataverseSchema {}

/// The Dataverse emulator (cheap to clone; clones share state).
#[derive(Debug, Clone)]
pub struct DataverseEmulator {
    ctx: EmulatorContext,
}

impl DataverseEmulator {
    /// Creates the emulator with `schema`.
    pub fn new(ctx: EmulatorContext, _schema: DataverseSchema) -> Self {
        DataverseEmulator { ctx }
    }

    /// The shared context.
    pub fn context(&self) -> &EmulatorContext {
        &self.ctx
    }

    /// Routes of the Dataverse host.
    pub fn router(&self) -> Router {
        Router::new()
    }
}
