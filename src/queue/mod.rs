//! The queue at run time, shared by the worker (jobs) and the dispatcher (deliveries): the loop
//! that claims, runs with heartbeats and finishes ([`runner`]), and the retry decision after a
//! failed attempt ([`retry`]). The queue's state machine itself is in [`crate::store::queue`].

use std::time::Duration;

pub mod retry;
pub mod runner;

/// How a queue's runner claims and runs its entries (the worker's jobs, the dispatcher's
/// deliveries).
#[derive(Debug, Clone)]
pub struct QueueSettings {
    /// Jobs processed at once.
    pub concurrency: usize,
    /// Fallback poll when no wake-up arrives.
    pub poll_interval: Duration,
    /// How long a claim holds a job without a heartbeat; heartbeats come every third of it.
    pub lease: Duration,
    /// Attempts before a transient failure is dead-lettered.
    pub max_attempts: i32,
    /// On shutdown, how long running jobs may take before they are released.
    pub shutdown_grace: Duration,
}
