//! `payvisor.v1.ClusterService`: the cluster's status for operators, and
//! what nodes ask of each other: bank callbacks handed to the owner, and
//! the live events and pages each node decides (every node follows its
//! peers', so `WatchPaymentEvents` and `WatchAlerts` on any node see the
//! whole cluster's).

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;

use tokio::sync::broadcast;
use tokio::sync::broadcast::error::RecvError;
use tokio_stream::{Stream, StreamExt};
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

use super::{convert, pb};
use crate::actors::{CommandError, Orchestrator};
use crate::callbacks::CallbackEndpoint;
use crate::cluster::Cluster;
use crate::domain::ownership::NodeId;
use crate::limits;
use crate::shutdown::{Shutdown, Tasks};
use pb::cluster_service_client::ClusterServiceClient;
use pb::cluster_service_server::ClusterService;

/// What a node heard from its peers' live feeds.
#[derive(Clone, Debug)]
pub enum PeerItem {
    Event(pb::PaymentEvent),
    Alert(pb::Alert),
    /// A peer's feed broke: what it decided meanwhile was not seen live
    /// (`WatchPaymentEvents` subscribers resume from the durable feed).
    Gap,
}

/// The peers' live feeds, merged (empty on a node alone on its store).
pub type PeerFeed = broadcast::Sender<PeerItem>;

#[derive(Clone)]
pub struct ClusterApi {
    orchestrator: Orchestrator,
    cluster: Option<Arc<Cluster>>,
    /// Set when the node takes bank callbacks (banks over HTTP).
    callbacks: Option<Arc<CallbackEndpoint>>,
    shutdown: Shutdown,
    node: String,
    /// With an access list: `WatchNodeEvents` ends when the node key it
    /// was opened with is withdrawn.
    authenticator: Option<Arc<crate::auth::Authenticator>>,
}

impl ClusterApi {
    pub fn new(
        orchestrator: Orchestrator,
        cluster: Option<Arc<Cluster>>,
        callbacks: Option<Arc<CallbackEndpoint>>,
        shutdown: Shutdown,
    ) -> ClusterApi {
        let node = cluster
            .as_ref()
            .map(|cluster| cluster.me.to_string())
            .unwrap_or_default();
        ClusterApi {
            orchestrator,
            cluster,
            callbacks,
            shutdown,
            node,
            authenticator: None,
        }
    }

    /// Checking open streams' callers against `authenticator`'s list.
    pub fn with_authenticator(
        mut self,
        authenticator: Arc<crate::auth::Authenticator>,
    ) -> ClusterApi {
        self.authenticator = Some(authenticator);
        self
    }
}

#[tonic::async_trait]
impl ClusterService for ClusterApi {
    async fn get_cluster_status(
        &self,
        _request: Request<pb::GetClusterStatusRequest>,
    ) -> Result<Response<pb::ClusterStatus>, Status> {
        let Some(cluster) = &self.cluster else {
            return Ok(Response::new(pb::ClusterStatus {
                node: self.node.clone(),
                clustered: false,
                ..Default::default()
            }));
        };
        let picture = cluster.picture();
        let mut owned: HashMap<&NodeId, u32> = HashMap::new();
        for owner in picture
            .leases
            .iter()
            .filter_map(|(owner, _)| owner.as_ref())
        {
            *owned.entry(owner).or_default() += 1;
        }
        Ok(Response::new(pb::ClusterStatus {
            node: self.node.clone(),
            clustered: true,
            shard_count: u32::from(picture.shards),
            nodes: picture
                .nodes
                .iter()
                .map(|seen| pb::ClusterNode {
                    id: seen.record.id.to_string(),
                    address: seen.record.address.clone(),
                    start_time: Some(convert::timestamp(seen.record.started_at)),
                    heartbeat_age_ms: seen.unchanged_for_ms.map_or(-1, |ms| ms as i64),
                    alive: seen.alive,
                    leaving: seen.record.leaving,
                    shards_owned: owned.get(&seen.record.id).copied().unwrap_or(0),
                })
                .collect(),
            shards: picture
                .leases
                .iter()
                .enumerate()
                .map(|(shard, (owner, epoch))| pb::ShardLease {
                    shard: shard as u32,
                    owner: owner.as_ref().map(NodeId::to_string).unwrap_or_default(),
                    epoch: *epoch,
                })
                .collect(),
        }))
    }

    async fn hand_bank_callback(
        &self,
        request: Request<pb::HandBankCallbackRequest>,
    ) -> Result<Response<pb::HandBankCallbackResponse>, Status> {
        let Some(callbacks) = &self.callbacks else {
            return Err(CommandError::invalid("bank", "this node takes no bank callbacks").into());
        };
        // The hand-off's own span (the metered layer's) is the callback's.
        let trace = super::trace_of(&request);
        let request = request.into_inner();
        if request.body.len() > limits::BANK_CALLBACK_BYTES_MAX {
            return Err(CommandError::invalid("body", "larger than a bank callback may be").into());
        }
        let signature = Some(request.signature.as_str()).filter(|text| !text.is_empty());
        // Verified again here, as if the bank had called this node: the
        // hand-off trusts nothing the handing node says.
        let (status, body) = callbacks
            .accept(
                &request.bank,
                signature,
                &request.body,
                true,
                trace.as_ref(),
            )
            .await;
        Ok(Response::new(pb::HandBankCallbackResponse {
            http_status: u32::from(status.as_u16()),
            body,
        }))
    }

    type WatchNodeEventsStream = Pin<Box<dyn Stream<Item = Result<pb::NodeEvent, Status>> + Send>>;

    async fn watch_node_events(
        &self,
        request: Request<pb::WatchNodeEventsRequest>,
    ) -> Result<Response<Self::WatchNodeEventsStream>, Status> {
        let caller = super::auth::caller(&request)?;
        let mut events = self.orchestrator.subscribe_events();
        let mut alerts = self.orchestrator.subscribe_alerts();
        let (sender, receiver) = tokio::sync::mpsc::channel(limits::ALERT_STREAM_BUFFER);
        let (ended, ending) = tokio::sync::oneshot::channel();
        let stopping = self.shutdown.clone();
        let withdrawn = super::auth::withdrawn(self.authenticator.clone(), caller);
        tokio::spawn(async move {
            tokio::pin!(withdrawn);
            loop {
                let kind = tokio::select! {
                    biased;
                    () = stopping.signalled() => return,
                    error = &mut withdrawn => {
                        let _ = ended.send(Status::from(error));
                        return;
                    }
                    event = events.recv() => match event {
                        Ok(event) => pb::node_event::Kind::PaymentEvent(convert::event_to_pb(&event, None)),
                        // The follower cannot be told what it missed: its
                        // feed ends, and it reports a gap.
                        Err(_) => return,
                    },
                    alert = alerts.recv() => match alert {
                        Ok(alert) => pb::node_event::Kind::Alert(convert::alert_to_pb(&alert)),
                        Err(RecvError::Lagged(_)) => continue,
                        Err(RecvError::Closed) => return,
                    },
                };
                let item = pb::NodeEvent { kind: Some(kind) };
                if sender.send(Ok(item)).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(super::Ending::new(
            receiver, ending,
        ))))
    }
}

/// [`hand_bank_callback`] as the callback endpoint's `HandOff`.
pub fn hand_off(
    cluster: Arc<Cluster>,
    channel: Channel,
    bank: String,
    signature: Option<String>,
    body: Vec<u8>,
) -> crate::store::BoxFuture<'static, Result<(u16, String), CommandError>> {
    Box::pin(async move {
        hand_bank_callback(&cluster, channel, &bank, signature.as_deref(), &body).await
    })
}

/// Hands a verified-here bank callback to the node that owns its account;
/// the owner verifies it again. Returns what the bank is to be answered.
pub async fn hand_bank_callback(
    cluster: &Cluster,
    channel: Channel,
    bank: &str,
    signature: Option<&str>,
    body: &[u8],
) -> Result<(u16, String), CommandError> {
    let mut client = ClusterServiceClient::new(channel);
    let mut request = Request::new(pb::HandBankCallbackRequest {
        bank: bank.to_owned(),
        body: body.to_vec(),
        signature: signature.unwrap_or_default().to_owned(),
    });
    request.set_timeout(limits::CLUSTER_FORWARD_TIMEOUT);
    cluster.present_credential(request.metadata_mut());
    match client.hand_bank_callback(request).await {
        Ok(answer) => {
            let answer = answer.into_inner();
            Ok((answer.http_status as u16, answer.body))
        }
        Err(status) => Err(CommandError::Moving(format!(
            "the account's owner did not take the callback ({:?}); the bank will retry",
            status.code()
        ))),
    }
}

/// Follows every live peer's feed (`WatchNodeEvents`) into `feed` while
/// the node runs: a follower per peer, started when the peer appears in the
/// cluster's picture, ended when it leaves it; a broken feed is reported as
/// a [`PeerItem::Gap`] and followed again.
pub fn follow_peers(cluster: Arc<Cluster>, feed: PeerFeed, shutdown: &Shutdown, tasks: &mut Tasks) {
    let stopping = shutdown.clone();
    tasks.spawn("peer feeds", async move {
        let mut followers: HashMap<NodeId, tokio::task::JoinHandle<()>> = HashMap::new();
        let mut picture = cluster.picture_changes();
        loop {
            let peers: Vec<NodeId> = cluster
                .picture()
                .nodes
                .iter()
                .filter(|seen| seen.alive && seen.record.id != cluster.me)
                .map(|seen| seen.record.id.clone())
                .take(limits::CLUSTER_NODES_MAX)
                .collect();
            followers.retain(|node, follower| {
                let keep = peers.contains(node) && !follower.is_finished();
                if !keep {
                    follower.abort();
                }
                keep
            });
            for peer in peers {
                if followers.contains_key(&peer) {
                    continue;
                }
                let follower = follow(
                    Arc::clone(&cluster),
                    peer.clone(),
                    feed.clone(),
                    stopping.clone(),
                );
                followers.insert(peer, tokio::spawn(follower));
            }
            tokio::select! {
                biased;
                () = stopping.signalled() => break,
                changed = picture.changed() => if changed.is_err() { break },
            }
        }
        for follower in followers.into_values() {
            follower.abort();
        }
    });
}

/// Follows one peer's feed until it ends; then reports a gap (the picture's
/// next change starts a new follower if the peer is still there).
async fn follow(cluster: Arc<Cluster>, peer: NodeId, feed: PeerFeed, shutdown: Shutdown) {
    let Ok(Some(channel)) = cluster.peer(&peer) else {
        return;
    };
    let mut client = ClusterServiceClient::new(channel)
        .max_decoding_message_size(limits::GRPC_MESSAGE_BYTES_MAX);
    let mut request = Request::new(pb::WatchNodeEventsRequest {});
    cluster.present_credential(request.metadata_mut());
    let stream = tokio::select! {
        biased;
        () = shutdown.signalled() => return,
        answer = client.watch_node_events(request) => answer,
    };
    let Ok(stream) = stream else {
        tokio::time::sleep(limits::CLUSTER_RETRY_DELAY).await;
        return;
    };
    let mut stream = stream.into_inner();
    loop {
        let item = tokio::select! {
            biased;
            () = shutdown.signalled() => return,
            item = stream.next() => item,
        };
        let kind = match item {
            Some(Ok(pb::NodeEvent { kind: Some(kind) })) => kind,
            Some(Ok(_)) => continue,
            Some(Err(_)) | None => break,
        };
        let _ = feed.send(match kind {
            pb::node_event::Kind::PaymentEvent(event) => PeerItem::Event(event),
            pb::node_event::Kind::Alert(alert) => PeerItem::Alert(alert),
        });
    }
    tracing::debug!(%peer, "peer feed ended");
    let _ = feed.send(PeerItem::Gap);
}
