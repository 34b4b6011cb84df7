//! Stall detection, pure: every payment that waits for something carries a
//! [`Watch`], "this payment must leave stage S by time T", written in the
//! same atomic write as the transition that started the wait (it is part of
//! the payment item, so it cannot be lost or outlive the state it guards).
//! When the time passes, `Payment::on_reminder` ([`super::stalls`]) decides
//! what to do:
//! re-drive the step (with back-off, a bounded number of times), then page
//! on-call once. Leaving the stage replaces the watch, and resolves the page
//! if one was sent.
//!
//! ```text
//!            due            due                      due (re-drives used up)
//! watching ──────▶ redrive 1 ─────▶ … redrive N ─────────────────▶ paged
//!    ▲                                                                │
//!    └──── the payment leaves the stage (page resolved) ◀─────────────┘
//! ```
//!
//! **Invariant:** one stall pages at most once: `paged` is set in the same
//! write that records the page to deliver, and only a new stage (a new
//! stall, with a new `dedup_key`) clears it.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::state::PaymentState;
use super::Timestamp;
use crate::limits;

/// Where a payment can stall, each with its own deadline.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub enum Stage {
    Created,
    Approved,
    InReview,
    Sent,
    /// Processed, with a refund awaiting the bank.
    Refunding,
}

impl Stage {
    pub const ALL: [Stage; 5] = [
        Stage::Created,
        Stage::Approved,
        Stage::InReview,
        Stage::Sent,
        Stage::Refunding,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Created => "created",
            Stage::Approved => "approved",
            Stage::InReview => "in_review",
            Stage::Sent => "sent",
            Stage::Refunding => "refunding",
        }
    }

    /// Whether the system can move the payment on by itself. A payment in
    /// review waits for a person: re-driving it cannot help.
    pub(super) fn redrivable(self) -> bool {
        self != Stage::InReview
    }
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Stage {
    type Err = String;
    fn from_str(text: &str) -> Result<Stage, String> {
        Stage::ALL
            .into_iter()
            .find(|stage| stage.as_str().eq_ignore_ascii_case(text))
            .ok_or_else(|| {
                format!(
                    "unknown stage {text:?}; one of created, approved, in_review, sent, refunding"
                )
            })
    }
}

/// How long each stage may take, and how hard to try before paging.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StallPolicy {
    /// Deadline per stage, in milliseconds.
    pub deadline_ms: BTreeMap<Stage, i64>,
    /// Re-drives before on-call is paged.
    pub redrive_max: u32,
}

impl Default for StallPolicy {
    fn default() -> Self {
        let deadline_ms = Stage::ALL
            .into_iter()
            .map(|stage| {
                let deadline = match stage {
                    Stage::Created | Stage::Approved => limits::STALL_DEADLINE_CREATED_DEFAULT,
                    Stage::InReview => limits::STALL_DEADLINE_IN_REVIEW_DEFAULT,
                    Stage::Sent => limits::STALL_DEADLINE_SENT_DEFAULT,
                    Stage::Refunding => limits::STALL_DEADLINE_REFUNDING_DEFAULT,
                };
                (stage, deadline.as_millis() as i64)
            })
            .collect();
        StallPolicy {
            deadline_ms,
            redrive_max: limits::REDRIVES_DEFAULT,
        }
    }
}

impl StallPolicy {
    pub fn deadline_ms(&self, stage: Stage) -> i64 {
        self.deadline_ms.get(&stage).copied().unwrap_or(0).max(1)
    }

    /// The wait after re-drive `redrives` (1, 2, …): the deadline doubled
    /// each time, capped, so a slow bank is not hammered.
    pub(super) fn backoff_ms(&self, stage: Stage, redrives: u32) -> i64 {
        let cap = limits::REDRIVE_BACKOFF_MAX.as_millis() as i64;
        self.deadline_ms(stage)
            .saturating_mul(1_i64 << redrives.min(20))
            .min(cap.max(self.deadline_ms(stage)))
    }
}

/// The durable reminder of a waiting payment.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Watch {
    pub stage: Stage,
    /// When the payment entered the stage: identifies this stall.
    pub since: Timestamp,
    /// When the reminder falls due; `None` once on-call was paged for a
    /// stage that waits for a person (a review). A paged stage that can be
    /// re-driven keeps a due time: it is re-driven quietly after the page.
    pub due_at: Option<Timestamp>,
    /// Re-drives done in this stage.
    pub redrives: u32,
    /// On-call was paged for this stall (and the page not yet resolved).
    pub paged: bool,
}

impl Watch {
    /// Stalled: the first deadline passed without the payment moving on.
    pub fn is_stalled(&self) -> bool {
        self.redrives > 0 || self.paged || self.due_at.is_none()
    }
}

/// Trigger opens an incident; resolve closes it. Serialised in pages
/// (`alerts::Page`).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PageAction {
    Trigger,
    Resolve,
}

/// PagerDuty's severities, lowest to highest (serialised in pages).
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Info,
    Warning,
    Error,
    Critical,
}

/// A page to deliver, decided with the transition that causes it (an outbox
/// entry: recorded in the same write, delivered after commit).
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Alert {
    pub action: PageAction,
    pub dedup_key: String,
    pub stage: Stage,
    /// When the stall began (with the stage, identifies it).
    pub stall_since: Timestamp,
    pub summary: String,
    pub severity: Severity,
    pub details: BTreeMap<String, String>,
    pub at: Timestamp,
}

/// Why an operator's action on a stuck payment was refused.
#[derive(Clone, PartialEq, Eq, Debug, thiserror::Error)]
pub enum OperatorRejection {
    #[error("payment is {}: nothing is waiting to be re-driven", .0.api_name())]
    NothingToRetry(PaymentState),
    #[error("payment is in review: approve or decline it instead")]
    AwaitsReview,
    #[error("payment is {}: only payments not yet processed can be failed", .0.api_name())]
    NotFailable(PaymentState),
    #[error("payment is {}: only payments in review can be approved or declined", .0.api_name())]
    NotInReview(PaymentState),
}
