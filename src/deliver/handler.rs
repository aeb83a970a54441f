//! An embedded Rust sink: the user's own code, run in the worker with the same retries,
//! backoff and dead letter as the HTTP and NATS sinks.
//!
//! [`Handler`] returns a boxed future instead of using `async fn` in the trait, because sinks
//! are kept as `Arc<dyn Handler>` and an `async fn` in a trait is not object safe. Closures
//! work too, through the blanket impl:
//!
//! ```
//! use std::sync::Arc;
//! use gemhook::deliver::{Handler, HandlerError, Outcome};
//!
//! let handler: Arc<dyn Handler> = Arc::new(|outcome: &Outcome| {
//!     // The future may not borrow the outcome: take what it needs first.
//!     let resource = outcome.resource_id.clone();
//!     async move {
//!         match resource {
//!             Some(_) => Ok(()),
//!             None => Err(HandlerError::discard("no resource id")),
//!         }
//!     }
//! });
//! # let _ = handler;
//! ```

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use super::outcome::Outcome;

/// A boxed, sendable future: what [`Handler::handle`] returns.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// User code that receives outcomes. Called once per (outcome, handler sink) until it returns
/// `Ok`, [`HandlerError::Discard`], or runs out of attempts; so it must be idempotent (the
/// outcome's `webhook_id` is a good key).
pub trait Handler: Send + Sync + 'static {
    fn handle<'a>(&'a self, outcome: &'a Outcome) -> BoxFuture<'a, Result<(), HandlerError>>;
}

/// How a handler failed, and what the delivery queue should do about it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandlerError {
    /// Try again later: after `after` when given, else after the queue's own backoff.
    #[error("{reason}")]
    Retry {
        reason: String,
        after: Option<Duration>,
    },
    /// Give up on this outcome (dead letter); retrying cannot help.
    #[error("{reason}")]
    Discard { reason: String },
}

impl HandlerError {
    pub fn retry(reason: impl Into<String>) -> HandlerError {
        HandlerError::Retry {
            reason: reason.into(),
            after: None,
        }
    }

    pub fn retry_after(reason: impl Into<String>, after: Duration) -> HandlerError {
        HandlerError::Retry {
            reason: reason.into(),
            after: Some(after),
        }
    }

    pub fn discard(reason: impl Into<String>) -> HandlerError {
        HandlerError::Discard {
            reason: reason.into(),
        }
    }
}

/// Any `Fn(&Outcome) -> impl Future` is a handler. The future is `'static`: a closure's return
/// type cannot borrow its argument, so it clones what it needs from the outcome.
impl<F, Fut> Handler for F
where
    F: Fn(&Outcome) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), HandlerError>> + Send + 'static,
{
    fn handle<'a>(&'a self, outcome: &'a Outcome) -> BoxFuture<'a, Result<(), HandlerError>> {
        Box::pin(self(outcome))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deliver::outcome::tests::sample;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A handler as a user would write it: a struct holding its own state.
    struct Counter {
        seen: AtomicUsize,
    }

    impl Handler for Counter {
        fn handle<'a>(&'a self, outcome: &'a Outcome) -> BoxFuture<'a, Result<(), HandlerError>> {
            Box::pin(async move {
                // Borrowing the outcome across an await is fine for a struct handler.
                tokio::task::yield_now().await;
                if outcome.event_type.starts_with("batch.") {
                    self.seen.fetch_add(1, Ordering::SeqCst);
                    Ok(())
                } else {
                    Err(HandlerError::discard("not a batch"))
                }
            })
        }
    }

    #[tokio::test]
    async fn a_struct_handler_borrows_the_outcome_and_its_own_state() {
        let counter = Arc::new(Counter {
            seen: AtomicUsize::new(0),
        });
        let handler: Arc<dyn Handler> = counter.clone();

        handler.handle(&sample()).await.unwrap();

        assert_eq!(counter.seen.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_closure_is_a_handler_and_can_ask_for_a_retry() {
        let handler: Arc<dyn Handler> = Arc::new(|outcome: &Outcome| {
            let id = outcome.webhook_id.clone();
            async move { Err(HandlerError::retry_after(id, Duration::from_secs(5))) }
        });

        let error = handler.handle(&sample()).await.unwrap_err();

        assert_eq!(
            error,
            HandlerError::Retry {
                reason: "msg_2abc".into(),
                after: Some(Duration::from_secs(5)),
            }
        );
    }
}
