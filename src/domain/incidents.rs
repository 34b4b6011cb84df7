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

/// Mismatch lines kept per period, for its page (the log has all of them).
pub const LINES_KEPT: usize = 10;

/// A page the record owes the pager.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Owed {
    Trigger(OpenPeriod),
    Resolve(Period),
}

impl Incidents {
    /// What a run of `period` found: `mismatches` (0: clean) and the first
    /// lines. A period that disagrees opens (or stays open, its figures
    /// updated); one that agrees again closes, owing a resolve if its
    /// trigger went out.
    pub fn record_run(&mut self, period: Period, mismatches: u64, lines: &[String]) {
        let at = self.open.iter().position(|open| open.period == period);
        match (at, mismatches) {
            (None, 0) => {}
            (None, _) => {
                self.open.push(OpenPeriod {
                    period,
                    mismatches,
                    lines: lines.iter().take(LINES_KEPT).cloned().collect(),
                    paged: false,
                });
                self.open.sort_by_key(|open| open.period);
            }
            (Some(at), 0) => {
                let closed = self.open.remove(at);
                if closed.paged && !self.resolves_owed.contains(&period) {
                    self.resolves_owed.push(period);
                }
            }
            (Some(at), _) => {
                let open = &mut self.open[at];
                open.mismatches = mismatches;
                open.lines = lines.iter().take(LINES_KEPT).cloned().collect();
            }
        }
    }

    /// Open periods to run again, oldest first, at most `limit`.
    pub fn to_recheck(&self, limit: usize) -> Vec<Period> {
        self.open
            .iter()
            .take(limit)
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

    /// The pager took `page`: it is no longer owed.
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
        assert_eq!(incidents.to_recheck(10), vec![period(2)]);
        // Still wrong: still open, no second page.
        incidents.record_run(period(2), 1, &lines(1));
        assert!(incidents.owed().is_empty());
        // Clean again: closed, a resolve owed until delivered.
        incidents.record_run(period(2), 0, &[]);
        assert_eq!(incidents.owed(), vec![Owed::Resolve(period(2))]);
        assert!(incidents.to_recheck(10).is_empty());
        incidents.delivered(&Owed::Resolve(period(2)));
        assert_eq!(incidents, Incidents::default());
    }

    #[test]
    fn a_period_clean_before_its_page_went_out_owes_nothing() {
        let mut incidents = Incidents::default();
        incidents.record_run(period(5), 1, &lines(1));
        incidents.record_run(period(5), 0, &[]);
        assert_eq!(incidents, Incidents::default());
    }

    #[test]
    fn periods_are_rechecked_oldest_first_within_the_limit() {
        let mut incidents = Incidents::default();
        for n in [7, 3, 5] {
            incidents.record_run(period(n), 1, &lines(1));
        }
        assert_eq!(incidents.to_recheck(2), vec![period(3), period(5)]);
    }
}
