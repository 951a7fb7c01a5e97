//! busybox ntpd's `-S PROG`: run as `PROG step|stratum|periodic|unsync`
//! with `offset`, `stratum`, `freq_drift_ppm` and `poll_interval` in its
//! environment. Started and reaped in the background; never waited for.

use std::path::Path;
use std::process::{Command, Stdio};

pub struct HookEnv {
    pub offset: f64,
    pub stratum: u8,
    pub freq_drift_ppm: f64,
    pub poll_interval: f64,
}

pub fn run(program: &Path, event: &str, env: &HookEnv) {
    let spawned = Command::new(program)
        .arg(event)
        .env("offset", format!("{:.6}", env.offset))
        .env("stratum", env.stratum.to_string())
        .env("freq_drift_ppm", format!("{:.3}", env.freq_drift_ppm))
        .env("poll_interval", format!("{}", env.poll_interval as u64))
        .stdin(Stdio::null())
        .spawn();
    match spawned {
        Ok(mut child) => {
            // Reap it off the event loop so it never lingers as a zombie.
            tokio::task::spawn_blocking(move || {
                let _ = child.wait();
            });
        }
        Err(e) => tracing::warn!("cannot run {} {event}: {e}", program.display()),
    }
}
