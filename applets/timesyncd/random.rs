//! Randomness without a crate: request cookies from getrandom(2), and a
//! small deterministic generator (SplitMix64) for jitter and the simulator.

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
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        let mut rng = SplitMix64::new(nanos ^ ((std::process::id() as u64) << 32));
        for chunk in buf[filled..].chunks_mut(8) {
            let r = rng.next_u64().to_ne_bytes();
            chunk.copy_from_slice(&r[..chunk.len()]);
        }
        return;
    }
}

/// SplitMix64: tiny, fast, good enough for jitter and simulation (never for
/// anything an attacker must not predict).
#[derive(Clone, Debug)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    pub fn new(seed: u64) -> SplitMix64 {
        SplitMix64(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Exponential with mean 1.
    pub fn exponential(&mut self) -> f64 {
        -(1.0 - self.uniform()).ln()
    }

    /// Standard normal (Box-Muller).
    pub fn normal(&mut self) -> f64 {
        let u1 = 1.0 - self.uniform();
        let u2 = self.uniform();
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_cookies_differ() {
        assert_ne!(kernel_u64(), kernel_u64());
    }

    #[test]
    fn distributions_have_the_right_means() {
        let mut r = SplitMix64::new(1);
        let n = 100_000;
        let exp: f64 = (0..n).map(|_| r.exponential()).sum::<f64>() / n as f64;
        let norm: f64 = (0..n).map(|_| r.normal()).sum::<f64>() / n as f64;
        let var: f64 = (0..n).map(|_| r.normal().powi(2)).sum::<f64>() / n as f64;
        assert!((exp - 1.0).abs() < 0.02, "{exp}");
        assert!(norm.abs() < 0.02, "{norm}");
        assert!((var - 1.0).abs() < 0.02, "{var}");
    }
}
