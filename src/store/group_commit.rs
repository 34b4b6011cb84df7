//! The group commit both embedded stores share: callers queue their atomic
//! writes to one writer thread, which takes every write waiting (up to
//! [`limits::GROUP_COMMIT_TRANSACTIONS_MAX`]), has the store commit them
//! together (one fsync for the group) and answers each caller with its own
//! write's outcome. Durable throughput is then not capped at one fsync per
//! write.

use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::{mpsc, oneshot};

use super::{validate_write, StoreError, WriteOp};
use crate::limits;

/// One atomic write waiting for the writer, and where its outcome goes.
pub(crate) struct WriteRequest {
    pub(crate) ops: Vec<WriteOp>,
    pub(crate) reply: oneshot::Sender<Result<(), StoreError>>,
}

/// Queues `ops` for the writer and waits for its outcome.
pub(crate) async fn submit(
    writes: &mpsc::Sender<WriteRequest>,
    ops: Vec<WriteOp>,
) -> Result<(), StoreError> {
    validate_write(&ops)?;
    let (reply, done) = oneshot::channel();
    writes
        .send(WriteRequest { ops, reply })
        .await
        .map_err(|_| StoreError::Unavailable("writer stopped".into()))?;
    done.await
        .map_err(|_| StoreError::Unavailable("writer stopped".into()))?
}

/// The writer thread's loop: drains the queue into groups until every
/// sender is gone. `commit` commits a group and gives each write's outcome,
/// in order.
pub(crate) fn run_writer(
    mut queue: mpsc::Receiver<WriteRequest>,
    commits: &AtomicU64,
    mut commit: impl FnMut(&[WriteRequest]) -> Vec<Result<(), StoreError>>,
) {
    while let Some(first) = queue.blocking_recv() {
        let mut group = vec![first];
        while group.len() < limits::GROUP_COMMIT_TRANSACTIONS_MAX {
            match queue.try_recv() {
                Ok(request) => group.push(request),
                Err(_) => break,
            }
        }
        let results = commit(&group);
        commits.fetch_add(1, Ordering::Relaxed);
        for (request, result) in group.into_iter().zip(results) {
            // The caller may have gone away (request cancelled): the write
            // is committed all the same, which is what idempotency is for.
            let _ = request.reply.send(result);
        }
    }
}
