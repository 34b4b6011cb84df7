//! One shutdown signal for every task of a node, and the node's wait for
//! them (mini-redis's `Shutdown`).
//!
//! [`ShutdownTrigger::fire`] starts the shutdown; every [`Shutdown`] (a cheap
//! clone handed to each listener and background loop) sees it at once and
//! its task finishes what it is doing and returns. [`Tasks`] holds the
//! node's background tasks and waits for all of them, bounded, once the
//! signal fired: a task still running at the bound is aborted and named in
//! the log.
//!
//! **Invariant:** a dropped trigger counts as fired, so a node whose start
//! fails half-way does not leave the tasks it already started running.

use std::future::Future;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinSet;

/// Starts the shutdown of everything subscribed to it. Dropping it starts
/// it too.
#[derive(Debug)]
pub struct ShutdownTrigger {
    /// `true` once fired; receivers are the [`Shutdown`] handles.
    fired: watch::Sender<bool>,
}

/// A task's view of the shutdown signal; cheap to clone.
#[derive(Clone, Debug)]
pub struct Shutdown {
    fired: watch::Receiver<bool>,
}

/// A new signal, not fired, and a first handle to it.
pub fn channel() -> (ShutdownTrigger, Shutdown) {
    let (fired, receiver) = watch::channel(false);
    (ShutdownTrigger { fired }, Shutdown { fired: receiver })
}

impl ShutdownTrigger {
    /// Signals every [`Shutdown`] handle, present and future.
    pub fn fire(&self) {
        self.fired.send_replace(true);
    }

    /// Another handle to this signal.
    pub fn subscribe(&self) -> Shutdown {
        Shutdown {
            fired: self.fired.subscribe(),
        }
    }
}

impl Shutdown {
    /// Whether the shutdown has started.
    pub fn is_signalled(&self) -> bool {
        *self.fired.borrow() || self.fired.has_changed().is_err()
    }

    /// Completes once the shutdown has started (at once if it already has).
    /// Owned, so that a loop can make a fresh one per turn in a `select!`
    /// without missing a signal sent between turns.
    pub fn signalled(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut fired = self.fired.clone();
        async move {
            // An error means the trigger was dropped: that counts as fired.
            let _ = fired.wait_for(|fired| *fired).await;
        }
    }
}

/// A node's background tasks, joined on shutdown.
#[derive(Default)]
pub struct Tasks {
    /// Each task returns its name, so the ones still running at the bound
    /// can be named.
    running: JoinSet<&'static str>,
    /// Names of the tasks not yet joined.
    names: Vec<&'static str>,
}

impl Tasks {
    /// Runs `task` (which should return soon after its [`Shutdown`] fires).
    /// `name` labels it in the log.
    pub fn spawn(&mut self, name: &'static str, task: impl Future<Output = ()> + Send + 'static) {
        self.names.push(name);
        self.running.spawn(async move {
            task.await;
            name
        });
    }

    /// The names of the tasks not yet joined (what a shutdown waits for).
    pub fn names(&self) -> &[&'static str] {
        &self.names
    }

    /// Waits until every task has returned, at most `bound`; aborts those
    /// still running then and returns their names (empty: all returned).
    pub async fn join(mut self, bound: Duration) -> Vec<&'static str> {
        let all_returned = async {
            while let Some(joined) = self.running.join_next().await {
                match joined {
                    Ok(name) => {
                        if let Some(at) = self.names.iter().position(|n| *n == name) {
                            self.names.swap_remove(at);
                        }
                    }
                    // The task's own panic message went to the log already;
                    // its name is lost with it, so it stays listed.
                    Err(error) => tracing::error!(%error, "a background task failed"),
                }
            }
        };
        if tokio::time::timeout(bound, all_returned).await.is_ok() {
            return Vec::new();
        }
        self.running.abort_all();
        self.names
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn every_handle_sees_the_signal_once_fired_and_later_ones_at_once() {
        let (trigger, shutdown) = channel();
        let other = trigger.subscribe();
        assert!(!shutdown.is_signalled());
        let waiting = tokio::spawn(other.signalled());
        trigger.fire();
        waiting.await.unwrap();
        assert!(shutdown.is_signalled());
        shutdown.signalled().await;
        shutdown.clone().signalled().await;
    }

    #[tokio::test]
    async fn a_dropped_trigger_counts_as_fired() {
        let (trigger, shutdown) = channel();
        drop(trigger);
        assert!(shutdown.is_signalled());
        shutdown.signalled().await;
    }

    /// The bound is short and real (tokio's paused clock needs its
    /// `test-util` feature, which would rebuild every crate on tokio for
    /// the tests); nothing here depends on how long anything took.
    #[tokio::test]
    async fn tasks_are_joined_and_the_ones_past_the_bound_named() {
        let (trigger, shutdown) = channel();
        let mut tasks = Tasks::default();
        let listening = shutdown.clone();
        tasks.spawn("returns on the signal", async move {
            listening.signalled().await;
        });
        tasks.spawn("ignores the signal", std::future::pending());
        trigger.fire();
        let still_running = tasks.join(Duration::from_millis(50)).await;
        assert_eq!(still_running, vec!["ignores the signal"]);

        let mut tasks = Tasks::default();
        tasks.spawn("returns on the signal", async move {
            shutdown.signalled().await;
        });
        assert!(tasks.join(Duration::from_secs(60)).await.is_empty());
    }
}
