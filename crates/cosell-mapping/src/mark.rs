//! The ✔ / ✖ prefix on the opportunity name and the bounded audit column.

use chrono::{DateTime, SecondsFormat, Utc};

/// Prefix for a successful sync.
pub const SUCCESS_MARK: char = '✔';
/// Prefix for a failed sync.
pub const FAILURE_MARK: char = '✖';
/// Emoji presentation selector that may follow a mark (`✔️`).
const VARIATION_SELECTOR: char = '\u{FE0F}';

/// The outcome of one sync of a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SyncOutcome {
    /// The record was synchronised.
    Success,
    /// The record could not be synchronised.
    Failure,
}

impl SyncOutcome {
    /// The mark for this outcome.
    pub fn mark(self) -> char {
        match self {
            SyncOutcome::Success => SUCCESS_MARK,
            SyncOutcome::Failure => FAILURE_MARK,
        }
    }
}

/// The name without any leading marks (and the spaces after them). Marks elsewhere in the name
/// are left alone.
///
/// ```
/// use cosell_mapping::strip_mark;
/// assert_eq!(strip_mark("✔ Contoso"), "Contoso");
/// assert_eq!(strip_mark("✖ ✔ Contoso"), "Contoso");
/// assert_eq!(strip_mark("Contoso ✔ deal"), "Contoso ✔ deal");
/// ```
pub fn strip_mark(name: &str) -> &str {
    let mut rest = name;
    loop {
        let trimmed = rest.trim_start();
        let Some(after) = trimmed
            .strip_prefix(SUCCESS_MARK)
            .or_else(|| trimmed.strip_prefix(FAILURE_MARK))
        else {
            return if rest.len() == name.len() {
                name
            } else {
                trimmed
            };
        };
        rest = after.strip_prefix(VARIATION_SELECTOR).unwrap_or(after);
    }
}

/// The name with exactly one leading mark for `outcome`: any old leading mark is removed first,
/// so marking twice gives one mark and ✖ then ✔ gives only ✔.
///
/// ```
/// use cosell_mapping::{apply_mark, SyncOutcome};
/// let once = apply_mark("Contoso", SyncOutcome::Failure);
/// assert_eq!(once, "✖ Contoso");
/// assert_eq!(apply_mark(&once, SyncOutcome::Success), "✔ Contoso");
/// ```
pub fn apply_mark(name: &str, outcome: SyncOutcome) -> String {
    let bare = strip_mark(name);
    let mut out = String::with_capacity(bare.len() + 4);
    out.push(outcome.mark());
    out.push(' ');
    out.push_str(bare);
    out
}

/// The audit column after recording `entry` at `at`: the new line first, then the previous text,
/// cut at a line boundary so the whole stays within `max_chars` characters.
///
/// ```
/// use chrono::{TimeZone, Utc};
/// use cosell_mapping::audit_entry;
/// let at = Utc.with_ymd_and_hms(2025, 1, 2, 3, 4, 5).unwrap();
/// let text = audit_entry(Some("2025-01-01T00:00:00Z created"), at, "updated", 4000);
/// assert_eq!(text, "2025-01-02T03:04:05Z updated\n2025-01-01T00:00:00Z created");
/// ```
pub fn audit_entry(
    previous: Option<&str>,
    at: DateTime<Utc>,
    entry: &str,
    max_chars: usize,
) -> String {
    let line = format!(
        "{} {}",
        at.to_rfc3339_opts(SecondsFormat::Secs, true),
        entry.replace(['\r', '\n'], " ")
    );
    let mut out: String = line.chars().take(max_chars).collect();
    let mut used = out.chars().count();
    for old in previous.unwrap_or("").lines().filter(|l| !l.is_empty()) {
        let n = old.chars().count() + 1;
        if used + n > max_chars {
            break;
        }
        out.push('\n');
        out.push_str(old);
        used += n;
    }
    out
}
