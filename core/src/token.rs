//! The connect token the load balancer hands out with a route and a socket
//! node checks before it upgrades a connection.
//!
//! Format: `v1.<claims>.<mac>`, both parts base64url without padding.
//! `claims` is compact JSON binding user, node, partition, assignment epoch
//! and expiry; `mac` is HMAC-SHA256 with the shared secret over
//! `v1.<claims>`. Verification is constant-time (via `Mac::verify_slice`)
//! and happens before the claims are parsed.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

const VERSION_PREFIX: &str = "v1.";
/// Longest token accepted: claims of a 128-byte user and a 253-byte node id
/// fit several times over; anything larger is refused before any work.
pub const MAX_TOKEN_LEN: usize = 2048;

/// What a connect token binds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectClaims {
    #[serde(rename = "u")]
    pub user: String,
    #[serde(rename = "n")]
    pub node_id: String,
    #[serde(rename = "p")]
    pub partition: u32,
    #[serde(rename = "e")]
    pub epoch: u64,
    /// Expiry, Unix milliseconds.
    #[serde(rename = "x")]
    pub expires_at_ms: u64,
    /// Random, so that two tokens minted for the same user in the same
    /// millisecond differ: a node admits each token once.
    #[serde(rename = "i", default)]
    pub nonce: u64,
}

/// What identifies a verified token among those a node has admitted: the
/// first 16 characters (96 bits) of its MAC. `None` for a token without one.
pub fn fingerprint(token: &str) -> Option<[u8; 16]> {
    let (_, mac_b64) = token.rsplit_once('.')?;
    mac_b64.as_bytes().get(..16)?.try_into().ok()
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("token is malformed: {0}")]
    Malformed(&'static str),
    #[error("token signature does not verify")]
    BadSignature,
    #[error("token expired at {expired_at_ms} (now {now_ms})")]
    Expired { expired_at_ms: u64, now_ms: u64 },
}

impl TokenError {
    /// A short, stable label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Malformed(_) => "malformed",
            Self::BadSignature => "bad_signature",
            Self::Expired { .. } => "expired",
        }
    }
}

/// Signs and verifies connect tokens with one shared secret.
#[derive(Clone)]
pub struct TokenSigner {
    mac: Hmac<Sha256>,
}

impl std::fmt::Debug for TokenSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenSigner(<secret>)")
    }
}

impl TokenSigner {
    pub fn new(secret: &[u8]) -> Self {
        // HMAC takes keys of any length; this cannot fail.
        let mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC accepts any key length");
        Self { mac }
    }

    pub fn sign(&self, claims: &ConnectClaims) -> String {
        let json = serde_json::to_vec(claims).expect("claims serialise");
        let mut token = String::with_capacity(VERSION_PREFIX.len() + json.len() * 2 + 48);
        token.push_str(VERSION_PREFIX);
        B64.encode_string(json, &mut token);
        let mut mac = self.mac.clone();
        mac.update(token.as_bytes());
        token.push('.');
        B64.encode_string(mac.finalize().into_bytes(), &mut token);
        token
    }

    /// Checks the signature, then the expiry against `now_ms`, and returns
    /// the claims. Whether the claims fit the caller (this node, an owned
    /// partition, the current epoch) is the caller's check.
    pub fn verify(&self, token: &str, now_ms: u64) -> Result<ConnectClaims, TokenError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(TokenError::Malformed("too long"));
        }
        let rest = token.strip_prefix(VERSION_PREFIX).ok_or(TokenError::Malformed("unknown version"))?;
        let (claims_b64, mac_b64) = rest.split_once('.').ok_or(TokenError::Malformed("no signature"))?;
        if claims_b64.is_empty() || mac_b64.contains('.') {
            return Err(TokenError::Malformed("wrong number of parts"));
        }
        let signed = &token[..VERSION_PREFIX.len() + claims_b64.len()];
        let mac_bytes = B64.decode(mac_b64).map_err(|_| TokenError::Malformed("signature is not base64url"))?;
        let mut mac = self.mac.clone();
        mac.update(signed.as_bytes());
        mac.verify_slice(&mac_bytes).map_err(|_| TokenError::BadSignature)?;

        let json = B64.decode(claims_b64).map_err(|_| TokenError::Malformed("claims are not base64url"))?;
        let claims: ConnectClaims =
            serde_json::from_slice(&json).map_err(|_| TokenError::Malformed("claims are not valid JSON"))?;
        if now_ms >= claims.expires_at_ms {
            return Err(TokenError::Expired { expired_at_ms: claims.expires_at_ms, now_ms });
        }
        Ok(claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims() -> ConnectClaims {
        ConnectClaims {
            user: "u1".into(),
            node_id: "socket-0".into(),
            partition: 17,
            epoch: 42,
            expires_at_ms: 2_000,
            nonce: 7,
        }
    }

    #[test]
    fn round_trip() {
        let signer = TokenSigner::new(b"secret");
        let token = signer.sign(&claims());
        assert!(token.starts_with("v1."));
        assert_eq!(signer.verify(&token, 1_999), Ok(claims()));
    }

    #[test]
    fn expired_at_and_after_expiry() {
        let signer = TokenSigner::new(b"secret");
        let token = signer.sign(&claims());
        assert_eq!(signer.verify(&token, 2_000), Err(TokenError::Expired { expired_at_ms: 2_000, now_ms: 2_000 }));
        assert!(matches!(signer.verify(&token, 9_000), Err(TokenError::Expired { .. })));
    }

    #[test]
    fn other_secret_is_a_bad_signature() {
        let token = TokenSigner::new(b"secret").sign(&claims());
        assert_eq!(TokenSigner::new(b"other").verify(&token, 0), Err(TokenError::BadSignature));
    }

    #[test]
    fn every_claim_is_bound() {
        // Swapping in the claims of another token (another node, partition,
        // epoch, user or expiry) under the original MAC must fail.
        let signer = TokenSigner::new(b"secret");
        let original = signer.sign(&claims());
        let mac = original.rsplit_once('.').unwrap().1;
        let variants = [
            ConnectClaims { user: "u2".into(), ..claims() },
            ConnectClaims { node_id: "socket-1".into(), ..claims() },
            ConnectClaims { partition: 18, ..claims() },
            ConnectClaims { epoch: 43, ..claims() },
            ConnectClaims { expires_at_ms: 9_999, ..claims() },
            ConnectClaims { nonce: 8, ..claims() },
        ];
        for forged in variants {
            let other = signer.sign(&forged);
            let forged_token = format!("{}.{mac}", other.rsplit_once('.').unwrap().0);
            assert_eq!(signer.verify(&forged_token, 0), Err(TokenError::BadSignature), "{forged:?}");
        }
    }

    #[test]
    fn tokens_differing_only_in_nonce_have_different_fingerprints() {
        let signer = TokenSigner::new(b"secret");
        let a = signer.sign(&claims());
        let b = signer.sign(&ConnectClaims { nonce: 8, ..claims() });
        assert_eq!(fingerprint(&a), fingerprint(&a.clone()));
        assert_ne!(fingerprint(&a), fingerprint(&b));
        assert_eq!(fingerprint("no-mac"), None);
        assert_eq!(fingerprint("v1.abc.short"), None);
    }

    #[test]
    fn flipped_signature_byte_is_refused() {
        let signer = TokenSigner::new(b"secret");
        let mut token = signer.sign(&claims()).into_bytes();
        let last = token.len() - 2;
        token[last] = if token[last] == b'A' { b'B' } else { b'A' };
        let token = String::from_utf8(token).unwrap();
        assert_eq!(signer.verify(&token, 0), Err(TokenError::BadSignature));
    }

    #[test]
    fn malformed_tokens() {
        let signer = TokenSigner::new(b"secret");
        let long = "v1.".to_owned() + &"a".repeat(MAX_TOKEN_LEN);
        let cases: &[(&str, &str)] = &[
            ("", "unknown version"),
            ("v2.abc.def", "unknown version"),
            ("v1.", "no signature"),
            ("v1.abc", "no signature"),
            ("v1..sig", "wrong number of parts"),
            ("v1.a.b.c", "wrong number of parts"),
            ("v1.abc.!!!", "signature is not base64url"),
            (&long, "too long"),
        ];
        for (token, why) in cases {
            assert_eq!(signer.verify(token, 0), Err(TokenError::Malformed(why)), "{token:?}");
        }
    }

    #[test]
    fn signed_garbage_claims_are_malformed_not_a_panic() {
        // A token whose MAC is right but whose claims are not ours (a secret
        // shared with something else) is reported as malformed.
        let secret = b"secret";
        let body = format!("v1.{}", B64.encode(b"{\"not\":\"claims\"}"));
        let mut mac = Hmac::<Sha256>::new_from_slice(secret).unwrap();
        mac.update(body.as_bytes());
        let token = format!("{body}.{}", B64.encode(mac.finalize().into_bytes()));
        assert_eq!(TokenSigner::new(secret).verify(&token, 0), Err(TokenError::Malformed("claims are not valid JSON")));
    }
}
