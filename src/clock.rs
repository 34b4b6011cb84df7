//! Time, injected. The pure core never reads the clock; it is handed
//! `now`. Production wires the system clock; tests and the future
//! deterministic simulation move a [`ManualClock`]. (Randomness is the same
//! kind of input: see [`crate::random`].)

use crate::domain::Timestamp;

/// Where "now" comes from.
pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> Timestamp;
}

/// Wall-clock time.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        let since_epoch = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        Timestamp::from_unix_millis(since_epoch.as_millis() as i64)
    }
}

/// Time that moves only when told to: for tests of time-dependent logic
/// (stall deadlines, re-drive back-off) without sleeping.
#[derive(Debug)]
pub struct ManualClock {
    millis: std::sync::atomic::AtomicI64,
}

impl ManualClock {
    pub fn starting_at(at: Timestamp) -> ManualClock {
        ManualClock {
            millis: std::sync::atomic::AtomicI64::new(at.unix_millis()),
        }
    }

    pub fn advance(&self, by: std::time::Duration) {
        self.millis
            .fetch_add(by.as_millis() as i64, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Timestamp {
        Timestamp::from_unix_millis(self.millis.load(std::sync::atomic::Ordering::SeqCst))
    }
}
