//! Who may ask for a route: a bearer JWT (HS256 secret or RS256 public key)
//! whose `sub` is the user, or nobody checks (`--auth none`). `exp` is
//! always checked; `iss` and `aud` when configured.

use jsonwebtoken::{Algorithm, DecodingKey, Validation, decode};
use serde::Deserialize;

use crate::config::{AuthMode, ServeArgs};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    #[error("missing bearer token")]
    Missing,
    #[error("invalid token: {0}")]
    Invalid(String),
    #[error("token subject does not match the user")]
    WrongUser,
}

#[derive(Debug, Deserialize)]
struct Claims {
    sub: String,
}

pub enum Auth {
    None,
    Jwt(Box<Jwt>),
}

pub struct Jwt {
    key: DecodingKey,
    validation: Validation,
}

impl Auth {
    pub fn from_args(args: &ServeArgs) -> anyhow::Result<Self> {
        match args.auth {
            AuthMode::None => {
                tracing::warn!("RTC_AUTH=none: any client may get any user's route; never use this in production");
                Ok(Auth::None)
            }
            AuthMode::Jwt => {
                let auth = match (&args.jwt_secret, &args.jwt_public_key) {
                    (Some(secret), None) => Self::hs256(secret.as_bytes()),
                    (None, Some(path)) => Self::rs256_pem(&std::fs::read(path)?)?,
                    _ => anyhow::bail!("--auth jwt needs exactly one of RTC_JWT_SECRET and RTC_JWT_PUBLIC_KEY"),
                };
                if args.jwt_issuer.is_none() || args.jwt_audience.is_none() {
                    tracing::warn!(
                        "RTC_JWT_ISSUER or RTC_JWT_AUDIENCE unset: tokens of any issuer or audience sharing the key are taken"
                    );
                }
                Ok(auth.expecting(args.jwt_issuer.as_deref(), args.jwt_audience.as_deref()))
            }
        }
    }

    /// Requires `iss` to be `issuer` and `aud` to include `audience`, each
    /// when given.
    pub fn expecting(mut self, issuer: Option<&str>, audience: Option<&str>) -> Self {
        if let Auth::Jwt(jwt) = &mut self {
            if let Some(issuer) = issuer {
                jwt.validation.set_issuer(&[issuer]);
                jwt.validation.required_spec_claims.insert("iss".to_owned());
            }
            if let Some(audience) = audience {
                jwt.validation.set_audience(&[audience]);
                jwt.validation.validate_aud = true;
                jwt.validation.required_spec_claims.insert("aud".to_owned());
            }
        }
        self
    }

    pub fn hs256(secret: &[u8]) -> Self {
        Auth::Jwt(Box::new(Jwt { key: DecodingKey::from_secret(secret), validation: validation(Algorithm::HS256) }))
    }

    pub fn rs256_pem(pem: &[u8]) -> anyhow::Result<Self> {
        Ok(Auth::Jwt(Box::new(Jwt { key: DecodingKey::from_rsa_pem(pem)?, validation: validation(Algorithm::RS256) })))
    }

    pub fn is_on(&self) -> bool {
        matches!(self, Auth::Jwt(_))
    }

    /// The user the request may route: the JWT's `sub`, which must equal
    /// `user` when the query names one.
    pub fn user(&self, authorization: Option<&str>, user: Option<&str>) -> Result<Option<String>, AuthError> {
        match self {
            Auth::None => Ok(user.map(str::to_owned)),
            Auth::Jwt(jwt) => {
                let token = authorization.and_then(|h| h.strip_prefix("Bearer ")).ok_or(AuthError::Missing)?;
                let data = decode::<Claims>(token, &jwt.key, &jwt.validation)
                    .map_err(|e| AuthError::Invalid(e.to_string()))?;
                match user {
                    Some(u) if u != data.claims.sub => Err(AuthError::WrongUser),
                    _ => Ok(Some(data.claims.sub)),
                }
            }
        }
    }
}

/// `exp` required and checked; no audience check unless configured
/// (jsonwebtoken otherwise refuses every token that carries an `aud`).
fn validation(algorithm: Algorithm) -> Validation {
    let mut v = Validation::new(algorithm);
    v.validate_aud = false;
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{EncodingKey, Header, encode};

    fn jwt(secret: &[u8], sub: &str, exp: u64) -> String {
        #[derive(serde::Serialize)]
        struct C<'a> {
            sub: &'a str,
            exp: u64,
        }
        encode(&Header::new(Algorithm::HS256), &C { sub, exp }, &EncodingKey::from_secret(secret)).unwrap()
    }

    #[test]
    fn hs256_subject_must_match() {
        let auth = Auth::hs256(b"s3cret");
        let far = 4_000_000_000;
        let good = format!("Bearer {}", jwt(b"s3cret", "alice", far));
        assert_eq!(auth.user(Some(&good), Some("alice")), Ok(Some("alice".into())));
        assert_eq!(auth.user(Some(&good), None), Ok(Some("alice".into())));
        assert_eq!(auth.user(Some(&good), Some("bob")), Err(AuthError::WrongUser));
        assert_eq!(auth.user(None, Some("alice")), Err(AuthError::Missing));
        assert_eq!(auth.user(Some("Basic x"), Some("alice")), Err(AuthError::Missing));
        let forged = format!("Bearer {}", jwt(b"other", "alice", far));
        assert!(matches!(auth.user(Some(&forged), Some("alice")), Err(AuthError::Invalid(_))));
        let expired = format!("Bearer {}", jwt(b"s3cret", "alice", 1));
        assert!(matches!(auth.user(Some(&expired), Some("alice")), Err(AuthError::Invalid(_))));
        assert_eq!(Auth::None.user(None, Some("x")), Ok(Some("x".into())));
    }

    #[test]
    fn issuer_and_audience_are_checked_when_configured() {
        #[derive(serde::Serialize)]
        struct C<'a> {
            sub: &'a str,
            exp: u64,
            #[serde(skip_serializing_if = "Option::is_none")]
            iss: Option<&'a str>,
            #[serde(skip_serializing_if = "Option::is_none")]
            aud: Option<&'a str>,
        }
        let token = |iss, aud| {
            let claims = C { sub: "alice", exp: 4_000_000_000, iss, aud };
            format!(
                "Bearer {}",
                encode(&Header::new(Algorithm::HS256), &claims, &EncodingKey::from_secret(b"k")).unwrap()
            )
        };
        let open = Auth::hs256(b"k");
        assert!(open.user(Some(&token(Some("other"), Some("chat"))), None).is_ok(), "unchecked unless configured");
        let strict = Auth::hs256(b"k").expecting(Some("https://id.example"), Some("rtc"));
        assert_eq!(strict.user(Some(&token(Some("https://id.example"), Some("rtc"))), None), Ok(Some("alice".into())));
        for (iss, aud) in [
            (Some("https://evil.example"), Some("rtc")),
            (Some("https://id.example"), Some("chat")),
            (None, Some("rtc")),
            (Some("https://id.example"), None),
        ] {
            assert!(matches!(strict.user(Some(&token(iss, aud)), None), Err(AuthError::Invalid(_))), "{iss:?} {aud:?}");
        }
    }
}
