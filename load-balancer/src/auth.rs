//! Who may ask for a route: a bearer JWT (HS256 secret or RS256 public key)
//! whose `sub` is the user, or nobody checks (`--auth none`).

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
            AuthMode::Jwt => match (&args.jwt_secret, &args.jwt_public_key) {
                (Some(secret), None) => Ok(Self::hs256(secret.as_bytes())),
                (None, Some(path)) => Self::rs256_pem(&std::fs::read(path)?),
                _ => anyhow::bail!("--auth jwt needs exactly one of RTC_JWT_SECRET and RTC_JWT_PUBLIC_KEY"),
            },
        }
    }

    pub fn hs256(secret: &[u8]) -> Self {
        Auth::Jwt(Box::new(Jwt {
            key: DecodingKey::from_secret(secret),
            validation: Validation::new(Algorithm::HS256),
        }))
    }

    pub fn rs256_pem(pem: &[u8]) -> anyhow::Result<Self> {
        Ok(Auth::Jwt(Box::new(Jwt {
            key: DecodingKey::from_rsa_pem(pem)?,
            validation: Validation::new(Algorithm::RS256),
        })))
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
}
