//! A per-bank circuit breaker: stop sending to a bank that is failing, so
//! that its outage costs a fast, local "circuit open" instead of a timeout
//! per payment, and the bank gets room to recover.
//!
//! ```text
//!            failure rate >= threshold
//!            (at least min_calls in window)
//!   Closed ─────────────────────────────────▶ Open
//!     ▲                                       │  ▲
//!     │ probe succeeds                cool-down │  │ probe fails
//!     │ (window reset)                  passed  ▼  │ (cool-down restarts)
//!     └──────────────────────────────────── HalfOpen
//!                                  (one probe at a time)
//! ```
//!
//! The window is **count-based**: the outcomes of the last `window_calls`
//! calls, whatever their age. It needs no clock while closed and reacts as
//! fast as traffic arrives; the clock (injected) only times the cool-down.
//!
//! A result arriving while half-open counts whether or not it is the probe's
//! (a slow call admitted while closed may finish then): any answer from the
//! bank is evidence of its health. Results arriving while open are ignored:
//! they were admitted before the breaker opened and change nothing.
//!
//! **Invariant:** no I/O, no sleeping, no logging: pure state behind a mutex,
//! with time read from the injected [`Clock`]. The caller logs transitions
//! (it knows which bank this is).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::clock::Clock;
use crate::domain::Timestamp;
use crate::limits;

/// What the breaker does with the next call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BreakerState {
    /// Calls go through; outcomes fill the window.
    Closed,
    /// Calls are refused until the cool-down has passed.
    Open,
    /// The cool-down has passed: one probe call at a time decides.
    HalfOpen,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BreakerSettings {
    /// Calls in the sliding window (the last this-many outcomes).
    pub window_calls: usize,
    /// Calls in the window before the failure rate can open the breaker.
    pub min_calls: usize,
    /// Failure rate, in percent of the window, that opens the breaker.
    pub failure_percent: u32,
    /// How long the breaker stays open before a probe is let through. Also
    /// how long a claimed probe may stay unreported before another is
    /// allowed: a probe whose caller went away (a dropped future) must not
    /// wedge the breaker half-open forever.
    pub cool_down: Duration,
}

impl Default for BreakerSettings {
    fn default() -> Self {
        BreakerSettings {
            window_calls: limits::BREAKER_WINDOW_CALLS_DEFAULT,
            min_calls: limits::BREAKER_MIN_CALLS_DEFAULT,
            failure_percent: limits::BREAKER_FAILURE_PERCENT_DEFAULT,
            cool_down: limits::BREAKER_COOL_DOWN_DEFAULT,
        }
    }
}

impl BreakerSettings {
    /// Checks the settings against each other and against the limits.
    pub fn validate(&self) -> Result<(), String> {
        if !(1..=limits::BREAKER_WINDOW_CALLS_MAX).contains(&self.window_calls) {
            return Err(format!(
                "breaker window must hold 1 to {} calls",
                limits::BREAKER_WINDOW_CALLS_MAX
            ));
        }
        if !(1..=self.window_calls).contains(&self.min_calls) {
            return Err("breaker min_calls must be between 1 and the window size".into());
        }
        if !(1..=100).contains(&self.failure_percent) {
            return Err("breaker failure_percent must be between 1 and 100".into());
        }
        if self.cool_down.is_zero() {
            return Err("breaker cool_down must be positive".into());
        }
        Ok(())
    }
}

/// The state with what each state needs to know.
#[derive(Debug)]
enum Phase {
    Closed {
        /// The last `window_calls` outcomes, oldest first; `true` = success.
        window: VecDeque<bool>,
        /// Failures in `window`, kept so that a record is O(1).
        failures: usize,
    },
    Open {
        /// When the cool-down ends.
        until: Timestamp,
    },
    HalfOpen {
        /// When the probe in flight was let through, if one is.
        probe_since: Option<Timestamp>,
    },
}

impl Phase {
    fn closed(window_calls: usize) -> Phase {
        Phase::Closed {
            window: VecDeque::with_capacity(window_calls),
            failures: 0,
        }
    }
}

/// One bank's breaker; shared by reference (it locks inside).
pub struct CircuitBreaker {
    settings: BreakerSettings,
    clock: Arc<dyn Clock>,
    phase: Mutex<Phase>,
}

impl std::fmt::Debug for CircuitBreaker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CircuitBreaker")
            .field("settings", &self.settings)
            .field("state", &self.state())
            .finish()
    }
}

impl CircuitBreaker {
    /// A closed breaker with an empty window.
    pub fn new(settings: BreakerSettings, clock: Arc<dyn Clock>) -> Result<CircuitBreaker, String> {
        settings.validate()?;
        Ok(CircuitBreaker {
            settings,
            clock,
            phase: Mutex::new(Phase::closed(settings.window_calls)),
        })
    }

    pub fn settings(&self) -> &BreakerSettings {
        &self.settings
    }

    /// Whether a call may go to the bank now. While half-open, `true` claims
    /// the one probe: the caller must [`record`](Self::record) its outcome.
    pub fn allows(&self) -> bool {
        let now = self.clock.now();
        let mut phase = self.lock(now);
        match &mut *phase {
            Phase::Closed { .. } => true,
            Phase::Open { .. } => false,
            Phase::HalfOpen { probe_since } => {
                let free = match probe_since {
                    None => true,
                    Some(since) => self.cool_down_passed(*since, now),
                };
                if free {
                    *probe_since = Some(now);
                }
                free
            }
        }
    }

    /// Reports a call's outcome: `success` is any answer that shows the bank
    /// working (a definite rejection included); a failure is a timeout, a
    /// connection error or a 5xx.
    pub fn record(&self, success: bool) {
        let now = self.clock.now();
        let mut phase = self.lock(now);
        let next = match &mut *phase {
            Phase::Closed { window, failures } => {
                if window.len() == self.settings.window_calls && window.pop_front() == Some(false) {
                    *failures -= 1;
                }
                window.push_back(success);
                if !success {
                    *failures += 1;
                }
                debug_assert!(window.len() <= self.settings.window_calls);
                debug_assert_eq!(*failures, window.iter().filter(|ok| !**ok).count());
                let tripped = window.len() >= self.settings.min_calls
                    && *failures as u64 * 100
                        >= u64::from(self.settings.failure_percent) * window.len() as u64;
                tripped.then(|| self.open(now))
            }
            Phase::Open { .. } => None,
            Phase::HalfOpen { .. } if success => Some(Phase::closed(self.settings.window_calls)),
            Phase::HalfOpen { .. } => Some(self.open(now)),
        };
        if let Some(next) = next {
            *phase = next;
        }
    }

    /// The state now (an open breaker whose cool-down has passed is
    /// half-open). For routing: prefer banks whose breaker is closed.
    pub fn state(&self) -> BreakerState {
        state_of(&self.lock(self.clock.now()))
    }

    fn open(&self, now: Timestamp) -> Phase {
        Phase::Open {
            until: now.plus_millis(self.settings.cool_down.as_millis() as i64),
        }
    }

    fn cool_down_passed(&self, since: Timestamp, now: Timestamp) -> bool {
        now >= since.plus_millis(self.settings.cool_down.as_millis() as i64)
    }

    /// Locks the phase, first moving an open breaker whose cool-down has
    /// passed to half-open, so every reader sees the same state.
    fn lock(&self, now: Timestamp) -> std::sync::MutexGuard<'_, Phase> {
        let mut phase = self
            .phase
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        if let Phase::Open { until } = *phase {
            if now >= until {
                *phase = Phase::HalfOpen { probe_since: None };
            }
        }
        phase
    }
}

fn state_of(phase: &Phase) -> BreakerState {
    match phase {
        Phase::Closed { .. } => BreakerState::Closed,
        Phase::Open { .. } => BreakerState::Open,
        Phase::HalfOpen { .. } => BreakerState::HalfOpen,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;

    const COOL_DOWN: Duration = Duration::from_secs(10);

    /// Window 4, opens at 2 failures of at least 4 calls.
    fn breaker() -> (Arc<ManualClock>, CircuitBreaker) {
        let clock = Arc::new(ManualClock::starting_at(Timestamp::from_unix_millis(
            1_700_000_000_000,
        )));
        let settings = BreakerSettings {
            window_calls: 4,
            min_calls: 4,
            failure_percent: 50,
            cool_down: COOL_DOWN,
        };
        let breaker = CircuitBreaker::new(settings, clock.clone()).unwrap();
        (clock, breaker)
    }

    fn record_all(breaker: &CircuitBreaker, outcomes: &[bool]) {
        for &success in outcomes {
            assert!(breaker.allows());
            breaker.record(success);
        }
    }

    /// Drives a fresh breaker to open.
    fn opened() -> (Arc<ManualClock>, CircuitBreaker) {
        let (clock, breaker) = breaker();
        record_all(&breaker, &[false, false, true, true]);
        assert_eq!(breaker.state(), BreakerState::Open);
        (clock, breaker)
    }

    #[test]
    fn stays_closed_below_min_calls() {
        let (_, breaker) = breaker();
        record_all(&breaker, &[false, false, false]);
        assert_eq!(breaker.state(), BreakerState::Closed);
        assert!(breaker.allows());
    }

    #[test]
    fn stays_closed_below_the_failure_rate() {
        let (_, breaker) = breaker();
        record_all(&breaker, &[false, true, true, true, true, true]);
        assert_eq!(breaker.state(), BreakerState::Closed);
    }

    #[test]
    fn old_outcomes_slide_out_of_the_window() {
        let (_, breaker) = breaker();
        // One failure, then successes push it out: a later single failure
        // is one of four (25%), not two.
        record_all(&breaker, &[false, true, true, true, true, false]);
        assert_eq!(breaker.state(), BreakerState::Closed);
        breaker.record(false);
        assert_eq!(breaker.state(), BreakerState::Open);
    }

    #[test]
    fn opens_at_the_failure_rate_and_refuses_until_the_cool_down() {
        let (clock, breaker) = opened();
        assert!(!breaker.allows());
        clock.advance(COOL_DOWN - Duration::from_millis(1));
        assert_eq!(breaker.state(), BreakerState::Open);
        assert!(!breaker.allows());
        clock.advance(Duration::from_millis(1));
        assert_eq!(breaker.state(), BreakerState::HalfOpen);
    }

    #[test]
    fn results_while_open_are_ignored() {
        let (_, breaker) = opened();
        breaker.record(true);
        breaker.record(true);
        assert_eq!(breaker.state(), BreakerState::Open);
    }

    #[test]
    fn half_open_allows_one_probe_at_a_time() {
        let (clock, breaker) = opened();
        clock.advance(COOL_DOWN);
        assert!(breaker.allows(), "the probe");
        assert!(!breaker.allows(), "a second call while the probe is out");
        assert!(!breaker.allows());
        assert_eq!(breaker.state(), BreakerState::HalfOpen);
    }

    #[test]
    fn probe_success_closes_with_a_fresh_window() {
        let (clock, breaker) = opened();
        clock.advance(COOL_DOWN);
        assert!(breaker.allows());
        breaker.record(true);
        assert_eq!(breaker.state(), BreakerState::Closed);
        // The failures before opening are forgotten: three more are below
        // min_calls.
        record_all(&breaker, &[false, false, false]);
        assert_eq!(breaker.state(), BreakerState::Closed);
    }

    #[test]
    fn probe_failure_reopens_and_restarts_the_cool_down() {
        let (clock, breaker) = opened();
        clock.advance(COOL_DOWN);
        assert!(breaker.allows());
        clock.advance(Duration::from_secs(3));
        breaker.record(false);
        assert_eq!(breaker.state(), BreakerState::Open);
        assert!(!breaker.allows());
        clock.advance(COOL_DOWN - Duration::from_millis(1));
        assert_eq!(breaker.state(), BreakerState::Open);
        clock.advance(Duration::from_millis(1));
        assert_eq!(breaker.state(), BreakerState::HalfOpen);
        assert!(breaker.allows());
    }

    #[test]
    fn an_unreported_probe_is_replaced_after_a_cool_down() {
        let (clock, breaker) = opened();
        clock.advance(COOL_DOWN);
        assert!(breaker.allows());
        clock.advance(COOL_DOWN - Duration::from_millis(1));
        assert!(!breaker.allows());
        clock.advance(Duration::from_millis(1));
        assert!(breaker.allows(), "the first probe's caller went away");
        assert!(!breaker.allows());
    }

    #[test]
    fn settings_are_checked() {
        let clock: Arc<dyn Clock> =
            Arc::new(ManualClock::starting_at(Timestamp::from_unix_millis(0)));
        let good = BreakerSettings::default();
        assert!(CircuitBreaker::new(good, clock.clone()).is_ok());
        for bad in [
            BreakerSettings {
                window_calls: 0,
                ..good
            },
            BreakerSettings {
                window_calls: limits::BREAKER_WINDOW_CALLS_MAX + 1,
                ..good
            },
            BreakerSettings {
                min_calls: good.window_calls + 1,
                ..good
            },
            BreakerSettings {
                min_calls: 0,
                ..good
            },
            BreakerSettings {
                failure_percent: 0,
                ..good
            },
            BreakerSettings {
                failure_percent: 101,
                ..good
            },
            BreakerSettings {
                cool_down: Duration::ZERO,
                ..good
            },
        ] {
            assert!(CircuitBreaker::new(bad, clock.clone()).is_err(), "{bad:?}");
        }
    }
}
