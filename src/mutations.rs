//! Bugs planted on purpose, one at a time, so that the deterministic
//! simulator (`payvisor-sim`) can show it finds them. The switch exists
//! only with the `mutations` feature, which only `payvisor-sim` turns on:
//! in a server built on its own (`cargo build -p payvisor`, the README, the
//! container) `planted` is a constant `false`, and the compiler drops the
//! branches it guards. The switch is per thread: a simulation runs on one
//! thread, so the mutation it plants never reaches another test's thread.

/// A bug the simulator must find.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Mutation {
    /// A refund's write checks nothing its decision read: every version
    /// condition is replaced by the version stored when the write is sent.
    RefundWithoutVersionCondition,
    /// The account item's fencing token is ignored: no epoch fence, no
    /// check that the shard is still held when the write is sent, and the
    /// account item's version condition replaced by the version stored when
    /// the write is sent. A writer whose view of the account is stale (an
    /// owner that lost it, or a retry after a write that timed out and
    /// landed) writes over it.
    StaleOwnerNotFenced,
    /// A payment goes to its bank before the write that records it.
    OutboxSentBeforeCommit,
    /// A bank callback is recorded under a fresh condition: a duplicate is
    /// decided again instead of being recognised.
    CallbackWithoutInboxDedupe,
    /// A page is delivered and its delivery never recorded.
    PageSentWithoutRecording,
    /// A node keeps serving its shards past its self-demotion deadline.
    NoSelfDemotion,
}

impl Mutation {
    pub const ALL: [Mutation; 6] = [
        Mutation::RefundWithoutVersionCondition,
        Mutation::StaleOwnerNotFenced,
        Mutation::OutboxSentBeforeCommit,
        Mutation::CallbackWithoutInboxDedupe,
        Mutation::PageSentWithoutRecording,
        Mutation::NoSelfDemotion,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Mutation::RefundWithoutVersionCondition => "refund-without-version-condition",
            Mutation::StaleOwnerNotFenced => "stale-owner-not-fenced",
            Mutation::OutboxSentBeforeCommit => "outbox-sent-before-commit",
            Mutation::CallbackWithoutInboxDedupe => "callback-without-inbox-dedupe",
            Mutation::PageSentWithoutRecording => "page-sent-without-recording",
            Mutation::NoSelfDemotion => "no-self-demotion",
        }
    }

    pub fn named(name: &str) -> Option<Mutation> {
        Mutation::ALL
            .into_iter()
            .find(|mutation| mutation.name() == name)
    }
}

#[cfg(feature = "mutations")]
thread_local! {
    static PLANTED: std::cell::Cell<Option<Mutation>> = const { std::cell::Cell::new(None) };
}

/// Plants `mutation` (or none) in this thread.
#[cfg(feature = "mutations")]
pub fn plant(mutation: Option<Mutation>) {
    PLANTED.with(|planted| planted.set(mutation));
}

/// Whether `mutation` is planted in this thread (never, without the
/// `mutations` feature).
#[inline]
pub fn planted(mutation: Mutation) -> bool {
    #[cfg(feature = "mutations")]
    {
        PLANTED.with(|planted| planted.get() == Some(mutation))
    }
    #[cfg(not(feature = "mutations"))]
    {
        let _ = mutation;
        false
    }
}
