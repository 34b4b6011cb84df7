//! The gRPC surface (`payvisor.v1.PaymentService`): the only module that
//! sees protobuf types. It validates requests into domain commands, calls the
//! [`Orchestrator`], and maps results back.

pub mod auth;
pub mod cluster;
pub mod codec_errors;
pub mod convert;
pub mod error;
pub mod forward;
pub mod json;
pub mod metered;
pub mod page_token;
pub mod paging;

use std::pin::Pin;

use tokio::sync::broadcast::error::RecvError;
use tokio_stream::Stream;
use tonic::metadata::MetadataValue;
use tonic::{Request, Response, Status};

use crate::actors::{CommandError, Orchestrator};
use crate::domain::access::Action;
use crate::domain::events::parse_event_name;
use crate::domain::payment::{PaymentState, ReviewVerdict};
use crate::domain::{parse_account_name, parse_payment_name};
use crate::limits;
use crate::shutdown::Shutdown;
use crate::store::schema::{self, FeedPosition};
use page_token::{Listing, PageTokens};

/// Generated protobuf and gRPC code for `payvisor.v1`.
pub mod pb {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("payvisor.v1");

    /// The encoded descriptor set, served by server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/payvisor_descriptor.bin"));

    /// `google.rpc.Status` and the error details payvisor sends
    /// (`ErrorInfo`, `BadRequest`, `RetryInfo`), served by server
    /// reflection so that a tool that knows only reflection decodes them.
    pub const ERROR_DETAILS_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/google_rpc_descriptor.bin"));
}

use forward::Routed;
use pb::payment_service_client::PaymentServiceClient;
use pb::payment_service_server::PaymentService;

/// A client of a peer's PaymentService (forwarding).
fn peer(channel: tonic::transport::Channel) -> PaymentServiceClient<tonic::transport::Channel> {
    PaymentServiceClient::new(channel).max_decoding_message_size(limits::GRPC_MESSAGE_BYTES_MAX)
}

/// Serves the call here, or returns the owner's answer: `route!(self,
/// account, request, method)` forwards with the peer client's `method`.
macro_rules! route {
    ($api:expr, $account:expr, $request:expr, $method:ident) => {
        match forward::route(
            $api.cluster.as_deref(),
            $account,
            $request,
            |channel, request| async move { peer(channel).$method(request).await },
        )
        .await?
        {
            Routed::Here(request) => request,
            Routed::Answered(response) => return Ok(response),
        }
    };
}

/// The PaymentService implementation.
#[derive(Clone)]
pub struct PaymentApi {
    orchestrator: Orchestrator,
    /// Ends the live streams (`WatchAlerts`, `WatchPaymentEvents`) when the
    /// node shuts down, so a subscriber does not hold up the drain.
    shutdown: Shutdown,
    /// Set on a cluster member: commands for accounts other nodes own are
    /// forwarded to them.
    cluster: Option<std::sync::Arc<crate::cluster::Cluster>>,
    /// On a cluster member: what its peers decide, live (the watch streams
    /// merge it with this node's own).
    peers: Option<cluster::PeerFeed>,
    /// Seals the tokens of the listings across accounts.
    page_tokens: std::sync::Arc<PageTokens>,
    /// With an access list: open streams end when their caller's access
    /// is withdrawn.
    authenticator: Option<std::sync::Arc<crate::auth::Authenticator>>,
    /// Turns for list calls (see [`limits::LIST_CALLS_CONCURRENT_MAX`]).
    list_turns: std::sync::Arc<tokio::sync::Semaphore>,
}

impl PaymentApi {
    pub fn new(
        orchestrator: Orchestrator,
        shutdown: Shutdown,
        page_tokens: PageTokens,
    ) -> PaymentApi {
        PaymentApi {
            orchestrator,
            shutdown,
            cluster: None,
            peers: None,
            page_tokens: std::sync::Arc::new(page_tokens),
            authenticator: None,
            list_turns: std::sync::Arc::new(tokio::sync::Semaphore::new(
                limits::LIST_CALLS_CONCURRENT_MAX,
            )),
        }
    }

    /// Checking open streams' callers against `authenticator`'s list.
    pub fn with_authenticator(
        mut self,
        authenticator: std::sync::Arc<crate::auth::Authenticator>,
    ) -> PaymentApi {
        self.authenticator = Some(authenticator);
        self
    }

    /// As a member of `cluster`, following its peers' live feeds in `peers`.
    pub fn in_cluster(
        mut self,
        cluster: std::sync::Arc<crate::cluster::Cluster>,
        peers: cluster::PeerFeed,
    ) -> PaymentApi {
        self.cluster = Some(cluster);
        self.peers = Some(peers);
        self
    }

    /// A turn to serve a list call; waits for one (see
    /// [`limits::LIST_CALLS_CONCURRENT_MAX`]).
    async fn list_turn(&self) -> Result<tokio::sync::SemaphorePermit<'_>, CommandError> {
        self.list_turns
            .acquire()
            .await
            .map_err(|_| CommandError::Unavailable("the server is shutting down".into()))
    }

    fn subscribe_peers(&self) -> Option<tokio::sync::broadcast::Receiver<cluster::PeerItem>> {
        self.peers.as_ref().map(|peers| peers.subscribe())
    }

    /// Runs the task that fills `caller`'s live stream through `sender`
    /// until it ends, the caller's access is withdrawn (UNAUTHENTICATED) or
    /// the node shuts down; then the stream ends with UNAVAILABLE,
    /// which tells the client to subscribe again (elsewhere, or here after
    /// the restart; `WatchPaymentEvents` resumes after its last event).
    /// Returns the stream to answer with.
    fn spawn_feed<T, F>(
        &self,
        caller: &auth::Caller,
        feed: impl FnOnce(tokio::sync::mpsc::Sender<Result<T, Status>>) -> F,
    ) -> Ending<T>
    where
        T: Send + 'static,
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        let (sender, receiver) = tokio::sync::mpsc::channel(limits::ALERT_STREAM_BUFFER);
        let (ended, ending) = tokio::sync::oneshot::channel();
        let feed = feed(sender.clone());
        let shutdown = self.shutdown.signalled();
        let withdrawn = auth::withdrawn(self.authenticator.clone(), caller.clone());
        tokio::spawn(async move {
            tokio::select! {
                biased;
                () = feed => {}
                error = withdrawn => {
                    // Ahead of anything still buffered for the client.
                    let _ = ended.send(Status::from(error));
                }
                () = shutdown => {
                    let stopping = CommandError::Unavailable("the server is shutting down; subscribe again".into());
                    // A full stream just ends: the client reads no error,
                    // only the end, and subscribes again all the same.
                    let _ = sender.try_send(Err(stopping.into()));
                }
            }
        });
        Ending::new(receiver, ending)
    }
}

/// A live stream that ends with an error as soon as one is given, ahead of
/// what is still buffered for a slow client (the buffered items are
/// dropped): a caller whose access was withdrawn gets nothing more.
pub struct Ending<T> {
    items: tokio_stream::wrappers::ReceiverStream<Result<T, Status>>,
    ending: Option<tokio::sync::oneshot::Receiver<Status>>,
    ended: bool,
}

impl<T> Ending<T> {
    pub fn new(
        items: tokio::sync::mpsc::Receiver<Result<T, Status>>,
        ending: tokio::sync::oneshot::Receiver<Status>,
    ) -> Ending<T> {
        Ending {
            items: tokio_stream::wrappers::ReceiverStream::new(items),
            ending: Some(ending),
            ended: false,
        }
    }
}

impl<T> Stream for Ending<T> {
    type Item = Result<T, Status>;

    fn poll_next(
        self: Pin<&mut Self>,
        context: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        use std::future::Future as _;
        use std::task::Poll;
        let this = self.get_mut();
        if this.ended {
            return Poll::Ready(None);
        }
        if let Some(ending) = this.ending.as_mut() {
            match Pin::new(ending).poll(context) {
                Poll::Ready(Ok(status)) => {
                    this.ended = true;
                    this.items.close();
                    return Poll::Ready(Some(Err(status)));
                }
                // The feed ended without an error to give.
                Poll::Ready(Err(_)) => this.ending = None,
                Poll::Pending => {}
            }
        }
        Pin::new(&mut this.items).poll_next(context)
    }
}

/// The next item of the peers' feed; never, on a node alone on its store.
async fn next_from_peers(
    peers: &mut Option<tokio::sync::broadcast::Receiver<cluster::PeerItem>>,
) -> Result<cluster::PeerItem, RecvError> {
    match peers {
        Some(peers) => peers.recv().await,
        None => std::future::pending().await,
    }
}

/// Notes the payment a call is about, and the client's idempotency key,
/// for the call's log line.
fn note_payment<T>(
    request: &Request<T>,
    payment: &crate::domain::PaymentName,
    request_id: Option<&crate::domain::RequestId>,
) {
    metered::CallNote::record(request, |facts| {
        facts.payment = Some(payment.to_string());
        facts.request_id = request_id.map(|id| id.as_str().to_owned());
    });
}

/// The response metadata key that marks a replayed idempotent call (as
/// Stripe's `Idempotent-Replayed` header): the answer is the first call's
/// result, as it is now, and nothing was done again. A client's single
/// call can be marked too, when a retry of the server's own (a forward
/// hop, an unclear store write) found its first attempt applied.
pub const IDEMPOTENT_REPLAYED: &str = "idempotent-replayed";

/// A command's answer, marked if it was a replay.
fn answered(answer: crate::actors::Answered) -> Response<pb::Payment> {
    let mut response = Response::new(convert::payment_to_pb(&answer.payment));
    if answer.replayed {
        mark_replayed(&mut response);
    }
    response
}

fn mark_replayed<T>(response: &mut Response<T>) {
    (response.metadata_mut()).insert(IDEMPOTENT_REPLAYED, MetadataValue::from_static("true"));
}

/// The trace the edge gave the call (`metered` writes one in when the
/// caller sent none).
pub(crate) fn trace_of<T>(request: &Request<T>) -> Option<crate::trace::TraceParent> {
    (request.metadata().get(crate::trace::TRACEPARENT))
        .and_then(|value| value.to_str().ok())
        .and_then(crate::trace::TraceParent::parse)
}

fn invalid_name(field: &str, error: impl ToString) -> Status {
    crate::actors::CommandError::invalid(field, error.to_string()).into()
}

#[tonic::async_trait]
impl PaymentService for PaymentApi {
    async fn create_payment(
        &self,
        request: Request<pb::CreatePaymentRequest>,
    ) -> Result<Response<pb::Payment>, Status> {
        // Checked before it goes anywhere: bad input never crosses a hop.
        let mut command = convert::create_payment(request.get_ref().clone())?;
        auth::authorize(&request, Action::CreatePayment, &command.account)?;
        command.trace = trace_of(&request);
        let request_id = command.request_id.clone();
        metered::CallNote::record(&request, |facts| {
            facts.request_id = Some(request_id.as_str().to_owned());
        });
        let request = route!(self, &command.account, request, create_payment);
        let parent = format!("accounts/{}", command.account);
        let answer = (self.orchestrator.create_payment_answered(command).await)
            .map_err(error::on_resource(&parent))?;
        note_payment(&request, &answer.payment.name(), Some(&request_id));
        Ok(answered(answer))
    }

    async fn get_payment(
        &self,
        request: Request<pb::GetPaymentRequest>,
    ) -> Result<Response<pb::Payment>, Status> {
        let name = crate::domain::parse_payment_name(&request.get_ref().name)
            .map_err(|error| invalid_name("name", error))?;
        auth::authorize(&request, Action::GetPayment, &name.account)?;
        note_payment(&request, &name, None);
        let resource = name.to_string();
        let payment =
            (self.orchestrator.get_payment(&name).await).map_err(error::on_resource(&resource))?;
        Ok(Response::new(convert::payment_to_pb(&payment)))
    }

    async fn list_payments(
        &self,
        request: Request<pb::ListPaymentsRequest>,
    ) -> Result<Response<pb::ListPaymentsResponse>, Status> {
        let caller = auth::caller(&request)?;
        let request = request.into_inner();
        let page_size = convert::page_size(request.page_size)?;
        let state = convert::state_from_pb(request.state)?;
        if request.parent == "accounts/-" {
            if request.start_time.is_some() || request.end_time.is_some() {
                let field = if request.start_time.is_some() {
                    "start_time"
                } else {
                    "end_time"
                };
                return Err(CommandError::invalid(
                    field,
                    "the review queue across accounts (accounts/-) is in deadline order: list one account to choose times",
                )
                .into());
            }
            // Across accounts only the review queue has an index.
            if state != Some(PaymentState::InReview) {
                return Err(CommandError::invalid(
                    "state",
                    "listing across accounts (accounts/-) needs state IN_REVIEW",
                )
                .into());
            }
            if !caller.allows(Action::ListReviewQueue) {
                return Err(CommandError::PermissionDenied.into());
            }
            let position = self
                .page_tokens
                .open(Listing::ReviewQueue, &request.page_token)?;
            let _turn = self.list_turn().await?;
            // A scoped reviewer sees its accounts' part of the queue: the
            // page is filled from further on (within the scan bound), and
            // the sealed token goes on without naming what it skipped.
            let (payments, next) = paging::fill(
                position,
                page_size,
                |payment| caller.sees(&payment.account),
                |payment| schema::waiting_position(schema::WaitingList::Review, payment),
                |after, n| async move { self.orchestrator.list_in_review(after.as_ref(), n).await },
            )
            .await?;
            return Ok(Response::new(pb::ListPaymentsResponse {
                payments,
                next_page_token: next
                    .map(|next| self.page_tokens.seal(Listing::ReviewQueue, &next))
                    .unwrap_or_default(),
            }));
        }
        let account =
            parse_account_name(&request.parent).map_err(|error| invalid_name("parent", error))?;
        caller.check(Action::ListPayments, &account)?;
        let start_after = convert::decode_page_token(&request.page_token)?;
        let window = convert::created_window(request.start_time, request.end_time)?;
        let _turn = self.list_turn().await?;
        let account = &account;
        let (payments, next) = paging::fill(
            start_after,
            page_size,
            |_| true,
            |payment| Some(schema::created_position(payment)),
            |after, n| async move {
                match state {
                    None => {
                        self.orchestrator
                            .list_payments(account, after.as_ref(), window, n)
                            .await
                    }
                    Some(state) => {
                        self.orchestrator
                            .list_payments_in_state(account, state, after, window, n)
                            .await
                    }
                }
            },
        )
        .await
        .map_err(error::on_resource(&request.parent))?;
        Ok(Response::new(pb::ListPaymentsResponse {
            payments,
            next_page_token: next
                .as_ref()
                .map(convert::encode_page_token)
                .unwrap_or_default(),
        }))
    }

    async fn refund_payment(
        &self,
        request: Request<pb::RefundPaymentRequest>,
    ) -> Result<Response<pb::Payment>, Status> {
        let mut command = convert::refund_payment(request.get_ref().clone())?;
        let caller = auth::authorize(&request, Action::RefundPayment, &command.name.account)?;
        note_payment(&request, &command.name, Some(&command.request_id));
        command.actor = caller.identity().map(str::to_owned);
        command.trace = trace_of(&request);
        route!(self, &command.name.account, request, refund_payment);
        let resource = command.name.to_string();
        let answer = (self.orchestrator.refund_payment_answered(command).await)
            .map_err(error::on_resource(&resource))?;
        Ok(answered(answer))
    }

    async fn get_account(
        &self,
        request: Request<pb::GetAccountRequest>,
    ) -> Result<Response<pb::Account>, Status> {
        let account = parse_account_name(&request.get_ref().name)
            .map_err(|error| invalid_name("name", error))?;
        auth::authorize(&request, Action::GetAccount, &account)?;
        let name = request.into_inner().name;
        let balances =
            (self.orchestrator.get_account(&account).await).map_err(error::on_resource(&name))?;
        Ok(Response::new(convert::account_to_pb(name, &balances)))
    }

    async fn retry_payment(
        &self,
        request: Request<pb::RetryPaymentRequest>,
    ) -> Result<Response<pb::Payment>, Status> {
        let mut command = convert::operator_command(
            &request.get_ref().name,
            request.get_ref().request_id.clone(),
            Ok(crate::actors::OperatorAction::Retry),
        )?;
        let caller = auth::authorize(&request, Action::RetryPayment, &command.name.account)?;
        note_payment(&request, &command.name, Some(&command.request_id));
        command.actor = caller.identity().map(str::to_owned);
        command.trace = trace_of(&request);
        route!(self, &command.name.account, request, retry_payment);
        let resource = command.name.to_string();
        let answer =
            (self.orchestrator.operate(command).await).map_err(error::on_resource(&resource))?;
        Ok(answered(answer))
    }

    async fn fail_payment(
        &self,
        request: Request<pb::FailPaymentRequest>,
    ) -> Result<Response<pb::Payment>, Status> {
        let mut command = convert::operator_command(
            &request.get_ref().name,
            request.get_ref().request_id.clone(),
            convert::fail_reason(request.get_ref().reason.clone()),
        )?;
        let caller = auth::authorize(&request, Action::FailPayment, &command.name.account)?;
        note_payment(&request, &command.name, Some(&command.request_id));
        command.actor = caller.identity().map(str::to_owned);
        command.trace = trace_of(&request);
        route!(self, &command.name.account, request, fail_payment);
        let resource = command.name.to_string();
        let answer =
            (self.orchestrator.operate(command).await).map_err(error::on_resource(&resource))?;
        Ok(answered(answer))
    }

    async fn list_stalled_payments(
        &self,
        request: Request<pb::ListStalledPaymentsRequest>,
    ) -> Result<Response<pb::ListStalledPaymentsResponse>, Status> {
        let caller = auth::caller(&request)?;
        let request = request.into_inner();
        let page_size = convert::page_size(request.page_size)?;
        let position = self
            .page_tokens
            .open(Listing::Stalled, &request.page_token)?;
        let _turn = self.list_turn().await?;
        let (payments, next) = paging::fill(
            position,
            page_size,
            |payment| caller.sees(&payment.account),
            |payment| schema::waiting_position(schema::WaitingList::Stalled, payment),
            |after, n| async move { self.orchestrator.list_stalled(after.as_ref(), n).await },
        )
        .await?;
        Ok(Response::new(pb::ListStalledPaymentsResponse {
            payments,
            next_page_token: next
                .map(|next| self.page_tokens.seal(Listing::Stalled, &next))
                .unwrap_or_default(),
        }))
    }

    type WatchAlertsStream = Pin<Box<dyn Stream<Item = Result<pb::Alert, Status>> + Send>>;

    async fn watch_alerts(
        &self,
        request: Request<pb::WatchAlertsRequest>,
    ) -> Result<Response<Self::WatchAlertsStream>, Status> {
        let caller = auth::caller(&request)?;
        let mut alerts = self.orchestrator.subscribe_alerts();
        let mut peers = self.subscribe_peers();
        let stream = self.spawn_feed(&caller.clone(), |sender| async move {
            let mut missed = 0;
            loop {
                let mut alert = tokio::select! {
                    biased;
                    local = alerts.recv() => match local {
                        Ok(event) => convert::alert_to_pb(&event),
                        // A slow subscriber is told how much it missed, on
                        // the next alert it does get.
                        Err(RecvError::Lagged(count)) => {
                            missed += count as i64;
                            continue;
                        }
                        Err(RecvError::Closed) => return,
                    },
                    peer = next_from_peers(&mut peers) => match peer {
                        Ok(cluster::PeerItem::Alert(alert)) => alert,
                        Ok(_) => continue,
                        Err(RecvError::Lagged(count)) => {
                            missed += count as i64;
                            continue;
                        }
                        Err(RecvError::Closed) => return,
                    },
                };
                if !caller.sees_name(&alert.payment) {
                    continue;
                }
                let missed = std::mem::take(&mut missed);
                alert.missed = if caller.sees_every_account() {
                    missed
                } else {
                    missed.min(1)
                };
                if sender.send(Ok(alert)).await.is_err() {
                    return; // the client went away
                }
            }
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn approve_payment(
        &self,
        request: Request<pb::ApprovePaymentRequest>,
    ) -> Result<Response<pb::Payment>, Status> {
        let mut command = convert::operator_command(
            &request.get_ref().name,
            request.get_ref().request_id.clone(),
            convert::review_action(ReviewVerdict::Approve, request.get_ref().reason.clone()),
        )?;
        let caller = auth::authorize(&request, Action::ApprovePayment, &command.name.account)?;
        note_payment(&request, &command.name, Some(&command.request_id));
        command.actor = caller.identity().map(str::to_owned);
        command.trace = trace_of(&request);
        route!(self, &command.name.account, request, approve_payment);
        let resource = command.name.to_string();
        let answer =
            (self.orchestrator.operate(command).await).map_err(error::on_resource(&resource))?;
        Ok(answered(answer))
    }

    async fn decline_payment(
        &self,
        request: Request<pb::DeclinePaymentRequest>,
    ) -> Result<Response<pb::Payment>, Status> {
        let mut command = convert::operator_command(
            &request.get_ref().name,
            request.get_ref().request_id.clone(),
            convert::review_action(ReviewVerdict::Decline, request.get_ref().reason.clone()),
        )?;
        let caller = auth::authorize(&request, Action::DeclinePayment, &command.name.account)?;
        note_payment(&request, &command.name, Some(&command.request_id));
        command.actor = caller.identity().map(str::to_owned);
        command.trace = trace_of(&request);
        route!(self, &command.name.account, request, decline_payment);
        let resource = command.name.to_string();
        let answer =
            (self.orchestrator.operate(command).await).map_err(error::on_resource(&resource))?;
        Ok(answered(answer))
    }

    async fn list_payment_events(
        &self,
        request: Request<pb::ListPaymentEventsRequest>,
    ) -> Result<Response<pb::ListPaymentEventsResponse>, Status> {
        let name = parse_payment_name(&request.get_ref().parent)
            .map_err(|error| invalid_name("parent", error))?;
        auth::authorize(&request, Action::ListPaymentEvents, &name.account)?;
        note_payment(&request, &name, None);
        // Unset: every event (a payment's are bounded, below the largest
        // page), as before pages existed, so earlier clients miss none.
        let page_size = match request.get_ref().page_size {
            0 => limits::PAGE_SIZE_MAX,
            requested => convert::page_size(requested)?,
        };
        let after = convert::decode_events_token(&request.get_ref().page_token)?;
        let resource = name.to_string();
        let records = (self.orchestrator.payment_events(&name).await)
            .map_err(error::on_resource(&resource))?;
        // One page, oldest first, after the last event of the previous one.
        let mut events = (records.iter())
            .flat_map(|record| record.events.iter().map(move |event| (event, record)))
            .filter(|(event, _)| after.is_none_or(|after| event.seq > after));
        let page: Vec<_> = events.by_ref().take(page_size).collect();
        let next_page_token = match (events.next(), page.last()) {
            (Some(_), Some((last, _))) => convert::encode_events_token(last.seq),
            _ => String::new(),
        };
        Ok(Response::new(pb::ListPaymentEventsResponse {
            events: (page.into_iter())
                .map(|(event, record)| convert::event_to_pb(event, Some(record)))
                .collect(),
            next_page_token,
        }))
    }

    async fn resend_payment_event(
        &self,
        request: Request<pb::ResendPaymentEventRequest>,
    ) -> Result<Response<pb::PaymentEvent>, Status> {
        let (payment, seq) = parse_event_name(&request.get_ref().name)
            .map_err(|error| invalid_name("name", error))?;
        let caller = auth::authorize(&request, Action::ResendPaymentEvent, &payment.account)?;
        note_payment(&request, &payment, None);
        // Its owner's dispatcher delivers it at once.
        let request = route!(self, &payment.account, request, resend_payment_event).into_inner();
        let endpoint = Some(request.endpoint.as_str()).filter(|name| !name.is_empty());
        let request_id = match request.request_id.is_empty() {
            true => None,
            false => Some(
                crate::domain::RequestId::new(request.request_id.clone())
                    .map_err(|error| CommandError::invalid("request_id", error.to_string()))?,
            ),
        };
        let resent = self
            .orchestrator
            .resend_event(
                &request.name,
                endpoint,
                caller.identity(),
                request_id.as_ref(),
            )
            .await
            .map_err(error::on_resource(&request.name))?;
        let record = resent.record;
        let event = record
            .events
            .iter()
            .find(|event| event.seq == seq)
            .ok_or_else(|| CommandError::NotFound(format!("event {}", request.name)))?;
        let mut response = Response::new(convert::event_to_pb(event, Some(&record)));
        if resent.replayed {
            mark_replayed(&mut response);
        }
        Ok(response)
    }

    async fn list_audit_records(
        &self,
        request: Request<pb::ListAuditRecordsRequest>,
    ) -> Result<Response<pb::ListAuditRecordsResponse>, Status> {
        let account = parse_account_name(&request.get_ref().parent)
            .map_err(|error| invalid_name("parent", error))?;
        auth::authorize(&request, Action::ListAuditRecords, &account)?;
        let request = request.into_inner();
        let page_size = convert::page_size(request.page_size)?;
        let from = match &request.start_time {
            Some(time) => convert::time_from_pb("start_time", time)?,
            None => crate::domain::Timestamp::from_unix_millis(0),
        };
        let until = match &request.end_time {
            Some(time) => convert::time_from_pb("end_time", time)?,
            None => self.orchestrator.now().plus_millis(1),
        };
        if until <= from {
            return Err(CommandError::invalid("end_time", "must be after start_time").into());
        }
        let start_after = convert::decode_audit_token(&request.page_token)?;
        let (records, next) = self
            .orchestrator
            .audit_records(&account, from, until, start_after, page_size)
            .await
            .map_err(error::on_resource(&request.parent))?;
        Ok(Response::new(pb::ListAuditRecordsResponse {
            records: records.iter().map(convert::audit_record_to_pb).collect(),
            next_page_token: next
                .as_deref()
                .map(convert::encode_audit_token)
                .unwrap_or_default(),
        }))
    }

    type WatchPaymentEventsStream =
        Pin<Box<dyn Stream<Item = Result<pb::PaymentEvent, Status>> + Send>>;

    async fn watch_payment_events(
        &self,
        request: Request<pb::WatchPaymentEventsRequest>,
    ) -> Result<Response<Self::WatchPaymentEventsStream>, Status> {
        let caller = auth::caller(&request)?;
        let after = request.into_inner().after_event;
        // Subscribe before reading the durable feed, so that nothing
        // committed in between is missed (it may come twice: deduplicated
        // below for what the replay sent).
        let mut live = self.orchestrator.subscribe_events();
        let mut peers = self.subscribe_peers();
        let subscribed_at = self.orchestrator.now();
        let resume = if after.is_empty() {
            None
        } else {
            let (payment, seq) =
                parse_event_name(&after).map_err(|error| invalid_name("after_event", error))?;
            caller.check(Action::WatchPaymentEvents, &payment.account)?;
            let records = self.orchestrator.payment_events(&payment).await?;
            let event = records
                .iter()
                .flat_map(|record| record.events.iter())
                .find(|event| event.seq == seq)
                .ok_or_else(|| CommandError::NotFound(format!("event {after}")))?;
            Some((event.at, payment, seq))
        };
        let overlap = limits::EVENT_REPLAY_OVERLAP.as_millis() as i64;
        let orchestrator = self.orchestrator.clone();
        let stream = self.spawn_feed(&caller.clone(), |sender| async move {
            let mut replayed = std::collections::HashSet::new();
            if let Some((at, payment, seq)) = resume {
                let mut position = FeedPosition::before(at.plus_millis(-overlap));
                loop {
                    let records = match orchestrator
                        .feed_after(Some(&position), limits::EVENT_REPLAY_PAGE)
                        .await
                    {
                        Ok(records) => records,
                        Err(error) => {
                            let _ = sender.send(Err(error.into())).await;
                            return;
                        }
                    };
                    for record in &records {
                        position = FeedPosition::after(record);
                        for event in &record.events {
                            // The client has this payment's events up to `seq`.
                            if event.payment == payment && event.seq <= seq
                                || !caller.sees(&event.payment.account)
                            {
                                continue;
                            }
                            // Only recent ones can also arrive live.
                            if event.at.unix_millis() >= subscribed_at.unix_millis() - overlap {
                                replayed.insert(event.name());
                            }
                            if sender
                                .send(Ok(convert::event_to_pb(event, None)))
                                .await
                                .is_err()
                            {
                                return;
                            }
                        }
                    }
                    if records.len() < limits::EVENT_REPLAY_PAGE {
                        break;
                    }
                }
            }
            loop {
                let lagged = || CommandError::StreamLagged.into();
                let event = tokio::select! {
                    biased;
                    local = live.recv() => match local {
                        Ok(event) => convert::event_to_pb(&event, None),
                        Err(RecvError::Lagged(_)) => {
                            let _ = sender.send(Err(lagged())).await;
                            return;
                        }
                        Err(RecvError::Closed) => return,
                    },
                    peer = next_from_peers(&mut peers) => match peer {
                        Ok(cluster::PeerItem::Event(event)) => event,
                        Ok(cluster::PeerItem::Alert(_)) => continue,
                        // A peer's events were missed: the client resumes
                        // from the durable feed.
                        Ok(cluster::PeerItem::Gap) | Err(RecvError::Lagged(_)) => {
                            let _ = sender.send(Err(lagged())).await;
                            return;
                        }
                        Err(RecvError::Closed) => return,
                    },
                };
                if !replayed.is_empty() && replayed.remove(&event.name) {
                    continue;
                }
                if !caller.sees_name(&event.payment) {
                    continue;
                }
                if sender.send(Ok(event)).await.is_err() {
                    return; // the client went away
                }
            }
        });
        Ok(Response::new(Box::pin(stream)))
    }
}
