//! Forwarding a call to the node that owns its account (a proxy, not a
//! redirect): the caller's metadata and remaining deadline go along, the
//! call is marked as forwarded so that it is never forwarded again (one
//! hop), and the owner's answer comes back as it is. A call that cannot
//! reach an owner is answered `UNAVAILABLE` (`ACCOUNT_MOVING`) with a retry
//! delay; its `request_id` makes the client's retry safe.

use std::future::Future;
use std::time::Duration;

use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::transport::Channel;
use tonic::{Code, Request, Response, Status};

use super::auth::{encode_identity, Caller, FORWARDED_BY, ON_BEHALF_OF};
use crate::actors::CommandError;
use crate::cluster::{Cluster, Route};
use crate::domain::AccountId;
use crate::limits;

/// Headers of the transport, not of the call: never copied to the
/// forwarded call (the client sets its own).
const TRANSPORT_HEADERS: [&str; 7] = [
    "te",
    "content-type",
    "user-agent",
    "host",
    "grpc-timeout",
    "grpc-encoding",
    "grpc-accept-encoding",
];

/// Where a call ended up.
pub enum Routed<Req, Resp> {
    /// Serve it here.
    Here(Request<Req>),
    /// The owner answered.
    Answered(Response<Resp>),
}

/// Serves `request` here if this node owns `account` (or is not in a
/// cluster); otherwise forwards it with `forward` to the owner. A hop that
/// fails (the owner died or is leaving) is tried once more after the
/// cluster's picture changes, within the move wait: the call carries its
/// `request_id`, so a second delivery is answered from the first.
pub async fn route<Req, Resp, Fut>(
    cluster: Option<&Cluster>,
    account: &AccountId,
    request: Request<Req>,
    forward: impl Fn(Channel, Request<Req>) -> Fut,
) -> Result<Routed<Req, Resp>, Status>
where
    Req: Clone,
    Fut: Future<Output = Result<Response<Resp>, Status>>,
{
    let Some(cluster) = cluster else {
        return Ok(Routed::Here(request));
    };
    let arrived = tokio::time::Instant::now();
    let budget = grpc_timeout(request.metadata())
        .unwrap_or(limits::CLUSTER_FORWARD_TIMEOUT)
        .min(limits::CLUSTER_FORWARD_TIMEOUT);
    let deadline = arrived + budget;
    let forwarded = request.metadata().contains_key(FORWARDED_BY);
    let mut picture = cluster.picture_changes();
    let mut hops = 0;
    loop {
        let routed = cluster.route(account, forwarded, deadline).await;
        let (node, channel) = match routed.map_err(CommandError::from)? {
            Route::Local => return Ok(Routed::Here(request)),
            Route::Forward { node, channel } => (node, channel),
        };
        let outgoing = outgoing(cluster, &request, deadline)?;
        picture.mark_unchanged();
        match forward(channel, outgoing).await {
            Ok(response) => {
                // The owner's answer, and its replay mark (nothing else of
                // its metadata: the transport's is this hop's own).
                let replayed = (response.metadata())
                    .get(super::IDEMPOTENT_REPLAYED)
                    .cloned();
                let mut answer = Response::new(response.into_inner());
                if let Some(mark) = replayed {
                    (answer.metadata_mut()).insert(super::IDEMPOTENT_REPLAYED, mark);
                }
                return Ok(Routed::Answered(answer));
            }
            Err(status) if unreached(&status) => {
                tracing::warn!(%account, owner = %node, code = ?status.code(), "the account's owner could not be reached");
                hops += 1;
                let wait_until =
                    deadline.min(tokio::time::Instant::now() + limits::CLUSTER_MOVE_WAIT);
                let changed = tokio::time::timeout_at(wait_until, picture.changed()).await;
                if hops < 2 && matches!(changed, Ok(Ok(()))) {
                    continue;
                }
                break;
            }
            Err(status) => return Err(status),
        }
    }
    Err(CommandError::Moving(format!(
        "the node that owns account {account} cannot be reached; retry with the same request_id"
    ))
    .into())
}

/// The call as it goes to the owner: the caller's metadata without the
/// transport's or its credentials, marked as forwarded, with this node's
/// credential and the caller's identity, with what is left of the
/// deadline.
fn outgoing<Req: Clone>(
    cluster: &Cluster,
    request: &Request<Req>,
    deadline: tokio::time::Instant,
) -> Result<Request<Req>, Status> {
    let mut metadata = request.metadata().clone();
    for header in TRANSPORT_HEADERS {
        metadata.remove(header);
    }
    if let Ok(me) = MetadataValue::try_from(cluster.me.as_str()) {
        metadata.insert(FORWARDED_BY, me);
    }
    // The owner learns the caller from this node, which proved it, and
    // applies its own access list to it.
    cluster.present_credential(&mut metadata);
    metadata.remove(ON_BEHALF_OF);
    if let Some(identity) = request
        .extensions()
        .get::<Caller>()
        .and_then(Caller::identity)
    {
        let identity = MetadataValue::try_from(encode_identity(identity)).map_err(|_| {
            CommandError::Internal("the caller's identity cannot be sent to a peer".into())
        })?;
        metadata.insert(ON_BEHALF_OF, identity);
    }
    let mut outgoing = Request::from_parts(metadata, Default::default(), request.get_ref().clone());
    let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
    if remaining.is_zero() {
        return Err(Status::deadline_exceeded(
            "the deadline passed before the call reached the account's owner",
        ));
    }
    outgoing.set_timeout(remaining);
    Ok(outgoing)
}

/// A failure of the hop itself, not an answer of the owner: every status
/// payvisor answers carries an `ErrorInfo`, a broken connection none.
fn unreached(status: &Status) -> bool {
    status.details().is_empty()
        && matches!(
            status.code(),
            Code::Unavailable | Code::Unknown | Code::Cancelled | Code::Internal
        )
}

/// The caller's deadline, from the `grpc-timeout` header: an integer of
/// at most 8 digits and a unit (gRPC over HTTP/2).
pub fn grpc_timeout(metadata: &MetadataMap) -> Option<Duration> {
    let text = metadata.get("grpc-timeout")?.to_str().ok()?;
    if text.len() < 2 || text.len() > 9 {
        return None;
    }
    let (digits, unit) = text.split_at(text.len() - 1);
    let value: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(value.checked_mul(3600)?),
        "M" => Duration::from_secs(value.checked_mul(60)?),
        "S" => Duration::from_secs(value),
        "m" => Duration::from_millis(value),
        "u" => Duration::from_micros(value),
        "n" => Duration::from_nanos(value),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_timeout(value: &'static str) -> MetadataMap {
        let mut metadata = MetadataMap::new();
        metadata.insert("grpc-timeout", MetadataValue::from_static(value));
        metadata
    }

    #[test]
    fn the_callers_deadline_is_read_in_every_unit() {
        assert_eq!(
            grpc_timeout(&with_timeout("2H")),
            Some(Duration::from_secs(7200))
        );
        assert_eq!(
            grpc_timeout(&with_timeout("3M")),
            Some(Duration::from_secs(180))
        );
        assert_eq!(
            grpc_timeout(&with_timeout("5S")),
            Some(Duration::from_secs(5))
        );
        assert_eq!(
            grpc_timeout(&with_timeout("250m")),
            Some(Duration::from_millis(250))
        );
        assert_eq!(
            grpc_timeout(&with_timeout("7u")),
            Some(Duration::from_micros(7))
        );
        assert_eq!(
            grpc_timeout(&with_timeout("9n")),
            Some(Duration::from_nanos(9))
        );
        assert_eq!(grpc_timeout(&with_timeout("12")), None);
        assert_eq!(grpc_timeout(&with_timeout("123456789S")), None);
        assert_eq!(grpc_timeout(&MetadataMap::new()), None);
    }

    #[test]
    fn only_a_broken_hop_counts_as_unreached() {
        assert!(unreached(&Status::unavailable("connection refused")));
        let answered: Status = CommandError::Moving("moving".into()).into();
        assert!(!unreached(&answered));
        assert!(!unreached(&Status::deadline_exceeded("late")));
    }
}
