//! The dashboard's chart: events per minute, stacked by their job's state, as inline SVG drawn on
//! the server (no script, no library). Pure: counts in, markup out.

use maud::{Markup, html};

use crate::store::{MinuteCount, QueueState};

const WIDTH: f64 = 720.0;
const HEIGHT: f64 = 160.0;

/// The series, bottom to top, with their colours (the legend's order too). `None`: no job.
pub const SERIES: [(Option<QueueState>, &str); 6] = [
    (Some(QueueState::Completed), "#2e7d32"),
    (Some(QueueState::Running), "#1565c0"),
    (Some(QueueState::Available), "#90caf9"),
    (Some(QueueState::Retryable), "#f9a825"),
    (Some(QueueState::Discarded), "#c62828"),
    (Some(QueueState::Cancelled), "#9e9e9e"),
];

/// Bars for the `minutes` minutes ending with the one that starts at `last_minute` (seconds since
/// the epoch, a multiple of 60).
pub fn per_minute(counts: &[MinuteCount], last_minute: i64, minutes: i64) -> Markup {
    let first = last_minute - (minutes - 1) * 60;
    let total_at = |minute: i64| -> i64 {
        counts
            .iter()
            .filter(|c| c.minute == minute)
            .map(|c| c.count)
            .sum()
    };
    let peak = (0..minutes)
        .map(|i| total_at(first + i * 60))
        .max()
        .unwrap_or(0)
        .max(1);
    let bar = WIDTH / minutes as f64;
    let scale = (HEIGHT - 14.0) / peak as f64;
    let mut segments = Vec::new();
    for i in 0..minutes {
        let minute = first + i * 60;
        let mut top = HEIGHT;
        for (state, colour) in SERIES {
            let n: i64 = counts
                .iter()
                .filter(|c| c.minute == minute && c.job_state == state)
                .map(|c| c.count)
                .sum();
            if n > 0 {
                let h = n as f64 * scale;
                top -= h;
                segments.push(Segment {
                    x: i as f64 * bar + 0.5,
                    y: top,
                    width: (bar - 1.0).max(0.5),
                    height: h,
                    colour,
                    label: format!("{n} {}", state.map_or("no job", QueueState::as_str)),
                });
            }
        }
    }
    html! {
        svg class="chart" viewBox={"0 0 " (WIDTH) " " (HEIGHT)} role="img"
            aria-label="events received per minute over the last hour, by job state" {
            text x="2" y="11" class="axis" { (peak) "/min" }
            line x1="0" y1=(HEIGHT - 0.5) x2=(WIDTH) y2=(HEIGHT - 0.5) class="base" {}
            @for s in &segments {
                rect x=(format!("{:.1}", s.x)) y=(format!("{:.1}", s.y))
                    width=(format!("{:.1}", s.width)) height=(format!("{:.1}", s.height))
                    fill=(s.colour) {
                    title { (s.label) }
                }
            }
        }
    }
}

struct Segment {
    x: f64,
    y: f64,
    width: f64,
    height: f64,
    colour: &'static str,
    label: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_minute_and_state_with_events_is_one_bar_segment() {
        let counts = [
            MinuteCount {
                minute: 600,
                job_state: Some(QueueState::Completed),
                count: 4,
            },
            MinuteCount {
                minute: 600,
                job_state: Some(QueueState::Discarded),
                count: 1,
            },
            MinuteCount {
                minute: 60,
                job_state: Some(QueueState::Completed),
                count: 2,
            },
        ];

        let svg = per_minute(&counts, 600, 10).into_string();

        assert_eq!(svg.matches("<rect").count(), 3);
        assert!(
            svg.contains("5/min"),
            "the peak minute's total labels the axis"
        );
        assert!(svg.contains("<title>1 discarded</title>"));
        // Minute 0 is before the window (60 .. 600): it draws nothing.
        assert!(
            !per_minute(&counts[2..], 600, 5)
                .into_string()
                .contains("<rect")
        );
    }
}
