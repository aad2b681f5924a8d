//! The engine's per-record paths against the embedded sandbox (real clients over loopback HTTP,
//! real Entra sign-in, the emulators' Dataverse service-protection limits switched off so that
//! thousands of iterations are not throttled).
//!
//! ```text
//! cargo bench --bench sync
//! cargo bench --bench sync -- echo        # one group or bench by name
//! ```
//!
//! - `pc_to_crm/apply_new_referral`: a referral already read → CRM row written, linked, audited;
//! - `pc_to_crm/sync_new_referral`: the same, reading the referral first (a webhook's path);
//! - `crm_to_pc/sync_new_opportunity`: an opportunity marked for sync → referral created,
//!   identity written back, linked, and the new pair reconciled;
//! - `echo/apply_unchanged`: a referral whose eTag equals the link's (no remote call);
//! - `echo/sync_unchanged`: the same after reading it (a webhook about our own write);
//! - `echo/reconcile_link`: both sides read, equal to the base, nothing written.
//!
//! Each runs on the in-memory store and on SQLite (WAL, `synchronous=FULL`).

mod paths;

use cosell::sandboxed::StoreChoice;
use criterion::{Criterion, criterion_group, criterion_main};
use paths::{BoxResult, bench_paths};

fn engine_paths(c: &mut Criterion) {
    let result = (|| -> BoxResult<()> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?;
        bench_paths(c, &rt, "memory", StoreChoice::Memory)?;
        let dir = tempfile::tempdir()?;
        bench_paths(
            c,
            &rt,
            "sqlite",
            StoreChoice::Sqlite(dir.path().join("state.sqlite")),
        )?;
        Ok(())
    })();
    if let Err(e) = result {
        eprintln!("benches/sync: {e}");
        std::process::exit(1);
    }
}

criterion_group!(benches, engine_paths);
criterion_main!(benches);
