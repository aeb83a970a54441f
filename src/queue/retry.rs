//! Pure: after a failed attempt, retry (and when) or dead-letter, by each queue's
//! [`RetryPolicy`]: the worker keeps Gemini's download backoff, sinks get a day-long schedule.

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

/// How a queue retries a failed attempt, as data: how many attempts, and how long to wait
/// before each next one.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    /// Attempts in all, the first included; a transient failure of the last is dead-lettered.
    pub max_attempts: i32,
    pub backoff: Backoff,
}

/// The wait before the next attempt, when the failure named none (`Retry-After`).
#[derive(Debug, Clone, PartialEq)]
pub enum Backoff {
    /// Gemini's downloads: full jitter under an exponential ceiling (see [`retry`]), capped at
    /// 10 minutes, because a resource Gemini made may expire while we wait.
    Exponential,
    /// An application's endpoint: the `n`-th retry waits `schedule[n - 1]` (the last entry
    /// repeats), each jittered by ±[`SCHEDULE_JITTER`], so a sink that was down for a day still
    /// gets its outcomes, and many deliveries that failed together do not return together.
    Schedule(Vec<Duration>),
}

/// The jitter of a [`Backoff::Schedule`] step, as a share of the step.
pub const SCHEDULE_JITTER: f64 = 0.1;

/// The sinks' default schedule: Standard Webhooks senders' own (5 s, 5 min, 30 min, 2 h, 5 h,
/// 10 h, 10 h after the first attempt): eight attempts over about 27.6 hours, so an application
/// that is down for a day misses nothing.
pub const SINK_SCHEDULE_SECS: [u64; 7] = [5, 300, 1_800, 7_200, 18_000, 36_000, 36_000];

/// The longest a sink's `Retry-After` is honoured: the default schedule's longest step.
pub const SINK_RETRY_AFTER_CAP: Duration = Duration::from_secs(36_000);

impl RetryPolicy {
    /// The worker's: Gemini's download backoff.
    pub fn gemini(max_attempts: i32) -> RetryPolicy {
        RetryPolicy {
            max_attempts: max_attempts.max(1),
            backoff: Backoff::Exponential,
        }
    }

    /// The sinks' default: [`SINK_SCHEDULE_SECS`], one attempt more than it has steps.
    pub fn sink_default() -> RetryPolicy {
        RetryPolicy::schedule(SINK_SCHEDULE_SECS.len() as i32 + 1, &SINK_SCHEDULE_SECS)
    }

    pub fn schedule(max_attempts: i32, steps_secs: &[u64]) -> RetryPolicy {
        RetryPolicy {
            max_attempts: max_attempts.max(1),
            backoff: Backoff::Schedule(
                steps_secs.iter().map(|&s| Duration::from_secs(s)).collect(),
            ),
        }
    }

    /// What to do after attempt `attempt` (1-based) failed with `kind`.
    pub fn decide<R: Rng + ?Sized>(
        &self,
        attempt: i32,
        kind: &FailureKind,
        rng: &mut R,
    ) -> Decision {
        let limit = match kind {
            FailureKind::Transient { .. } => self.max_attempts,
            FailureKind::NotFound => NOT_FOUND_ATTEMPTS.min(self.max_attempts),
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
        let after = match &self.backoff {
            Backoff::Exponential => retry::next_delay(attempt, retry_after, rng),
            Backoff::Schedule(steps) => match retry_after {
                Some(wait) => wait.clamp(retry::MIN_RETRY_AFTER, SINK_RETRY_AFTER_CAP),
                None => jittered(step(steps, attempt), rng),
            },
        };
        Decision::Retry { after }
    }

    /// The least time between the first attempt and the last (every wait at its shortest):
    /// how long an endpoint may be down and still get the entry.
    pub fn shortest_span(&self) -> Duration {
        let retries = u32::try_from(self.max_attempts - 1).unwrap_or(0);
        match &self.backoff {
            Backoff::Exponential => Duration::ZERO,
            Backoff::Schedule(steps) => (1..=retries)
                .map(|n| step(steps, n).mul_f64(1.0 - SCHEDULE_JITTER))
                .sum(),
        }
    }
}

/// The schedule's wait after retry `n` (1-based); the last step repeats, an empty schedule
/// retries at once.
fn step(steps: &[Duration], n: u32) -> Duration {
    let index = (n as usize)
        .saturating_sub(1)
        .min(steps.len().saturating_sub(1));
    steps.get(index).copied().unwrap_or(Duration::ZERO)
}

fn jittered<R: Rng + ?Sized>(step: Duration, rng: &mut R) -> Duration {
    step.mul_f64(rng.gen_range((1.0 - SCHEDULE_JITTER)..=(1.0 + SCHEDULE_JITTER)))
}

/// `attempt` is the attempt that just failed (1-based); Gemini's backoff
/// ([`RetryPolicy::gemini`]).
pub fn decide<R: Rng + ?Sized>(
    attempt: i32,
    max_attempts: i32,
    kind: &FailureKind,
    rng: &mut R,
) -> Decision {
    RetryPolicy::gemini(max_attempts).decide(attempt, kind, rng)
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

    #[test]
    fn the_sinks_default_schedule_outlasts_a_day_down_even_at_its_shortest() {
        let policy = RetryPolicy::sink_default();
        assert_eq!(policy.max_attempts, 8);
        assert!(
            policy.shortest_span() >= Duration::from_secs(24 * 3600),
            "{:?}",
            policy.shortest_span()
        );
    }

    #[test]
    fn a_schedule_step_is_jittered_within_ten_percent_and_its_last_step_repeats() {
        let policy = RetryPolicy::schedule(20, &[5, 300]);
        let kind = FailureKind::Transient { retry_after: None };
        let mut rng = StdRng::seed_from_u64(5);
        for (attempt, step) in [(1, 5.0), (2, 300.0), (3, 300.0), (19, 300.0)] {
            for _ in 0..200 {
                let Decision::Retry { after } = policy.decide(attempt, &kind, &mut rng) else {
                    panic!("attempt {attempt} should retry");
                };
                let secs = after.as_secs_f64();
                assert!(
                    (step * 0.9..=step * 1.1).contains(&secs),
                    "attempt {attempt}: {secs}"
                );
            }
        }
        assert_eq!(policy.decide(20, &kind, &mut rng), Decision::Discard);
    }

    #[test]
    fn a_sinks_retry_after_is_honoured_but_capped() {
        let policy = RetryPolicy::sink_default();
        let mut rng = StdRng::seed_from_u64(6);
        let wait = |secs| FailureKind::Transient {
            retry_after: Some(Duration::from_secs(secs)),
        };
        assert_eq!(
            policy.decide(1, &wait(90), &mut rng),
            Decision::Retry {
                after: Duration::from_secs(90)
            }
        );
        assert_eq!(
            policy.decide(1, &wait(7 * 24 * 3600), &mut rng),
            Decision::Retry {
                after: SINK_RETRY_AFTER_CAP
            }
        );
    }
}
