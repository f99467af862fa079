//! The Kafka Java client's default partitioner for keyed records:
//! `(murmur2(key) & 0x7fffffff) % partitions`.
//!
//! Routing depends on it: the load balancer sends a user to the owner of the
//! partition a producer in any language writes that user's messages to. The
//! rtc producers configure librdkafka with `partitioner=murmur2_random`, which
//! is the same function.

/// Kafka's `Utils.murmur2`: MurmurHash2, 32-bit, seed `0x9747b28c`, little
/// endian blocks. Returned as the Java `int` it is in Kafka.
pub fn murmur2(data: &[u8]) -> i32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;

    // Java computes `seed ^ length` on an int: the length wraps to 32 bits.
    let mut h = SEED ^ (data.len() as u32);
    let mut blocks = data.chunks_exact(4);
    for block in &mut blocks {
        let mut k = u32::from_le_bytes([block[0], block[1], block[2], block[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let tail = blocks.remainder();
    if !tail.is_empty() {
        // Fall-through switch in the original: bytes 2, 1, 0 of the tail.
        for (i, byte) in tail.iter().enumerate().rev() {
            h ^= u32::from(*byte) << (8 * i);
        }
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h as i32
}

/// The partition Kafka's default partitioner picks for `key` among
/// `partitions` partitions. `partitions` must be at least 1.
pub fn partition_for_key(key: &[u8], partitions: u32) -> u32 {
    assert!(partitions > 0, "a topic has at least one partition");
    ((murmur2(key) & 0x7fff_ffff) as u32) % partitions
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Kafka's own vectors, from `UtilsTest.testMurmur2` in the Java client.
    const JAVA_CLIENT_VECTORS: &[(&[u8], i32)] = &[
        (b"21", -973_932_308),
        (b"foobar", -790_332_482),
        (b"a-little-bit-long-string", -985_981_536),
        (b"a-little-bit-longer-string", -1_486_304_829),
        (b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8", -58_897_971),
        (b"abc", 479_470_107),
    ];

    /// librdkafka's `unittest_murmur2` vectors (checked there against Java):
    /// they cover every tail length, 0 to 3.
    const LIBRDKAFKA_VECTORS: &[(&[u8], u32)] = &[
        (b"kafka", 0xd067_cf64),
        (b"giberish123456789", 0x8f55_2b0c),
        (b"1234", 0x9fc9_7b14),
        (b"234", 0xe7c0_09ca),
        (b"34", 0x8739_30da),
        (b"4", 0x5a4b_5ca1),
        (b"PreAmbleWillBeRemoved,ThePrePartThatIs", 0x7842_4f1c),
        (b"reAmbleWillBeRemoved,ThePrePartThatIs", 0x4a62_b377),
        (b"eAmbleWillBeRemoved,ThePrePartThatIs", 0xe0e4_e09e),
        (b"AmbleWillBeRemoved,ThePrePartThatIs", 0x62b8_b43f),
        (b"", 0x106e_08d9),
    ];

    #[test]
    fn matches_the_java_client() {
        for (key, want) in JAVA_CLIENT_VECTORS {
            assert_eq!(murmur2(key), *want, "murmur2({:?})", String::from_utf8_lossy(key));
        }
    }

    #[test]
    fn matches_librdkafka() {
        for (key, want) in LIBRDKAFKA_VECTORS {
            assert_eq!(murmur2(key) as u32, *want, "murmur2({:?})", String::from_utf8_lossy(key));
        }
    }

    #[test]
    fn partitions_follow_to_positive_then_modulo() {
        // Java: Utils.toPositive(murmur2(key)) % numPartitions, worked by hand
        // from the published hashes above.
        // "21": -973932308 & 0x7fffffff = 1173551340.
        assert_eq!(partition_for_key(b"21", 360), 1_173_551_340 % 360);
        assert_eq!(partition_for_key(b"21", 360), 300);
        // "foobar": -790332482 & 0x7fffffff = 1357151166.
        assert_eq!(partition_for_key(b"foobar", 360), 1_357_151_166 % 360);
        assert_eq!(partition_for_key(b"foobar", 360), 126);
        // "abc" is positive already: 479470107 % 12 = 3.
        assert_eq!(partition_for_key(b"abc", 12), 3);
        // "kafka": 0xd067cf64 & 0x7fffffff = 0x5067cf64 = 1348980580.
        assert_eq!(partition_for_key(b"kafka", 10), 0);
        assert_eq!(partition_for_key(b"kafka", 7), 1_348_980_580 % 7);
    }

    #[test]
    fn one_partition_takes_every_key() {
        for (key, _) in LIBRDKAFKA_VECTORS {
            assert_eq!(partition_for_key(key, 1), 0);
        }
    }

    proptest::proptest! {
        #[test]
        fn partition_is_in_range(key in proptest::collection::vec(proptest::num::u8::ANY, 0..64), p in 1u32..20_000) {
            proptest::prop_assert!(partition_for_key(&key, p) < p);
        }
    }
}
