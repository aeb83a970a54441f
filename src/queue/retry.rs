//! Pure: after a failed attempt, retry (and when) or dead-letter.

use std::time::Duration;

use rand::Rng;

use crate::gemini::retry;

/// How many attempts a 404 gets. A resource named in a webhook can lag behind the webhook for a
/// moment, so one 404 is not proof; three spread over the backoff are.
pub const NOT_FOUND_ATTEMPTS: i32 = 3;

/// What kind of failure an attempt ended in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FailureKind {
    /// 5xx, 429, timeouts, broken connections, a results store hiccup.
    Transient { retry_after: Option<Duration> },
    /// 404: retried a few times, then dead-lettered.
    NotFound,
    /// Nothing a retry can fix: 400/401/403, a pointer we must not follow, no API key.
    Permanent,
}

/// The decision after a failed attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Retry { after: Duration },
    Discard,
}

/// `attempt` is the attempt that just failed (1-based).
pub fn decide<R: Rng + ?Sized>(
    attempt: i32,
    max_attempts: i32,
    kind: &FailureKind,
    rng: &mut R,
) -> Decision {
    let limit = match kind {
        FailureKind::Transient { .. } => max_attempts,
        FailureKind::NotFound => NOT_FOUND_ATTEMPTS.min(max_attempts),
        FailureKind::Permanent => return Decision::Discard,
    };
    if attempt >= limit {
        return Decision::Discard;
    }
    let retry_after = match kind {
        FailureKind::Transient { retry_after } => *retry_after,
        _ => None,
    };
    let attempt = u32::try_from(attempt.max(1)).unwrap_or(1);
    Decision::Retry {
        after: retry::next_delay(attempt, retry_after, rng),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    #[test]
    fn transient_failures_retry_until_the_last_attempt_then_discard() {
        let mut rng = StdRng::seed_from_u64(1);
        let transient = FailureKind::Transient { retry_after: None };
        assert!(matches!(
            decide(1, 12, &transient, &mut rng),
            Decision::Retry { .. }
        ));
        assert!(matches!(
            decide(11, 12, &transient, &mut rng),
            Decision::Retry { .. }
        ));
        assert_eq!(decide(12, 12, &transient, &mut rng), Decision::Discard);
    }

    #[test]
    fn a_retry_after_is_honoured() {
        let mut rng = StdRng::seed_from_u64(2);
        let kind = FailureKind::Transient {
            retry_after: Some(Duration::from_secs(120)),
        };
        assert_eq!(
            decide(1, 12, &kind, &mut rng),
            Decision::Retry {
                after: Duration::from_secs(120)
            }
        );
    }

    #[test]
    fn not_found_gets_three_attempts_and_permanent_failures_none() {
        let mut rng = StdRng::seed_from_u64(3);
        assert!(matches!(
            decide(2, 12, &FailureKind::NotFound, &mut rng),
            Decision::Retry { .. }
        ));
        assert_eq!(
            decide(3, 12, &FailureKind::NotFound, &mut rng),
            Decision::Discard
        );
        assert_eq!(
            decide(1, 12, &FailureKind::Permanent, &mut rng),
            Decision::Discard
        );
    }

    #[test]
    fn the_backoff_stays_under_its_ceiling() {
        let mut rng = StdRng::seed_from_u64(4);
        let kind = FailureKind::Transient { retry_after: None };
        for attempt in 1..12 {
            let Decision::Retry { after } = decide(attempt, 12, &kind, &mut rng) else {
                panic!("attempt {attempt} should retry");
            };
            assert!(
                after <= retry::ceiling(attempt as u32),
                "attempt {attempt}: {after:?}"
            );
        }
    }
}
