//! The seeded workload: users on both sides (Microsoft and partner sellers in Partner Center,
//! CRM sellers in Dynamics), webhook hints that arrive late, twice or never, engine passes, and
//! crashes with restarts. Everything users do goes around the engine (the emulators' control
//! API, or the seller's own Dataverse client with faults off) and is written to the
//! [`History`].

use chrono::{Duration as Days, NaiveDate, Utc};
use cosell::dataverse::{OpportunityClose, OpportunityStatus, QualifyLead};
use cosell::sandbox::dataverse::DataverseEmulator;
use cosell::sandbox::partner_center::PartnerCenterEmulator;
use cosell::sync::Engine;
use cosell::sync::store::{InboxHint, StateStore};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;
use uuid::Uuid;

use super::crash::CrashPoint;
use super::history::{Decision, Field, History, Side};
use super::pairs::{Found, Pair, crm_value, find, money, pc_value, uuid_of};
use super::world::{FaultProfile, World};

/// Where a user edit lands.
#[derive(Debug, Clone)]
enum Target {
    Referral(String),
    Row(&'static str, Uuid),
}

/// Which pass of the engine to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PassKind {
    ResolveIntents,
    DrainInbox,
    PullCrmChanges,
    Reconcile,
    ReplayDeadLetters,
    RunOnce,
}

/// Runs one pass (the engine's public API only).
pub(crate) async fn run_pass(engine: Engine, kind: PassKind) -> Result<Vec<String>, String> {
    let r = match kind {
        PassKind::ResolveIntents => engine.resolve_intents().await,
        PassKind::DrainInbox => engine.drain_inbox().await,
        PassKind::PullCrmChanges => engine.pull_crm_changes().await,
        PassKind::Reconcile => engine.reconcile().await,
        PassKind::ReplayDeadLetters => engine.replay_dead_letters().await,
        PassKind::RunOnce => engine.run_once().await,
    };
    r.map(|rep| {
        rep.failures()
            .map(|o| {
                let who = o
                    .referral_id
                    .clone()
                    .or_else(|| o.crm.as_ref().map(|(e, id)| format!("{e} {id}")))
                    .unwrap_or_default();
                let detail: String = o.detail.chars().take(160).collect();
                format!("{who}: {detail}")
            })
            .collect()
    })
    .map_err(|e| e.to_string())
}

/// The most crashes one seed injects.
const MAX_CRASHES: u32 = 3;
/// The most pairs one seed creates.
const MAX_PAIRS: usize = 14;
const CURRENCIES: [&str; 4] = ["USD", "EUR", "GBP", "CAD"];

/// One seed's driver: the world, the engine of the current process, the users.
pub(crate) struct Sim {
    pub(crate) world: World,
    pub(crate) engine: Engine,
    pub(crate) pairs: Vec<Pair>,
    pub(crate) history: History,
    rng: StdRng,
    /// Draws the seller's solution changes, apart from `rng` so that adding them left every
    /// other draw (and so every kept seed's workload) as it was.
    solution_rng: StdRng,
    counter: u64,
    crashes: u32,
    crash_log: Vec<String>,
    held_hints: Vec<(String, &'static str)>,
    hint_hashes: u64,
}

impl Sim {
    pub(crate) fn new(seed: u64) -> Sim {
        // One generator for the workload; the sandbox's fault switch has its own (same seed).
        let mut rng = StdRng::seed_from_u64(seed ^ 0x51u64.rotate_left(40));
        let profile = FaultProfile::draw(&mut rng);
        let mut world = World::new(seed, profile);
        let engine = world.engine();
        Sim {
            world,
            engine,
            pairs: Vec::new(),
            history: History::default(),
            rng,
            solution_rng: StdRng::seed_from_u64(seed ^ 0x5011u64.rotate_left(24)),
            counter: 0,
            crashes: 0,
            crash_log: Vec::new(),
            held_hints: Vec::new(),
            hint_hashes: 0,
        }
    }

    pub(crate) fn crashes(&self) -> &[String] {
        &self.crash_log
    }

    fn fresh(&mut self) -> u64 {
        self.counter += 1;
        self.counter
    }

    /// Arms the next crash (or not) at a seeded request or commit ahead.
    fn maybe_arm_crash(&mut self) {
        if self.crashes >= MAX_CRASHES || !self.rng.random_bool(0.6) {
            return;
        }
        let c = &self.world.crasher;
        let point = if self.rng.random_bool(0.6) {
            CrashPoint::Request {
                n: c.requests() + self.rng.random_range(0..60),
                processed: self.rng.random_bool(0.5),
            }
        } else {
            CrashPoint::Commit {
                n: c.commits() + self.rng.random_range(0..20),
                applied: self.rng.random_bool(0.5),
            }
        };
        c.arm(Some(point));
    }

    /// The whole seeded run: setup, `steps` interleaved actions and passes.
    pub(crate) async fn run_workload(&mut self, steps: usize) {
        self.world.inject_faults();
        self.maybe_arm_crash();
        for step in 0..steps {
            self.history.set_step(step);
            let roll = self.rng.random_range(0..100);
            match roll {
                0..35 => {
                    let kind = self.pick_pass();
                    self.pass(kind).await;
                }
                35..65 => self.partner_center_action().await,
                65..93 => self.crm_action().await,
                _ => self.concurrent_edit().await,
            }
            if !self.held_hints.is_empty() && self.rng.random_bool(0.3) {
                self.release_held_hints().await;
            }
        }
    }

    fn pick_pass(&mut self) -> PassKind {
        match self.rng.random_range(0..100) {
            0..28 => PassKind::DrainInbox,
            28..56 => PassKind::PullCrmChanges,
            56..70 => PassKind::Reconcile,
            70..76 => PassKind::ReplayDeadLetters,
            76..82 => PassKind::ResolveIntents,
            _ => PassKind::RunOnce,
        }
    }

    /// Runs a pass; a crash drops it and starts a new process.
    pub(crate) async fn pass(&mut self, kind: PassKind) {
        let engine = self.engine.clone();
        let crasher = self.world.crasher.clone();
        let outcome = tokio::select! {
            biased;
            () = crasher.crashed() => None,
            r = run_pass(engine, kind) => Some(r),
        };
        match outcome {
            None => self.restart(kind).await,
            Some(Ok(failures)) if failures.is_empty() => {
                self.history.event(format!("pass {kind:?}"));
            }
            Some(Ok(failures)) => self.history.event(format!(
                "pass {kind:?}: {} failed outcome(s): {}",
                failures.len(),
                failures.join(" | ")
            )),
            Some(Err(e)) => self.history.event(format!("pass {kind:?} failed: {e}")),
        }
        if self.world.crasher.clear_hook() {
            self.history
                .event("the concurrent edit did not happen (the pass ended first)");
        }
        self.observe();
    }

    /// A crash: a new engine over the same store, starting with `resolve_intents` like
    /// `Engine::run`; that first pass may crash too.
    async fn restart(&mut self, during: PassKind) {
        loop {
            self.crashes += 1;
            let what = format!(
                "crash #{} during {during:?}: {}",
                self.crashes,
                self.world.crasher.last_crash().unwrap_or_default()
            );
            self.history.event(&what);
            self.crash_log.push(what);
            self.world.crasher.restart();
            self.maybe_arm_crash();
            self.engine = self.world.engine();
            let engine = self.engine.clone();
            let crasher = self.world.crasher.clone();
            let done = tokio::select! {
                biased;
                () = crasher.crashed() => false,
                _ = run_pass(engine, PassKind::ResolveIntents) => true,
            };
            if done {
                self.history.event("restarted: resolve_intents done");
                return;
            }
        }
    }

    /// Records which followed fields both sides agree on right now.
    fn observe(&self) {
        for (i, pair) in self.pairs.iter().enumerate() {
            let found = find(&self.world, pair);
            let (Some(r), Some(c)) = (found.referral(), found.crm()) else {
                continue;
            };
            for field in [
                Field::DealValue,
                Field::CloseDate,
                Field::Notes,
                Field::MicrosoftCrmId,
            ] {
                if let (Some(a), Some(b)) = (pc_value(r, field), crm_value(c, field))
                    && a == b
                {
                    self.history.agree(i, field, a);
                }
            }
        }
    }

    // ------------------------------------------------------------------ hints

    /// A webhook for `referral_id`: delivered, delivered twice, held back (reordered) or lost.
    /// Whether the hint reaches the inbox (now, or later if held): false when it is lost.
    async fn deliver_hint(&mut self, referral_id: String, event: &'static str) -> bool {
        match self.rng.random_range(0..100) {
            0..10 => {
                self.history
                    .event(format!("hint {event} {referral_id}: lost"));
                return false;
            }
            10..25 => self.held_hints.push((referral_id, event)),
            25..35 => {
                let fresh = self.rng.random_bool(0.5);
                self.push_hint(&referral_id, event, true).await;
                self.push_hint(&referral_id, event, fresh).await;
            }
            _ => self.push_hint(&referral_id, event, true).await,
        }
        true
    }

    async fn push_hint(&mut self, referral_id: &str, event: &'static str, fresh_hash: bool) {
        if fresh_hash {
            self.hint_hashes += 1;
        }
        let hint = InboxHint {
            seq: 0,
            referral_id: referral_id.to_string(),
            event: event.to_string(),
            change_time: Some(Utc::now()),
            received_at: Utc::now(),
            payload: None,
        };
        let hash = format!("sim-{}", self.hint_hashes);
        let _ = self.world.store.push_hint(&hash, hint).await;
    }

    async fn release_held_hints(&mut self) {
        let mut held = std::mem::take(&mut self.held_hints);
        // Released newest first: out of order.
        held.reverse();
        for (id, event) in held {
            self.push_hint(&id, event, true).await;
        }
    }

    /// Delivers whatever is still held (before quiescence: a late webhook, not a lost one).
    pub(crate) async fn flush_hints(&mut self) {
        self.release_held_hints().await;
    }

    // ------------------------------------------------------------------ Partner Center side

    fn pick_pair(&mut self, ok: impl Fn(&Pair, &Found) -> bool) -> Option<(usize, Found)> {
        let candidates: Vec<(usize, Found)> = self
            .pairs
            .iter()
            .enumerate()
            .map(|(i, p)| (i, find(&self.world, p)))
            .filter(|(i, f)| ok(&self.pairs[*i], f))
            .collect();
        if candidates.is_empty() {
            return None;
        }
        let k = self.rng.random_range(0..candidates.len());
        candidates.into_iter().nth(k)
    }

    /// A pair with an open referral of ours (co-sell ones only if asked), and that referral.
    fn pick_open_referral(&mut self, co_sell_only: bool) -> Option<(usize, serde_json::Value)> {
        let (i, found) = self.pick_pair(|p, f| (p.co_sell || !co_sell_only) && open_referral(f))?;
        found.referral().cloned().map(|r| (i, r))
    }

    fn pc(&self) -> PartnerCenterEmulator {
        self.world.sandbox.partner_center().clone()
    }

    fn dv(&self) -> DataverseEmulator {
        self.world.sandbox.dataverse().clone()
    }

    async fn partner_center_action(&mut self) {
        match self.rng.random_range(0..100) {
            0..25 if self.pairs.len() < MAX_PAIRS => self.incoming_referral().await,
            0..60 => {
                let field = Field::EDITABLE[self.rng.random_range(0..3)];
                let Some((i, referral)) = self.pick_open_referral(false) else {
                    return;
                };
                let id = referral["id"].as_str().unwrap_or_default();
                let value = self.value_for(field);
                let target = Target::Referral(id.to_string());
                if apply_edit(&self.pc(), &self.dv(), &target, field, &value).is_ok() {
                    self.history
                        .write(i, Side::PartnerCenter, field, value, false);
                    self.deliver_hint(id.to_string(), "referral-updated").await;
                }
            }
            60..72 => self.microsoft_answers(true).await,
            72..78 => self.microsoft_answers(false).await,
            78..86 => {
                let Some((i, referral)) = self.pick_open_referral(false) else {
                    return;
                };
                let id = referral["id"].as_str().unwrap_or_default();
                let msx = format!("7-SIM{:05}", self.fresh());
                if self.pc().set_microsoft_crm_id(id, Some(&msx)).is_ok() {
                    self.history
                        .write(i, Side::PartnerCenter, Field::MicrosoftCrmId, msx, false);
                    self.deliver_hint(id.to_string(), "referral-updated").await;
                }
            }
            _ => self.partner_center_status().await,
        }
    }

    async fn incoming_referral(&mut self) {
        let currency = CURRENCIES[self.rng.random_range(0..CURRENCIES.len())];
        let n = self.fresh();
        let Ok(r) = self.pc().create_incoming_referral(json!({
            "name": format!("Incoming {n}"),
            "details": {"currency": currency},
        })) else {
            return;
        };
        let id = r["id"].as_str().unwrap_or_default().to_string();
        let co_sell = r["consent"]["consentToShareReferralWithMicrosoftSellers"] == json!(true);
        self.history.event(format!(
            "pair {}: Microsoft sends referral {id} ({}, {currency})",
            self.pairs.len(),
            if co_sell { "co-sell" } else { "plain" }
        ));
        self.pairs.push(Pair {
            origin: Side::PartnerCenter,
            referral_id: Some(id.clone()),
            opportunity: None,
            invalid: None,
            co_sell,
            label: format!("incoming referral {id}"),
        });
        self.deliver_hint(id, "referral-created").await;
    }

    /// Microsoft accepts (its CRM id lands on ours) or declines our co-sell referral.
    async fn microsoft_answers(&mut self, accept: bool) {
        let Some((i, referral)) = self.pick_open_referral(true) else {
            return;
        };
        let id = referral["id"].as_str().unwrap_or_default();
        let pc = self.pc();
        let result = if accept {
            pc.microsoft_accept(id)
        } else {
            pc.microsoft_decline(id)
        };
        let Ok(theirs) = result else { return };
        self.history.event(format!(
            "pair {i}: Microsoft {} the co-sell",
            if accept { "accepts" } else { "declines" }
        ));
        if accept
            && let Some(msx) = pc
                .referral(id)
                .and_then(|r| pc_value(&r, Field::MicrosoftCrmId))
        {
            self.history
                .write(i, Side::PartnerCenter, Field::MicrosoftCrmId, msx, false);
            self.deliver_hint(id.to_string(), "referral-updated").await;
        }
        if let Some(t) = theirs["id"].as_str() {
            let delivered = self
                .deliver_hint(t.to_string(), "related-referral-created")
                .await;
            self.history.decision(Decision {
                pair: i,
                theirs: t.to_string(),
                verb: if accept { "accepted" } else { "declined" },
                delivered,
            });
        }
    }

    /// A partner seller moves the referral in Partner Center: accepts or declines an incoming
    /// one, wins or loses an active one.
    async fn partner_center_status(&mut self) {
        let Some((i, r)) = self.pick_open_referral(false) else {
            return;
        };
        let id = r["id"].as_str().unwrap_or_default().to_string();
        let to = match r["status"].as_str() {
            Some("New") if self.rng.random_bool(0.75) => ("Active", "Accepted"),
            Some("New") => ("Closed", "Declined"),
            Some("Active") if self.rng.random_bool(0.5) => ("Closed", "Won"),
            Some("Active") => ("Closed", "Lost"),
            _ => return,
        };
        let patch = json!([
            {"op": "replace", "path": "/status", "value": to.0},
            {"op": "replace", "path": "/substatus", "value": to.1},
        ]);
        if self.pc().update_as_microsoft(&id, patch).is_ok() {
            let value = format!("{}/{}", to.0, to.1);
            self.history
                .write(i, Side::PartnerCenter, Field::Status, value, false);
            self.deliver_hint(id, "referral-updated").await;
        }
    }

    // ------------------------------------------------------------------ CRM side

    async fn crm_action(&mut self) {
        self.crm_solution_change();
        match self.rng.random_range(0..100) {
            0..20 if self.pairs.len() < MAX_PAIRS => self.crm_opportunity(None),
            20..27 if self.pairs.len() < MAX_PAIRS => {
                let why = if self.rng.random_bool(0.5) {
                    "co-sell without a customer contact"
                } else {
                    "country is not ISO 3166 alpha-2"
                };
                self.crm_opportunity(Some(why));
            }
            0..62 => {
                let field = Field::EDITABLE[self.rng.random_range(0..3)];
                let Some((i, found)) =
                    self.pick_pair(|_, f| f.crm().is_some_and(|c| c.state() == 0))
                else {
                    return;
                };
                let Some(rec) = found.crm() else { return };
                let value = self.value_for(field);
                let target = Target::Row(rec.table, rec.id);
                if apply_edit(&self.pc(), &self.dv(), &target, field, &value).is_ok() {
                    self.history.write(i, Side::Crm, field, value, false);
                }
            }
            62..76 => self.qualify_or_disqualify(true).await,
            76..84 => self.qualify_or_disqualify(false).await,
            84..93 => self.close_opportunity(true).await,
            _ => self.close_opportunity(false).await,
        }
    }

    /// Now and then, a seller adds a solution to an open opportunity or removes one: a link
    /// row created or deleted, the opportunity row untouched.
    fn crm_solution_change(&mut self) {
        const SOLUTIONS: [(&str, &str); 3] = [
            ("SOL-34104-EBB", "Contoso Supply Chain Suite"),
            ("SOL-50001-SIM", "Simulated Analytics"),
            ("SOL-50002-SIM", "Simulated Security"),
        ];
        if !self.solution_rng.random_bool(0.2) {
            return;
        }
        let open: Vec<(usize, Uuid)> = self
            .pairs
            .iter()
            .enumerate()
            .filter_map(|(i, p)| {
                let f = find(&self.world, p);
                let c = f.crm()?;
                (c.table == "opportunity" && c.state() == 0).then_some((i, c.id))
            })
            .collect();
        if open.is_empty() {
            return;
        }
        let (i, opp) = open[self.solution_rng.random_range(0..open.len())];
        let dv = self.dv();
        let links = dv
            .query(
                "cosell_opportunitysolution",
                &format!("_cosell_opportunityid_value eq {opp}"),
            )
            .unwrap_or_default();
        // Never the last one: a co-sell referral needs a solution, and a seller's removal
        // that breaks that rule is refused with a dead letter (tested in `tests/workflows.rs`),
        // which is not this workload's subject.
        if links.len() > 1 && self.solution_rng.random_bool(0.5) {
            let link = &links[self.solution_rng.random_range(0..links.len())];
            if let Some(id) = uuid_of(link, "cosell_opportunitysolutionid")
                && dv.delete_as_user("cosell_opportunitysolution", id).is_ok()
            {
                self.history
                    .event(format!("pair {i}: CRM seller removes solution link {id}"));
            }
            return;
        }
        let (solution_id, name) = SOLUTIONS[self.solution_rng.random_range(0..SOLUTIONS.len())];
        let Some(solution) = solution_row(&dv, solution_id, name) else {
            return;
        };
        let linked = links
            .iter()
            .any(|l| uuid_of(l, "_cosell_partnercentersolutionid_value") == Some(solution));
        if !linked && link_solution(&dv, opp, solution) {
            self.history
                .event(format!("pair {i}: CRM seller adds solution {solution_id}"));
        }
    }

    /// A seller's opportunity with sync on: a valid co-sell or plain deal, or a deliberately
    /// invalid one.
    fn crm_opportunity(&mut self, invalid: Option<&'static str>) {
        let dv = self.dv();
        let n = self.fresh();
        let co_sell =
            invalid == Some("co-sell without a customer contact") || self.rng.random_bool(0.7);
        let country = if invalid == Some("country is not ISO 3166 alpha-2") {
            "Narnia"
        } else {
            "US"
        };
        let name = format!("Deal {n}");
        let Ok(account) = dv.insert_row(
            "account",
            json!({"name": format!("{name} Customer"), "address1_line1": "1 Main St",
                   "address1_city": "Seattle", "address1_postalcode": "98101",
                   "address1_country": country}),
        ) else {
            return;
        };
        let currency = CURRENCIES[self.rng.random_range(0..CURRENCIES.len())];
        let mut row = json!({
            "name": name, "estimatedvalue": 1000.0 * (n as f64), "estimatedclosedate": "2027-06-30",
            "description": format!("Deal {n} needs a proof of concept."),
            "cosell_syncwithpartnercenter": true,
            "customerid_account@odata.bind": format!("/accounts({account})"),
        });
        if let Some(cur) = dv.currency_id(currency) {
            row["transactioncurrencyid@odata.bind"] =
                json!(format!("/transactioncurrencies({cur})"));
        }
        // A Yes/No column always holds a value in Dataverse (the form's default is No).
        row["cosell_visibletomicrosoft"] = json!(co_sell);
        if co_sell {
            row["cosell_helprequired"] = json!(100000003);
        }
        if invalid != Some("co-sell without a customer contact")
            && let Ok(contact) = dv.insert_row(
                "contact",
                json!({"firstname": "Sue", "lastname": format!("Smith{n}"),
                       "emailaddress1": format!("sue{n}@deal.example"),
                       "parentcustomerid_account@odata.bind": format!("/accounts({account})")}),
            )
        {
            row["parentcontactid@odata.bind"] = json!(format!("/contacts({contact})"));
        }
        let Ok(opp) = dv.insert_row("opportunity", row) else {
            return;
        };
        if let Some(s) = solution_row(&dv, "SOL-34104-EBB", "Contoso Supply Chain Suite") {
            link_solution(&dv, opp, s);
        }
        self.history.event(format!(
            "pair {}: CRM seller creates opportunity {opp} ({}{})",
            self.pairs.len(),
            if co_sell { "co-sell" } else { "plain" },
            invalid
                .map(|w| format!(", invalid: {w}"))
                .unwrap_or_default()
        ));
        self.pairs.push(Pair {
            origin: Side::Crm,
            referral_id: None,
            opportunity: Some(opp),
            invalid,
            co_sell,
            label: format!("CRM opportunity {opp}"),
        });
    }

    /// Qualifies (QualifyLead, as a seller does in the app) or disqualifies an open lead.
    async fn qualify_or_disqualify(&mut self, qualify: bool) {
        let Some((i, found)) = self
            .pick_pair(|_, f| f.opportunities.is_empty() && f.leads.iter().any(|l| l.state() == 0))
        else {
            return;
        };
        let Some(lead) = found.leads.iter().find(|l| l.state() == 0).cloned() else {
            return;
        };
        let ok = if qualify {
            let options = QualifyLead {
                create_opportunity: true,
                ..Default::default()
            };
            let seller = self.world.seller.clone();
            self.world
                .unfaulted(async move { seller.qualify_lead(lead.id, &options).await })
                .await
                .is_ok()
        } else {
            self.dv()
                .update_as_user("lead", lead.id, json!({"statecode": 2, "statuscode": 6}))
                .is_ok()
        };
        if ok {
            let value = if qualify {
                "Active/Accepted"
            } else {
                "Closed/Declined"
            };
            self.history
                .write(i, Side::Crm, Field::Status, value.into(), false);
        }
    }

    /// Wins or loses an open opportunity (WinOpportunity / LoseOpportunity).
    async fn close_opportunity(&mut self, win: bool) {
        // Deals are mostly closed after they reached Partner Center; now and then before.
        let early = self.rng.random_bool(0.1);
        let Some((i, found)) = self.pick_pair(|p, f| {
            p.invalid.is_none()
                && (early || f.referral().is_some())
                && f.opportunities.iter().any(|o| o.state() == 0)
        }) else {
            return;
        };
        let Some(opp) = found.opportunities.iter().find(|o| o.state() == 0).cloned() else {
            return;
        };
        let seller = self.world.seller.clone();
        let result = self
            .world
            .unfaulted(async move {
                if win {
                    seller
                        .win_opportunity(
                            opp.id,
                            &OpportunityClose::new("Won"),
                            OpportunityStatus::Won,
                        )
                        .await
                } else {
                    seller
                        .lose_opportunity(
                            opp.id,
                            &OpportunityClose::new("Lost"),
                            OpportunityStatus::OutSold,
                        )
                        .await
                }
            })
            .await;
        if result.is_ok() {
            let value = if win { "Closed/Won" } else { "Closed/Lost" };
            self.history
                .write(i, Side::Crm, Field::Status, value.into(), false);
        }
    }

    // ------------------------------------------------------------------ both sides

    /// Both sides edit the same pair: between passes, or (half the time) the CRM side just
    /// before one of the engine's requests in the next pass, so it lands between the engine's
    /// read and its write.
    async fn concurrent_edit(&mut self) {
        let Some((i, found)) =
            self.pick_pair(|_, f| open_referral(f) && f.crm().is_some_and(|c| c.state() == 0))
        else {
            return;
        };
        let (Some(r), Some(c)) = (found.referral().cloned(), found.crm().cloned()) else {
            return;
        };
        let id = r["id"].as_str().unwrap_or_default().to_string();
        let same_field = self.rng.random_bool(0.6);
        let pc_field = Field::EDITABLE[self.rng.random_range(0..3)];
        let crm_field = if same_field {
            pc_field
        } else {
            Field::EDITABLE[self.rng.random_range(0..3)]
        };
        let pc_v = self.value_for(pc_field);
        let crm_v = self.value_for(crm_field);
        if apply_edit(
            &self.pc(),
            &self.dv(),
            &Target::Referral(id.clone()),
            pc_field,
            &pc_v,
        )
        .is_ok()
        {
            self.history
                .write(i, Side::PartnerCenter, pc_field, pc_v, false);
            self.deliver_hint(id.clone(), "referral-updated").await;
        }
        let target = Target::Row(c.table, c.id);
        if self.rng.random_bool(0.5) {
            if apply_edit(&self.pc(), &self.dv(), &target, crm_field, &crm_v).is_ok() {
                self.history.write(i, Side::Crm, crm_field, crm_v, false);
            }
            return;
        }
        // During the next pass, just before its k-th request.
        let at = self.world.crasher.requests() + self.rng.random_range(1..12);
        let (pc, dv, history) = (self.pc(), self.dv(), self.history.clone());
        self.world.crasher.before_request(
            at,
            Box::new(move || {
                if apply_edit(&pc, &dv, &target, crm_field, &crm_v).is_ok() {
                    history.write(i, Side::Crm, crm_field, crm_v, true);
                }
            }),
        );
        let kind = if self.rng.random_bool(0.5) {
            PassKind::DrainInbox
        } else {
            PassKind::PullCrmChanges
        };
        self.pass(kind).await;
    }

    /// A new value for `field`, distinct from every earlier one.
    fn value_for(&mut self, field: Field) -> String {
        let n = self.fresh();
        match field {
            Field::DealValue => money(10_000.0 + 100.0 * n as f64),
            Field::CloseDate => {
                let base = NaiveDate::from_ymd_opt(2027, 1, 1).unwrap_or_default();
                (base + Days::days(n as i64)).format("%Y-%m-%d").to_string()
            }
            Field::Notes => format!("note {n}"),
            Field::MicrosoftCrmId => format!("7-SIM{n:05}"),
            Field::Status => String::new(),
        }
    }
}

/// The pair has one of our referrals that is not closed.
fn open_referral(f: &Found) -> bool {
    f.referral()
        .is_some_and(|r| matches!(r["status"].as_str(), Some("New" | "Active")))
}

/// Writes `value` into `field` on one side, as a user would (sync: usable inside a hook).
fn apply_edit(
    pc: &PartnerCenterEmulator,
    dv: &DataverseEmulator,
    target: &Target,
    field: Field,
    value: &str,
) -> Result<(), String> {
    match target {
        Target::Referral(id) => {
            let (path, v) = match field {
                Field::DealValue => (
                    "/details/dealValue",
                    json!(value.parse::<f64>().unwrap_or(0.0)),
                ),
                Field::CloseDate => (
                    "/details/closingDateTime",
                    json!(format!("{value}T00:00:00Z")),
                ),
                Field::Notes => ("/details/notes", json!(value)),
                _ => return Err("not editable".into()),
            };
            pc.update_as_microsoft(id, json!([{"op": "replace", "path": path, "value": v}]))
                .map(|_| ())
                .map_err(|e| e.to_string())
        }
        Target::Row(table, id) => {
            let (col, v) = match field {
                // A lead's deal value is its Money column `estimatedamount` (R-LEAD).
                Field::DealValue if *table == "lead" => (
                    "estimatedamount",
                    json!(value.parse::<f64>().unwrap_or(0.0)),
                ),
                Field::DealValue => ("estimatedvalue", json!(value.parse::<f64>().unwrap_or(0.0))),
                Field::CloseDate => ("estimatedclosedate", json!(value)),
                Field::Notes => ("description", json!(value)),
                _ => return Err("not editable".into()),
            };
            dv.update_as_user(table, *id, json!({ col: v }))
                .map_err(|e| e.to_string())
        }
    }
}

/// The solution row with `solution_id`, created (with `name`) when missing.
fn solution_row(dv: &DataverseEmulator, solution_id: &str, name: &str) -> Option<Uuid> {
    dv.query(
        "cosell_partnercentersolution",
        &format!("cosell_solutionid eq '{solution_id}'"),
    )
    .ok()
    .and_then(|rows| {
        rows.first()
            .and_then(|r| uuid_of(r, "cosell_partnercentersolutionid"))
    })
    .or_else(|| {
        dv.insert_row(
            "cosell_partnercentersolution",
            json!({"cosell_solutionid": solution_id, "cosell_name": name}),
        )
        .ok()
    })
}

/// A seller linking a solution to an opportunity: a row of the link table. Whether it landed.
fn link_solution(dv: &DataverseEmulator, opp: Uuid, solution: Uuid) -> bool {
    dv.insert_row(
        "cosell_opportunitysolution",
        json!({"cosell_OpportunityId@odata.bind": format!("/opportunities({opp})"),
               "cosell_PartnerCenterSolutionId@odata.bind":
                   format!("/cosell_partnercentersolutions({solution})")}),
    )
    .is_ok()
}
