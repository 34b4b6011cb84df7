//! Counters for `GET /admin/stats`: what the bank saw since this process
//! started (the distinct payment count comes from the durable record, so it
//! spans restarts).

use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;

/// Event counters, bumped where the event happens.
#[derive(Debug, Default)]
pub struct Stats {
    /// `POST /v1/payments` requests that reached the record (duplicates and
    /// conflicts included; refusals by faults and malformed bodies not).
    pub payments_received: AtomicU64,
    /// Re-submissions of a known payment with the same amount and currency.
    pub duplicate_submissions: AtomicU64,
    /// Re-submissions with a different amount or currency (answered 409).
    pub conflicting_submissions: AtomicU64,
    /// `POST /v1/refunds` requests that reached the record.
    pub refunds_received: AtomicU64,
    /// Callback POSTs acknowledged with a 2xx (duplicates included).
    pub callbacks_sent: AtomicU64,
    /// Extra sends of an acknowledged callback (`--duplicate-callback-per-mille`).
    pub callbacks_duplicated: AtomicU64,
    /// Callback POSTs that failed (error, timeout or non-2xx).
    pub callback_attempts_failed: AtomicU64,
    /// Requests answered 503 because of an outage (scheduled or switched).
    pub requests_refused_by_outage: AtomicU64,
    /// Requests answered 503 by `--error-per-mille`.
    pub requests_refused_by_error: AtomicU64,
    /// Answers held back by `--timeout-per-mille`.
    pub answers_held: AtomicU64,
}

/// The `GET /admin/stats` answer.
#[derive(Debug, Serialize)]
pub struct StatsAnswer {
    pub payments_received: u64,
    /// Distinct payment ids in the durable record.
    pub distinct_payments: u64,
    pub duplicate_submissions: u64,
    pub conflicting_submissions: u64,
    pub refunds_received: u64,
    pub callbacks_sent: u64,
    pub callbacks_duplicated: u64,
    pub callback_attempts_failed: u64,
    pub requests_refused_by_outage: u64,
    pub requests_refused_by_error: u64,
    pub answers_held: u64,
    /// Whether the bank is in an outage right now.
    pub down: bool,
}

impl Stats {
    pub fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub fn answer(&self, distinct_payments: u64, down: bool) -> StatsAnswer {
        let get = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        StatsAnswer {
            payments_received: get(&self.payments_received),
            distinct_payments,
            duplicate_submissions: get(&self.duplicate_submissions),
            conflicting_submissions: get(&self.conflicting_submissions),
            refunds_received: get(&self.refunds_received),
            callbacks_sent: get(&self.callbacks_sent),
            callbacks_duplicated: get(&self.callbacks_duplicated),
            callback_attempts_failed: get(&self.callback_attempts_failed),
            requests_refused_by_outage: get(&self.requests_refused_by_outage),
            requests_refused_by_error: get(&self.requests_refused_by_error),
            answers_held: get(&self.answers_held),
            down,
        }
    }
}
