//! The simulated callers: an API gateway creating payments (and retrying
//! them under the same request id), support staff refunding (sometimes
//! twice at once), and reviewers deciding payments held for review, over
//! one hot account and many cold ones. A caller retries what may succeed
//! later on another node, as a client of the gRPC API would; what it was
//! told succeeded is kept as acknowledged, for the checker.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use payvisor::actors::{
    CommandError, CreatePayment, OperatorAction, OperatorCommand, Orchestrator, RefundPayment,
};
use payvisor::domain::payment::ReviewVerdict;
use payvisor::domain::{AccountId, Currency, Money, PaymentId, PaymentName, RequestId};

use crate::bank::SimBank;
use crate::cluster::Cluster;
use crate::limits;
use crate::node::PageLog;
use crate::world::World;

/// What callers were told succeeded.
#[derive(Default)]
pub struct Acknowledged {
    /// (request id, payment).
    pub creates: Vec<(String, PaymentName)>,
    /// (request id, payment, refund id).
    pub refunds: Vec<(String, PaymentName, String)>,
}

pub struct Workload {
    world: Arc<World>,
    cluster: Arc<Cluster>,
    pub accounts: Vec<AccountId>,
    pub acknowledged: Mutex<Acknowledged>,
    /// Creates sent so far (replayed under their request ids).
    sent: Mutex<Vec<CreatePayment>>,
    requests: std::sync::atomic::AtomicU64,
}

/// Worth retrying, on this or another node.
fn retryable(error: &CommandError) -> bool {
    matches!(
        error,
        CommandError::Moving(_)
            | CommandError::Unavailable(_)
            | CommandError::StoreUnavailable(_)
            | CommandError::Conflict
    )
}

/// The rules in force on every node: large payments wait for a reviewer.
pub fn rules() -> payvisor::approval::RulesInForce {
    let document = r#"{"version": "sim-1", "rules": [
        {"name": "large-eur", "kind": "amount_above", "currency": "EUR",
         "minor_units": 150000, "action": "review"}]}"#;
    let rules =
        payvisor::domain::rules::RuleSet::parse(document).expect("the simulation's rules parse");
    payvisor::reload::InForce::fixed(rules)
}

impl Workload {
    pub fn new(world: Arc<World>, cluster: Arc<Cluster>) -> Arc<Workload> {
        let mut accounts = vec![AccountId::new("acct-hot").expect("valid id")];
        accounts.extend(
            (0..limits::COLD_ACCOUNTS)
                .map(|index| AccountId::new(format!("acct-c{index:02}")).expect("valid id")),
        );
        Arc::new(Workload {
            world,
            cluster,
            accounts,
            acknowledged: Mutex::default(),
            sent: Mutex::default(),
            requests: Default::default(),
        })
    }

    fn request_id(&self) -> String {
        let n = self
            .requests
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        format!("req-{n:05}")
    }

    /// Calls a node about `account` until it answers for good, or gives
    /// up: any node each time, which serves it or forwards it to the
    /// account's owner.
    async fn call<T, F, Fut>(
        &self,
        what: &str,
        account: &AccountId,
        attempt: F,
    ) -> Result<T, CommandError>
    where
        F: Fn(Orchestrator) -> Fut,
        Fut: std::future::Future<Output = Result<T, CommandError>>,
    {
        for tries in 0..limits::CLIENT_ATTEMPTS {
            let Some(entry) = self.cluster.pick() else {
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            };
            let node = &entry.name;
            let served = self.cluster.serve(&entry, account, &attempt);
            match tokio::time::timeout(limits::CLIENT_TIMEOUT, served).await {
                Ok(Ok(answer)) => return Ok(answer),
                Ok(Err(error)) if retryable(&error) => self
                    .world
                    .log(format!("{what} at {node}: {error}; retrying")),
                Ok(Err(error)) => return Err(error),
                Err(_) => self
                    .world
                    .log(format!("{what} at {node}: timed out; retrying")),
            }
            let backoff = self.world.between(100, 200 << tries.min(5));
            tokio::time::sleep(Duration::from_millis(backoff)).await;
        }
        Err(CommandError::Unavailable("the caller gave up".into()))
    }

    /// An answer is given only once what it says is durable: the table
    /// holds the payment (and `refund`, if one was acknowledged) the
    /// moment the caller hears of it.
    async fn durable(&self, what: &str, name: &PaymentName, refund: Option<&str>) {
        let table: &dyn payvisor::store::Store = self.cluster.shared.table.as_ref();
        let stored = payvisor::store::schema::load_payment(table, name).await;
        let held = match (&stored, refund) {
            (Ok(Some(_)), None) => true,
            (Ok(Some(payment)), Some(refund)) => payment
                .value
                .refunds
                .iter()
                .any(|stored| stored.id == refund),
            _ => false,
        };
        if !held {
            let violation = crate::check::Violation {
                invariant: "acknowledged_exactly_once",
                detail: format!("{what} was acknowledged ({name}, refund {refund:?}) but the table does not hold it"),
            };
            self.world.log(format!(
                "VIOLATION {}: {}",
                violation.invariant, violation.detail
            ));
            (self
                .cluster
                .shared
                .audit
                .lock()
                .unwrap_or_else(|p| p.into_inner()))
            .violations
            .push(violation);
        }
    }

    fn account(&self) -> AccountId {
        if self.world.chance(300) {
            self.accounts[0].clone()
        } else {
            let index = self.world.between(1, self.accounts.len() as u64 - 1) as usize;
            self.accounts[index].clone()
        }
    }

    pub async fn create(self: Arc<Self>) {
        let request = self.request_id();
        let euro = Currency::from_code("EUR").expect("EUR is known");
        let minor = self.world.between(100, 200_000) as i64;
        let command = CreatePayment {
            account: self.account(),
            payment_id: None,
            amount: Money::from_minor(euro, minor),
            metadata: BTreeMap::from([("request".to_owned(), request.clone())]),
            payer_id: None,
            payer_country: None,
            request_id: RequestId::new(request.clone()).expect("valid id"),
            trace: None,
        };
        self.sent
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(command.clone());
        self.send_create(command).await;
    }

    /// Sends a create again, as a client that never heard the answer.
    pub async fn replay(self: Arc<Self>) {
        let sent = self.sent.lock().unwrap_or_else(|p| p.into_inner()).clone();
        if sent.is_empty() {
            return;
        }
        let command = sent[self.world.between(0, sent.len() as u64 - 1) as usize].clone();
        self.send_create(command).await;
    }

    async fn send_create(&self, command: CreatePayment) {
        let request = command.request_id.as_str().to_owned();
        let what = format!("create {request}");
        let answer = self
            .call(&what, &command.account, |node| {
                let command = command.clone();
                async move { node.create_payment_answered(command).await }
            })
            .await;
        match answer {
            Ok(answered) => {
                let name = answered.payment.name();
                self.world.log(format!(
                    "{what}: {name} {:?} (replayed: {})",
                    answered.payment.state, answered.replayed
                ));
                self.durable(&what, &name, None).await;
                let mut acknowledged = self.acknowledged.lock().unwrap_or_else(|p| p.into_inner());
                if !acknowledged
                    .creates
                    .iter()
                    .any(|(seen, _)| *seen == request)
                {
                    acknowledged.creates.push((request, name));
                }
            }
            Err(error) => self.world.log(format!("{what}: {error}")),
        }
    }

    fn acknowledged_payment(&self) -> Option<PaymentName> {
        let acknowledged = self.acknowledged.lock().unwrap_or_else(|p| p.into_inner());
        let creates = &acknowledged.creates;
        if creates.is_empty() {
            return None;
        }
        Some(
            creates[self.world.between(0, creates.len() as u64 - 1) as usize]
                .1
                .clone(),
        )
    }

    /// A refund of an acknowledged payment: all of it or part.
    pub async fn refund(self: Arc<Self>) {
        let Some(name) = self.acknowledged_payment() else {
            return;
        };
        self.refund_of(name).await;
    }

    /// Two refunds of one payment at once.
    pub async fn refund_twice(self: Arc<Self>) {
        let Some(name) = self.acknowledged_payment() else {
            return;
        };
        let other = Arc::clone(&self);
        let second = tokio::spawn(other.refund_of(name.clone()));
        self.refund_of(name).await;
        let _ = second.await;
    }

    async fn refund_of(self: Arc<Self>, name: PaymentName) {
        let request = self.request_id();
        let euro = Currency::from_code("EUR").expect("EUR is known");
        let amount = if self.world.chance(500) {
            None
        } else {
            Some(Money::from_minor(
                euro,
                self.world.between(1, 100_000) as i64,
            ))
        };
        let command = RefundPayment {
            name: name.clone(),
            amount,
            reason: "customer asked".into(),
            request_id: RequestId::new(request.clone()).expect("valid id"),
            actor: Some("support".into()),
            trace: None,
        };
        let what = format!("refund {request} of {name}");
        match self
            .call(&what, &name.account, |node| {
                let command = command.clone();
                async move { node.refund_payment_answered(command).await }
            })
            .await
        {
            Ok(answered) => {
                let refund = answered
                    .payment
                    .refunds
                    .last()
                    .map(|refund| refund.id.clone());
                self.world.log(format!(
                    "{what}: {refund:?} (replayed: {})",
                    answered.replayed
                ));
                if !answered.replayed {
                    if let Some(refund) = &refund {
                        self.durable(&what, &name, Some(refund)).await;
                    }
                }
                if let (Some(refund), false) = (refund, answered.replayed) {
                    (self.acknowledged.lock().unwrap_or_else(|p| p.into_inner()))
                        .refunds
                        .push((request, name, refund));
                }
            }
            Err(error) => self.world.log(format!("{what}: {error}")),
        }
    }

    /// A reviewer's verdict on a payment (refused unless it is in review).
    pub async fn review(self: Arc<Self>, name: Option<PaymentName>) {
        let Some(name) = name.or_else(|| self.acknowledged_payment()) else {
            return;
        };
        let verdict = if self.world.chance(700) {
            ReviewVerdict::Approve
        } else {
            ReviewVerdict::Decline
        };
        let review = OperatorAction::Review {
            verdict,
            reason: "checked".into(),
        };
        self.operate(name, review, "reviewer").await;
    }

    /// On-call, paged by the watchdog: for each new page of a stalled
    /// payment, looks at the bank (as a person would at its portal) and
    /// re-drives the payment if the bank has an outcome for it, or fails it
    /// if the bank never answered. Runs until aborted.
    pub async fn on_call(self: Arc<Self>, pages: Arc<PageLog>, banks: Vec<Arc<SimBank>>) {
        let mut seen = 0;
        loop {
            tokio::time::sleep(limits::ON_CALL_EVERY).await;
            let new: Vec<(String, String)> = {
                let pages = pages.pages.lock().unwrap_or_else(|p| p.into_inner());
                let new = pages[seen..].to_vec();
                seen = pages.len();
                new
            };
            for (action, key) in new {
                let Some(name) = paged_payment(&action, &key) else {
                    continue;
                };
                let answered = banks.iter().any(|bank| {
                    let books = bank.books.lock().unwrap_or_else(|p| p.into_inner());
                    books
                        .payments
                        .get(&name.to_string())
                        .is_some_and(|at| at.outcome.is_some())
                });
                let action = if answered {
                    OperatorAction::Retry
                } else {
                    OperatorAction::Fail {
                        reason: "the bank never answered (on-call)".into(),
                    }
                };
                self.operate(name, action, "oncall").await;
            }
        }
    }

    /// A person's command on a payment (a reviewer's verdict, on-call's
    /// retry or fail), as `actor`.
    async fn operate(&self, name: PaymentName, action: OperatorAction, actor: &str) {
        let request = self.request_id();
        let command = OperatorCommand {
            name: name.clone(),
            action: action.clone(),
            actor: Some(actor.into()),
            request_id: RequestId::new(request.clone()).expect("valid id"),
            trace: None,
        };
        let what = format!("{actor} {request} {action:?} {name}");
        let answer = self
            .call(&what, &name.account, |node| {
                let command = command.clone();
                async move { node.operate(command).await }
            })
            .await;
        match answer {
            Ok(answered) => self
                .world
                .log(format!("{what}: {:?}", answered.payment.state)),
            Err(error) => self.world.log(format!("{what}: {error}")),
        }
    }

    /// Issues the workload over `phase`: each command a task of its own.
    pub async fn run(self: Arc<Self>, phase: Duration) {
        let gap = phase.as_millis() as u64 / limits::COMMANDS_MAX as u64;
        let mut running = Vec::new();
        for _ in 0..limits::COMMANDS_MAX {
            tokio::time::sleep(Duration::from_millis(self.world.between(0, 2 * gap))).await;
            let me = Arc::clone(&self);
            let roll = self.world.between(0, 99);
            running.push(match roll {
                0..=59 => tokio::spawn(me.create()),
                60..=79 => tokio::spawn(me.refund()),
                80..=84 => tokio::spawn(me.refund_twice()),
                85..=92 => tokio::spawn(me.review(None)),
                _ => tokio::spawn(me.replay()),
            });
        }
        for command in running {
            let _ = command.await;
        }
    }
}

/// The payment a trigger page is about (`payvisor/accounts/{a}/payments/{p}/…`).
fn paged_payment(action: &str, key: &str) -> Option<PaymentName> {
    if action != "Trigger" {
        return None;
    }
    let parts: Vec<&str> = key.strip_prefix("payvisor/")?.split('/').collect();
    match parts.as_slice() {
        ["accounts", account, "payments", payment, ..] => Some(PaymentName {
            account: AccountId::new(*account).ok()?,
            payment: PaymentId::new(*payment).ok()?,
        }),
        _ => None,
    }
}
