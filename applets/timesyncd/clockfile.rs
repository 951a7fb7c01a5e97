//! The clock file: boards without an RTC boot at 1970, so at start the
//! clock is stepped forward to the file's mtime if it is behind it; the file
//! is touched after each synchronisation, every SaveIntervalSec, and at exit.

use std::io;
use std::path::Path;

use super::clock::ClockBackend;
use super::packet::NtpTime;

pub const DEFAULT_PATH: &str = "/var/lib/toolbox/timesync/clock";

/// The file's mtime, if it exists.
pub fn read(path: &Path) -> Option<NtpTime> {
    let modified = std::fs::metadata(path).ok()?.modified().ok()?;
    let since = modified.duration_since(std::time::UNIX_EPOCH).ok()?;
    Some(NtpTime::from_unix(
        since.as_secs() as i64,
        since.subsec_nanos(),
    ))
}

/// How far to step the clock forward, if the clock is behind the file.
pub fn forward_step(now: NtpTime, saved: Option<NtpTime>) -> Option<f64> {
    let behind = saved?.diff(now);
    (behind > 0.0).then_some(behind)
}

/// Applies the start-up rule; returns the step made.
pub fn restore<C: ClockBackend + ?Sized>(
    clock: &mut C,
    saved: Option<NtpTime>,
) -> io::Result<Option<f64>> {
    match forward_step(clock.now(), saved) {
        Some(step) => {
            clock.step(step)?;
            Ok(Some(step))
        }
        None => Ok(None),
    }
}

/// Sets the file's mtime to now, creating it (and its directory) if needed.
pub fn touch(path: &Path) -> io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    file.set_modified(std::time::SystemTime::now())
}

#[cfg(test)]
mod tests {
    use super::super::clock::SimulatedClock;
    use super::*;

    #[test]
    fn clock_behind_the_file_is_stepped_forward() {
        // A board that booted at the epoch of the simulated clock, 3 days
        // before the time saved at its last shutdown.
        let mut clock = SimulatedClock::new(0.0, 0.0, 0.0, 1);
        let saved = clock.now().add_secs(3.0 * 86_400.0);
        let step = restore(&mut clock, Some(saved)).unwrap();
        assert_eq!(step, Some(3.0 * 86_400.0));
        assert_eq!(clock.now(), saved);
        assert_eq!(clock.steps, 1);
    }

    #[test]
    fn clock_ahead_of_the_file_or_no_file_is_left_alone() {
        let mut clock = SimulatedClock::new(0.0, 0.0, 0.0, 1);
        let saved = clock.now().add_secs(-60.0);
        assert_eq!(restore(&mut clock, Some(saved)).unwrap(), None);
        assert_eq!(restore(&mut clock, None).unwrap(), None);
        assert_eq!(clock.steps, 0);
    }

    #[test]
    fn touch_creates_and_updates_the_file() {
        let dir = std::env::temp_dir().join(format!("toolbox-clockfile-{}", std::process::id()));
        let path = dir.join("sub/clock");
        touch(&path).unwrap();
        let first = read(&path).unwrap();
        let now = super::super::clock::system_now();
        assert!(now.diff(first).abs() < 5.0);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
