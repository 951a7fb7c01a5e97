//! A tiny seeded generator (SplitMix64) and the seeds the applets feed it.
//! Reproducible, not cryptographic: zcip's address sequence is seeded by
//! the MAC so that different hosts try different addresses and one host
//! retries the same ones, timesyncd's simulator replays a run from its
//! seed, and tests replay any run exactly. Never for anything an attacker
//! must not predict.

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

    /// Uniform in `0..bound` (0 when `bound` is 0), by multiply-high so
    /// there is no modulo bias worth speaking of.
    pub fn below(&mut self, bound: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(bound)) >> 64) as u64
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

/// A seed made of all six bytes of a MAC address.
pub fn seed_from_mac(mac: [u8; 6]) -> u64 {
    let mut bytes = [0u8; 8];
    bytes[..6].copy_from_slice(&mac);
    u64::from_le_bytes(bytes)
}

/// The wall clock's nanoseconds mixed with the process id: varies a seed
/// between runs (and between processes started in the same nanosecond).
pub fn clock_noise() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    nanos ^ u64::from(std::process::id()).rotate_left(32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_sequence_different_seed_different_sequence() {
        let mut a = SplitMix64::new(7);
        let mut b = SplitMix64::new(7);
        let mut c = SplitMix64::new(8);
        let first: Vec<u64> = (0..4).map(|_| a.next_u64()).collect();
        let second: Vec<u64> = (0..4).map(|_| b.next_u64()).collect();
        let other: Vec<u64> = (0..4).map(|_| c.next_u64()).collect();
        assert_eq!(first, second);
        assert_ne!(first, other);
    }

    #[test]
    fn below_stays_in_range_and_covers_it() {
        let mut rng = SplitMix64::new(1);
        let mut seen = [false; 10];
        for _ in 0..1000 {
            let n = rng.below(10);
            assert!(n < 10);
            seen[n as usize] = true;
        }
        assert!(seen.iter().all(|s| *s));
        assert_eq!(rng.below(0), 0);
    }

    #[test]
    fn macs_differing_in_any_byte_seed_differently() {
        let base = [0x02, 0, 0, 0, 0, 1];
        let mut other = base;
        other[0] = 0x06;
        assert_ne!(seed_from_mac(base), seed_from_mac(other));
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
