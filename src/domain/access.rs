//! Who may do what. The roles of the people and systems that call
//! payvisor, the actions of its API, account scopes (tenant isolation),
//! and the access list that grants them to identities: API keys (by key id
//! and the SHA-256 of their secret, never the secret) and, with mutual TLS,
//! client certificates (by subject).
//!
//! Pure: proving an identity (hashing a presented secret, reading a
//! certificate) and reading the clock happen in `crate::auth`; this module
//! says whether a proven identity may take an action on an account.
//!
//! The access list is a JSON document (see `docs/security.md`):
//!
//! ```json
//! {"keys": [{"id": "gw-acme", "secret_sha256": "<64 hex>", "roles": ["gateway"],
//!            "accounts": ["acme"], "expires": "2027-06-30T00:00:00Z"}],
//!  "certificates": [{"subject": "CN=support-tool", "roles": ["support"]}]}
//! ```

use std::collections::{BTreeMap, BTreeSet};

use serde::Deserialize;

use super::time::parse_rfc3339;
use super::{AccountId, Timestamp};
use crate::limits;

/// What a caller is, for the product: each role is one kind of user.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub enum Role {
    /// The API gateway: creates and reads payments.
    Gateway,
    /// Customer-service tools: read, and refund.
    Support,
    /// People who work the manual-review queue.
    Reviewer,
    /// On-call engineers: stalled payments, alerts, retry, fail, resend.
    Oncall,
    /// All of the above.
    Admin,
    /// Another node of the cluster: forwards calls on a caller's behalf,
    /// hands over bank callbacks, follows live feeds. Never a person's role.
    Node,
}

impl Role {
    pub const ALL: [Role; 6] = [
        Role::Gateway,
        Role::Support,
        Role::Reviewer,
        Role::Oncall,
        Role::Admin,
        Role::Node,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Role::Gateway => "gateway",
            Role::Support => "support",
            Role::Reviewer => "reviewer",
            Role::Oncall => "oncall",
            Role::Admin => "admin",
            Role::Node => "node",
        }
    }

    pub fn parse(name: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|role| role.name() == name)
    }
}

/// Every action of the API; one per RPC, and the cross-account listing of
/// the review queue, which needs more than listing one account.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub enum Action {
    CreatePayment,
    GetPayment,
    ListPayments,
    /// `ListPayments` of `accounts/-` in `IN_REVIEW`.
    ListReviewQueue,
    RefundPayment,
    GetAccount,
    RetryPayment,
    FailPayment,
    ListStalledPayments,
    WatchAlerts,
    ApprovePayment,
    DeclinePayment,
    WatchPaymentEvents,
    ListPaymentEvents,
    ResendPaymentEvent,
    ListAuditRecords,
    GetClusterStatus,
    HandBankCallback,
    WatchNodeEvents,
    /// Server reflection: the API's schema, no data.
    Reflect,
}

/// What an action reaches, which decides how a scope applies to it.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Reach {
    /// One account, named in the request: refused outside the scope.
    OneAccount,
    /// Many accounts: what the caller gets is filtered to its scope.
    AcrossAccounts,
    /// No account's data (the cluster's state, the schema).
    NoAccount,
}

impl Action {
    pub const ALL: [Action; 20] = [
        Action::CreatePayment,
        Action::GetPayment,
        Action::ListPayments,
        Action::ListReviewQueue,
        Action::RefundPayment,
        Action::GetAccount,
        Action::RetryPayment,
        Action::FailPayment,
        Action::ListStalledPayments,
        Action::WatchAlerts,
        Action::ApprovePayment,
        Action::DeclinePayment,
        Action::WatchPaymentEvents,
        Action::ListPaymentEvents,
        Action::ResendPaymentEvent,
        Action::ListAuditRecords,
        Action::GetClusterStatus,
        Action::HandBankCallback,
        Action::WatchNodeEvents,
        Action::Reflect,
    ];

    pub fn reach(self) -> Reach {
        match self {
            Action::CreatePayment
            | Action::GetPayment
            | Action::ListPayments
            | Action::RefundPayment
            | Action::GetAccount
            | Action::RetryPayment
            | Action::FailPayment
            | Action::ApprovePayment
            | Action::DeclinePayment
            | Action::ListPaymentEvents
            | Action::ResendPaymentEvent
            | Action::ListAuditRecords => Reach::OneAccount,
            Action::ListReviewQueue
            | Action::ListStalledPayments
            | Action::WatchAlerts
            | Action::WatchPaymentEvents
            | Action::HandBankCallback
            | Action::WatchNodeEvents => Reach::AcrossAccounts,
            Action::GetClusterStatus | Action::Reflect => Reach::NoAccount,
        }
    }

    /// Whether the action moves money or changes a payment: what is
    /// attributed to the caller.
    pub fn is_privileged(self) -> bool {
        matches!(
            self,
            Action::RefundPayment
                | Action::RetryPayment
                | Action::FailPayment
                | Action::ApprovePayment
                | Action::DeclinePayment
                | Action::ResendPaymentEvent
        )
    }
}

/// The one table of who may do what. Every person's role may read (a
/// reviewer or an on-call engineer must see the payment they act on);
/// only `admin` and `node` see node-to-node actions, and only `node`
/// hands over callbacks (they move money without a person).
pub fn role_allows(role: Role, action: Action) -> bool {
    use Action::*;
    let reads = matches!(
        action,
        GetPayment | ListPayments | GetAccount | ListPaymentEvents | WatchPaymentEvents | Reflect
    );
    match role {
        Role::Gateway => reads || action == CreatePayment,
        Role::Support => reads || action == RefundPayment,
        Role::Reviewer => {
            reads || matches!(action, ListReviewQueue | ApprovePayment | DeclinePayment)
        }
        Role::Oncall => {
            reads
                || matches!(
                    action,
                    ListStalledPayments
                        | WatchAlerts
                        | RetryPayment
                        | FailPayment
                        | ResendPaymentEvent
                        | ListAuditRecords
                        | GetClusterStatus
                )
        }
        Role::Admin => !matches!(action, HandBankCallback | WatchNodeEvents),
        Role::Node => matches!(action, HandBankCallback | WatchNodeEvents | Reflect),
    }
}

/// The accounts an identity may reach.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum AccountScope {
    Every,
    /// These accounts, and every account whose id starts with one of the
    /// prefixes.
    Only {
        accounts: BTreeSet<AccountId>,
        prefixes: Vec<String>,
    },
}

impl AccountScope {
    pub fn covers(&self, account: &AccountId) -> bool {
        match self {
            AccountScope::Every => true,
            AccountScope::Only { accounts, prefixes } => {
                accounts.contains(account)
                    || prefixes
                        .iter()
                        .any(|prefix| account.as_str().starts_with(prefix.as_str()))
            }
        }
    }
}

/// What the access list grants one identity.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Grant {
    /// The key id, or the certificate's subject: who acted, in records.
    pub identity: String,
    pub roles: BTreeSet<Role>,
    pub scope: AccountScope,
    pub expires: Option<Timestamp>,
    /// Calls allowed per second and in a burst; `None`: no limit (a node:
    /// its forwarded calls were counted where they arrived).
    pub rate: Option<Rate>,
}

/// A request rate: a token bucket that refills `per_second` and holds at
/// most `burst`.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rate {
    pub per_second: u32,
    pub burst: u32,
}

/// One identity's token bucket, in thousandths of a call. Pure: the
/// caller passes a monotonic time in milliseconds.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct TokenBucket {
    millitokens: u64,
    at_ms: u64,
}

impl TokenBucket {
    /// A full bucket at `now_ms`.
    pub fn full(rate: Rate, now_ms: u64) -> TokenBucket {
        TokenBucket {
            millitokens: u64::from(rate.burst) * 1000,
            at_ms: now_ms,
        }
    }

    /// Takes one call's token at `now_ms`, or says how many milliseconds
    /// until one is there.
    pub fn take(&mut self, rate: Rate, now_ms: u64) -> Result<(), u64> {
        let elapsed = now_ms.saturating_sub(self.at_ms);
        self.at_ms = self.at_ms.max(now_ms);
        // per_second calls per 1000 ms = per_second millitokens per ms.
        let refill = elapsed.saturating_mul(u64::from(rate.per_second));
        self.millitokens = self
            .millitokens
            .saturating_add(refill)
            .min(u64::from(rate.burst) * 1000);
        if self.millitokens >= 1000 {
            self.millitokens -= 1000;
            return Ok(());
        }
        let per_ms = u64::from(rate.per_second.max(1));
        Err((1000 - self.millitokens).div_ceil(per_ms))
    }
}

/// Why a proven identity is refused an action.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Denied {
    /// No role of the identity allows the action.
    Role,
    /// The account lies outside the identity's scope. Answered like
    /// [`Denied::Role`], without saying whether the account exists.
    Scope,
}

impl Grant {
    /// Whether `now` is past the expiry.
    pub fn expired(&self, now: Timestamp) -> bool {
        self.expires.is_some_and(|expires| now >= expires)
    }

    /// Whether some role allows `action` (the account aside).
    pub fn allows(&self, action: Action) -> bool {
        self.roles.iter().any(|&role| role_allows(role, action))
    }

    /// Whether the identity may take `action` on `account`.
    pub fn check(&self, action: Action, account: &AccountId) -> Result<(), Denied> {
        if !self.allows(action) {
            return Err(Denied::Role);
        }
        if !self.scope.covers(account) {
            return Err(Denied::Scope);
        }
        Ok(())
    }

    /// Whether the identity may see `account`'s data in a cross-account
    /// result (a list, a stream).
    pub fn sees(&self, account: &AccountId) -> bool {
        self.scope.covers(account)
    }
}

/// A validated access list.
#[derive(Clone, PartialEq, Eq, Debug, Default)]
pub struct AccessList {
    /// Keys by key id, with the SHA-256 of their secret.
    pub keys: BTreeMap<String, ([u8; 32], Grant)>,
    /// Client certificates by subject.
    pub certificates: BTreeMap<String, Grant>,
}

/// Why an access list was refused: every problem found.
#[derive(Clone, PartialEq, Eq, Debug, thiserror::Error)]
#[error("{}", problems.join("; "))]
pub struct AccessListError {
    pub problems: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Document {
    #[serde(default)]
    keys: Vec<KeyEntry>,
    #[serde(default)]
    certificates: Vec<CertificateEntry>,
    /// Rates by role name, for entries that set none of their own.
    #[serde(default)]
    rates: BTreeMap<String, Rate>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyEntry {
    id: String,
    secret_sha256: String,
    roles: Vec<String>,
    #[serde(default)]
    accounts: Option<Vec<String>>,
    #[serde(default)]
    account_prefix: Option<String>,
    #[serde(default)]
    expires: Option<String>,
    #[serde(default)]
    rate: Option<Rate>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CertificateEntry {
    subject: String,
    roles: Vec<String>,
    #[serde(default)]
    accounts: Option<Vec<String>>,
    #[serde(default)]
    account_prefix: Option<String>,
    #[serde(default)]
    expires: Option<String>,
    #[serde(default)]
    rate: Option<Rate>,
}

/// What both kinds of entry grant (serde cannot refuse unknown fields of a
/// flattened struct, so each entry lists them and hands them over).
struct GrantEntry {
    roles: Vec<String>,
    accounts: Option<Vec<String>>,
    account_prefix: Option<String>,
    expires: Option<String>,
    rate: Option<Rate>,
}

/// Key ids: what `payvisor auth new-key` draws, or an operator's name.
/// No `_`: it separates the id from the secret in a key.
pub fn valid_key_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= limits::AUTH_KEY_ID_CHARS_MAX
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

impl AccessList {
    /// Parses and validates an access list; every problem is reported.
    pub fn parse(text: &str) -> Result<AccessList, AccessListError> {
        let refuse = |problem: String| AccessListError {
            problems: vec![problem],
        };
        if text.len() > limits::AUTH_FILE_BYTES_MAX {
            return Err(refuse(format!(
                "the document has {} bytes, at most {} allowed",
                text.len(),
                limits::AUTH_FILE_BYTES_MAX
            )));
        }
        let document: Document = serde_json::from_str(text).map_err(|error| {
            refuse(format!(
                "not a valid access list: {}",
                super::json::without_values(&error)
            ))
        })?;
        if document.keys.len() + document.certificates.len() > limits::AUTH_IDENTITIES_MAX {
            return Err(refuse(format!(
                "{} identities, at most {} allowed",
                document.keys.len() + document.certificates.len(),
                limits::AUTH_IDENTITIES_MAX
            )));
        }
        let mut problems = Vec::new();
        let mut rates = BTreeMap::new();
        for (name, rate) in &document.rates {
            match Role::parse(name) {
                Some(role) => {
                    check_rate(&format!("rates.{name}"), rate, &mut problems);
                    rates.insert(role, *rate);
                }
                None => problems.push(format!("rates: unknown role {name:?}")),
            }
        }
        let mut list = AccessList::default();
        let (mut ids, mut subjects) = (BTreeSet::new(), BTreeSet::new());
        for (index, key) in document.keys.into_iter().enumerate() {
            let at = format!("keys[{index}] ({})", key.id);
            if !valid_key_id(&key.id) {
                problems.push(format!(
                    "{at}: id must be 1..={} characters of a-z, 0-9 and '-'",
                    limits::AUTH_KEY_ID_CHARS_MAX
                ));
            }
            let hash = parse_sha256(&key.secret_sha256);
            if hash.is_none() {
                problems.push(format!(
                    "{at}: secret_sha256 must be 64 hexadecimal digits (payvisor auth new-key prints it)"
                ));
            }
            let grant = GrantEntry {
                roles: key.roles,
                accounts: key.accounts,
                account_prefix: key.account_prefix,
                expires: key.expires,
                rate: key.rate,
            }
            .validate(&key.id, &at, &rates, &mut problems);
            if !ids.insert(key.id.clone()) {
                problems.push(format!("{at}: the id is used twice"));
            }
            if let (Some(hash), Some(grant)) = (hash, grant) {
                list.keys.insert(key.id, (hash, grant));
            }
        }
        for (index, certificate) in document.certificates.into_iter().enumerate() {
            let at = format!("certificates[{index}] ({})", certificate.subject);
            if certificate.subject.trim().is_empty()
                || certificate.subject.len() > limits::AUTH_SUBJECT_CHARS_MAX
            {
                problems.push(format!(
                    "{at}: subject must be 1..={} characters, as `CN=...,O=...`",
                    limits::AUTH_SUBJECT_CHARS_MAX
                ));
            }
            let grant = GrantEntry {
                roles: certificate.roles,
                accounts: certificate.accounts,
                account_prefix: certificate.account_prefix,
                expires: certificate.expires,
                rate: certificate.rate,
            }
            .validate(&certificate.subject, &at, &rates, &mut problems);
            if !subjects.insert(certificate.subject.clone()) {
                problems.push(format!("{at}: the subject is used twice"));
            }
            if let Some(grant) = grant {
                list.certificates.insert(certificate.subject, grant);
            }
        }
        problems.truncate(limits::RULES_PROBLEMS_MAX);
        if problems.is_empty() {
            Ok(list)
        } else {
            Err(AccessListError { problems })
        }
    }

    pub fn len(&self) -> usize {
        self.keys.len() + self.certificates.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl GrantEntry {
    fn validate(
        self,
        identity: &str,
        at: &str,
        rates: &BTreeMap<Role, Rate>,
        problems: &mut Vec<String>,
    ) -> Option<Grant> {
        let before = problems.len();
        if let Some(rate) = &self.rate {
            check_rate(&format!("{at}: rate"), rate, problems);
        }
        let mut roles = BTreeSet::new();
        for name in &self.roles {
            match Role::parse(name) {
                Some(role) => {
                    roles.insert(role);
                }
                None => problems.push(format!(
                    "{at}: unknown role {name:?} (roles: {})",
                    Role::ALL.map(Role::name).join(", ")
                )),
            }
        }
        if self.roles.is_empty() {
            problems.push(format!("{at}: roles must name at least one role"));
        }
        let scoped = self.accounts.is_some() || self.account_prefix.is_some();
        if roles.contains(&Role::Node) && (roles.len() > 1 || scoped) {
            // A node acts for callers of every account, with their grants.
            problems.push(format!(
                "{at}: the node role stands alone, without other roles or an account scope"
            ));
        }
        let mut accounts = BTreeSet::new();
        for account in self.accounts.iter().flatten() {
            match AccountId::new(account) {
                Ok(account) => {
                    accounts.insert(account);
                }
                Err(error) => problems.push(format!("{at}: account {account:?} {error}")),
            }
        }
        if self.accounts.as_ref().is_some_and(Vec::is_empty) && self.account_prefix.is_none() {
            problems.push(format!(
                "{at}: accounts is empty (leave it out for every account)"
            ));
        }
        let prefixes: Vec<String> = self.account_prefix.into_iter().collect();
        if prefixes.iter().any(|prefix| prefix.is_empty()) {
            problems.push(format!(
                "{at}: account_prefix is empty (leave it out for every account)"
            ));
        }
        let expires = match self.expires.as_deref().map(parse_rfc3339) {
            None => None,
            Some(Ok(at)) => Some(at),
            Some(Err(error)) => {
                problems.push(format!("{at}: expires: {error}"));
                None
            }
        };
        if problems.len() > before {
            return None;
        }
        // Its own rate; else the most generous of its roles'; else the
        // default. A node's calls are counted where they arrived.
        let rate = if roles.contains(&Role::Node) {
            None
        } else {
            Some(self.rate.unwrap_or_else(|| {
                roles
                    .iter()
                    .filter_map(|role| rates.get(role))
                    .max_by_key(|rate| (rate.per_second, rate.burst))
                    .copied()
                    .unwrap_or(Rate {
                        per_second: limits::AUTH_RATE_PER_SECOND_DEFAULT,
                        burst: limits::AUTH_RATE_BURST_DEFAULT,
                    })
            }))
        };
        Some(Grant {
            rate,
            identity: identity.to_owned(),
            roles,
            scope: if scoped {
                AccountScope::Only { accounts, prefixes }
            } else {
                AccountScope::Every
            },
            expires,
        })
    }
}

fn check_rate(at: &str, rate: &Rate, problems: &mut Vec<String>) {
    let bounds = 1..=limits::AUTH_RATE_PER_SECOND_MAX;
    if !bounds.contains(&rate.per_second) || !bounds.contains(&rate.burst) {
        problems.push(format!(
            "{at}: per_second and burst must be 1..={}",
            limits::AUTH_RATE_PER_SECOND_MAX
        ));
    }
}

/// 64 hexadecimal digits as 32 bytes.
pub fn parse_sha256(text: &str) -> Option<[u8; 32]> {
    let text = text.as_bytes();
    if text.len() != 64 {
        return None;
    }
    let mut bytes = [0; 32];
    for (byte, pair) in bytes.iter_mut().zip(text.chunks(2)) {
        let digits = std::str::from_utf8(pair).ok()?;
        *byte = u8::from_str_radix(digits, 16).ok()?;
    }
    Some(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    const HASH: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn account(id: &str) -> AccountId {
        AccountId::new(id).unwrap()
    }

    #[test]
    fn every_action_has_an_owner_and_no_person_hands_over_callbacks() {
        for action in Action::ALL {
            assert!(
                Role::ALL.iter().any(|&role| role_allows(role, action)),
                "{action:?}"
            );
        }
        for role in [
            Role::Gateway,
            Role::Support,
            Role::Reviewer,
            Role::Oncall,
            Role::Admin,
        ] {
            assert!(!role_allows(role, Action::HandBankCallback), "{role:?}");
        }
        assert!(!role_allows(Role::Node, Action::RefundPayment));
        assert!(!role_allows(Role::Gateway, Action::RefundPayment));
        assert!(!role_allows(Role::Support, Action::CreatePayment));
        assert!(!role_allows(Role::Reviewer, Action::FailPayment));
        assert!(!role_allows(Role::Oncall, Action::ApprovePayment));
    }

    #[test]
    fn a_scoped_grant_reaches_its_accounts_only() {
        let list = AccessList::parse(&format!(
            r#"{{"keys": [
                {{"id": "gw-acme", "secret_sha256": "{HASH}", "roles": ["gateway"], "accounts": ["acme"]}},
                {{"id": "cs-eu", "secret_sha256": "{HASH}", "roles": ["support"], "account_prefix": "eu-"}},
                {{"id": "ops", "secret_sha256": "{HASH}", "roles": ["oncall", "reviewer"], "expires": "2027-01-01T00:00:00Z"}}
            ]}}"#
        ))
        .unwrap();
        let gateway = &list.keys["gw-acme"].1;
        assert_eq!(gateway.check(Action::GetPayment, &account("acme")), Ok(()));
        assert_eq!(
            gateway.check(Action::GetPayment, &account("globex")),
            Err(Denied::Scope)
        );
        assert_eq!(
            gateway.check(Action::RefundPayment, &account("acme")),
            Err(Denied::Role)
        );
        let support = &list.keys["cs-eu"].1;
        assert!(support.sees(&account("eu-shop")));
        assert!(!support.sees(&account("us-shop")));
        let ops = &list.keys["ops"].1;
        assert!(ops.sees(&account("anything")));
        let expiry = parse_rfc3339("2027-01-01T00:00:00Z").unwrap();
        assert!(!ops.expired(expiry.plus_millis(-1)));
        assert!(ops.expired(expiry));
    }

    #[test]
    fn a_bucket_lets_a_burst_through_then_the_rate() {
        let rate = Rate {
            per_second: 10,
            burst: 3,
        };
        let mut bucket = TokenBucket::full(rate, 1_000);
        for _ in 0..3 {
            assert_eq!(bucket.take(rate, 1_000), Ok(()));
        }
        // Empty: a token every 100 ms.
        assert_eq!(bucket.take(rate, 1_000), Err(100));
        assert_eq!(bucket.take(rate, 1_040), Err(60));
        assert_eq!(bucket.take(rate, 1_100), Ok(()));
        // Idle for long: full again, never more than the burst.
        assert_eq!(bucket.take(rate, 60_000), Ok(()));
        assert_eq!(bucket.take(rate, 60_000), Ok(()));
        assert_eq!(bucket.take(rate, 60_000), Ok(()));
        assert!(bucket.take(rate, 60_000).is_err());
        // A clock that does not move forward refills nothing.
        assert!(bucket.take(rate, 59_000).is_err());
    }

    #[test]
    fn rates_come_from_the_entry_its_roles_or_the_default() {
        let list = AccessList::parse(&format!(
            r#"{{"rates": {{"support": {{"per_second": 5, "burst": 10}}, "oncall": {{"per_second": 50, "burst": 10}}}},
                "keys": [
                {{"id": "own", "secret_sha256": "{HASH}", "roles": ["support"], "rate": {{"per_second": 1, "burst": 2}}}},
                {{"id": "roles", "secret_sha256": "{HASH}", "roles": ["support", "oncall"]}},
                {{"id": "default", "secret_sha256": "{HASH}", "roles": ["gateway"]}},
                {{"id": "node", "secret_sha256": "{HASH}", "roles": ["node"]}}
            ]}}"#
        ))
        .unwrap();
        let rate = |id: &str| list.keys[id].1.rate;
        assert_eq!(
            rate("own"),
            Some(Rate {
                per_second: 1,
                burst: 2
            })
        );
        assert_eq!(
            rate("roles"),
            Some(Rate {
                per_second: 50,
                burst: 10
            })
        );
        assert_eq!(
            rate("default"),
            Some(Rate {
                per_second: limits::AUTH_RATE_PER_SECOND_DEFAULT,
                burst: limits::AUTH_RATE_BURST_DEFAULT
            })
        );
        assert_eq!(rate("node"), None);
        let bad = AccessList::parse(&format!(
            r#"{{"rates": {{"root": {{"per_second": 1, "burst": 1}}}},
                "keys": [{{"id": "a", "secret_sha256": "{HASH}", "roles": ["admin"], "rate": {{"per_second": 0, "burst": 1}}}}]}}"#
        ))
        .unwrap_err()
        .problems
        .join("\n");
        assert!(bad.contains("rates: unknown role \"root\""), "{bad}");
        assert!(
            bad.contains("keys[0] (a): rate: per_second and burst"),
            "{bad}"
        );
    }

    #[test]
    fn every_problem_of_a_bad_list_is_reported() {
        let error = AccessList::parse(&format!(
            r#"{{"keys": [
                {{"id": "Bad_Id", "secret_sha256": "xyz", "roles": []}},
                {{"id": "a", "secret_sha256": "{HASH}", "roles": ["root"], "accounts": ["no/slash"]}},
                {{"id": "b", "secret_sha256": "{HASH}", "roles": ["node", "admin"], "expires": "soon"}},
                {{"id": "b", "secret_sha256": "{HASH}", "roles": ["gateway"], "accounts": []}}
            ]}}"#
        ))
        .unwrap_err();
        let text = error.problems.join("\n");
        for expected in [
            "keys[0] (Bad_Id): id must be",
            "keys[0] (Bad_Id): secret_sha256 must be",
            "keys[0] (Bad_Id): roles must name",
            "keys[1] (a): unknown role \"root\"",
            "keys[1] (a): account \"no/slash\"",
            "keys[2] (b): the node role stands alone",
            "keys[2] (b): expires:",
            "keys[3] (b): the id is used twice",
            "keys[3] (b): accounts is empty",
        ] {
            assert!(
                text.contains(expected),
                "{expected:?} missing from:\n{text}"
            );
        }
        let unknown = AccessList::parse(r#"{"keys": [], "users": []}"#).unwrap_err();
        assert!(
            unknown.problems[0].contains("unknown field `users`"),
            "{unknown}"
        );
        let typo = AccessList::parse(&format!(
            r#"{{"keys": [{{"id": "a", "secret_sha256": "{HASH}", "roles": ["gateway"], "acounts": ["x"]}}]}}"#
        ))
        .unwrap_err();
        assert!(typo.problems[0].contains("acounts"), "{typo}");
    }
}
