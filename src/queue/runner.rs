//! The claim loop shared by the job worker and the hand-off dispatcher: rescue expired leases,
//! claim as many items as there are free slots, run each in its own task, sleep until a
//! wake-up, a free slot or the poll interval; on shutdown stop claiming, drain within the grace
//! period, then hard-stop what is left (each queue releases its items).

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::FutureExt as _;
use tokio::sync::{Notify, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::QueueSettings as WorkerSettings;

/// The longest a runner with a backlog waits for more of its slots to free before claiming.
const CLAIM_GATHER: Duration = Duration::from_millis(2);

/// A durable queue that a [`run`] loop can drive.
pub trait Queue: Clone + Send + Sync + 'static {
    type Item: Send + Sync + 'static;

    /// For logs: "worker", "dispatcher".
    fn name(&self) -> &'static str;
    /// Items whose lease expired become runnable again.
    fn rescue(&self) -> impl Future<Output = ()> + Send;
    /// Claims up to `limit` runnable items (errors are logged and give none).
    fn claim(&self, limit: usize) -> impl Future<Output = Vec<Self::Item>> + Send;
    /// Runs one item to its end; on `hard_stop`, gives it back instead.
    fn execute(
        &self,
        item: &Self::Item,
        hard_stop: CancellationToken,
    ) -> impl Future<Output = ()> + Send;
    /// `execute` panicked: record the attempt as failed now (logged with the item's fields),
    /// instead of leaving the item to wait for its lease to expire.
    fn after_panic(&self, item: &Self::Item, panic: String) -> impl Future<Output = ()> + Send;
    /// Resolves when new items may be runnable.
    fn wakeups(&self) -> Arc<Notify>;
}

/// Runs `queue` until `shutdown` is cancelled, then drains as described above.
pub async fn run<Q: Queue>(queue: Q, settings: &WorkerSettings, shutdown: CancellationToken) {
    let wakeups = queue.wakeups();
    let slots = Arc::new(Semaphore::new(settings.concurrency.max(1)));
    let hard_stop = CancellationToken::new();
    let mut running = JoinSet::new();
    // The rescuer's horizon is the lease itself (heartbeats come every lease/3), so a live item
    // is never rescued; checking once per poll is plenty.
    let rescue_every = settings.poll_interval.max(Duration::from_secs(1));
    let mut last_rescue: Option<Instant> = None;
    // While a backlog lasts, one claim per freed slot would cost a transaction (an fsync on
    // SQLite) per item; gathering until half the slots are free, for at most CLAIM_GATHER,
    // makes each claim fill several slots and costs the backlog at most that long a pause.
    let refill_at = (settings.concurrency / 2).max(1);
    let mut backlog = false;
    tracing::info!(
        concurrency = settings.concurrency,
        "{} started",
        queue.name()
    );

    while !shutdown.is_cancelled() {
        if last_rescue.is_none_or(|at| at.elapsed() >= rescue_every) {
            queue.rescue().await;
            last_rescue = Some(Instant::now());
        }
        if backlog && slots.available_permits() < refill_at {
            let gathered = async {
                while slots.available_permits() < refill_at && running.join_next().await.is_some() {
                }
            };
            let _ = tokio::time::timeout(CLAIM_GATHER, gathered).await;
        }
        let free = slots.available_permits();
        let mut more_waiting = false;
        if free > 0 {
            let items = queue.claim(free).await;
            more_waiting = items.len() == free;
            backlog = more_waiting;
            for item in items {
                let Ok(slot) = slots.clone().try_acquire_owned() else {
                    break; // cannot happen: we claimed no more than were free
                };
                let queue = queue.clone();
                let hard_stop = hard_stop.clone();
                running.spawn(async move {
                    execute_catching_panics(&queue, &item, hard_stop).await;
                    drop(slot);
                });
            }
        }
        if more_waiting && slots.available_permits() > 0 {
            continue;
        }
        tokio::select! {
            () = shutdown.cancelled() => break,
            () = wakeups.notified() => {}
            () = tokio::time::sleep(settings.poll_interval) => {}
            Some(_) = running.join_next(), if !running.is_empty() => {}
        }
    }

    tracing::info!(
        running = running.len(),
        "{} stopping: no new claims",
        queue.name()
    );
    let drained = tokio::time::timeout(settings.shutdown_grace, drain(&mut running)).await;
    if drained.is_err() {
        tracing::warn!(
            running = running.len(),
            "grace period over: releasing what still runs"
        );
        hard_stop.cancel();
        drain(&mut running).await;
    }
    tracing::info!("{} stopped", queue.name());
}

/// One deterministic pass, the step tests drive: claims every item runnable now, then runs
/// them all; returns how many ran. A retry that one of these attempts schedules waits for the
/// next call, even when its jittered delay is near zero.
pub async fn run_until_idle<Q: Queue>(queue: &Q, concurrency: usize) -> usize {
    queue.rescue().await;
    let mut claimed = Vec::new();
    loop {
        let items = queue.claim(concurrency.max(1)).await;
        if items.is_empty() {
            break;
        }
        claimed.extend(items);
    }
    let count = claimed.len();
    let never = CancellationToken::new();
    futures::future::join_all(
        claimed
            .iter()
            .map(|item| execute_catching_panics(queue, item, never.clone())),
    )
    .await;
    count
}

/// Runs the item; a panic in it becomes a failed attempt through [`Queue::after_panic`].
async fn execute_catching_panics<Q: Queue>(
    queue: &Q,
    item: &Q::Item,
    hard_stop: CancellationToken,
) {
    let attempt = AssertUnwindSafe(queue.execute(item, hard_stop))
        .catch_unwind()
        .await;
    if let Err(panic) = attempt {
        queue.after_panic(item, panic_message(panic.as_ref())).await;
    }
}

/// The text a panic was raised with, when it was a string (as `panic!` and `expect` make).
pub fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    let text = panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned());
    match text {
        Some(text) => format!("the attempt panicked: {text}"),
        None => "the attempt panicked".to_owned(),
    }
}

async fn drain(running: &mut JoinSet<()>) {
    while running.join_next().await.is_some() {}
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    /// An in-memory queue: the loop's contract with its queue, without a database.
    #[derive(Clone, Default)]
    struct Fake {
        runnable: Arc<Mutex<Vec<u32>>>,
        done: Arc<Mutex<Vec<u32>>>,
        panicked: Arc<Mutex<Vec<(u32, String)>>>,
        wakeups: Arc<Notify>,
    }

    impl Queue for Fake {
        type Item = u32;

        fn name(&self) -> &'static str {
            "fake"
        }

        async fn rescue(&self) {}

        async fn claim(&self, limit: usize) -> Vec<u32> {
            let mut runnable = self.runnable.lock().unwrap();
            let take = limit.min(runnable.len());
            runnable.drain(..take).collect()
        }

        async fn execute(&self, item: &u32, _hard_stop: CancellationToken) {
            tokio::task::yield_now().await;
            if *item % 2 == 0 {
                panic!("item {item} is even");
            }
            self.done.lock().unwrap().push(*item);
        }

        async fn after_panic(&self, item: &u32, panic: String) {
            self.panicked.lock().unwrap().push((*item, panic));
        }

        fn wakeups(&self) -> Arc<Notify> {
            self.wakeups.clone()
        }
    }

    #[tokio::test]
    async fn a_panicking_attempt_is_reported_with_its_item_and_the_loop_goes_on() {
        let queue = Fake::default();
        queue.runnable.lock().unwrap().extend(1..=6);
        let settings = WorkerSettings {
            concurrency: 2,
            poll_interval: Duration::from_millis(10),
            lease: Duration::from_secs(30),
            max_attempts: 3,
            shutdown_grace: Duration::from_secs(1),
        };
        let stop = CancellationToken::new();
        let running = tokio::spawn({
            let queue = queue.clone();
            let stop = stop.clone();
            async move { run(queue, &settings, stop).await }
        });
        for _ in 0..200 {
            if queue.done.lock().unwrap().len() + queue.panicked.lock().unwrap().len() == 6 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        stop.cancel();
        running.await.unwrap();

        let mut done = queue.done.lock().unwrap().clone();
        done.sort();
        assert_eq!(done, [1, 3, 5], "the slots of panicked attempts were freed");
        let mut panicked = queue.panicked.lock().unwrap().clone();
        panicked.sort();
        assert_eq!(
            panicked,
            [2, 4, 6].map(|n| (n, format!("the attempt panicked: item {n} is even")))
        );
    }
}
