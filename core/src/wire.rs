//! Parsing of the JSON documents exchanged through Redis.
//!
//! Every document is size-limited before it is parsed, unknown fields are
//! ignored (so newer writers can add fields), and every failure is a typed
//! [`ContractError`] that names the field at fault.

use serde::de::DeserializeOwned;

/// Largest document accepted from Redis (heartbeat, decision). Assignments of
/// large partition counts are bigger and use their own limit.
pub const MAX_DOCUMENT_BYTES: usize = 64 * 1024;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ContractError {
    #[error("document is {size} bytes, over the {limit} byte limit")]
    TooLarge { size: usize, limit: usize },
    #[error("document is not valid JSON: {0}")]
    Json(String),
    #[error("missing required field `{0}`")]
    MissingField(String),
    #[error("field `{field}` is invalid: {reason}")]
    InvalidField { field: String, reason: String },
    #[error("unsupported contract version {0} (this build speaks 1)")]
    UnsupportedVersion(u64),
}

impl ContractError {
    pub(crate) fn invalid(field: &str, reason: impl Into<String>) -> Self {
        Self::InvalidField { field: field.to_owned(), reason: reason.into() }
    }

    /// Every value [`kind`](Self::kind) returns, so metrics can register
    /// each series up front.
    pub const KINDS: [&'static str; 5] = ["too_large", "json", "missing_field", "invalid_field", "version"];

    /// A short, stable label for metrics (`reason` label values).
    pub fn kind(&self) -> &'static str {
        match self {
            Self::TooLarge { .. } => "too_large",
            Self::Json(_) => "json",
            Self::MissingField(_) => "missing_field",
            Self::InvalidField { .. } => "invalid_field",
            Self::UnsupportedVersion(_) => "version",
        }
    }
}

/// Parses `bytes` as `T`, mapping serde's errors onto [`ContractError`] with
/// the path of the offending field.
pub(crate) fn parse<T: DeserializeOwned>(bytes: &[u8], limit: usize) -> Result<T, ContractError> {
    if bytes.len() > limit {
        return Err(ContractError::TooLarge { size: bytes.len(), limit });
    }
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(de).map_err(|err| {
        let path = err.path().to_string();
        let inner = err.into_inner();
        let message = inner.to_string();
        // serde's derive reports a missing field as "missing field `name`"
        // at the path of the enclosing object.
        if let Some(rest) = message.strip_prefix("missing field `") {
            let name = rest.split('`').next().unwrap_or_default();
            let field = if path == "." { name.to_owned() } else { format!("{path}.{name}") };
            return ContractError::MissingField(field);
        }
        // Errors inside a field (wrong type, bad map key, bad number) name
        // it; "?" stands for a key that could not be read at all.
        let field = path.trim_end_matches(".?");
        if (inner.is_data() || inner.is_syntax()) && field != "." && field != "?" {
            return ContractError::InvalidField { field: field.to_owned(), reason: strip_position(&message) };
        }
        ContractError::Json(message)
    })
}

/// Checks the `v` field every document carries.
pub(crate) fn check_version(v: u64) -> Result<(), ContractError> {
    if v == u64::from(crate::CONTRACT_VERSION) { Ok(()) } else { Err(ContractError::UnsupportedVersion(v)) }
}

pub(crate) fn check_fraction(field: &str, value: f64) -> Result<(), ContractError> {
    if value.is_finite() && (0.0..=1.0).contains(&value) {
        Ok(())
    } else {
        Err(ContractError::invalid(field, format!("{value} is not a fraction in 0..=1")))
    }
}

pub(crate) fn check_non_negative(field: &str, value: f64) -> Result<(), ContractError> {
    if value.is_finite() && value >= 0.0 {
        Ok(())
    } else {
        Err(ContractError::invalid(field, format!("{value} is not a finite non-negative number")))
    }
}

fn strip_position(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(i) => message[..i].to_owned(),
        None => message.to_owned(),
    }
}

/// A versioned JSON document of the Redis contract. `from_json` is the one
/// way in: size limit, parse, version check, then the type's own checks.
pub trait Document: serde::Serialize + DeserializeOwned {
    /// Size limit for one document of this type.
    const MAX_BYTES: usize = MAX_DOCUMENT_BYTES;

    /// The document's `v` field.
    fn version(&self) -> u32;

    /// Range and consistency checks beyond what the types enforce.
    fn validate(&self) -> Result<(), ContractError>;

    fn from_json(bytes: &[u8]) -> Result<Self, ContractError> {
        let doc: Self = parse(bytes, Self::MAX_BYTES)?;
        check_version(u64::from(doc.version()))?;
        doc.validate()?;
        Ok(doc)
    }

    fn to_json(&self) -> String {
        serde_json::to_string(self).expect("contract documents always serialise")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_lists_every_kind() {
        let all = [
            ContractError::TooLarge { size: 2, limit: 1 },
            ContractError::Json("x".into()),
            ContractError::MissingField("v".into()),
            ContractError::invalid("v", "x"),
            ContractError::UnsupportedVersion(2),
        ];
        let kinds: Vec<_> = all.iter().map(ContractError::kind).collect();
        assert_eq!(kinds, ContractError::KINDS);
    }
}
