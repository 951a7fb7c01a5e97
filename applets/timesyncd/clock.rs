//! The system clock behind a trait, so the discipline runs unchanged on the
//! real clock, on a simulated one in tests, and on none (`--no-adjust`).
//!
//! The real backend drives the kernel PLL the way the discipline expects:
//! offsets below [`STEP_THRESHOLD`] are handed to ADJ_OFFSET for the kernel
//! to slew out (phase only: STA_FREQHOLD, because the discipline estimates
//! the frequency itself and sets it with ADJ_FREQUENCY; the PLL's own
//! frequency loop kicks by hundreds of ppm on a 0.1 s start-up offset and
//! then takes hours to settle); larger ones are stepped with clock_settime.
//! Every update clears STA_UNSYNC, which lets the kernel's 11-minute mode
//! keep the RTC in step, and passes leap-second announcements on.

use std::io;

use super::packet::NtpTime;
use crate::rng::SplitMix64;

/// Offsets at or above this are stepped, below slewed (as systemd-timesyncd).
pub const STEP_THRESHOLD: f64 = 0.4;
/// The kernel PLL time constant we use: the kernel slews a quarter of the
/// remaining offset each second (2^(SHIFT_PLL + 0)), done well within the
/// shortest poll interval.
pub const PLL_TIME_CONSTANT: i64 = 0;
/// The kernel's frequency limit (MAXFREQ), ppm.
pub const MAX_FREQ_PPM: f64 = 500.0;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Leap {
    #[default]
    None,
    Insert,
    Delete,
}

/// One update of the clock: slew `phase` seconds more than what is still
/// pending, run at `freq_ppm`, and report the error bounds and leap
/// announcement.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Adjustment {
    pub phase: f64,
    pub freq_ppm: f64,
    pub leap: Leap,
    pub max_error: f64,
    pub est_error: f64,
}

pub trait ClockBackend: Send {
    /// CLOCK_REALTIME now.
    fn now(&self) -> NtpTime;
    /// Slews and sets the frequency and status (see [`Adjustment`]).
    fn adjust(&mut self, adj: &Adjustment) -> io::Result<()>;
    /// Steps the clock by `offset` seconds.
    fn step(&mut self, offset: f64) -> io::Result<()>;
    /// Seconds of the last slew the kernel has still to apply, including
    /// the rest of the share it is applying during the current second.
    fn pending_slew(&self) -> f64;
    /// The frequency correction in force, ppm.
    fn frequency(&self) -> f64;
    /// False when changes are not made (`--no-adjust`, `-Q`): the engine
    /// then keeps its samples as measured.
    fn adjusts(&self) -> bool {
        true
    }
}

impl<C: ClockBackend + ?Sized> ClockBackend for Box<C> {
    fn now(&self) -> NtpTime {
        (**self).now()
    }
    fn adjust(&mut self, adj: &Adjustment) -> io::Result<()> {
        (**self).adjust(adj)
    }
    fn step(&mut self, offset: f64) -> io::Result<()> {
        (**self).step(offset)
    }
    fn pending_slew(&self) -> f64 {
        (**self).pending_slew()
    }
    fn frequency(&self) -> f64 {
        (**self).frequency()
    }
    fn adjusts(&self) -> bool {
        (**self).adjusts()
    }
}

fn realtime() -> libc::timespec {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: writes into our timespec; CLOCK_REALTIME always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_REALTIME, &mut ts) };
    ts
}

/// Reads CLOCK_REALTIME as an NTP timestamp.
pub fn system_now() -> NtpTime {
    let ts = realtime();
    NtpTime::from_unix(ts.tv_sec, ts.tv_nsec as u32)
}

/// The share of the PLL offset the kernel applies in the second after
/// `remaining` was left (second_overflow: offset >> (SHIFT_PLL + tc)).
fn pll_chunk_after(remaining: f64) -> f64 {
    remaining / ((1u64 << (2 + PLL_TIME_CONSTANT)) - 1) as f64
}

/// The real system clock, through adjtimex(2) and clock_settime(2).
#[derive(Default)]
pub struct RealClock {
    /// Realtime second of our last ADJ_OFFSET, and the share the kernel
    /// was then applying (it finishes that second with the old share).
    last_adjust_second: i64,
    chunk_at_adjust: f64,
}

impl RealClock {
    pub fn new() -> RealClock {
        RealClock::default()
    }

    /// The remaining ADJ_OFFSET and the share being applied this second,
    /// with the fraction of the second still to go.
    fn slew_state(&self) -> (f64, f64, f64) {
        let Ok(tx) = Self::read() else {
            return (0.0, 0.0, 0.0);
        };
        let offset = if tx.status & libc::STA_NANO != 0 {
            tx.offset as f64 * 1e-9
        } else {
            tx.offset as f64 * 1e-6
        };
        let now = realtime();
        let chunk = if now.tv_sec == self.last_adjust_second {
            self.chunk_at_adjust
        } else {
            pll_chunk_after(offset)
        };
        (offset, chunk, 1.0 - now.tv_nsec as f64 * 1e-9)
    }

    fn read() -> io::Result<libc::timex> {
        // SAFETY: an all-zero timex is valid input; modes 0 only reads.
        let mut tx: libc::timex = unsafe { std::mem::zeroed() };
        // SAFETY: adjtimex fills in our struct.
        if unsafe { libc::adjtimex(&mut tx) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(tx)
    }
}

impl ClockBackend for RealClock {
    fn now(&self) -> NtpTime {
        system_now()
    }

    fn adjust(&mut self, adj: &Adjustment) -> io::Result<()> {
        // ADJ_OFFSET replaces what remains; the share of this second is
        // already on its way and stays.
        let (remaining, chunk, _) = self.slew_state();
        self.chunk_at_adjust = chunk;
        self.last_adjust_second = realtime().tv_sec;
        // SAFETY: all-zero is a valid timex.
        let mut tx: libc::timex = unsafe { std::mem::zeroed() };
        tx.modes = (libc::ADJ_OFFSET
            | libc::ADJ_FREQUENCY
            | libc::ADJ_STATUS
            | libc::ADJ_TIMECONST
            | libc::ADJ_NANO
            | libc::ADJ_MAXERROR
            | libc::ADJ_ESTERROR) as libc::c_uint;
        let phase = (adj.phase + remaining).clamp(-0.5, 0.5);
        tx.offset = (phase * 1e9).round() as libc::c_long;
        let freq = adj.freq_ppm.clamp(-MAX_FREQ_PPM, MAX_FREQ_PPM);
        tx.freq = (freq * 65536.0).round() as libc::c_long;
        tx.constant = PLL_TIME_CONSTANT as libc::c_long;
        // Status is written whole: leaving STA_UNSYNC out clears it.
        tx.status = libc::STA_PLL | libc::STA_FREQHOLD;
        match adj.leap {
            Leap::None => {}
            Leap::Insert => tx.status |= libc::STA_INS,
            Leap::Delete => tx.status |= libc::STA_DEL,
        }
        tx.maxerror = (adj.max_error * 1e6).clamp(0.0, 16e6) as libc::c_long;
        tx.esterror = (adj.est_error * 1e6).clamp(0.0, 16e6) as libc::c_long;
        // SAFETY: adjtimex with a fully initialised timex.
        if unsafe { libc::adjtimex(&mut tx) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    fn step(&mut self, offset: f64) -> io::Result<()> {
        let now = realtime();
        let total_ns = now.tv_sec as i128 * 1_000_000_000
            + now.tv_nsec as i128
            + (offset * 1e9).round() as i128;
        let ts = libc::timespec {
            tv_sec: total_ns.div_euclid(1_000_000_000) as _,
            tv_nsec: total_ns.rem_euclid(1_000_000_000) as libc::c_long,
        };
        // SAFETY: sets CLOCK_REALTIME from a valid timespec.
        if unsafe { libc::clock_settime(libc::CLOCK_REALTIME, &ts) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    fn pending_slew(&self) -> f64 {
        let (offset, chunk, rest_of_second) = self.slew_state();
        offset + chunk * rest_of_second
    }

    fn frequency(&self) -> f64 {
        Self::read()
            .map(|tx| tx.freq as f64 / 65536.0)
            .unwrap_or(0.0)
    }
}

/// Reads through to a clock but never changes it: `--no-adjust` and `-Q`.
pub struct NoAdjust<C>(pub C);

impl<C: ClockBackend> ClockBackend for NoAdjust<C> {
    fn now(&self) -> NtpTime {
        self.0.now()
    }
    fn adjust(&mut self, adj: &Adjustment) -> io::Result<()> {
        tracing::debug!(
            "not adjusting: would slew {:+.6}s at {:+.3}ppm",
            adj.phase,
            adj.freq_ppm
        );
        Ok(())
    }
    fn step(&mut self, offset: f64) -> io::Result<()> {
        tracing::debug!("not adjusting: would step {offset:+.6}s");
        Ok(())
    }
    fn pending_slew(&self) -> f64 {
        0.0
    }
    fn frequency(&self) -> f64 {
        0.0
    }
    fn adjusts(&self) -> bool {
        false
    }
}

/// A clock for tests: a model of a crystal (initial error, frequency error,
/// random-walk wander) under the Linux kernel's PLL slewing (each second a
/// quarter of the remaining ADJ_OFFSET is applied; a new ADJ_OFFSET replaces
/// what remains), driven forward by the simulator.
#[derive(Clone, Debug)]
pub struct SimulatedClock {
    /// Unix seconds at simulated time zero.
    epoch: i64,
    /// Simulated true time, seconds since `epoch`.
    true_time: f64,
    /// Local minus true, seconds.
    error: f64,
    /// The crystal's own rate error (s/s; positive runs fast).
    native_freq: f64,
    /// Random-walk step of `native_freq` per second.
    wander: f64,
    /// The correction set through ADJ_FREQUENCY (s/s).
    freq_correction: f64,
    /// The kernel's remaining offset to slew (seconds) and this second's share.
    time_offset: f64,
    chunk: f64,
    next_second: f64,
    rng: SplitMix64,
    pub steps: u32,
}

impl SimulatedClock {
    /// `error`: initial local-minus-true offset; `native_freq`: rate error
    /// (1e-4 = 100 ppm fast).
    pub fn new(error: f64, native_freq: f64, wander: f64, seed: u64) -> SimulatedClock {
        SimulatedClock {
            epoch: 1_700_000_000,
            true_time: 0.0,
            error,
            native_freq,
            wander,
            freq_correction: 0.0,
            time_offset: 0.0,
            chunk: 0.0,
            next_second: 1.0,
            rng: SplitMix64::new(seed),
            steps: 0,
        }
    }

    /// Unix seconds at simulated time zero.
    pub fn set_epoch(&mut self, epoch: i64) {
        self.epoch = epoch;
    }

    /// Local minus true time now.
    pub fn error(&self) -> f64 {
        self.error
    }

    /// The rate error left after the correction (s/s).
    pub fn freq_error(&self) -> f64 {
        self.native_freq + self.freq_correction
    }

    pub fn true_time(&self) -> f64 {
        self.true_time
    }

    /// True time as an NTP timestamp (what a perfect server reads).
    pub fn true_ntp(&self, at: f64) -> NtpTime {
        NtpTime::from_unix(self.epoch, 0).add_secs(at)
    }

    /// The local clock's reading at true time `at` (>= now, before any
    /// further adjustment), by extrapolating the current rate.
    pub fn local_at(&self, at: f64) -> NtpTime {
        let rate = self.native_freq + self.freq_correction + self.chunk;
        let error = self.error + rate * (at - self.true_time);
        NtpTime::from_unix(self.epoch, 0).add_secs(at + error)
    }

    /// Runs the clock forward to true time `to`.
    pub fn advance_to(&mut self, to: f64) {
        while self.true_time < to {
            let until = to.min(self.next_second);
            let dt = until - self.true_time;
            self.error += dt * (self.native_freq + self.freq_correction + self.chunk);
            self.true_time = until;
            if until >= self.next_second {
                // second_overflow(): the next share of the PLL offset, and
                // the crystal's wander.
                self.time_offset -= self.time_offset / (1u64 << (2 + PLL_TIME_CONSTANT)) as f64;
                self.chunk = pll_chunk_after(self.time_offset);
                self.native_freq += self.wander * self.rng.normal();
                self.next_second += 1.0;
            }
        }
    }
}

impl ClockBackend for SimulatedClock {
    fn now(&self) -> NtpTime {
        NtpTime::from_unix(self.epoch, 0).add_secs(self.true_time + self.error)
    }

    fn adjust(&mut self, adj: &Adjustment) -> io::Result<()> {
        // Offset positive = local is behind: the kernel speeds it up.
        self.time_offset = (adj.phase + self.time_offset).clamp(-0.5, 0.5);
        self.freq_correction = adj.freq_ppm.clamp(-MAX_FREQ_PPM, MAX_FREQ_PPM) * 1e-6;
        Ok(())
    }

    fn step(&mut self, offset: f64) -> io::Result<()> {
        self.error += offset;
        self.steps += 1;
        Ok(())
    }

    fn pending_slew(&self) -> f64 {
        self.time_offset + self.chunk * (self.next_second - self.true_time)
    }

    fn frequency(&self) -> f64 {
        self.freq_correction * 1e6
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn simulated_clock_drifts_at_its_frequency() {
        let mut c = SimulatedClock::new(0.0, 100e-6, 0.0, 1);
        c.advance_to(100.0);
        assert!((c.error() - 0.01).abs() < 1e-9, "{}", c.error());
    }

    #[test]
    fn simulated_pll_slews_a_quarter_per_second_and_holds_frequency() {
        let mut c = SimulatedClock::new(-0.1, 0.0, 0.0, 1);
        let adj = Adjustment {
            phase: 0.1,
            freq_ppm: 0.0,
            leap: Leap::None,
            max_error: 0.0,
            est_error: 0.0,
        };
        c.adjust(&adj).unwrap();
        c.advance_to(1.0);
        // 0.075 left, of which 0.025 goes in the coming second.
        assert!((c.pending_slew() - 0.1).abs() < 1e-12);
        c.advance_to(1.5);
        assert!((c.pending_slew() - 0.0875).abs() < 1e-12);
        c.advance_to(2.0);
        assert!((c.pending_slew() - 0.075).abs() < 1e-12);
        assert!((c.error() - -0.075).abs() < 1e-12);
        c.advance_to(60.0);
        assert!(c.error().abs() < 1e-6, "{}", c.error());
        assert_eq!(c.freq_error(), 0.0, "phase-only slewing");
    }

    #[test]
    fn simulated_step_moves_the_clock_at_once() {
        let mut c = SimulatedClock::new(-2.5, 0.0, 0.0, 1);
        c.step(2.5).unwrap();
        assert_eq!(c.error(), 0.0);
        assert_eq!(c.steps, 1);
        assert_eq!(c.now(), c.true_ntp(0.0));
    }

    #[test]
    fn no_adjust_never_changes_anything() {
        let mut c = NoAdjust(SimulatedClock::new(1.0, 0.0, 0.0, 1));
        c.step(-1.0).unwrap();
        assert_eq!(c.0.error(), 1.0);
        assert!(!c.adjusts());
    }
}
