//! An account's inbox: the commands its actor may fold into one atomic
//! write — creates and bank outcomes, the bulk of the traffic. The
//! directory pushes them and rings the actor with a counted `Drain` through
//! its mailbox; a drain takes everything queued, so "every message
//! received" (the passivation check) still implies "every command taken".
//! A leaf below both the directory and the account actor.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use ractor::RpcReplyPort;

use super::{Answered, CommandError, CreatePayment};
use crate::domain::payment::BankEvent;

/// Where the answer to a command on a payment goes.
pub type Reply = RpcReplyPort<Result<Answered, CommandError>>;

/// The queue shared by the directory (which pushes) and the actor (which
/// drains).
pub type Inbox = Arc<Mutex<VecDeque<Batched>>>;

/// A command waiting in an account's [`Inbox`].
pub enum Batched {
    Create(CreatePayment, Reply),
    Bank(BankEvent),
}
