//! A bounded cache of L2 tables, keyed by their offset in the image.
//! Tables are held decoded (native-endian words). When the cache is over
//! its byte budget the least recently used quarter is dropped at once, so
//! eviction costs O(log n) per miss on average. Writers update the cache
//! and the file together (write-through), so nothing is ever lost on eviction.

use std::collections::HashMap;

pub struct L2Cache {
    tables: HashMap<u64, Cached>,
    max_tables: usize,
    clock: u64,
}

struct Cached {
    words: Vec<u64>,
    used: u64,
}

impl L2Cache {
    /// A cache holding at most `budget` bytes of tables of `table_bytes` each.
    pub fn new(budget: usize, table_bytes: usize) -> L2Cache {
        L2Cache {
            tables: HashMap::new(),
            max_tables: (budget / table_bytes.max(1)).max(4),
            clock: 0,
        }
    }

    pub fn get(&mut self, offset: u64) -> Option<&[u64]> {
        self.clock += 1;
        let clock = self.clock;
        self.tables.get_mut(&offset).map(|c| {
            c.used = clock;
            &c.words[..]
        })
    }

    pub fn get_mut(&mut self, offset: u64) -> Option<&mut Vec<u64>> {
        self.clock += 1;
        let clock = self.clock;
        self.tables.get_mut(&offset).map(|c| {
            c.used = clock;
            &mut c.words
        })
    }

    pub fn insert(&mut self, offset: u64, words: Vec<u64>) {
        if self.tables.len() >= self.max_tables && !self.tables.contains_key(&offset) {
            self.evict();
        }
        self.clock += 1;
        self.tables.insert(
            offset,
            Cached {
                words,
                used: self.clock,
            },
        );
    }

    pub fn remove(&mut self, offset: u64) {
        self.tables.remove(&offset);
    }

    fn evict(&mut self) {
        let mut stamps: Vec<u64> = self.tables.values().map(|c| c.used).collect();
        let cut = stamps.len() / 4;
        let (_, &mut threshold, _) = stamps.select_nth_unstable(cut);
        self.tables.retain(|_, c| c.used > threshold);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stays_within_budget_and_keeps_recent_tables() {
        let mut cache = L2Cache::new(8 * 64, 64);
        for i in 0..8u64 {
            cache.insert(i, vec![i; 8]);
        }
        // Touch table 0 so it survives the next eviction.
        assert_eq!(cache.get(0).map(|t| t[0]), Some(0));
        cache.insert(100, vec![100; 8]);
        assert!(cache.tables.len() <= 8);
        assert!(cache.get(0).is_some());
        assert!(cache.get(100).is_some());
        assert!(cache.get(1).is_none(), "least recently used goes first");
        if let Some(t) = cache.get_mut(100) {
            t[3] = 7;
        }
        assert_eq!(cache.get(100).map(|t| t[3]), Some(7));
        cache.remove(100);
        assert!(cache.get(100).is_none());
    }
}
