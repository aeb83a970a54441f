//! When to try a failed job again: exponential backoff with full jitter, and `Retry-After`.
//!
//! Pure: the random source and the current time are parameters, so tests are deterministic.
//!
//! Full jitter (a uniform delay between zero and the exponential ceiling) rather than a fixed
//! schedule: after an outage, every job that failed at once would otherwise come back at once,
//! and Gemini would see the same burst again.

use std::time::Duration;

use rand::Rng;

/// The ceiling of the first retry's delay.
pub const BASE: Duration = Duration::from_secs(2);
/// No delay is ever longer: Gemini deletes generated videos after two days and expires batches,
/// so waiting much longer than this between attempts risks the resource itself.
pub const CAP: Duration = Duration::from_secs(10 * 60);
/// The shortest delay when the server names one: `Retry-After: 0` should not become a busy loop.
pub const MIN_RETRY_AFTER: Duration = Duration::from_secs(1);

/// The ceiling of the delay before attempt `attempt + 1`, after `attempt` failed (1-based):
/// `BASE * 2^(attempt - 1)`, capped at [`CAP`]. Attempt 0 counts as 1.
pub fn ceiling(attempt: u32) -> Duration {
    let doublings = attempt.saturating_sub(1);
    // 2 s * 2^9 already exceeds the cap; stopping there also keeps the shift from overflowing.
    if doublings >= 9 {
        return CAP;
    }
    (BASE * (1u32 << doublings)).min(CAP)
}

/// A delay drawn uniformly from `[0, ceiling(attempt)]`, to the millisecond.
pub fn delay<R: Rng + ?Sized>(attempt: u32, rng: &mut R) -> Duration {
    let ceiling_ms = u64::try_from(ceiling(attempt).as_millis()).unwrap_or(u64::MAX);
    Duration::from_millis(rng.gen_range(0..=ceiling_ms))
}

/// The delay before the next attempt: the server's `Retry-After` when it gave one (at least
/// [`MIN_RETRY_AFTER`], at most [`CAP`]), else [`delay`].
pub fn next_delay<R: Rng + ?Sized>(
    attempt: u32,
    retry_after: Option<Duration>,
    rng: &mut R,
) -> Duration {
    match retry_after {
        Some(wait) => wait.max(MIN_RETRY_AFTER).min(CAP),
        None => delay(attempt, rng),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outbound::parse_retry_after;
    use rand::SeedableRng;
    use rand::rngs::StdRng;
    use rand::rngs::mock::StepRng;

    #[test]
    fn the_ceiling_doubles_from_two_seconds_up_to_ten_minutes() {
        let ceilings: Vec<u64> = (1..=12).map(|a| ceiling(a).as_secs()).collect();
        assert_eq!(
            ceilings,
            [2, 4, 8, 16, 32, 64, 128, 256, 512, 600, 600, 600]
        );
        assert_eq!(ceiling(0), BASE);
        assert_eq!(ceiling(u32::MAX), CAP);
    }

    #[test]
    fn delays_stay_within_zero_and_the_ceiling() {
        let mut rng = StdRng::seed_from_u64(7);
        for attempt in 1..=20 {
            for _ in 0..100 {
                assert!(delay(attempt, &mut rng) <= ceiling(attempt));
            }
        }
    }

    #[test]
    fn the_delay_scales_the_ceiling_by_the_uniform_sample() {
        // StepRng yields a fixed word: 0 draws the bottom of the range, half of u64 the middle.
        assert_eq!(delay(3, &mut StepRng::new(0, 0)), Duration::ZERO);
        let middle = delay(3, &mut StepRng::new(u64::MAX / 2, 0));
        assert!(
            middle.abs_diff(ceiling(3) / 2) <= Duration::from_millis(1),
            "{middle:?}"
        );
    }

    #[test]
    fn the_same_seed_gives_the_same_delays() {
        let draw = |seed| {
            let mut rng = StdRng::seed_from_u64(seed);
            (1..=5).map(|a| delay(a, &mut rng)).collect::<Vec<_>>()
        };
        assert_eq!(draw(42), draw(42));
    }

    #[test]
    fn retry_after_wins_over_backoff_within_one_second_and_the_cap() {
        let mut rng = StepRng::new(0, 0);
        assert_eq!(
            next_delay(1, Some(Duration::from_secs(30)), &mut rng),
            Duration::from_secs(30)
        );
        assert_eq!(
            next_delay(1, Some(Duration::ZERO), &mut rng),
            MIN_RETRY_AFTER
        );
        assert_eq!(
            next_delay(1, Some(Duration::from_secs(86_400)), &mut rng),
            CAP
        );
        assert_eq!(next_delay(4, None, &mut rng), Duration::ZERO);
    }

    #[test]
    fn retry_after_reads_seconds_and_http_dates() {
        let now = httpdate::parse_http_date("Wed, 21 Oct 2015 07:28:00 GMT").unwrap();
        assert_eq!(
            parse_retry_after("120", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(parse_retry_after(" 0 ", now), Some(Duration::ZERO));
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:29:30 GMT", now),
            Some(Duration::from_secs(90))
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:00:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(
            parse_retry_after("99999999999999999999999", now),
            Some(Duration::from_secs(u64::MAX))
        );
        for junk in ["", "-5", "1.5", "soon", "Wed, 21 Oct 2015"] {
            assert_eq!(parse_retry_after(junk, now), None, "{junk}");
        }
    }
}
