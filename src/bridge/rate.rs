//! A topic's message rate: messages received in the last second (what `input.rate` carries,
//! so a stateless policy can limit rates).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Arrival times kept at most; at a higher rate `input.rate` reads as this.
pub const MAX_TRACKED: usize = 100_000;

const WINDOW: Duration = Duration::from_secs(1);

/// Arrival times within the last second.
#[derive(Debug, Default)]
pub struct Rate {
    times: VecDeque<Instant>,
}

impl Rate {
    /// Counts a message arriving at `now`; returns the messages of the last second, this one
    /// included.
    pub fn tick(&mut self, now: Instant) -> usize {
        while let Some(t) = self.times.front() {
            if now.saturating_duration_since(*t) >= WINDOW || self.times.len() >= MAX_TRACKED {
                self.times.pop_front();
            } else {
                break;
            }
        }
        self.times.push_back(now);
        self.times.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_the_last_second() {
        let mut r = Rate::default();
        let t0 = Instant::now();
        for i in 0..20 {
            assert_eq!(r.tick(t0 + Duration::from_millis(i * 10)), i as usize + 1);
        }
        // 1.1 s after the first: those older than a second are gone.
        assert_eq!(r.tick(t0 + Duration::from_millis(1100)), 10);
        assert_eq!(r.tick(t0 + Duration::from_secs(5)), 1);
    }
}
