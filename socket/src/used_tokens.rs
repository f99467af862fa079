//! Connect tokens this node has admitted, kept until they expire: a token
//! opens one session only. A token seen again (copied from a log, a proxy,
//! a browser's history, or replayed by whoever captured the URL) is
//! refused as `token_reused`, and the client asks the load balancer for a
//! fresh one, as it does for every connect.
//!
//! Memory is bounded twice: an entry lives only until its token expires
//! (`RTC_TOKEN_TTL_MS` on the load balancer, 10 s by default), and the
//! record holds at most [`MAX_USED_TOKENS`]; a node that would need more
//! refuses connects as `at_capacity` until entries expire.

use std::collections::HashMap;
use std::sync::Mutex;

/// 16-byte fingerprints and expiries: about 10 MiB at most. At a 10 s
/// token lifetime this is 26 000 connects a second, sustained, on one node.
pub const MAX_USED_TOKENS: usize = 262_144;

/// What [`UsedTokens::admit`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenUse {
    /// Never seen: recorded now.
    First,
    /// Admitted before.
    Reused,
    /// The record is full of unexpired tokens.
    Full,
}

#[derive(Debug)]
pub struct UsedTokens {
    inner: Mutex<Record>,
    limit: usize,
}

#[derive(Debug, Default)]
struct Record {
    /// Fingerprint → expiry (Unix ms, the node's clock, as tokens are checked).
    expiry: HashMap<[u8; 16], u64>,
    /// Expired entries are dropped when the record reaches this size, so
    /// the sweep costs O(1) per admission on average.
    sweep_at: usize,
    /// At the limit, the next sweep waits until then (Unix ms): a full
    /// record is not swept on every connect.
    full_until_ms: u64,
}

/// How long a full record refuses before it sweeps again.
const FULL_BACKOFF_MS: u64 = 100;

impl Default for UsedTokens {
    fn default() -> Self {
        Self::with_limit(MAX_USED_TOKENS)
    }
}

impl UsedTokens {
    pub fn with_limit(limit: usize) -> Self {
        Self { inner: Mutex::new(Record::default()), limit }
    }

    /// Records the token `fingerprint` (valid until `expires_at_ms`) as used
    /// at `now_ms`, unless it was used before or the record is full.
    pub fn admit(&self, fingerprint: [u8; 16], expires_at_ms: u64, now_ms: u64) -> TokenUse {
        let mut record = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(&expiry) = record.expiry.get(&fingerprint)
            && expiry > now_ms
        {
            return TokenUse::Reused;
        }
        // Sweep when the record doubled since the last sweep, or when it is
        // at its limit; at the limit at most every FULL_BACKOFF_MS, so a
        // full record costs one sweep per 100 ms, not one per connect.
        let at_limit = record.expiry.len() >= self.limit;
        if record.expiry.len() >= record.sweep_at || at_limit {
            if at_limit && now_ms < record.full_until_ms {
                return TokenUse::Full;
            }
            record.expiry.retain(|_, expiry| *expiry > now_ms);
            record.sweep_at = (record.expiry.len() * 2).max(1024);
            if record.expiry.len() >= self.limit {
                record.full_until_ms = now_ms.saturating_add(FULL_BACKOFF_MS);
                return TokenUse::Full;
            }
            record.full_until_ms = now_ms.saturating_add(FULL_BACKOFF_MS);
        }
        record.expiry.insert(fingerprint, expires_at_ms);
        TokenUse::First
    }

    /// Entries held now, expired or not.
    pub fn len(&self) -> usize {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).expiry.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fp(i: u32) -> [u8; 16] {
        let mut f = [0; 16];
        f[..4].copy_from_slice(&i.to_be_bytes());
        f
    }

    #[test]
    fn a_token_is_admitted_once_until_it_expires() {
        let used = UsedTokens::default();
        assert_eq!(used.admit(fp(1), 1_000, 0), TokenUse::First);
        assert_eq!(used.admit(fp(1), 1_000, 999), TokenUse::Reused);
        assert_eq!(used.admit(fp(2), 1_000, 999), TokenUse::First);
        // Expired tokens fail verification before they get here; were one
        // to reach the record, it would not count as reused.
        assert_eq!(used.admit(fp(1), 2_000, 1_000), TokenUse::First);
    }

    #[test]
    fn expired_entries_are_swept_and_the_record_never_exceeds_its_limit() {
        let used = UsedTokens::with_limit(2_000);
        for i in 0..1_500 {
            assert_eq!(used.admit(fp(i), 100, 0), TokenUse::First);
        }
        // At 100 ms all of those expired: the sweep makes room.
        for i in 1_500..3_400 {
            assert_eq!(used.admit(fp(i), 10_000, 100), TokenUse::First, "{i}");
        }
        assert!(used.len() <= 2_000, "{} entries", used.len());
        // Now 1 900 live entries and more coming: the limit holds.
        let outcomes: Vec<TokenUse> = (3_400..3_600).map(|i| used.admit(fp(i), 10_000, 200)).collect();
        assert!(outcomes.contains(&TokenUse::Full), "the record refused once full");
        assert!(used.len() <= 2_000, "{} entries", used.len());
        // Once they expire, tokens are admitted again.
        assert_eq!(used.admit(fp(9_999), 20_000, 10_000), TokenUse::First);
    }
}
