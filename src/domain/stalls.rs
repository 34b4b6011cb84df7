//! The stall decisions on a payment ([`super::watch`] has the types): the
//! stage a payment waits in, a due reminder (re-drive with back-off, then
//! page once), an operator's retry or fail, and re-arming the watch on
//! every transition (resolving a page when the payment moves on).

use std::collections::BTreeMap;

use super::payment::{Decision, Effect, Payment, PaymentState, RefundState, Rejection};
use super::watch::{Alert, OperatorRejection, PageAction, Severity, Stage, StallPolicy, Watch};
use super::Timestamp;

impl Stage {
    /// The stage a payment waits in, if it waits for anything.
    pub fn of(payment: &Payment) -> Option<Stage> {
        match payment.state {
            PaymentState::Created => Some(Stage::Created),
            PaymentState::Approved => Some(Stage::Approved),
            PaymentState::InReview => Some(Stage::InReview),
            PaymentState::Sent => Some(Stage::Sent),
            PaymentState::Processed | PaymentState::PartiallyRefunded
                if payment
                    .refunds
                    .iter()
                    .any(|refund| refund.state == RefundState::Pending) =>
            {
                Some(Stage::Refunding)
            }
            _ => None,
        }
    }
}

impl Watch {
    /// The PagerDuty dedup key of this stall: stable across re-drives and
    /// restarts, different for the next stall of the same payment.
    pub fn dedup_key(&self, payment: &Payment) -> String {
        format!(
            "payvisor/{}/{}/{}",
            payment.name(),
            self.stage,
            self.since.unix_millis()
        )
    }
}

impl Payment {
    /// Re-arms the watch after a change from `previous`: a new stage gets a
    /// fresh watch (and resolves the old stall's page), the same stage keeps
    /// its watch, no stage clears it.
    pub(super) fn rearm(
        &mut self,
        previous: &Payment,
        now: Timestamp,
        policy: &StallPolicy,
    ) -> Option<Alert> {
        let stage = Stage::of(self);
        let old = previous.watch.as_ref();
        if let (Some(old), Some(stage)) = (old, stage) {
            if old.stage == stage {
                self.watch = Some(old.clone());
                return None;
            }
        }
        self.watch = stage.map(|stage| Watch {
            stage,
            since: now,
            due_at: Some(now.plus_millis(policy.deadline_ms(stage))),
            redrives: 0,
            paged: false,
        });
        let old = old.filter(|old| old.paged)?;
        let mut resolve = previous.alert(old, PageAction::Resolve, "payment moved on".into(), now);
        // Who moved it on, if a person did (an operator's fail, a review).
        resolve.details.extend(self.last_person_details());
        Some(resolve)
    }

    /// What the payment waits for in `stage`, in words for on-call.
    fn awaited(&self, stage: Stage) -> String {
        let bank = self.current_bank().unwrap_or("its bank");
        match stage {
            Stage::Created => "approval by the rules".to_owned(),
            Stage::Approved => "a bank to take it".to_owned(),
            Stage::InReview => "a reviewer's approval or decline".to_owned(),
            Stage::Sent => format!("the outcome from {bank}"),
            Stage::Refunding => format!("a refund's outcome from {bank}"),
        }
    }

    /// The last error the payment records: why it failed, else why the
    /// last bank that refused it did. (Errors of calls that will be retried
    /// are logged, not stored: a page says what the store knows.)
    fn last_error(&self) -> Option<String> {
        self.failure_reason.clone().or_else(|| {
            self.routes
                .iter()
                .rev()
                .find_map(|route| match &route.left {
                    Some(super::payment::Departure::Rejected { reason }) => {
                        Some(format!("{} refused it: {reason}", route.bank))
                    }
                    _ => None,
                })
        })
    }

    /// Where a person acted on the payment (a refund, a review, an
    /// operator's retry or fail), who did, what and when, from its latest
    /// attributed history entry: what on-call asks first about a payment
    /// someone touched.
    fn last_person_details(&self) -> Vec<(String, String)> {
        let Some((actor, entry)) = self
            .history
            .iter()
            .rev()
            .find_map(|entry| entry.actor.as_ref().map(|actor| (actor, entry)))
        else {
            return Vec::new();
        };
        vec![
            ("last_actor".to_owned(), actor.clone()),
            ("last_actor_cause".to_owned(), entry.cause.clone()),
            ("last_actor_at".to_owned(), super::time::rfc3339(entry.at)),
        ]
    }

    fn alert(&self, watch: &Watch, action: PageAction, summary: String, now: Timestamp) -> Alert {
        let severity = match watch.stage {
            Stage::Sent | Stage::Refunding => Severity::Critical,
            Stage::Created | Stage::Approved => Severity::Error,
            Stage::InReview => Severity::Warning,
        };
        let mut details = BTreeMap::from([
            ("payment".to_owned(), self.name().to_string()),
            ("account".to_owned(), self.account.to_string()),
            ("state".to_owned(), self.state.as_str().to_uppercase()),
            ("stage".to_owned(), watch.stage.to_string()),
            ("amount".to_owned(), self.amount.to_string()),
            (
                "stalled_since".to_owned(),
                super::time::rfc3339(watch.since),
            ),
            (
                "created_at".to_owned(),
                super::time::rfc3339(self.created_at),
            ),
            ("redrives".to_owned(), watch.redrives.to_string()),
            ("waiting_for".to_owned(), self.awaited(watch.stage)),
        ]);
        if let Some(route) = self.routes.last() {
            // The bank it is at, or the last one it left.
            let bank = match route.left {
                None => "bank",
                Some(_) => "previous_bank",
            };
            details.insert(bank.to_owned(), route.bank.clone());
            details.insert("route".to_owned(), route.why.clone());
            details.insert("routed_at".to_owned(), super::time::rfc3339(route.at));
        }
        if let Some(error) = self.last_error() {
            details.insert("last_error".to_owned(), error);
        }
        details.extend(self.last_person_details());
        Alert {
            action,
            dedup_key: watch.dedup_key(self),
            stage: watch.stage,
            stall_since: watch.since,
            summary,
            severity,
            details,
            at: now,
        }
    }

    /// The reminder fell due. `None` when it is not due (an early or
    /// duplicate reminder: the watch was re-armed meanwhile) or the payment
    /// waits for a person after a page (a review). A paged payment that can
    /// be re-driven is re-driven quietly at the capped back-off.
    pub fn on_reminder(
        &self,
        now: Timestamp,
        policy: &super::payment::Policy,
    ) -> Result<Option<Decision>, Rejection> {
        let Some(watch) = &self.watch else {
            return Ok(None);
        };
        if watch.due_at.is_none_or(|due| due > now) {
            return Ok(None);
        }
        if watch.stage.redrivable() && watch.redrives < policy.stalls.redrive_max {
            let redrives = watch.redrives + 1;
            let cause = format!("redrive_{redrives}_of_{}", policy.stalls.redrive_max);
            return self.redrive(Some(cause), redrives, now, policy).map(Some);
        }
        if watch.paged {
            if watch.stage.redrivable() {
                // The page is out and a person may act, but a bank that was
                // down may be back: keep re-driving at the capped back-off,
                // quietly (no second page, no history entry per attempt),
                // until the payment moves on.
                return self
                    .redrive(None, watch.redrives.saturating_add(1), now, policy)
                    .map(Some);
            }
            let mut next = self.clone();
            let watch = next.watch.as_mut().expect("checked above");
            watch.due_at = None;
            next.updated_at = now;
            return Ok(Some(Decision::new(next, Vec::new(), Vec::new(), None)));
        }
        let mut next = self.clone();
        next.updated_at = now;
        let watch = next.watch.as_mut().expect("checked above");
        watch.paged = true;
        // What can be re-driven still is, after the page (see above); what
        // waits for a person (a review) waits without a reminder.
        watch.due_at = watch.stage.redrivable().then(|| {
            now.plus_millis(
                policy
                    .stalls
                    .backoff_ms(watch.stage, watch.redrives.saturating_add(1)),
            )
        });
        let watch = watch.clone();
        let waited_ms = now.unix_millis() - watch.since.unix_millis();
        let summary = format!(
            "payment {} stuck in {} for {}s after {} re-drives",
            self.name(),
            watch.stage,
            waited_ms / 1000,
            watch.redrives
        );
        let alert = next.alert(&watch, PageAction::Trigger, summary, now);
        next.record_event(self.state, "paged_on_call", now);
        Ok(Some(Decision::new(
            next,
            Vec::new(),
            Vec::new(),
            Some(alert),
        )))
    }

    /// An operator asks for a re-drive now. The re-drive count starts over;
    /// a page already sent for this stall stays open (no second page).
    pub fn operator_retry(
        &self,
        now: Timestamp,
        policy: &super::payment::Policy,
    ) -> Result<Decision, OperatorRejection> {
        match Stage::of(self) {
            None => Err(OperatorRejection::NothingToRetry(self.state)),
            Some(Stage::InReview) => Err(OperatorRejection::AwaitsReview),
            Some(_) => self
                .redrive(Some("operator_retry".into()), 0, now, policy)
                // Redriving a waiting payment only fails on ledger overflow,
                // which approval would have refused; report it as not retryable.
                .map_err(|_| OperatorRejection::NothingToRetry(self.state)),
        }
    }

    /// An operator gives up on a payment that has not been processed: it is
    /// FAILED with `reason`, its pending funds released, its page resolved.
    /// Not one in review: a reviewer declines that.
    pub fn operator_fail(
        &self,
        reason: &str,
        now: Timestamp,
        policy: &super::payment::Policy,
    ) -> Result<Decision, OperatorRejection> {
        match self.state {
            // A payment in review waits for a reviewer's decision, and
            // leaves the queue only with one (a decline): on-call does not
            // fail it past them.
            PaymentState::InReview => Err(OperatorRejection::AwaitsReview),
            PaymentState::Created | PaymentState::Approved | PaymentState::Sent => self
                .give_up(reason, "operator_failed", now, policy)
                .map_err(|_| OperatorRejection::NotFailable(self.state)),
            state => Err(OperatorRejection::NotFailable(state)),
        }
    }

    /// One re-drive: the step of the current stage again, idempotently,
    /// recorded in the history under `cause` (`None`: a quiet re-drive
    /// after the page, counted in the watch only).
    fn redrive(
        &self,
        cause: Option<String>,
        redrives: u32,
        now: Timestamp,
        policy: &super::payment::Policy,
    ) -> Result<Decision, Rejection> {
        let stage = self
            .watch
            .as_ref()
            .map(|watch| watch.stage)
            .or(Stage::of(self));
        match stage {
            Some(Stage::Created | Stage::Approved) => {
                // Run approval and dispatch again from where it stopped.
                let mut next = self.clone();
                if let Some(cause) = &cause {
                    next.record_event(self.state, cause, now);
                }
                let decision = next.advance(now, policy)?;
                Ok(decision)
            }
            _ => {
                let mut next = self.clone();
                next.updated_at = now;
                if let Some(cause) = &cause {
                    next.record_event(self.state, cause, now);
                }
                let mut effects = Vec::new();
                if self.state == PaymentState::Sent {
                    // Ask before re-sending: a lost callback is found, and a
                    // submission the bank never got is sent again (same key).
                    effects.push(Effect::QueryPayment {
                        name: self.name(),
                        amount: self.amount,
                        metadata: self.metadata.clone(),
                        bank: self.current_bank().map(str::to_owned),
                    });
                }
                effects.extend(
                    self.pending_effects()
                        .into_iter()
                        .filter(|effect| matches!(effect, Effect::SubmitRefund { .. })),
                );
                if let Some(watch) = next.watch.as_mut() {
                    watch.redrives = redrives;
                    let wait = policy.stalls.backoff_ms(watch.stage, redrives);
                    watch.due_at = Some(now.plus_millis(wait));
                }
                Ok(Decision::new(next, Vec::new(), effects, None))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::payment::{self, BankOutcome, NewPayment, Policy, RefundOutcome};
    use crate::domain::{AccountId, Currency, Money, PaymentId};

    fn at(seconds: i64) -> Timestamp {
        Timestamp::from_unix_millis(seconds * 1000)
    }
    fn policy(sent_secs: i64, redrive_max: u32) -> Policy {
        let mut policy = Policy::default();
        policy
            .stalls
            .deadline_ms
            .insert(Stage::Sent, sent_secs * 1000);
        policy.stalls.redrive_max = redrive_max;
        policy
    }
    fn sent(policy: &Policy) -> Payment {
        let new = NewPayment {
            account: AccountId::new("acme").unwrap(),
            id: PaymentId::new("p1").unwrap(),
            amount: Money::from_minor(Currency::from_code("USD").unwrap(), 500),
            metadata: BTreeMap::new(),
            payer_id: None,
            payer_country: None,
        };
        payment::create(new, None, at(0), policy).unwrap().payment
    }
    fn remind(payment: &Payment, now: i64, policy: &Policy) -> Option<Decision> {
        payment.on_reminder(at(now), policy).unwrap()
    }

    #[test]
    fn a_sent_payment_is_watched_from_the_moment_it_is_written() {
        let policy = policy(60, 3);
        let payment = sent(&policy);
        let watch = payment.watch.clone().unwrap();
        assert_eq!(
            (watch.stage, watch.due_at, watch.redrives, watch.paged),
            (Stage::Sent, Some(at(60)), 0, false)
        );
        assert!(remind(&payment, 59, &policy).is_none(), "not due yet");
    }

    #[test]
    fn due_reminders_redrive_with_backoff_then_page_once() {
        let policy = policy(10, 2);
        let mut payment = sent(&policy);
        // Re-drive 1 at 10 s waits 20 s; re-drive 2 at 30 s waits 40 s.
        let mut expected_due = [30, 70].into_iter();
        for now in [10, 30] {
            let decision = remind(&payment, now, &policy).unwrap();
            assert!(matches!(
                decision.effects[..],
                [Effect::QueryPayment { .. }]
            ));
            assert!(decision.alert.is_none());
            payment = decision.payment;
            assert_eq!(
                payment.watch.as_ref().unwrap().due_at,
                Some(at(expected_due.next().unwrap()))
            );
            assert!(
                remind(&payment, now + 1, &policy).is_none(),
                "re-armed, not due"
            );
        }
        let paged = remind(&payment, 70, &policy).unwrap();
        let alert = paged.alert.clone().unwrap();
        assert_eq!(alert.action, PageAction::Trigger);
        assert_eq!(alert.dedup_key, "payvisor/accounts/acme/payments/p1/sent/0");
        assert_eq!(alert.severity, Severity::Critical);
        assert!(paged.effects.is_empty());
        let payment = paged.payment;
        assert!(payment.watch.as_ref().unwrap().paged);
        // After the page the bank is still asked, at the capped back-off,
        // with no second page and no history entry per attempt (this
        // assertion was `is_none()`: a paged payment was never re-driven
        // again, stranding it behind a bank outage; issue 15, defect 7).
        let paged_due = payment.watch.as_ref().unwrap().due_at.unwrap();
        assert_eq!(paged_due, at(70 + 80), "the next back-off step");
        assert!(remind(&payment, 149, &policy).is_none(), "not due yet");
        let history = payment.history.len();
        let mut quiet = payment.clone();
        for attempt in 0..20 {
            let due = quiet.watch.as_ref().unwrap().due_at.unwrap();
            let decision = remind(&quiet, due.unix_millis() / 1000, &policy).unwrap();
            assert!(decision.alert.is_none(), "one stall pages once");
            assert!(matches!(
                decision.effects[..],
                [Effect::QueryPayment { .. }]
            ));
            quiet = decision.payment;
            let next = quiet.watch.as_ref().unwrap().due_at.unwrap();
            let wait = next.unix_millis() - due.unix_millis();
            assert!(
                wait <= crate::limits::REDRIVE_BACKOFF_MAX.as_millis() as i64,
                "attempt {attempt}: {wait} ms"
            );
        }
        assert_eq!(quiet.history.len(), history);
        assert!(quiet.watch.as_ref().unwrap().paged);
        let causes: Vec<_> = payment
            .history
            .iter()
            .map(|entry| entry.cause.as_str())
            .collect();
        assert!(
            causes.ends_with(&["redrive_1_of_2", "redrive_2_of_2", "paged_on_call"]),
            "{causes:?}"
        );
    }

    #[test]
    fn moving_on_resolves_the_page_and_leaving_a_stage_clears_the_watch() {
        let policy = policy(10, 0);
        let paged = remind(&sent(&policy), 10, &policy).unwrap().payment;
        let processed = paged
            .on_bank_outcome(&BankOutcome::Processed, at(99), &policy)
            .unwrap()
            .unwrap();
        let resolve = processed.alert.unwrap();
        assert_eq!(resolve.action, PageAction::Resolve);
        assert_eq!(
            resolve.dedup_key,
            "payvisor/accounts/acme/payments/p1/sent/0"
        );
        assert_eq!(processed.payment.watch, None);
        // A refund starts a new stall window with its own key.
        let refunding = processed
            .payment
            .request_refund(None, "r", at(100), &policy)
            .unwrap();
        assert!(refunding.alert.is_none());
        let watch = refunding.payment.watch.clone().unwrap();
        assert_eq!((watch.stage, watch.since), (Stage::Refunding, at(100)));
        let done = refunding
            .payment
            .on_refund_outcome("r1", &RefundOutcome::Succeeded, at(101), &policy)
            .unwrap()
            .unwrap();
        assert_eq!(done.payment.watch, None);
        assert!(done.alert.is_none(), "never paged, nothing to resolve");
    }

    #[test]
    fn operators_retry_without_a_second_page_and_fail_with_a_resolve() {
        let policy = policy(10, 1);
        let redriven = remind(&sent(&policy), 10, &policy).unwrap().payment;
        let paged = remind(&redriven, 30, &policy).unwrap().payment;
        let retried = paged.operator_retry(at(40), &policy).unwrap();
        assert!(matches!(retried.effects[..], [Effect::QueryPayment { .. }]));
        let retried = retried.payment;
        assert_eq!(retried.watch.as_ref().unwrap().redrives, 0);
        let again = remind(&retried, 50, &policy).unwrap().payment; // re-drive 1
        let quiet = remind(&again, 1000, &policy).unwrap();
        assert!(quiet.alert.is_none(), "the stall was paged already");
        let failed = quiet
            .payment
            .operator_fail("bank lost it", at(2000), &policy)
            .unwrap();
        assert_eq!(failed.payment.state, PaymentState::Failed);
        assert_eq!(failed.movements.len(), 1, "pending funds released");
        assert_eq!(failed.alert.unwrap().action, PageAction::Resolve);
        assert_eq!(
            failed.payment.operator_fail("again", at(2001), &policy),
            Err(OperatorRejection::NotFailable(PaymentState::Failed))
        );
        assert_eq!(
            failed
                .payment
                .operator_retry(at(2001), &policy)
                .unwrap_err(),
            OperatorRejection::NothingToRetry(PaymentState::Failed)
        );
    }

    /// A page says what on-call needs to act: whose payment, how much, at
    /// which bank and why there, what it waits for, the last error the
    /// store knows, and when, in RFC 3339.
    #[test]
    fn a_page_carries_the_account_amount_bank_route_last_error_and_times() {
        use crate::domain::payment::{Departure, Route};
        let policy = policy(10, 0);
        let mut payment = sent(&policy);
        payment.routes = vec![
            Route {
                bank: "bank-a".into(),
                why: "cheapest healthy bank for USD".into(),
                at: at(0),
                left: Some(Departure::Rejected {
                    reason: "no USD today".into(),
                }),
            },
            Route {
                bank: "bank-b".into(),
                why: "next cheapest".into(),
                at: at(1),
                left: None,
            },
        ];
        let details = remind(&payment, 10, &policy)
            .unwrap()
            .alert
            .unwrap()
            .details;
        let amount = payment.amount.to_string();
        let expect = [
            ("payment", "accounts/acme/payments/p1"),
            ("account", "acme"),
            ("amount", amount.as_str()),
            ("state", "SENT"),
            ("stage", "sent"),
            ("bank", "bank-b"),
            ("route", "next cheapest"),
            ("routed_at", "1970-01-01T00:00:01.000Z"),
            ("waiting_for", "the outcome from bank-b"),
            ("last_error", "bank-a refused it: no USD today"),
            ("stalled_since", "1970-01-01T00:00:00.000Z"),
            ("created_at", "1970-01-01T00:00:00.000Z"),
            ("redrives", "0"),
        ];
        for (key, value) in expect {
            assert_eq!(
                details.get(key).map(String::as_str),
                Some(value),
                "{key}: {details:?}"
            );
        }
        // A failure reason, when there is one, is the last error.
        payment.failure_reason = Some("bank timed out".into());
        let details = remind(&payment, 10, &policy)
            .unwrap()
            .alert
            .unwrap()
            .details;
        assert_eq!(details["last_error"], "bank timed out");
    }

    #[test]
    fn pages_name_the_person_who_last_acted_on_the_payment() {
        let policy = policy(10, 0);
        // No one acted: no such details.
        let paged = remind(&sent(&policy), 10, &policy).unwrap();
        let alert = paged.alert.unwrap();
        assert!(!alert.details.contains_key("last_actor"), "{alert:?}");
        // Processed, then a refund asked by support that stalls: its page
        // says who asked for it, what and when.
        let processed = paged
            .payment
            .on_bank_outcome(&BankOutcome::Processed, at(20), &policy)
            .unwrap()
            .unwrap()
            .payment;
        let mut refund_policy = policy.clone();
        refund_policy
            .stalls
            .deadline_ms
            .insert(Stage::Refunding, 10_000);
        let refunding = processed
            .acting(Some("support-7".into()))
            .request_refund(None, "r", at(30), &refund_policy)
            .unwrap()
            .payment
            .acting(None);
        let paged = remind(&refunding, 40, &refund_policy).unwrap();
        let details = paged.alert.clone().unwrap().details;
        assert_eq!(details["last_actor"], "support-7");
        assert_eq!(details["last_actor_cause"], "refund_r1_requested");
        assert_eq!(details["last_actor_at"], "1970-01-01T00:00:30.000Z");
        // A page resolved by an operator's fail names the operator.
        let stuck = remind(&sent(&policy), 10, &policy).unwrap().payment;
        let failed = stuck
            .acting(Some("CN=ops,O=Acme".into()))
            .operator_fail("bank lost it", at(50), &policy)
            .unwrap();
        let resolve = failed.alert.unwrap();
        assert_eq!(resolve.action, PageAction::Resolve);
        assert_eq!(resolve.details["last_actor"], "CN=ops,O=Acme");
        assert_eq!(resolve.details["last_actor_cause"], "operator_failed");
    }

    #[test]
    fn a_payment_stuck_before_the_bank_is_redriven_through_approval_and_dispatch() {
        let policy = policy(60, 2);
        // As if a crash had left it APPROVED (a future review step can).
        let mut approved = sent(&policy);
        approved.state = PaymentState::Approved;
        approved.history.truncate(2);
        approved.watch = Some(Watch {
            stage: Stage::Approved,
            since: at(0),
            due_at: Some(at(10)),
            redrives: 0,
            paged: false,
        });
        let decision = remind(&approved, 10, &policy).unwrap();
        assert_eq!(decision.payment.state, PaymentState::Sent);
        assert!(matches!(
            decision.effects[..],
            [Effect::SubmitPayment { .. }]
        ));
        assert_eq!(
            decision.movements.len(),
            1,
            "the money moves to pending once"
        );
        let watch = decision.payment.watch.unwrap();
        assert_eq!(
            (watch.stage, watch.since, watch.redrives),
            (Stage::Sent, at(10), 0)
        );
        let causes: Vec<_> = decision
            .payment
            .history
            .iter()
            .map(|e| e.cause.as_str())
            .collect();
        assert_eq!(
            causes,
            ["created", "approved", "redrive_1_of_2", "dispatched"]
        );
    }

    #[test]
    fn stages_parse_from_flag_names() {
        assert_eq!("sent".parse(), Ok(Stage::Sent));
        assert_eq!("IN_REVIEW".parse(), Ok(Stage::InReview));
        assert!("processed".parse::<Stage>().is_err());
    }
}
