//! Request cookies from getrandom(2), without a crate. The deterministic
//! generator for jitter and the simulator is [`crate::rng::SplitMix64`].

use crate::rng::{clock_noise, SplitMix64};

/// 64 random bits from the kernel. getrandom(2) only fails before the pool
/// is initialised on ancient kernels; then a time-seeded generator stands in.
pub fn kernel_u64() -> u64 {
    let mut buf = [0u8; 8];
    let mut filled = 0;
    while filled < buf.len() {
        // SAFETY: writes at most the remaining length into our buffer.
        let n =
            unsafe { libc::getrandom(buf[filled..].as_mut_ptr().cast(), buf.len() - filled, 0) };
        if n > 0 {
            filled += n as usize;
            continue;
        }
        if n < 0 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
            continue;
        }
        return SplitMix64::new(clock_noise()).next_u64();
    }
    u64::from_ne_bytes(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_cookies_differ() {
        assert_ne!(kernel_u64(), kernel_u64());
    }
}
