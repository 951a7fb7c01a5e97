//! Notices when CLOCK_REALTIME is set (by anyone): a timerfd armed for the
//! far future with TFD_TIMER_CANCEL_ON_SET becomes readable, its read
//! failing with ECANCELED, whenever the clock is stepped.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use tokio::io::unix::AsyncFd;

pub struct ClockWatch {
    fd: AsyncFd<OwnedFd>,
}

impl ClockWatch {
    pub fn new() -> io::Result<ClockWatch> {
        // SAFETY: timerfd_create returns a new descriptor or -1.
        let raw = unsafe {
            libc::timerfd_create(libc::CLOCK_REALTIME, libc::TFD_NONBLOCK | libc::TFD_CLOEXEC)
        };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: we own the descriptor just created.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        arm(&fd)?;
        Ok(ClockWatch {
            // SAFETY: the OwnedFd is a valid timerfd, owned by the AsyncFd
            // for its whole life and never replaced or closed behind it.
            fd: unsafe { AsyncFd::register(fd)? },
        })
    }

    /// Resolves when the clock has been set since the last call.
    pub async fn changed(&mut self) -> io::Result<()> {
        loop {
            let mut guard = self.fd.readable().await?;
            let mut expirations = 0u64;
            // SAFETY: reads 8 bytes into our u64.
            let n = unsafe {
                libc::read(
                    self.fd.get_ref().as_raw_fd(),
                    (&mut expirations as *mut u64).cast(),
                    8,
                )
            };
            if n < 0 {
                let err = io::Error::last_os_error();
                match err.raw_os_error() {
                    Some(libc::ECANCELED) => {
                        // Re-arm for the next change.
                        arm(self.fd.get_ref())?;
                        return Ok(());
                    }
                    Some(libc::EAGAIN) => {
                        guard.clear_ready();
                        continue;
                    }
                    _ => return Err(err),
                }
            }
            // The far-future expiry cannot be reached; re-arm anyway.
            arm(self.fd.get_ref())?;
        }
    }
}

fn arm(fd: &OwnedFd) -> io::Result<()> {
    let spec = libc::itimerspec {
        it_interval: libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        },
        // Far in the future (the seed's TIME_T_MAX, kept within what
        // 32-bit-time kernels accept).
        it_value: libc::timespec {
            tv_sec: i32::MAX as _,
            tv_nsec: 0,
        },
    };
    // SAFETY: arms our timerfd with a valid itimerspec.
    let rc = unsafe {
        libc::timerfd_settime(
            fd.as_raw_fd(),
            libc::TFD_TIMER_ABSTIME | libc::TFD_TIMER_CANCEL_ON_SET,
            &spec,
            std::ptr::null_mut(),
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
