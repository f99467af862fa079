//! The classic alternatives the assignment engine is compared against in
//! `ring-report` and the benchmarks. Both map users straight to nodes, with
//! no partitions in between.

use xxhash_rust::xxh3::{xxh3_64, xxh3_64_with_seed};

/// A classic consistent-hash ring: `vnodes` points per node, a key goes to
/// the first point at or after its hash.
pub struct HashRing {
    points: Vec<(u64, u32)>,
}

impl HashRing {
    pub fn new<S: AsRef<str>>(node_ids: &[S], vnodes: u32) -> Self {
        let mut points: Vec<(u64, u32)> = node_ids
            .iter()
            .enumerate()
            .flat_map(|(i, id)| {
                (0..vnodes).map(move |v| (xxh3_64(format!("{}#{v}", id.as_ref()).as_bytes()), i as u32))
            })
            .collect();
        points.sort_unstable();
        Self { points }
    }

    /// Index (in the `node_ids` given to `new`) of the node owning `key`.
    pub fn node_for(&self, key: &[u8]) -> u32 {
        let h = xxh3_64(key);
        let i = self.points.partition_point(|(p, _)| *p < h);
        self.points[i % self.points.len()].1
    }
}

/// Jump consistent hash (Lamping and Veach, 2014): the bucket in
/// `0..buckets` for a 64-bit key. Only the highest buckets can be removed.
pub fn jump_consistent_hash(mut key: u64, buckets: u32) -> u32 {
    let (mut b, mut j) = (-1i64, 0i64);
    while j < i64::from(buckets) {
        b = j;
        key = key.wrapping_mul(2_862_933_555_777_941_757).wrapping_add(1);
        j = ((b + 1) as f64 * ((1u64 << 31) as f64 / ((key >> 33) + 1) as f64)) as i64;
    }
    b as u32
}

/// The 64-bit key jump hash is given for a user id.
pub fn jump_key(user: &[u8]) -> u64 {
    xxh3_64_with_seed(user, 0x6a75_6d70)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jump_hash_reference_values() {
        // From the paper's reference implementation (and Guava's tests):
        // a key always lands in bucket 0 of 1, and stays put or moves to the
        // new bucket when one is added.
        for key in [0u64, 1, 0xdead_beef, u64::MAX] {
            assert_eq!(jump_consistent_hash(key, 1), 0);
            for n in 1..50 {
                let (a, b) = (jump_consistent_hash(key, n), jump_consistent_hash(key, n + 1));
                assert!(a < n && (b == a || b == n), "key {key} n {n}: {a} -> {b}");
            }
        }
    }

    #[test]
    fn jump_hash_spreads_evenly() {
        let mut counts = [0u32; 10];
        for k in 0..100_000u64 {
            counts[jump_consistent_hash(jump_key(&k.to_le_bytes()), 10) as usize] += 1;
        }
        assert!(counts.iter().all(|c| (9_000..11_000).contains(c)), "{counts:?}");
    }

    #[test]
    fn ring_moves_keys_only_to_an_added_node() {
        let ids: Vec<String> = (0..5).map(|i| format!("n{i}")).collect();
        let before = HashRing::new(&ids, 160);
        let mut more = ids.clone();
        more.push("n5".into());
        let after = HashRing::new(&more, 160);
        let mut moved = 0;
        for k in 0..10_000u32 {
            let key = k.to_le_bytes();
            let (a, b) = (before.node_for(&key), after.node_for(&key));
            if a != b {
                assert_eq!(b, 5);
                moved += 1;
            }
        }
        assert!((1_000..2_500).contains(&moved), "{moved}");
    }
}
