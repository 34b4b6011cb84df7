//! The gRPC surface (`payvisor.v1.PaymentService`): the only module that
//! sees protobuf types. It validates requests into domain commands, calls the
//! [`Orchestrator`], and maps results back.

pub mod convert;
pub mod error;

use std::pin::Pin;

use tokio::sync::broadcast::error::RecvError;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use crate::actors::{CommandError, Orchestrator};
use crate::domain::events::parse_event_name;
use crate::domain::payment::{PaymentState, ReviewVerdict};
use crate::domain::{parse_account_name, parse_payment_name};
use crate::limits;
use crate::shutdown::Shutdown;
use crate::store::schema::FeedPosition;

/// Generated protobuf and gRPC code for `payvisor.v1`.
pub mod pb {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("payvisor.v1");

    /// The encoded descriptor set, served by server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/payvisor_descriptor.bin"));
}

use pb::payment_service_server::PaymentService;

/// The PaymentService implementation.
#[derive(Clone)]
pub struct PaymentApi {
    orchestrator: Orchestrator,
    /// Ends the live streams (`WatchAlerts`, `WatchPaymentEvents`) when the
    /// node shuts down, so a subscriber does not hold up the drain.
    shutdown: Shutdown,
}

impl PaymentApi {
    pub fn new(orchestrator: Orchestrator, shutdown: Shutdown) -> PaymentApi {
        PaymentApi {
            orchestrator,
            shutdown,
        }
    }

    /// Runs the task that fills a live stream through `sender` until it
    /// ends or the node shuts down; then the stream ends with UNAVAILABLE,
    /// which tells the client to subscribe again (elsewhere, or here after
    /// the restart; `WatchPaymentEvents` resumes after its last event).
    fn spawn_feed<T, F>(
        &self,
        sender: tokio::sync::mpsc::Sender<Result<T, Status>>,
        feed: impl FnOnce(tokio::sync::mpsc::Sender<Result<T, Status>>) -> F,
    ) where
        T: Send + 'static,
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        let feed = feed(sender.clone());
        let shutdown = self.shutdown.signalled();
        tokio::spawn(async move {
            tokio::select! {
                () = feed => {}
                () = shutdown => {
                    let stopping = CommandError::Unavailable("the server is shutting down; subscribe again".into());
                    // A full stream just ends: the client reads no error,
                    // only the end, and subscribes again all the same.
                    let _ = sender.try_send(Err(stopping.into()));
                }
            }
        });
    }
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
        let command = convert::create_payment(request.into_inner())?;
        let payment = self.orchestrator.create_payment(command).await?;
        Ok(Response::new(convert::payment_to_pb(&payment)))
    }

    async fn get_payment(
        &self,
        request: Request<pb::GetPaymentRequest>,
    ) -> Result<Response<pb::Payment>, Status> {
        let name = crate::domain::parse_payment_name(&request.get_ref().name)
            .map_err(|error| invalid_name("name", error))?;
        let payment = self.orchestrator.get_payment(&name).await?;
        Ok(Response::new(convert::payment_to_pb(&payment)))
    }

    async fn list_payments(
        &self,
        request: Request<pb::ListPaymentsRequest>,
    ) -> Result<Response<pb::ListPaymentsResponse>, Status> {
        let request = request.into_inner();
        let page_size = convert::page_size(request.page_size)?;
        let state = convert::state_from_pb(request.state)?;
        if request.parent == "accounts/-" {
            // Across accounts only the review queue has an index.
            if state != Some(PaymentState::InReview) {
                return Err(CommandError::invalid(
                    "state",
                    "listing across accounts (accounts/-) needs state IN_REVIEW",
                )
                .into());
            }
            let position = convert::decode_review_token(&request.page_token)?;
            let (payments, next) = self
                .orchestrator
                .list_in_review(position.as_ref(), page_size)
                .await?;
            return Ok(Response::new(pb::ListPaymentsResponse {
                payments: payments.iter().map(convert::payment_to_pb).collect(),
                next_page_token: next
                    .as_ref()
                    .map(convert::encode_review_token)
                    .unwrap_or_default(),
            }));
        }
        let account =
            parse_account_name(&request.parent).map_err(|error| invalid_name("parent", error))?;
        let start_after = convert::decode_page_token(&request.page_token)?;
        let (payments, next) = match state {
            None => {
                self.orchestrator
                    .list_payments(&account, start_after.as_ref(), page_size)
                    .await?
            }
            Some(state) => {
                self.orchestrator
                    .list_payments_in_state(&account, state, start_after, page_size)
                    .await?
            }
        };
        Ok(Response::new(pb::ListPaymentsResponse {
            payments: payments.iter().map(convert::payment_to_pb).collect(),
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
        let command = convert::refund_payment(request.into_inner())?;
        let payment = self.orchestrator.refund_payment(command).await?;
        Ok(Response::new(convert::payment_to_pb(&payment)))
    }

    async fn get_account(
        &self,
        request: Request<pb::GetAccountRequest>,
    ) -> Result<Response<pb::Account>, Status> {
        let name = request.into_inner().name;
        let account = parse_account_name(&name).map_err(|error| invalid_name("name", error))?;
        let balances = self.orchestrator.get_account(&account).await?;
        Ok(Response::new(convert::account_to_pb(name, &balances)))
    }

    async fn retry_payment(
        &self,
        request: Request<pb::RetryPaymentRequest>,
    ) -> Result<Response<pb::Payment>, Status> {
        let request = request.into_inner();
        let command = convert::operator_command(
            &request.name,
            request.request_id,
            Ok(crate::actors::OperatorAction::Retry),
        )?;
        let payment = self.orchestrator.operate(command).await?;
        Ok(Response::new(convert::payment_to_pb(&payment)))
    }

    async fn fail_payment(
        &self,
        request: Request<pb::FailPaymentRequest>,
    ) -> Result<Response<pb::Payment>, Status> {
        let request = request.into_inner();
        let command = convert::operator_command(
            &request.name,
            request.request_id,
            convert::fail_reason(request.reason),
        )?;
        let payment = self.orchestrator.operate(command).await?;
        Ok(Response::new(convert::payment_to_pb(&payment)))
    }

    async fn list_stalled_payments(
        &self,
        request: Request<pb::ListStalledPaymentsRequest>,
    ) -> Result<Response<pb::ListStalledPaymentsResponse>, Status> {
        let request = request.into_inner();
        let page_size = convert::page_size(request.page_size)?;
        let position = convert::decode_stalled_token(&request.page_token)?;
        let (payments, next) = self
            .orchestrator
            .list_stalled(position.as_ref(), page_size)
            .await?;
        Ok(Response::new(pb::ListStalledPaymentsResponse {
            payments: payments.iter().map(convert::payment_to_pb).collect(),
            next_page_token: next
                .as_ref()
                .map(convert::encode_stalled_token)
                .unwrap_or_default(),
        }))
    }

    type WatchAlertsStream = Pin<Box<dyn Stream<Item = Result<pb::Alert, Status>> + Send>>;

    async fn watch_alerts(
        &self,
        _request: Request<pb::WatchAlertsRequest>,
    ) -> Result<Response<Self::WatchAlertsStream>, Status> {
        let mut alerts = self.orchestrator.subscribe_alerts();
        let (sender, receiver) = tokio::sync::mpsc::channel(limits::ALERT_STREAM_BUFFER);
        self.spawn_feed(sender, |sender| async move {
            let mut missed = 0;
            loop {
                let alert = match alerts.recv().await {
                    Ok(event) => {
                        let mut alert = convert::alert_to_pb(&event);
                        alert.missed = std::mem::take(&mut missed);
                        alert
                    }
                    // A slow subscriber is told how much it missed, on the
                    // next alert it does get.
                    Err(RecvError::Lagged(count)) => {
                        missed += count as i64;
                        continue;
                    }
                    Err(RecvError::Closed) => return,
                };
                if sender.send(Ok(alert)).await.is_err() {
                    return; // the client went away
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(receiver),
        )))
    }

    async fn approve_payment(
        &self,
        request: Request<pb::ApprovePaymentRequest>,
    ) -> Result<Response<pb::Payment>, Status> {
        let request = request.into_inner();
        let command = convert::operator_command(
            &request.name,
            request.request_id,
            convert::review_action(ReviewVerdict::Approve, request.reason),
        )?;
        let payment = self.orchestrator.operate(command).await?;
        Ok(Response::new(convert::payment_to_pb(&payment)))
    }

    async fn decline_payment(
        &self,
        request: Request<pb::DeclinePaymentRequest>,
    ) -> Result<Response<pb::Payment>, Status> {
        let request = request.into_inner();
        let command = convert::operator_command(
            &request.name,
            request.request_id,
            convert::review_action(ReviewVerdict::Decline, request.reason),
        )?;
        let payment = self.orchestrator.operate(command).await?;
        Ok(Response::new(convert::payment_to_pb(&payment)))
    }

    async fn list_payment_events(
        &self,
        request: Request<pb::ListPaymentEventsRequest>,
    ) -> Result<Response<pb::ListPaymentEventsResponse>, Status> {
        let name = parse_payment_name(&request.get_ref().parent)
            .map_err(|error| invalid_name("parent", error))?;
        let records = self.orchestrator.payment_events(&name).await?;
        Ok(Response::new(pb::ListPaymentEventsResponse {
            events: records
                .iter()
                .flat_map(|record| {
                    record
                        .events
                        .iter()
                        .map(move |event| convert::event_to_pb(event, Some(record)))
                })
                .collect(),
        }))
    }

    async fn resend_payment_event(
        &self,
        request: Request<pb::ResendPaymentEventRequest>,
    ) -> Result<Response<pb::PaymentEvent>, Status> {
        let request = request.into_inner();
        let (_, seq) =
            parse_event_name(&request.name).map_err(|error| invalid_name("name", error))?;
        let endpoint = Some(request.endpoint.as_str()).filter(|name| !name.is_empty());
        let record = self
            .orchestrator
            .resend_event(&request.name, endpoint)
            .await?;
        let event = record
            .events
            .iter()
            .find(|event| event.seq == seq)
            .ok_or_else(|| CommandError::NotFound(format!("event {}", request.name)))?;
        Ok(Response::new(convert::event_to_pb(event, Some(&record))))
    }

    type WatchPaymentEventsStream =
        Pin<Box<dyn Stream<Item = Result<pb::PaymentEvent, Status>> + Send>>;

    async fn watch_payment_events(
        &self,
        request: Request<pb::WatchPaymentEventsRequest>,
    ) -> Result<Response<Self::WatchPaymentEventsStream>, Status> {
        let after = request.into_inner().after_event;
        // Subscribe before reading the durable feed, so that nothing
        // committed in between is missed (it may come twice: deduplicated
        // below for what the replay sent).
        let mut live = self.orchestrator.subscribe_events();
        let subscribed_at = self.orchestrator.now();
        let resume = if after.is_empty() {
            None
        } else {
            let (payment, seq) =
                parse_event_name(&after).map_err(|error| invalid_name("after_event", error))?;
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
        let (sender, receiver) = tokio::sync::mpsc::channel(limits::ALERT_STREAM_BUFFER);
        self.spawn_feed(sender, |sender| async move {
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
                            if event.payment == payment && event.seq <= seq {
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
                let event = match live.recv().await {
                    Ok(event) => event,
                    Err(RecvError::Lagged(_)) => {
                        let _ = sender.send(Err(CommandError::StreamLagged.into())).await;
                        return;
                    }
                    Err(RecvError::Closed) => return,
                };
                if !replayed.is_empty() && replayed.remove(&event.name()) {
                    continue;
                }
                if sender
                    .send(Ok(convert::event_to_pb(&event, None)))
                    .await
                    .is_err()
                {
                    return; // the client went away
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(receiver),
        )))
    }
}
