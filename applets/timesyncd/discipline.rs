//! The clock discipline: from the selected server's filtered offsets to
//! corrections of phase and frequency.
//!
//! Offsets at or beyond the step threshold are stepped. Below it, the
//! discipline keeps a short history of offsets expressed in the current
//! clock frame (every correction re-expresses the history, as chrony does),
//! fits a weighted line through it, and corrects the frequency by the
//! slope, shrunk by its uncertainty so that a few close samples cannot
//! throw the frequency far, and the phase by the fitted offset now.

use std::collections::VecDeque;

use super::clock::{MAX_FREQ_PPM, STEP_THRESHOLD};

/// Points kept for the fit.
const HISTORY: usize = 8;
/// The least error any point is assumed to carry (timestamping noise).
const MIN_ERROR: f64 = 1e-6;

#[derive(Clone, Copy, Debug)]
struct Point {
    time: f64,
    offset: f64,
    error: f64,
}

/// What to do to the clock.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Decision {
    /// Step by this many seconds.
    Step(f64),
    /// Slew `phase` seconds and change the frequency by `freq` (s/s).
    Slew { phase: f64, freq: f64 },
}

#[derive(Clone, Debug, Default)]
pub struct Discipline {
    history: VecDeque<Point>,
}

impl Discipline {
    pub fn new() -> Discipline {
        Discipline::default()
    }

    /// Forget the history (after a jump made by someone else).
    pub fn reset(&mut self) {
        self.history.clear();
    }

    pub fn points(&self) -> usize {
        self.history.len()
    }

    /// A new offset (seconds; positive = local clock behind) measured at
    /// monotonic `time` with error bound `error`; `freq_ppm`, the frequency
    /// correction in force, limits how far the new one may go.
    pub fn update(&mut self, time: f64, offset: f64, error: f64, freq_ppm: f64) -> Decision {
        if offset.abs() >= STEP_THRESHOLD {
            return Decision::Step(offset);
        }
        if self.history.len() == HISTORY {
            self.history.pop_front();
        }
        self.history.push_back(Point {
            time,
            offset,
            error: error.max(MIN_ERROR),
        });
        let (phase, mut freq) = self.fit(time).unwrap_or((offset, 0.0));
        let limit = MAX_FREQ_PPM * 1e-6;
        freq = (freq_ppm * 1e-6 + freq).clamp(-limit, limit) - freq_ppm * 1e-6;
        Decision::Slew { phase, freq }
    }

    /// The clock was moved by `phase` and its rate changed by `freq` (s/s)
    /// at `at`: keep the history in the new frame.
    pub fn applied(&mut self, phase: f64, freq: f64, at: f64) {
        for p in &mut self.history {
            p.offset -= phase + freq * (p.time - at);
        }
    }

    /// Weighted least squares through the history: the offset now and the
    /// slope, the slope shrunk by signal / (signal + noise).
    fn fit(&self, now: f64) -> Option<(f64, f64)> {
        if self.history.len() < 2 {
            return None;
        }
        let weights: Vec<f64> = self
            .history
            .iter()
            .map(|p| 1.0 / (p.error * p.error))
            .collect();
        let w_sum: f64 = weights.iter().sum();
        let t_mean: f64 = self
            .history
            .iter()
            .zip(&weights)
            .map(|(p, w)| w * p.time)
            .sum::<f64>()
            / w_sum;
        let o_mean: f64 = self
            .history
            .iter()
            .zip(&weights)
            .map(|(p, w)| w * p.offset)
            .sum::<f64>()
            / w_sum;
        let (mut stt, mut sto) = (0.0, 0.0);
        for (p, w) in self.history.iter().zip(&weights) {
            stt += w * (p.time - t_mean).powi(2);
            sto += w * (p.time - t_mean) * (p.offset - o_mean);
        }
        if stt <= 0.0 {
            return None;
        }
        let slope = sto / stt;
        // Noise of the slope: the point errors, or the scatter about the
        // line when there are enough points to measure it and it is larger.
        let n = self.history.len();
        let mut scale = 1.0;
        if n > 3 {
            let chi2: f64 = self
                .history
                .iter()
                .zip(&weights)
                .map(|(p, w)| w * (p.offset - o_mean - slope * (p.time - t_mean)).powi(2))
                .sum();
            // Point errors may be overstated tenfold (a quarter of a long
            // round trip); a scatter below that is taken as luck.
            scale = (chi2 / (n - 2) as f64).max(0.01);
        }
        let slope_var = scale / stt;
        let shrink = slope * slope / (slope * slope + slope_var);
        let freq = slope * shrink;
        let phase = o_mean + freq * (now - t_mean);
        Some((phase, freq))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn large_offsets_are_stepped() {
        let mut d = Discipline::new();
        assert_eq!(d.update(0.0, 2.5, 1e-4, 0.0), Decision::Step(2.5));
        assert_eq!(d.update(0.0, -0.4, 1e-4, 0.0), Decision::Step(-0.4));
        assert_eq!(d.points(), 0);
    }

    #[test]
    fn a_steady_drift_is_found_and_corrected() {
        // A clock 50 ppm slow, sampled every 16 s with tiny noise, with
        // every decision applied as the engine would.
        let mut d = Discipline::new();
        let (mut phase_err, mut freq_err, mut freq_ppm) = (0.0, 50e-6, 0.0);
        let mut t = 0.0;
        for _ in 0..10 {
            t += 16.0;
            phase_err += freq_err * 16.0;
            match d.update(t, phase_err, 1e-5, freq_ppm) {
                Decision::Slew { phase, freq } => {
                    phase_err -= phase;
                    freq_err -= freq;
                    freq_ppm += freq * 1e6;
                    d.applied(phase, freq, t);
                }
                Decision::Step(_) => panic!("no step expected"),
            }
        }
        assert!(freq_err.abs() < 1e-7, "{freq_err}");
        assert!(phase_err.abs() < 1e-6, "{phase_err}");
    }

    #[test]
    fn two_close_noisy_points_do_not_swing_the_frequency() {
        let mut d = Discipline::new();
        d.update(0.0, 0.0, 1e-4, 0.0);
        match d.update(2.0, 1e-4, 1e-4, 0.0) {
            // Raw slope 50 ppm; its noise is as large, so it is damped.
            Decision::Slew { freq, .. } => assert!(freq.abs() < 30e-6, "{freq}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn frequency_stays_within_the_kernel_limit() {
        let mut d = Discipline::new();
        d.update(0.0, 0.0, 1e-6, 480.0);
        if let Decision::Slew { freq, .. } = d.update(10.0, 0.01, 1e-6, 480.0) {
            assert!((480.0 + freq * 1e6) <= MAX_FREQ_PPM + 1e-9);
        }
    }
}
