//! What happened in a seed: every user write (pair, side, field, value, step), the moments
//! both sides were seen agreeing on a field, and a readable event log.

use std::fmt;
use std::sync::{Arc, Mutex};

/// Which side a user write happened on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum Side {
    Crm,
    PartnerCenter,
}

impl fmt::Display for Side {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Side::Crm => "CRM",
            Side::PartnerCenter => "PC",
        })
    }
}

/// The fields users write and the checkers follow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum Field {
    DealValue,
    CloseDate,
    Notes,
    MicrosoftCrmId,
    /// In Partner Center terms: `status/substatus`.
    Status,
}

impl Field {
    pub(crate) const EDITABLE: [Field; 3] = [Field::DealValue, Field::CloseDate, Field::Notes];
}

/// One user write: what the checkers hold the final state to.
#[derive(Debug, Clone)]
pub(crate) struct Write {
    /// Global order of writes and observations.
    pub(crate) clock: u64,
    /// The workload step it happened in.
    pub(crate) step: usize,
    pub(crate) pair: usize,
    pub(crate) side: Side,
    pub(crate) field: Field,
    pub(crate) value: String,
    /// During an engine pass (a concurrent edit), not between passes.
    pub(crate) mid_pass: bool,
}

/// A moment where both sides were seen holding the same value of a field.
#[derive(Debug, Clone)]
pub(crate) struct Agreement {
    pub(crate) clock: u64,
    pub(crate) pair: usize,
    pub(crate) field: Field,
    pub(crate) value: String,
}

/// Microsoft answering a pair's co-sell on its own referral in the engagement.
#[derive(Debug, Clone)]
pub(crate) struct Decision {
    pub(crate) pair: usize,
    /// Microsoft's referral.
    pub(crate) theirs: String,
    /// `accepted` or `declined`.
    pub(crate) verb: &'static str,
    /// Whether its `related-referral-created` webhook reached the inbox (not lost).
    pub(crate) delivered: bool,
}

#[derive(Debug, Default)]
struct HistoryInner {
    clock: u64,
    step: usize,
    writes: Vec<Write>,
    agreements: Vec<Agreement>,
    decisions: Vec<Decision>,
    events: Vec<String>,
}

/// The record of a seed: user writes, observed agreements, a readable event log. Shared with
/// the concurrent-edit hooks, which run inside the engine's requests.
#[derive(Debug, Clone, Default)]
pub(crate) struct History {
    inner: Arc<Mutex<HistoryInner>>,
}

impl History {
    fn lock(&self) -> std::sync::MutexGuard<'_, HistoryInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn tick(&self) -> u64 {
        let mut h = self.lock();
        h.clock += 1;
        h.clock
    }

    pub(crate) fn set_step(&self, step: usize) {
        self.lock().step = step;
    }

    pub(crate) fn event(&self, text: impl Into<String>) {
        let mut h = self.lock();
        let line = format!("[{:>2}] {}", h.step, text.into());
        h.events.push(line);
    }

    pub(crate) fn write(
        &self,
        pair: usize,
        side: Side,
        field: Field,
        value: String,
        mid_pass: bool,
    ) {
        let clock = self.tick();
        let mut h = self.lock();
        let step = h.step;
        h.events.push(format!(
            "[{step:>2}] pair {pair}: {side} writes {field:?} = {value}{}",
            if mid_pass { " (during a pass)" } else { "" }
        ));
        h.writes.push(Write {
            clock,
            step,
            pair,
            side,
            field,
            value,
            mid_pass,
        });
    }

    pub(crate) fn agree(&self, pair: usize, field: Field, value: String) {
        let last = self
            .lock()
            .agreements
            .iter()
            .rev()
            .find(|a| a.pair == pair && a.field == field)
            .map(|a| a.value.clone());
        if last.as_deref() != Some(value.as_str()) {
            let clock = self.tick();
            self.lock().agreements.push(Agreement {
                clock,
                pair,
                field,
                value,
            });
        }
    }

    pub(crate) fn decision(&self, decision: Decision) {
        self.lock().decisions.push(decision);
    }

    pub(crate) fn decisions(&self) -> Vec<Decision> {
        self.lock().decisions.clone()
    }

    pub(crate) fn writes(&self) -> Vec<Write> {
        self.lock().writes.clone()
    }

    pub(crate) fn agreements(&self) -> Vec<Agreement> {
        self.lock().agreements.clone()
    }

    pub(crate) fn events(&self) -> Vec<String> {
        self.lock().events.clone()
    }
}
