//! Reconciliation incidents: the periods in which a bank's settlement
//! report and payvisor disagreed, kept open until a later run of the same
//! period is clean, and the pages owed for them (a trigger when a period
//! opens, a resolve when it closes).
//!
//! Like payment pages, these are decided and recorded first and delivered
//! after, until the pager takes them: the record is the outbox. Pure: no
//! I/O, no clock; the reconciliation service loads the record, applies
//! what a run found, stores it, and delivers what it owes.

use super::Timestamp;

/// One bank's open periods and the pages owed for them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Incidents {
    /// Periods with mismatches, oldest first.
    pub open: Vec<OpenPeriod>,
    /// Periods found clean again whose trigger went out: a resolve is owed.
    pub resolves_owed: Vec<Period>,
}

/// A reconciliation period, `[from, to)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Period {
    pub from: Timestamp,
    pub to: Timestamp,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OpenPeriod {
    pub period: Period,
    /// Mismatches found by the last run of the period.
    pub mismatches: u64,
    /// The first of them, one line each (at most [`LINES_KEPT`]): what the
    /// page shows.
    pub lines: Vec<String>,
    /// Whether the pager took the trigger.
    pub paged: bool,
}

/// Mismatch lines kept per period, for its page (the log has all of them),
/// and the characters kept of each: a bank's record is one item, bounded
/// (DynamoDB's item limit is 400 KB).
pub const LINES_KEPT: usize = 10;
pub const LINE_CHARS_MAX: usize = 240;
/// Open periods kept per bank. Past this the oldest is dropped: it is no
/// longer run again, and its page stays open until a person resolves it.
pub const OPEN_PERIODS_MAX: usize = 48;

/// A page the record owes the pager.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Owed {
    Trigger(OpenPeriod),
    Resolve(Period),
}

impl Incidents {
    /// What a run of `period` found: `mismatches` (0: clean) and the first
    /// lines. A period that disagrees opens (or stays open, its figures
    /// updated); one that agrees again closes, owing a resolve.
    pub fn record_run(&mut self, period: Period, mismatches: u64, lines: &[String]) {
        let at = self.open.iter().position(|open| open.period == period);
        match (at, mismatches) {
            (None, 0) => {}
            (None, _) => {
                self.open.push(OpenPeriod {
                    period,
                    mismatches,
                    lines: kept(lines),
                    paged: false,
                });
                self.open.sort_by_key(|open| open.period);
                if self.open.len() > OPEN_PERIODS_MAX {
                    self.open.remove(0);
                }
            }
            (Some(at), 0) => {
                // Owed even if the record never saw its trigger delivered:
                // the trigger may have reached the pager unseen (a lost
                // answer, a crash before the record was saved), and a
                // resolve of a key the pager never opened changes nothing.
                self.open.remove(at);
                if !self.resolves_owed.contains(&period) {
                    self.resolves_owed.push(period);
                }
            }
            (Some(at), _) => {
                let open = &mut self.open[at];
                open.mismatches = mismatches;
                open.lines = kept(lines);
            }
        }
    }

    /// Open periods to run again, at most `limit`, taken in turn: turn
    /// `turn` starts where the one before left off, so periods that stay
    /// wrong do not keep the others from being run again.
    pub fn to_recheck(&self, limit: usize, turn: usize) -> Vec<Period> {
        if self.open.is_empty() {
            return Vec::new();
        }
        let start = turn.wrapping_mul(limit) % self.open.len();
        (self.open.iter().cycle())
            .skip(start)
            .take(limit.min(self.open.len()))
            .map(|open| open.period)
            .collect()
    }

    /// The pages owed: triggers of periods not yet paged, then resolves.
    pub fn owed(&self) -> Vec<Owed> {
        let triggers = (self.open.iter())
            .filter(|open| !open.paged)
            .cloned()
            .map(Owed::Trigger);
        let resolves = self.resolves_owed.iter().copied().map(Owed::Resolve);
        triggers.chain(resolves).collect()
    }

    /// The pager took `page` (or refused it for good): it is no longer owed.
    pub fn delivered(&mut self, page: &Owed) {
        match page {
            Owed::Trigger(sent) => {
                if let Some(open) = (self.open.iter_mut()).find(|open| open.period == sent.period) {
                    open.paged = true;
                }
            }
            Owed::Resolve(period) => self.resolves_owed.retain(|owed| owed != period),
        }
    }
}

/// The first lines, each cut to [`LINE_CHARS_MAX`] characters.
fn kept(lines: &[String]) -> Vec<String> {
    (lines.iter().take(LINES_KEPT))
        .map(|line| line.chars().take(LINE_CHARS_MAX).collect())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn period(n: i64) -> Period {
        Period {
            from: Timestamp::from_unix_millis(n * 1000),
            to: Timestamp::from_unix_millis((n + 1) * 1000),
        }
    }

    fn lines(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("mismatch {i}")).collect()
    }

    #[test]
    fn a_period_opens_is_paged_once_and_is_resolved_when_a_later_run_is_clean() {
        let mut incidents = Incidents::default();
        incidents.record_run(period(1), 0, &[]);
        assert_eq!(
            incidents,
            Incidents::default(),
            "a clean period owes nothing"
        );
        incidents.record_run(period(2), 12, &lines(12));
        let owed = incidents.owed();
        let [Owed::Trigger(open)] = &owed[..] else {
            panic!("{owed:?}")
        };
        assert_eq!((open.mismatches, open.lines.len()), (12, LINES_KEPT));
        // Not delivered (the pager was down): still owed, once.
        incidents.record_run(period(2), 3, &lines(3));
        assert_eq!(incidents.owed().len(), 1);
        incidents.delivered(&incidents.owed()[0].clone());
        assert!(incidents.owed().is_empty(), "paged once");
        assert_eq!(incidents.to_recheck(10, 0), vec![period(2)]);
        // Still wrong: still open, no second page.
        incidents.record_run(period(2), 1, &lines(1));
        assert!(incidents.owed().is_empty());
        // Clean again: closed, a resolve owed until delivered.
        incidents.record_run(period(2), 0, &[]);
        assert_eq!(incidents.owed(), vec![Owed::Resolve(period(2))]);
        assert!(incidents.to_recheck(10, 0).is_empty());
        incidents.delivered(&Owed::Resolve(period(2)));
        assert_eq!(incidents, Incidents::default());
    }

    /// Its trigger may have reached the pager without the record knowing.
    #[test]
    fn a_period_clean_before_its_page_was_recorded_as_sent_still_owes_a_resolve() {
        let mut incidents = Incidents::default();
        incidents.record_run(period(5), 1, &lines(1));
        incidents.record_run(period(5), 0, &[]);
        assert_eq!(incidents.owed(), vec![Owed::Resolve(period(5))]);
    }

    #[test]
    fn open_periods_are_rechecked_in_turn_and_kept_bounded() {
        let mut incidents = Incidents::default();
        for n in [7, 3, 5] {
            incidents.record_run(period(n), 1, &lines(1));
        }
        assert_eq!(incidents.to_recheck(2, 0), vec![period(3), period(5)]);
        assert_eq!(incidents.to_recheck(2, 1), vec![period(7), period(3)]);
        assert_eq!(
            incidents.to_recheck(5, 3),
            vec![period(3), period(5), period(7)]
        );
        let long = "x".repeat(1_000);
        for n in 10..(10 + OPEN_PERIODS_MAX as i64) {
            incidents.record_run(period(n), 1, std::slice::from_ref(&long));
        }
        assert_eq!(incidents.open.len(), OPEN_PERIODS_MAX);
        assert_eq!(incidents.open[0].period, period(10), "the oldest dropped");
        assert_eq!(incidents.open[0].lines[0].chars().count(), LINE_CHARS_MAX);
    }
}
