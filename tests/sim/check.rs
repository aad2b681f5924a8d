//! The invariants, checked against the emulators' own state after quiescence.
//!
//! What each checker cannot see is said next to it.

use std::collections::BTreeMap;
use std::fmt;

use cosell::mapping::{FieldId, FieldValue, RecordKind};
use cosell::partner_center::models::Referral;
use cosell::sync::Crm;
use cosell::sync::store::StateStore;

use super::history::{Field, Side, Write};
use super::pairs::{Found, crm_value, find, is_ours, pc_value};
use super::workload::Sim;

/// One broken invariant.
#[derive(Debug, Clone)]
pub(crate) struct Violation {
    /// `a-no-duplicates`, `b-linked`, `c-fields-agree`, `d-last-write-survives`,
    /// `e-dead-letters`, `f-idle-round`, `g-decisions-told`, `quiescence`.
    pub(crate) invariant: &'static str,
    /// The pair concerned (index into the seed's pairs).
    pub(crate) pair: Option<usize>,
    pub(crate) detail: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.pair {
            Some(p) => write!(f, "{} (pair {p}): {}", self.invariant, self.detail),
            None => write!(f, "{}: {}", self.invariant, self.detail),
        }
    }
}

fn v(invariant: &'static str, pair: Option<usize>, detail: impl Into<String>) -> Violation {
    Violation {
        invariant,
        pair,
        detail: detail.into(),
    }
}

/// The fields compared in (c): those the mapping syncs both ways and Partner Center can change
/// after creation. Not compared: the name (Partner Center cannot rename), the customer and
/// address (not writable in Partner Center after creation), contacts (a list merged by the
/// engine's own rules; not part of this workload). An opportunity's solutions are compared as
/// sets, apart (see `fields_agree`).
fn compared(kind: RecordKind) -> &'static [FieldId] {
    match kind {
        RecordKind::Opportunity => &[
            FieldId::Status,
            FieldId::DealValue,
            FieldId::Currency,
            FieldId::CloseDate,
            FieldId::Notes,
            FieldId::HelpRequired,
            FieldId::VisibleToMicrosoft,
            FieldId::MicrosoftCrmId,
        ],
        // A lead carries no help, visibility or Microsoft CRM id columns.
        RecordKind::Lead => &[
            FieldId::Status,
            FieldId::DealValue,
            FieldId::Currency,
            FieldId::CloseDate,
            FieldId::Notes,
        ],
    }
}

/// Every invariant; `idle_writes` are the writes of the final idle round.
pub(crate) async fn check(sim: &Sim, quiet: bool, idle_writes: &[String]) -> Vec<Violation> {
    let mut out = Vec::new();
    if !quiet {
        out.push(v(
            "quiescence",
            None,
            "eight fault-free rounds still wrote something",
        ));
    }
    let found: Vec<Found> = sim.pairs.iter().map(|p| find(&sim.world, p)).collect();
    no_duplicates(sim, &found, &mut out).await;
    linked(sim, &found, &mut out).await;
    fields_agree(sim, &found, &mut out).await;
    last_writes_survive(sim, &found, &mut out);
    dead_letters(sim, &found, &mut out).await;
    decisions_told(sim, &found, &mut out).await;
    if !idle_writes.is_empty() {
        out.push(v(
            "f-idle-round",
            None,
            format!("a final idle round wrote: {}", idle_writes.join(", ")),
        ));
    }
    out
}

/// (a) No duplicates, counted on the emulators: one referral per `externalReferenceId`, one
/// opportunity and one lead per pair, and the store's links a bijection onto real rows.
/// Cannot see: a duplicate the engine made and then lost all trace of *and* that names
/// neither the pair's referral id nor its CRM id (a referral with no `externalReferenceId` is
/// caught only by the per-pair referral count of CRM-born pairs).
async fn no_duplicates(sim: &Sim, found: &[Found], out: &mut Vec<Violation>) {
    let pc = sim.world.sandbox.partner_center();
    let mut by_ext: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for r in pc.referrals().iter().filter(|r| is_ours(r)) {
        if let Some(ext) = r["externalReferenceId"].as_str() {
            by_ext
                .entry(ext.to_string())
                .or_default()
                .push(r["id"].as_str().unwrap_or("?").to_string());
        }
    }
    for (ext, ids) in by_ext.iter().filter(|(_, ids)| ids.len() > 1) {
        let pair = sim
            .pairs
            .iter()
            .position(|p| p.opportunity.map(|o| o.to_string()).as_deref() == Some(ext));
        out.push(v(
            "a-no-duplicates",
            pair,
            format!(
                "{} referrals with externalReferenceId {ext}: {ids:?}",
                ids.len()
            ),
        ));
    }
    for (i, f) in found.iter().enumerate() {
        if f.referrals.len() > 1 && sim.pairs[i].origin == Side::PartnerCenter {
            out.push(v("a-no-duplicates", Some(i), "several referrals"));
        }
        if f.opportunities.len() > 1 {
            let ids: Vec<String> = f
                .opportunities
                .iter()
                .map(|o| format!("{} (state {})", o.id, o.state()))
                .collect();
            out.push(v(
                "a-no-duplicates",
                Some(i),
                format!("{} opportunities: {}", ids.len(), ids.join(", ")),
            ));
        }
        if f.leads.len() > 1 {
            out.push(v(
                "a-no-duplicates",
                Some(i),
                format!("{} leads", f.leads.len()),
            ));
        }
    }
    let links = sim.world.store.links().await.unwrap_or_default();
    let mut by_crm: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
    for l in &links {
        let Some(crm_id) = l.crm_id.clone() else {
            continue;
        };
        by_crm
            .entry((l.crm_entity.clone(), crm_id))
            .or_default()
            .push(l.referral_id.clone());
    }
    for ((entity, id), refs) in by_crm.iter().filter(|(_, r)| r.len() > 1) {
        out.push(v(
            "a-no-duplicates",
            None,
            format!(
                "{entity} {id} is linked to {} referrals: {refs:?}",
                refs.len()
            ),
        ));
    }
}

/// (b) Every eligible record linked: every referral Microsoft sent has its CRM record, every
/// valid opportunity with sync on has its referral, both carry each other's identity, and the
/// store links exactly those two. Invalid records must have no referral.
async fn linked(sim: &Sim, found: &[Found], out: &mut Vec<Violation>) {
    for (i, (pair, f)) in sim.pairs.iter().zip(found).enumerate() {
        let referral_id = f
            .referral()
            .and_then(|r| r["id"].as_str())
            .map(str::to_string);
        if pair.invalid.is_some() {
            if let Some(r) = &referral_id {
                out.push(v(
                    "b-linked",
                    Some(i),
                    format!("an invalid record got referral {r}"),
                ));
            }
            continue;
        }
        let (Some(referral_id), Some(crm)) = (referral_id, f.crm()) else {
            out.push(v(
                "b-linked",
                Some(i),
                format!(
                    "{}: {} referral(s), {} opportunity(ies), {} lead(s)",
                    pair.label,
                    f.referrals.len(),
                    f.opportunities.len(),
                    f.leads.len()
                ),
            ));
            continue;
        };
        if crm.row["cosell_referralid"].as_str() != Some(referral_id.as_str()) {
            out.push(v(
                "b-linked",
                Some(i),
                format!(
                    "{} {} carries referral id {} instead of {referral_id}",
                    crm.table, crm.id, crm.row["cosell_referralid"]
                ),
            ));
        }
        match sim.world.store.link_by_referral(&referral_id).await {
            Ok(Some(l)) if l.crm_entity == crm.table && l.crm_id == Some(crm.id.to_string()) => {}
            Ok(Some(l)) => out.push(v(
                "b-linked",
                Some(i),
                format!(
                    "the store links referral {referral_id} to {} {}, the CRM record is {} {}",
                    l.crm_entity,
                    l.crm_id.as_deref().unwrap_or("(unconfirmed)"),
                    crm.table,
                    crm.id
                ),
            )),
            _ => out.push(v(
                "b-linked",
                Some(i),
                format!("no link for referral {referral_id}"),
            )),
        }
    }
}

/// (c) Mapped fields agree: both sides mapped through the engine's own `FieldMap`, the CRM
/// record read with the engine's adapter. The CRM snapshot takes the referral's snapshot as its
/// base, so fields a CRM table does not carry are carried over (and agree by construction) and
/// a CRM state that maps to several referral states resolves to the referral's when compatible.
/// Cannot see: fields outside [`compared`].
async fn fields_agree(sim: &Sim, found: &[Found], out: &mut Vec<Violation>) {
    let map = &sim.world.map;
    for (i, (pair, f)) in sim.pairs.iter().zip(found).enumerate() {
        if pair.invalid.is_some() {
            continue;
        }
        let (Some(r), Some(crm)) = (f.referral(), f.crm()) else {
            continue;
        };
        let referral: Referral = match serde_json::from_value(r.clone()) {
            Ok(r) => r,
            Err(e) => {
                out.push(v(
                    "c-fields-agree",
                    Some(i),
                    format!("unreadable referral: {e}"),
                ));
                continue;
            }
        };
        let pc_snap = match map.snapshot_from_referral(&referral) {
            Ok(s) => s,
            Err(e) => {
                out.push(v(
                    "c-fields-agree",
                    Some(i),
                    format!("referral does not map: {e}"),
                ));
                continue;
            }
        };
        let kind = if crm.table == "lead" {
            RecordKind::Lead
        } else {
            RecordKind::Opportunity
        };
        let row = match sim.world.reader.read(kind, &crm.id.to_string()).await {
            Ok(Some(row)) => row,
            other => {
                out.push(v("c-fields-agree", Some(i), format!("CRM read: {other:?}")));
                continue;
            }
        };
        let crm_snap = match map.snapshot_from_crm(&row.records, Some(&pc_snap)) {
            Ok(s) => s,
            Err(e) => {
                out.push(v(
                    "c-fields-agree",
                    Some(i),
                    format!("CRM record does not map: {e}"),
                ));
                continue;
            }
        };
        // A closed referral takes no more updates ("terminal states from which no further
        // updates to the deal are possible", Partner Center's co-sell docs): a seller's edit the
        // engine had not carried over before Microsoft closed it stays in the CRM alone (the
        // engine audits it as not written), as does a status the seller set after seeing the
        // close. (d) checks that the CRM holds what survives.
        let pc_terminal = pc_snap.status().is_some_and(|s| s.is_terminal());
        // Dataverse Yes/No columns always hold a value (No by default); the emulator leaves
        // them null when a row is created without them (an opportunity made by QualifyLead).
        let no = FieldValue::Bool(false);
        for field in compared(kind) {
            if pc_terminal {
                continue;
            }
            let a = pc_snap.get(*field);
            let b = match crm_snap.get(*field) {
                None if *field == FieldId::VisibleToMicrosoft => Some(&no),
                b => b,
            };
            if a != b {
                out.push(v(
                    "c-fields-agree",
                    Some(i),
                    format!(
                        "{}: Partner Center {} ≠ CRM {} {}",
                        field.as_str(),
                        show(a),
                        crm.table,
                        show(b)
                    ),
                ));
            }
        }
        // The seller adds and removes solutions (link rows); the lists hold the same ids.
        if kind == RecordKind::Opportunity && !pc_terminal {
            let ids = |s: &cosell::mapping::MappedSnapshot| {
                let mut ids: Vec<String> = s.solutions().iter().map(|s| s.id.clone()).collect();
                ids.sort();
                ids
            };
            if ids(&pc_snap) != ids(&crm_snap) {
                out.push(v(
                    "c-fields-agree",
                    Some(i),
                    format!(
                        "solutions: Partner Center {:?} ≠ CRM opportunity {:?}",
                        ids(&pc_snap),
                        ids(&crm_snap)
                    ),
                ));
            }
        }
    }
}

fn show<T: fmt::Debug>(v: Option<&T>) -> String {
    match v {
        Some(v) => format!("{v:?}"),
        None => "(none)".into(),
    }
}

/// (d) For each field, the last write of a side survives: if only one side wrote it, that
/// side's last value is the final one; if both did, the final value is one of their last
/// values, and it must be the *later* one when the earlier write had been seen on both sides
/// before the later write happened (a sequence, not a conflict: ownership decides only true
/// conflicts). The final value is read from Partner Center ((c) holds the CRM to it).
/// Cannot see: agreements between two observations (they are taken after every finished pass),
/// so a write synced and overwritten within one pass counts as a conflict (the weaker check).
fn last_writes_survive(sim: &Sim, found: &[Found], out: &mut Vec<Violation>) {
    let writes = sim.history.writes();
    let agreements = sim.history.agreements();
    for (i, (pair, f)) in sim.pairs.iter().zip(found).enumerate() {
        if pair.invalid.is_some() {
            continue;
        }
        let Some(r) = f.referral() else { continue };
        for field in [
            Field::DealValue,
            Field::CloseDate,
            Field::Notes,
            Field::MicrosoftCrmId,
            Field::Status,
        ] {
            let last = |side: Side| -> Option<&Write> {
                writes
                    .iter()
                    .filter(|w| w.pair == i && w.field == field && w.side == side)
                    .max_by_key(|w| w.clock)
            };
            let (crm, pc) = (last(Side::Crm), last(Side::PartnerCenter));
            let final_pc = pc_value(r, field);
            let final_crm = f.crm().and_then(|c| crm_value(c, field));
            let expected: Vec<&Write> = match (crm, pc) {
                (None, None) => continue,
                (Some(w), None) | (None, Some(w)) => vec![w],
                (Some(a), Some(b)) => {
                    let (earlier, later) = if a.clock < b.clock { (a, b) } else { (b, a) };
                    let seen = agreements.iter().any(|g| {
                        g.pair == i
                            && g.field == field
                            && g.value == earlier.value
                            && g.clock > earlier.clock
                            && g.clock < later.clock
                    });
                    if seen { vec![later] } else { vec![a, b] }
                }
            };
            // Once the referral is closed Partner Center is frozen; the CRM must then hold the
            // value that survives (see (c)).
            let held_by_crm = f
                .crm()
                .is_some_and(|c| c.table == "opportunity" || field != Field::MicrosoftCrmId);
            let frozen = held_by_crm && final_pc_status(r).is_some_and(|s| s.starts_with("Closed"));
            let final_value = match (frozen, field) {
                (false, _) => &final_pc,
                (true, Field::Status) => &f.crm().and_then(|c| crm_status(c, r)),
                (true, _) => &final_crm,
            };
            if expected
                .iter()
                .any(|w| final_value.as_deref() == Some(w.value.as_str()))
            {
                continue;
            }
            let wanted: Vec<String> = expected
                .iter()
                .map(|w| {
                    let when = if w.mid_pass { ", during a pass" } else { "" };
                    format!("{} {} (step {}{when})", w.side, w.value, w.step)
                })
                .collect();
            out.push(v(
                "d-last-write-survives",
                Some(i),
                format!(
                    "{field:?}: Partner Center holds {}, CRM {}; expected {}",
                    final_pc.as_deref().unwrap_or("(none)"),
                    final_crm.as_deref().unwrap_or("(none)"),
                    wanted.join(" or ")
                ),
            ));
        }
    }
}

fn final_pc_status(r: &serde_json::Value) -> Option<String> {
    pc_value(r, Field::Status)
}

/// The referral state a CRM record's status stands for (as the engine's status table reads it,
/// keeping Partner Center's exact state where the CRM status maps to it).
fn crm_status(rec: &super::pairs::CrmRecord, referral: &serde_json::Value) -> Option<String> {
    use cosell::mapping::{CrmStatus, FieldMap, ReferralState};
    use cosell::partner_center::models::{ReferralStatus, ReferralSubstatus};
    let kind = if rec.table == "lead" {
        RecordKind::Lead
    } else {
        RecordKind::Opportunity
    };
    let crm = CrmStatus {
        kind,
        statecode: rec.row["statecode"].as_i64()?,
        statuscode: rec.row["statuscode"].as_i64()?,
    };
    let prev = ReferralState::new(
        ReferralStatus::from(referral["status"].as_str()?),
        ReferralSubstatus::from(referral["substatus"].as_str()?),
    );
    let map = FieldMap::default();
    let state = map.config().status.referral_state(crm, Some(&prev)).ok()?;
    Some(format!("{}/{}", state.status, state.substatus))
}

/// (g) Microsoft's answer to a co-sell is told once in the engine's audit trail of the pair's
/// referral, naming Microsoft's referral. Cannot see: an answer whose webhook was lost (related
/// referrals are listed only per engagement, so the reconcile does not find them; skipped), nor
/// the line in the CRM record's audit column (a crash between that write and the audit commit
/// may repeat it there).
async fn decisions_told(sim: &Sim, found: &[Found], out: &mut Vec<Violation>) {
    use cosell::sync::store::AuditQuery;
    for d in sim.history.decisions().into_iter().filter(|d| d.delivered) {
        let Some(referral) = found[d.pair].referral().and_then(|r| r["id"].as_str()) else {
            continue;
        };
        let audit = sim
            .world
            .store
            .audit(&AuditQuery {
                referral_id: Some(referral.to_string()),
                ..Default::default()
            })
            .await
            .unwrap_or_default();
        let wanted = format!("Microsoft {} the co-sell", d.verb);
        let told = audit
            .iter()
            .filter(|e| e.message.contains(&wanted) && e.message.contains(&d.theirs))
            .count();
        if told != 1 {
            out.push(v(
                "g-decisions-told",
                Some(d.pair),
                format!(
                    "\"{wanted}\" (Microsoft's referral {}) told {told} times in the audit trail",
                    d.theirs
                ),
            ));
        }
    }
}

/// (e) Nothing dead-lettered but the deliberately invalid records (and each of those is), and
/// no create intent left unresolved. Cannot see: whether the error text names the right field
/// (the audit column on the CRM row is not read).
async fn dead_letters(sim: &Sim, found: &[Found], out: &mut Vec<Violation>) {
    let invalid: Vec<String> = sim
        .pairs
        .iter()
        .filter(|p| p.invalid.is_some())
        .filter_map(|p| p.opportunity.map(|o| format!("opportunity:{o}")))
        .collect();
    let letters = sim.world.store.dead_letters().await.unwrap_or_default();
    // Bad input is never dropped silently: each invalid record is dead-lettered.
    for key in &invalid {
        if !letters.iter().any(|d| &d.key == key) {
            let pair = sim
                .pairs
                .iter()
                .position(|p| p.opportunity.is_some_and(|o| key.ends_with(&o.to_string())));
            out.push(v(
                "e-dead-letters",
                pair,
                format!("the invalid record {key} is not dead-lettered"),
            ));
        }
    }
    for d in letters {
        if !invalid.contains(&d.key) {
            // The pair whose referral or CRM record the letter names.
            let pair = sim.pairs.iter().zip(found).position(|(p, f)| {
                let referral = f.referral().and_then(|r| r["id"].as_str());
                p.opportunity
                    .is_some_and(|o| d.key.ends_with(&o.to_string()))
                    || referral.is_some_and(|r| d.key.ends_with(r))
                    || f.opportunities
                        .iter()
                        .chain(&f.leads)
                        .any(|c| d.key.ends_with(&c.id.to_string()))
            });
            out.push(v(
                "e-dead-letters",
                pair,
                format!("{} ({} attempts): {}", d.key, d.attempts, d.error),
            ));
        }
    }
    for intent in sim.world.store.intents().await.unwrap_or_default() {
        let pair = sim
            .pairs
            .iter()
            .position(|p| p.opportunity.map(|o| o.to_string()) == Some(intent.crm_id.clone()));
        let invalid = pair.is_some_and(|p| sim.pairs[p].invalid.is_some());
        if !invalid {
            out.push(v(
                "e-dead-letters",
                pair,
                format!(
                    "create intent for {} {} still unresolved after {} attempt(s)",
                    intent.crm_entity, intent.crm_id, intent.attempts
                ),
            ));
        }
    }
}
