//! Request cookies from getrandom(2), without a crate. The deterministic
//! generator for jitter and the simulator is [`crate::rng::SplitMix64`].

use crate::rng::{clock_noise, SplitMix64};

/// 64 random bits from the kernel (see [`kernel_fill`]).
pub fn kernel_u64() -> u64 {
    let mut buf = [0u8; 8];
    kernel_fill(&mut buf);
    u64::from_ne_bytes(buf)
}

/// Fills `buf` from getrandom(2): NTS keys, nonces and request cookies.
/// getrandom only fails before the pool is initialised on ancient kernels;
/// then a time-seeded generator stands in.
pub fn kernel_fill(buf: &mut [u8]) {
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
        let mut rng = SplitMix64::new(clock_noise());
        for chunk in buf[filled..].chunks_mut(8) {
            let r = rng.next_u64().to_ne_bytes();
            chunk.copy_from_slice(&r[..chunk.len()]);
        }
        return;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_cookies_differ() {
        assert_ne!(kernel_u64(), kernel_u64());
    }
}
