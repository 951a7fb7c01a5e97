//! Turning replies into clock decisions: the per-server sample filter
//! (minimum delay over the last samples), the seed's spike detection on a
//! jitter ring, and the choice among servers (interval intersection with a
//! majority rule, RFC 5905 §11.2.1 simplified). Pure functions over data.

/// How fast the error bound of an old sample grows (RFC 5905 PHI, 15 ppm).
pub const PHI: f64 = 15e-6;
/// Samples kept per server.
pub const FILTER_LEN: usize = 8;

/// One measurement of a server, in the current clock frame: offsets of
/// stored samples are corrected whenever the clock is moved, so old and new
/// samples stay comparable.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sample {
    /// Monotonic seconds at which it was taken.
    pub time: f64,
    pub offset: f64,
    pub delay: f64,
    /// The server's own root delay/2 + root dispersion, plus its precision.
    pub dispersion: f64,
    /// The server's clock precision (seconds).
    pub precision: f64,
    pub stratum: u8,
    pub leap: u8,
}

impl Sample {
    /// Error bound of the sample at `now`: half the round trip plus the
    /// server's distance to its reference, growing with age.
    pub fn distance(&self, now: f64) -> f64 {
        self.delay / 2.0 + self.dispersion + PHI * (now - self.time).max(0.0)
    }
}

/// The last [`FILTER_LEN`] samples of one server.
#[derive(Clone, Debug, Default)]
pub struct SampleFilter {
    samples: Vec<Sample>,
    /// Time of the last sample handed to the discipline: one sample is
    /// never used twice.
    last_used: Option<f64>,
}

impl SampleFilter {
    pub fn push(&mut self, s: Sample) {
        if self.samples.len() == FILTER_LEN {
            self.samples.remove(0);
        }
        self.samples.push(s);
    }

    pub fn clear(&mut self) {
        self.samples.clear();
        self.last_used = None;
    }

    pub fn len(&self) -> usize {
        self.samples.len()
    }

    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }

    pub fn latest(&self) -> Option<&Sample> {
        self.samples.last()
    }

    /// The sample with the smallest error bound now: the one least
    /// disturbed by queueing, so one delayed reply does not move the clock.
    pub fn best(&self, now: f64) -> Option<Sample> {
        self.samples
            .iter()
            .min_by(|a, b| a.distance(now).total_cmp(&b.distance(now)))
            .copied()
    }

    /// The best sample if it is newer than the last one used, marking it used.
    pub fn take_fresh(&mut self, now: f64) -> Option<Sample> {
        let best = self.best(now)?;
        if self.last_used.is_some_and(|t| best.time <= t) {
            return None;
        }
        self.last_used = Some(best.time);
        Some(best)
    }

    /// RMS of the offsets against the best one: how noisy this server is.
    pub fn jitter(&self, now: f64) -> f64 {
        let Some(best) = self.best(now) else {
            return 0.0;
        };
        if self.samples.len() < 2 {
            return 0.0;
        }
        let sum: f64 = self
            .samples
            .iter()
            .map(|s| (s.offset - best.offset).powi(2))
            .sum();
        (sum / (self.samples.len() - 1) as f64).sqrt()
    }

    /// The clock was moved by `phase` seconds and its rate by `freq` (s/s)
    /// at monotonic time `at`: re-express stored offsets in the new frame.
    pub fn correct(&mut self, phase: f64, freq: f64, at: f64) {
        for s in &mut self.samples {
            s.offset -= phase + freq * (s.time - at);
        }
    }
}

/// The seed's spike detector: a ring of the last eight (offset, delay)
/// pairs, their jitter relative to the lowest-delay one, and the rule that
/// a sample far from the last one, compared to that jitter, is a spike.
/// Unlike the seed, slots not yet filled do not count as zero samples (the
/// seed's jitter was inflated by them for the first eight replies).
#[derive(Clone, Debug, Default)]
pub struct SpikeDetector {
    ring: [(f64, f64); 8],
    index: usize,
    filled: usize,
    pub packet_count: u64,
    pub jitter: f64,
}

impl SpikeDetector {
    /// Records a sample; true if it should not steer the clock. `resync`:
    /// the clock was just set or jumped, so every sample is accepted.
    pub fn check(&mut self, offset: f64, delay: f64, resync: bool) -> bool {
        self.packet_count += 1;
        // The first sample only seeds the ring.
        if self.packet_count == 1 {
            return false;
        }
        let current = self.index;
        let new = (current + 1) % self.ring.len();
        self.index = new;
        self.ring[new] = (offset, delay);
        self.filled = (self.filled + 1).min(self.ring.len());

        // The slots in use: the newest `filled` ones, ending at `new`.
        let len = self.ring.len();
        let used: Vec<usize> = (0..self.filled).map(|k| (new + len - k) % len).collect();
        let mut lowest = new;
        for &i in &used {
            let d = self.ring[i].1;
            if d > 0.0 && d < self.ring[lowest].1 {
                lowest = i;
            }
        }
        if used.len() > 1 {
            let sum: f64 = used
                .iter()
                .map(|&i| (self.ring[i].0 - self.ring[lowest].0).powi(2))
                .sum();
            self.jitter = (sum / (used.len() - 1) as f64).sqrt();
        }

        if resync {
            return false;
        }
        // Farther off than the round trip: the clock is wrong, not the sample.
        if offset.abs() > delay {
            return false;
        }
        if self.packet_count < 4 {
            return false;
        }
        // Worse than the largest error the best sample allows.
        if offset.abs() > self.ring[lowest].1 {
            return true;
        }
        (offset - self.ring[current].0).abs() > 3.0 * self.jitter
    }

    /// The clock moved by `phase`: keep the ring in the new frame.
    pub fn correct(&mut self, phase: f64) {
        for entry in &mut self.ring {
            entry.0 -= phase;
        }
    }
}

/// One server's candidate for selection.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Candidate {
    pub id: usize,
    pub offset: f64,
    /// Root distance: the half-width of the interval the true time lies in.
    pub distance: f64,
    pub stratum: u8,
}

/// The outcome of selection.
#[derive(Clone, Debug, PartialEq)]
pub enum Selection {
    /// The servers that agree, best first (lowest stratum, then distance).
    Agreed(Vec<usize>),
    /// No interval is shared by a majority of the candidates.
    NoMajority,
    NoCandidates,
}

/// Interval intersection: finds the point covered by the most correctness
/// intervals [offset - distance, offset + distance]; the servers covering it
/// are truechimers if they are a majority of the candidates (a single server
/// is trusted alone, as systemd-timesyncd does).
pub fn select(candidates: &[Candidate]) -> Selection {
    if candidates.is_empty() {
        return Selection::NoCandidates;
    }
    // Endpoints: lower ends sort before upper ends at the same point, so
    // intervals that touch count as overlapping.
    let mut edges: Vec<(f64, i32)> = Vec::with_capacity(candidates.len() * 2);
    for c in candidates {
        edges.push((c.offset - c.distance, -1));
        edges.push((c.offset + c.distance, 1));
    }
    edges.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    let (mut depth, mut best_depth, mut best_point) = (0i32, 0i32, 0.0);
    for (i, &(x, kind)) in edges.iter().enumerate() {
        depth -= kind;
        if kind == -1 && depth > best_depth {
            best_depth = depth;
            // The middle of the region where this depth holds.
            let next = edges.get(i + 1).map(|e| e.0).unwrap_or(x);
            best_point = (x + next) / 2.0;
        }
    }
    if (best_depth as usize) * 2 <= candidates.len() {
        return Selection::NoMajority;
    }
    let mut agreed: Vec<&Candidate> = candidates
        .iter()
        .filter(|c| (c.offset - best_point).abs() <= c.distance)
        .collect();
    agreed.sort_by(|a, b| {
        a.stratum
            .cmp(&b.stratum)
            .then(a.distance.total_cmp(&b.distance))
    });
    Selection::Agreed(agreed.iter().map(|c| c.id).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(time: f64, offset: f64, delay: f64) -> Sample {
        Sample {
            time,
            offset,
            delay,
            dispersion: 0.0,
            precision: 1e-6,
            stratum: 2,
            leap: 0,
        }
    }

    #[test]
    fn one_delayed_reply_does_not_win_the_filter() {
        let mut f = SampleFilter::default();
        f.push(sample(0.0, 0.0010, 0.002));
        f.push(sample(32.0, 0.0300, 0.060)); // queued 58 ms on one path
        f.push(sample(64.0, 0.0011, 0.002));
        let best = f.best(64.0).unwrap();
        assert_eq!(best.delay, 0.002);
        assert!((best.offset - 0.0011).abs() < 1e-12);
    }

    #[test]
    fn a_sample_is_used_once() {
        let mut f = SampleFilter::default();
        f.push(sample(0.0, 0.001, 0.001));
        assert!(f.take_fresh(0.0).is_some());
        // A worse sample arrives: the best is still the used one.
        f.push(sample(1.0, 0.002, 0.050));
        assert!(f.take_fresh(1.0).is_none());
        f.push(sample(2.0, 0.001, 0.0009));
        assert_eq!(f.take_fresh(2.0).unwrap().time, 2.0);
    }

    #[test]
    fn corrections_move_stored_samples_into_the_new_frame() {
        let mut f = SampleFilter::default();
        f.push(sample(0.0, 0.010, 0.001));
        f.push(sample(10.0, 0.011, 0.001));
        // Step forward 10 ms and speed up by 100 ppm at t = 10.
        f.correct(0.010, 100e-6, 10.0);
        let s: Vec<f64> = f.samples.iter().map(|s| s.offset).collect();
        assert!((s[0] - 0.001).abs() < 1e-12, "{s:?}");
        assert!((s[1] - 0.001).abs() < 1e-12, "{s:?}");
    }

    #[test]
    fn spike_detection_follows_the_seed() {
        let mut d = SpikeDetector::default();
        // The first four samples are never spikes.
        for (o, dl) in [
            (0.0005, 0.01),
            (0.0004, 0.01),
            (0.0006, 0.01),
            (0.0005, 0.01),
        ] {
            assert!(!d.check(o, dl, false));
        }
        let mut d = SpikeDetector::default();
        for _ in 0..10 {
            assert!(!d.check(0.0010, 0.004, false));
        }
        // Beyond the error bound of the best sample (its 4 ms delay).
        assert!(d.check(0.005, 0.010, false));
        // ... but not when resyncing, nor when the offset exceeds the delay.
        assert!(!d.check(0.005, 0.010, true));
        assert!(!d.check(0.5, 0.008, false));
    }

    #[test]
    fn spike_ring_is_moved_with_the_clock() {
        let mut d = SpikeDetector::default();
        for _ in 0..6 {
            d.check(0.100, 0.2, false);
        }
        d.correct(0.100);
        assert!(!d.check(0.0, 0.2, false), "the corrected clock is no spike");
    }

    fn cand(id: usize, offset: f64, distance: f64) -> Candidate {
        Candidate {
            id,
            offset,
            distance,
            stratum: 2,
        }
    }

    #[test]
    fn falseticker_is_voted_out() {
        let sel = select(&[
            cand(0, 0.001, 0.01),
            cand(1, 1.000, 0.01),
            cand(2, -0.002, 0.01),
        ]);
        match sel {
            Selection::Agreed(ids) => {
                assert!(ids.contains(&0) && ids.contains(&2) && !ids.contains(&1))
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn two_disagreeing_servers_have_no_majority() {
        assert_eq!(
            select(&[cand(0, 0.0, 0.01), cand(1, 0.5, 0.01)]),
            Selection::NoMajority
        );
        assert_eq!(select(&[]), Selection::NoCandidates);
    }

    #[test]
    fn one_server_is_trusted_alone() {
        assert_eq!(select(&[cand(7, 3.0, 0.01)]), Selection::Agreed(vec![7]));
    }

    #[test]
    fn agreed_servers_are_ranked_by_stratum_then_distance() {
        let mut a = cand(0, 0.0, 0.02);
        a.stratum = 3;
        let b = cand(1, 0.001, 0.03);
        let c = cand(2, 0.0, 0.01);
        assert_eq!(select(&[a, b, c]), Selection::Agreed(vec![2, 1, 0]));
    }
}
