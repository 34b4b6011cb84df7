//! Who calls, at the gRPC edge. A tower layer in front of every service
//! authenticates each call (an API key in `authorization: Bearer <key>`),
//! refuses what no role of the caller allows (by the RPC's path, from the
//! one table [`RULES`]) and hands the handlers the [`Caller`], which they
//! ask about the account a call names ([`authorize`]) or the accounts a
//! list or a stream may show ([`Caller::sees`]).
//!
//! A call forwarded by a peer node carries the node's own key and the
//! caller's identity in [`ON_BEHALF_OF`]; the owner applies its own access
//! list to that identity (every node loads the same file).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tonic::Request;

use super::metered::CallNote;
use crate::actors::CommandError;
use crate::auth::{AuthError, Authenticator};
use crate::domain::access::{Action, Denied, Grant, Role};
use crate::domain::{parse_payment_name, AccountId};
use crate::tls::TlsPeer;

/// The metadata of the caller's credentials.
pub const AUTHORIZATION: &str = "authorization";
/// Set by a node that forwards a call: the identity of its caller,
/// percent-encoded ([`encode_identity`]: a certificate subject may hold
/// what a header value cannot).
pub const ON_BEHALF_OF: &str = "payvisor-on-behalf-of";
/// Metadata that marks a call forwarded by a peer, with the peer's id
/// (honoured only from a node).
pub const FORWARDED_BY: &str = "payvisor-forwarded-by";

/// An identity as a header value: bytes outside printable ASCII, and `%`,
/// as `%XX`.
pub fn encode_identity(identity: &str) -> String {
    let mut encoded = String::with_capacity(identity.len());
    for &byte in identity.as_bytes() {
        if (0x20..0x7f).contains(&byte) && byte != b'%' {
            encoded.push(char::from(byte));
        } else {
            encoded.push_str(&format!("%{byte:02X}"));
        }
    }
    encoded
}

/// The identity [`encode_identity`] encoded; `None` for anything else
/// (so one identity has one spelling).
pub fn decode_identity(encoded: &[u8]) -> Option<String> {
    let mut bytes = Vec::with_capacity(encoded.len());
    let mut rest = encoded;
    while let Some((&byte, after)) = rest.split_first() {
        if byte == b'%' {
            let digits = std::str::from_utf8(after.get(..2)?).ok()?;
            if digits.bytes().any(|digit| digit.is_ascii_lowercase()) {
                return None;
            }
            let decoded = u8::from_str_radix(digits, 16).ok()?;
            if (0x20..0x7f).contains(&decoded) && decoded != b'%' {
                return None; // written as itself by the encoder
            }
            bytes.push(decoded);
            rest = &after[2..];
        } else if (0x20..0x7f).contains(&byte) {
            bytes.push(byte);
            rest = after;
        } else {
            return None;
        }
    }
    String::from_utf8(bytes).ok()
}

/// What the edge does with a call, by its path.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Rule {
    /// No credentials needed: health checks (load balancers, orchestrators).
    Open,
    /// The caller needs a role that allows the action.
    Act(Action),
}

/// Every method served, and its rule. A path not in the table is refused
/// to everyone (a new RPC without a rule fails closed, and the test that
/// walks the API's descriptors fails).
pub const RULES: &[(&str, Rule)] = &[
    ("/grpc.health.v1.Health/Check", Rule::Open),
    ("/grpc.health.v1.Health/Watch", Rule::Open),
    (
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        Rule::Act(Action::Reflect),
    ),
    (
        "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
        Rule::Act(Action::Reflect),
    ),
    (
        "/payvisor.v1.PaymentService/CreatePayment",
        Rule::Act(Action::CreatePayment),
    ),
    (
        "/payvisor.v1.PaymentService/GetPayment",
        Rule::Act(Action::GetPayment),
    ),
    (
        "/payvisor.v1.PaymentService/ListPayments",
        Rule::Act(Action::ListPayments),
    ),
    (
        "/payvisor.v1.PaymentService/RefundPayment",
        Rule::Act(Action::RefundPayment),
    ),
    (
        "/payvisor.v1.PaymentService/GetAccount",
        Rule::Act(Action::GetAccount),
    ),
    (
        "/payvisor.v1.PaymentService/RetryPayment",
        Rule::Act(Action::RetryPayment),
    ),
    (
        "/payvisor.v1.PaymentService/FailPayment",
        Rule::Act(Action::FailPayment),
    ),
    (
        "/payvisor.v1.PaymentService/ListStalledPayments",
        Rule::Act(Action::ListStalledPayments),
    ),
    (
        "/payvisor.v1.PaymentService/WatchAlerts",
        Rule::Act(Action::WatchAlerts),
    ),
    (
        "/payvisor.v1.PaymentService/ApprovePayment",
        Rule::Act(Action::ApprovePayment),
    ),
    (
        "/payvisor.v1.PaymentService/DeclinePayment",
        Rule::Act(Action::DeclinePayment),
    ),
    (
        "/payvisor.v1.PaymentService/WatchPaymentEvents",
        Rule::Act(Action::WatchPaymentEvents),
    ),
    (
        "/payvisor.v1.PaymentService/ListPaymentEvents",
        Rule::Act(Action::ListPaymentEvents),
    ),
    (
        "/payvisor.v1.PaymentService/ResendPaymentEvent",
        Rule::Act(Action::ResendPaymentEvent),
    ),
    (
        "/payvisor.v1.PaymentService/ListAuditRecords",
        Rule::Act(Action::ListAuditRecords),
    ),
    (
        "/payvisor.v1.ClusterService/GetClusterStatus",
        Rule::Act(Action::GetClusterStatus),
    ),
    (
        "/payvisor.v1.ClusterService/HandBankCallback",
        Rule::Act(Action::HandBankCallback),
    ),
    (
        "/payvisor.v1.ClusterService/WatchNodeEvents",
        Rule::Act(Action::WatchNodeEvents),
    ),
];

/// The rule of a path; `None` for a path no rule covers (refused).
pub fn rule(path: &str) -> Option<Rule> {
    RULES
        .iter()
        .find(|(known, _)| *known == path)
        .map(|(_, rule)| *rule)
}

/// Who a call is from, as its handler sees it (a request extension).
#[derive(Clone, Debug)]
pub enum Caller {
    /// Authentication is off: a development server on loopback, or
    /// `--insecure-no-auth`. Everything is allowed.
    Anyone,
    /// A proven identity and what the access list grants it.
    Proven(Grant),
}

impl Caller {
    /// Who acted, for records: the key id or certificate subject.
    pub fn identity(&self) -> Option<&str> {
        match self {
            Caller::Anyone => None,
            Caller::Proven(grant) => Some(&grant.identity),
        }
    }

    /// Whether the caller may take `action` on `account`.
    pub fn check(&self, action: Action, account: &AccountId) -> Result<(), CommandError> {
        match self {
            Caller::Anyone => Ok(()),
            Caller::Proven(grant) => grant
                .check(action, account)
                .map_err(|_: Denied| CommandError::PermissionDenied),
        }
    }

    /// Whether the caller may take `action`, an action across accounts.
    pub fn allows(&self, action: Action) -> bool {
        match self {
            Caller::Anyone => true,
            Caller::Proven(grant) => grant.allows(action),
        }
    }

    /// Whether the caller may see `account`'s data in a list or a stream.
    pub fn sees(&self, account: &AccountId) -> bool {
        match self {
            Caller::Anyone => true,
            Caller::Proven(grant) => grant.sees(account),
        }
    }

    /// Whether the caller's scope is every account.
    pub fn sees_every_account(&self) -> bool {
        match self {
            Caller::Anyone => true,
            Caller::Proven(grant) => grant.scope == crate::domain::access::AccountScope::Every,
        }
    }

    /// [`Caller::sees`] for a payment's (or an event's) resource name; a
    /// name without an account only for callers of every account.
    pub fn sees_name(&self, name: &str) -> bool {
        match self {
            Caller::Anyone => true,
            Caller::Proven(grant) => match parse_payment_name(name) {
                Ok(payment) => grant.sees(&payment.account),
                Err(_) => grant.scope == crate::domain::access::AccountScope::Every,
            },
        }
    }
}

/// Completes when `caller`'s access, as it stood when a stream opened,
/// is withdrawn: its entry in the access list removed, changed (roles,
/// scope, secret) or expired. Never, for a caller of a server without an
/// access list. The stream then ends with the error returned, and the
/// client subscribes again under what the list grants now.
pub async fn withdrawn(authenticator: Option<Arc<Authenticator>>, caller: Caller) -> CommandError {
    let (Some(authenticator), Caller::Proven(grant)) = (authenticator, caller) else {
        return std::future::pending().await;
    };
    let opened = authenticator
        .entry_of(&grant.identity)
        .filter(|entry| entry.grant == grant);
    loop {
        if !opened
            .as_ref()
            .is_some_and(|entry| authenticator.still_stands(entry))
        {
            tracing::info!(identity = %grant.identity, "stream ended: its access was withdrawn or changed");
            return CommandError::Unauthenticated(
                "this stream's access was withdrawn or changed in the access list; subscribe again"
                    .into(),
            );
        }
        tokio::time::sleep(crate::limits::STREAM_ACCESS_CHECK_EVERY).await;
    }
}

/// The caller of `request`, as the edge proved it. Missing only where the
/// layer is not in front of the service: refused (fail closed).
pub fn caller<T>(request: &Request<T>) -> Result<Caller, CommandError> {
    let caller = request
        .extensions()
        .get::<Caller>()
        .cloned()
        .ok_or(CommandError::PermissionDenied)?;
    if let Some(identity) = caller.identity() {
        CallNote::record(request, |facts| facts.caller = Some(identity.to_owned()));
    }
    Ok(caller)
}

/// The caller of `request`, if it may take `action` on `account`.
pub fn authorize<T>(
    request: &Request<T>,
    action: Action,
    account: &AccountId,
) -> Result<Caller, CommandError> {
    let caller = caller(request)?;
    CallNote::record(request, |facts| facts.account = Some(account.to_string()));
    caller.check(action, account)?;
    Ok(caller)
}

/// The caller of `request`, if it may take `action` (across accounts).
pub fn authorize_across<T>(request: &Request<T>, action: Action) -> Result<Caller, CommandError> {
    let caller = caller(request)?;
    if !caller.allows(action) {
        return Err(CommandError::PermissionDenied);
    }
    Ok(caller)
}

/// The layer in front of every gRPC service.
#[derive(Clone)]
pub struct AuthLayer {
    authenticator: Arc<Authenticator>,
}

impl AuthLayer {
    pub fn new(authenticator: Arc<Authenticator>) -> AuthLayer {
        AuthLayer { authenticator }
    }
}

impl<S> tower_layer::Layer<S> for AuthLayer {
    type Service = Authenticated<S>;

    fn layer(&self, inner: S) -> Authenticated<S> {
        Authenticated {
            inner,
            authenticator: Arc::clone(&self.authenticator),
        }
    }
}

/// A service behind the [`AuthLayer`].
#[derive(Clone)]
pub struct Authenticated<S> {
    inner: S,
    authenticator: Arc<Authenticator>,
}

impl<S, B, R> tower_service::Service<http::Request<B>> for Authenticated<S>
where
    S: tower_service::Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    R: Default + Send + 'static,
{
    type Response = http::Response<R>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, context: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(context)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        let path = request.uri().path().to_owned();
        let answered = |call: S::Future| -> Self::Future {
            Box::pin(async move {
                let response = call.await?;
                Ok(super::codec_errors::rewrite(&path, response))
            })
        };
        match admit(&self.authenticator, &request) {
            Ok(Some((caller, via_node))) => {
                // Only a node's call may say it was forwarded (the mark
                // stops a second hop); anyone else's mark is dropped.
                if self.authenticator.required() && !via_node {
                    request.headers_mut().remove(FORWARDED_BY);
                }
                request.extensions_mut().insert(caller);
                answered(self.inner.call(request))
            }
            Ok(None) => answered(self.inner.call(request)),
            Err(error) => {
                let status = tonic::Status::from(error);
                Box::pin(std::future::ready(Ok(status.into_http())))
            }
        }
    }
}

/// Decides on a call before any handler runs: `Ok(None)` for an open
/// path, the proven [`Caller`] (and whether a node forwarded the call on
/// its behalf), or the refusal.
fn admit<B>(
    authenticator: &Authenticator,
    request: &http::Request<B>,
) -> Result<Option<(Caller, bool)>, CommandError> {
    let path = request.uri().path();
    let action = match rule(path) {
        Some(Rule::Open) => return Ok(None),
        Some(Rule::Act(action)) => action,
        // An unknown method: the router answers UNIMPLEMENTED, unless a
        // method was added without a rule; then no one may call it.
        None if !authenticator.required() => return Ok(Some((Caller::Anyone, false))),
        None => return Err(CommandError::PermissionDenied),
    };
    if !authenticator.required() {
        return Ok(Some((Caller::Anyone, false)));
    }
    let header = request
        .headers()
        .get(AUTHORIZATION)
        .map(|value| value.as_bytes());
    let tls = request.extensions().get::<TlsPeer>();
    let proven = match (header, tls.and_then(|peer| peer.client_subject.as_deref())) {
        // A certificate speaks for its holder when no key is presented.
        (None, Some(subject)) => authenticator.certificate(subject),
        (header, _) => authenticator.bearer(header),
    };
    let (grant, forwarded) = proven
        .and_then(|grant| on_behalf_of(authenticator, grant, request))
        .map_err(|error| {
            let peer = tls.and_then(|peer| peer.remote_addr).or_else(|| {
                request
                    .extensions()
                    .get::<tonic::transport::server::TcpConnectInfo>()
                    .and_then(|info| info.remote_addr())
            });
            // What was presented is never logged: only why it failed, and
            // a certificate's subject (public; what the list must name).
            let subject = tls.and_then(|peer| peer.client_subject.as_deref());
            tracing::warn!(method = %path, peer = ?peer, subject = ?subject, %error, "call refused: not authenticated");
            CommandError::Unauthenticated(error.to_string())
        })?;
    if !grant.allows(action) {
        tracing::info!(method = %path, identity = %grant.identity, "call refused: no role allows it");
        return Err(CommandError::PermissionDenied);
    }
    // A forwarded call was counted on the node it reached.
    if !forwarded {
        if let Err(retry_after) = authenticator.rates.take(&grant) {
            tracing::info!(method = %path, identity = %grant.identity, "call refused: over its rate");
            return Err(CommandError::RateLimited { retry_after });
        }
    }
    Ok(Some((Caller::Proven(grant), forwarded)))
}

/// A node's call on behalf of a caller becomes that caller's (and says
/// so: `true`); a node's call of its own stays the node's. Anyone else's
/// [`ON_BEHALF_OF`] is ignored: it cannot lend them another identity.
fn on_behalf_of<B>(
    authenticator: &Authenticator,
    grant: Grant,
    request: &http::Request<B>,
) -> Result<(Grant, bool), AuthError> {
    if !grant.roles.contains(&Role::Node) {
        return Ok((grant, false));
    }
    match request.headers().get(ON_BEHALF_OF) {
        None => Ok((grant, false)),
        Some(identity) => {
            let Some(identity) = decode_identity(identity.as_bytes()) else {
                authenticator.failures.inc();
                return Err(AuthError::Malformed);
            };
            Ok((authenticator.on_behalf_of(&identity)?, true))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identities_cross_as_header_values_and_back() {
        for identity in ["key-1", "CN=Zoë,O=Acme\\, Inc.", "100%", "a\tb", ""] {
            let encoded = encode_identity(identity);
            assert!(http::HeaderValue::from_str(&encoded).is_ok(), "{encoded}");
            assert_eq!(
                decode_identity(encoded.as_bytes()).as_deref(),
                Some(identity)
            );
        }
        assert_eq!(encode_identity("Zoë%"), "Zo%C3%AB%25");
        for bad in ["%", "%4", "%zz", "%C3", "Zo%c3%ab", "%41", "Zo\u{eb}"] {
            assert_eq!(decode_identity(bad.as_bytes()), None, "{bad}");
        }
    }

    #[test]
    fn the_table_spells_every_path_once() {
        let mut paths: Vec<&str> = RULES.iter().map(|(path, _)| *path).collect();
        paths.sort_unstable();
        let before = paths.len();
        paths.dedup();
        assert_eq!(paths.len(), before, "a path is listed twice");
        for action in Action::ALL {
            let covered = RULES.iter().any(|(_, rule)| *rule == Rule::Act(action));
            // The review queue is ListPayments of accounts/- (checked by
            // the handler).
            assert!(covered || action == Action::ListReviewQueue, "{action:?}");
        }
    }
}
