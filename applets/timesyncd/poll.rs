//! The poll interval: how long to wait between requests to a server. It
//! follows the seed's rules (back to the minimum on a resync or a large
//! offset, down on a spike or a poor offset, up on a good one) with "good"
//! and "poor" measured against the servers' jitter instead of a fixed 0.2 s,
//! so the interval only grows while the clock stays within its noise.

/// Offsets beyond this mean the clock is not in hand: poll at the minimum.
pub const LARGE_OFFSET: f64 = 0.2;
/// Below this the jitter of a path is not measurable; treat it as this much.
pub const NOISE_FLOOR: f64 = 50e-6;
/// Consecutive good updates before the interval doubles.
const GOOD_STREAK: u32 = 4;

#[derive(Clone, Debug)]
pub struct PollInterval {
    min: f64,
    max: f64,
    current: f64,
    resync: bool,
    good_streak: u32,
}

impl PollInterval {
    pub fn new(min: f64, max: f64) -> PollInterval {
        PollInterval {
            min,
            max: max.max(min),
            current: min,
            resync: true,
            good_streak: 0,
        }
    }

    pub fn current(&self) -> f64 {
        self.current
    }

    pub fn min(&self) -> f64 {
        self.min
    }

    pub fn max(&self) -> f64 {
        self.max
    }

    /// The clock jumped or was stepped, or we (re)started: poll at the
    /// minimum, and accept the next sample whatever it looks like.
    pub fn resync(&mut self) {
        self.resync = true;
        self.current = self.min;
        self.good_streak = 0;
    }

    pub fn resyncing(&self) -> bool {
        self.resync
    }

    /// Adapts to the offset of the latest update, the current jitter, and
    /// whether the spike detector flagged the sample.
    pub fn update(&mut self, offset: f64, jitter: f64, spike: bool) {
        if self.resync {
            self.current = self.min;
            self.resync = false;
            self.good_streak = 0;
            return;
        }
        if !spike && offset.abs() > LARGE_OFFSET {
            self.current = self.min;
            self.good_streak = 0;
            return;
        }
        let noise = jitter.max(NOISE_FLOOR);
        if spike || offset.abs() > 8.0 * noise {
            self.current = (self.current / 2.0).max(self.min);
            self.good_streak = 0;
            return;
        }
        if offset.abs() < 3.0 * noise {
            self.good_streak += 1;
            if self.good_streak >= GOOD_STREAK {
                self.current = (self.current * 2.0).min(self.max);
                self.good_streak = 0;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_at_the_minimum_and_grows_while_offsets_stay_small() {
        let mut p = PollInterval::new(32.0, 2048.0);
        assert_eq!(p.current(), 32.0);
        p.update(0.05, 0.0, false); // the resync sample
        assert_eq!(p.current(), 32.0);
        let mut seen = vec![];
        for _ in 0..40 {
            p.update(10e-6, 20e-6, false);
            seen.push(p.current());
        }
        assert_eq!(seen[GOOD_STREAK as usize - 1], 64.0);
        assert_eq!(*seen.last().unwrap(), 2048.0, "capped at the maximum");
    }

    #[test]
    fn large_offset_or_clock_jump_drops_to_the_minimum() {
        let mut p = PollInterval::new(32.0, 2048.0);
        p.update(0.0, 0.0, false);
        for _ in 0..20 {
            p.update(0.0, 0.0, false);
        }
        assert_eq!(p.current(), 1024.0);
        p.update(0.3, 0.0, false);
        assert_eq!(p.current(), 32.0);
        for _ in 0..20 {
            p.update(0.0, 0.0, false);
        }
        p.resync();
        assert_eq!(p.current(), 32.0);
        assert!(p.resyncing());
    }

    #[test]
    fn spikes_and_poor_offsets_halve_it() {
        let mut p = PollInterval::new(16.0, 2048.0);
        p.update(0.0, 0.0, false);
        for _ in 0..12 {
            p.update(0.0, 0.0, false);
        }
        assert_eq!(p.current(), 128.0);
        p.update(0.0, 0.0, true);
        assert_eq!(p.current(), 64.0);
        p.update(0.001, 0.0001, false); // 10x the jitter
        assert_eq!(p.current(), 32.0);
        // A spike with a large offset is not a reason to reset to the minimum.
        p.update(0.5, 0.0001, true);
        assert_eq!(p.current(), 16.0);
        p.update(0.0, 0.0, true);
        assert_eq!(p.current(), 16.0, "never below the minimum");
    }

    #[test]
    fn a_noisy_path_still_lets_the_interval_grow() {
        let mut p = PollInterval::new(32.0, 2048.0);
        p.update(0.0, 0.0, false);
        for _ in 0..8 {
            p.update(0.004, 0.003, false); // 4 ms offsets on a 3 ms-jitter path
        }
        assert_eq!(p.current(), 128.0);
    }
}
