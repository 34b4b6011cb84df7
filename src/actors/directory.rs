//! Which account actor is running, spawning one on first use, and letting an
//! idle one stop without losing a message.
//!
//! **Passivation without loss.** Every message to an account actor is sent
//! while holding the directory shard's lock, and counted (`sent`). The actor
//! counts what it has received. An idle actor asks to passivate with its
//! count; the directory agrees only if the counts match, which under the
//! lock means no message is in flight to it, and removes the entry in the
//! same critical section. A later message spawns a fresh actor, which
//! re-hydrates from the store.
//!
//! In a cluster, calls reach the directory only for accounts this node owns
//! (the gRPC layer forwards the others); when a shard moves away, its
//! accounts' actors are retired.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use ractor::{ActorId, ActorRef, MessagingErr};

use super::account::{AccountActor, AccountArgs, AccountMsg, Passivation};
use super::inbox::{Batched, Inbox};
use super::{CommandError, Shared};
use crate::domain::AccountId;
use crate::metrics::QueueDepth;

/// Shards of the directory: fewer lock collisions between accounts.
const SHARDS: usize = 32;

struct Entry {
    actor: ActorRef<AccountMsg>,
    /// Messages sent to this actor through the directory.
    sent: u64,
    /// Commands the actor takes several at a time (see [`Inbox`]).
    inbox: Inbox,
    /// Messages the actor has received (it publishes the count).
    received: Arc<AtomicU64>,
}

pub struct Directory {
    shards: Vec<Mutex<HashMap<AccountId, Entry>>>,
    hasher: std::collections::hash_map::RandomState,
    closed: std::sync::atomic::AtomicBool,
}

impl Default for Directory {
    fn default() -> Self {
        Directory {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: Default::default(),
            closed: Default::default(),
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poison| poison.into_inner())
}

impl Directory {
    fn shard(&self, account: &AccountId) -> std::sync::MutexGuard<'_, HashMap<AccountId, Entry>> {
        let index = (self.hasher.hash_one(account) as usize) % SHARDS;
        self.shards[index]
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    /// Sends `message` to the account's actor, spawning it if needed.
    pub fn send(
        self: &Arc<Self>,
        shared: &Arc<Shared>,
        account: &AccountId,
        message: AccountMsg,
    ) -> Result<(), CommandError> {
        self.deliver(shared, account, message, None)
    }

    /// Queues a command in the account's inbox and rings its actor.
    pub fn send_batched(
        self: &Arc<Self>,
        shared: &Arc<Shared>,
        account: &AccountId,
        command: Batched,
    ) -> Result<(), CommandError> {
        self.deliver(shared, account, AccountMsg::Drain, Some(command))
    }

    fn deliver(
        self: &Arc<Self>,
        shared: &Arc<Shared>,
        account: &AccountId,
        message: AccountMsg,
        command: Option<Batched>,
    ) -> Result<(), CommandError> {
        if self.closed.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(CommandError::Unavailable(
                "payvisor is shutting down".into(),
            ));
        }
        let mut message = message;
        let mut command = command;
        let mut shard = self.shard(account);
        // A stopped actor whose entry is still here refuses the message; the
        // entry is replaced and the message sent to the new actor. Twice is
        // enough: a fresh actor accepts messages until it stops itself.
        let mut carried = Vec::new();
        for _ in 0..2 {
            let entry = match shard.get_mut(account) {
                Some(entry) => entry,
                None => {
                    let inbox = Inbox::default();
                    let received = Arc::new(AtomicU64::new(0));
                    let args = AccountArgs {
                        account: account.clone(),
                        shared: Arc::clone(shared),
                        inbox: Arc::clone(&inbox),
                        passivation: Arc::clone(self) as Arc<dyn Passivation>,
                        received_gauge: Arc::clone(&received),
                    };
                    let (actor, _) = ractor::ActorRuntime::spawn_instant(None, AccountActor, args)
                        .map_err(|error| {
                            CommandError::Internal(format!("spawning account actor: {error}"))
                        })?;
                    shard.entry(account.clone()).or_insert(Entry {
                        actor,
                        sent: 0,
                        inbox,
                        received,
                    })
                }
            };
            let pushed = {
                let mut inbox = lock(&entry.inbox);
                inbox.extend(carried.drain(..));
                command
                    .take()
                    .map(|command| inbox.push_back(command))
                    .is_some()
            };
            match entry.actor.cast(message) {
                Ok(()) => {
                    entry.sent += 1;
                    return Ok(());
                }
                Err(MessagingErr::SendErr(returned)) => {
                    // The actor stopped (it failed): what waits in its inbox
                    // goes to its successor.
                    let stranded = shard.remove(account).map(|entry| entry.inbox);
                    message = returned;
                    if let Some(stranded) = stranded {
                        let mut stranded = lock(&stranded);
                        if pushed {
                            // Ours, pushed last above: pushed again with the
                            // retry.
                            command = stranded.pop_back();
                        }
                        carried.extend(stranded.drain(..));
                    }
                }
                Err(error) => {
                    if pushed {
                        // Refused: the command must not run later either.
                        lock(&entry.inbox).pop_back();
                    }
                    return Err(CommandError::Internal(format!("account actor: {error}")));
                }
            }
        }
        Err(CommandError::Unavailable(format!(
            "account {account} actor keeps stopping"
        )))
    }

    /// Refuses further messages and returns every running actor.
    pub fn close(&self) -> Vec<ActorRef<AccountMsg>> {
        self.closed.store(true, std::sync::atomic::Ordering::SeqCst);
        self.shards
            .iter()
            .flat_map(|shard| {
                let shard = shard.lock().unwrap_or_else(|poison| poison.into_inner());
                shard
                    .values()
                    .map(|entry| entry.actor.clone())
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    /// Removes the entries of the accounts `retire` picks and returns their
    /// actors (a later message for such an account spawns a fresh actor).
    pub fn retire(&self, retire: impl Fn(&AccountId) -> bool) -> Vec<ActorRef<AccountMsg>> {
        let mut retired: Vec<(AccountId, ActorRef<AccountMsg>)> = self
            .shards
            .iter()
            .flat_map(|shard| {
                let mut shard = lock(shard);
                let picked: Vec<AccountId> = shard
                    .keys()
                    .filter(|account| retire(account))
                    .cloned()
                    .collect();
                picked
                    .into_iter()
                    .filter_map(|account| {
                        let entry = shard.remove(&account)?;
                        Some((account, entry.actor))
                    })
                    .collect::<Vec<_>>()
            })
            .collect();
        // In account order, not the maps' (their hasher is seeded per
        // process, and picks the shard too): a simulated run repeats from
        // its seed.
        retired.sort_by(|a, b| a.0.cmp(&b.0));
        retired.into_iter().map(|(_, actor)| actor).collect()
    }

    /// What waits in the actors' queues now (one pass over the shards,
    /// each locked briefly: a scrape's cost grows with the live actors).
    pub fn queue_depth(&self) -> QueueDepth {
        let mut depth = QueueDepth::default();
        for shard in &self.shards {
            for entry in lock(shard).values() {
                let messages = entry
                    .sent
                    .saturating_sub(entry.received.load(Ordering::Relaxed));
                let commands = lock(&entry.inbox).len() as u64;
                depth.mailbox_messages += messages;
                depth.mailbox_messages_max = depth.mailbox_messages_max.max(messages);
                depth.inbox_commands += commands;
                depth.inbox_commands_max = depth.inbox_commands_max.max(commands);
            }
        }
        depth
    }

    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|shard| {
                shard
                    .lock()
                    .unwrap_or_else(|poison| poison.into_inner())
                    .len()
            })
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Passivation for Directory {
    /// Removes the actor's entry if every message sent to it was received.
    fn try_passivate(&self, account: &AccountId, actor: ActorId, received: u64) -> bool {
        let mut shard = self.shard(account);
        match shard.get(account) {
            Some(entry) if entry.actor.get_id() == actor && entry.sent == received => {
                shard.remove(account);
                true
            }
            _ => false,
        }
    }
}
