//! Identifier rules shared by every service.

use crate::ContractError;

/// Longest node id: a Kubernetes pod name (DNS subdomain) is at most 253.
pub const MAX_NODE_ID_LEN: usize = 253;
/// Longest user id accepted anywhere in the system.
pub const MAX_USER_ID_LEN: usize = 128;

/// A node id is 1..=253 characters of `[A-Za-z0-9._-]`, the characters of
/// pod names and host names, so it is safe in URLs, metrics labels and logs.
pub fn validate_node_id(id: &str) -> Result<(), ContractError> {
    if id.is_empty() || id.len() > MAX_NODE_ID_LEN {
        return Err(ContractError::invalid("node_id", format!("length {} is not in 1..={MAX_NODE_ID_LEN}", id.len())));
    }
    if let Some(c) = id.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))) {
        return Err(ContractError::invalid("node_id", format!("character {c:?} is not one of [A-Za-z0-9._-]")));
    }
    Ok(())
}

/// A user id is 1..=128 bytes of printable characters (no control characters,
/// no whitespace other than the plain space).
pub fn validate_user_id(id: &str) -> Result<(), ContractError> {
    if id.is_empty() || id.len() > MAX_USER_ID_LEN {
        return Err(ContractError::invalid("user", format!("length {} is not in 1..={MAX_USER_ID_LEN}", id.len())));
    }
    if let Some(c) = id.chars().find(|c| c.is_control() || (c.is_whitespace() && *c != ' ')) {
        return Err(ContractError::invalid("user", format!("character {c:?} is not printable")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_ids() {
        for ok in ["socket-0", "a", "socket-7d9f.b_c", &"x".repeat(253)] {
            assert_eq!(validate_node_id(ok), Ok(()), "{ok}");
        }
        for bad in ["", "sock et", "socket/0", "ü", &"x".repeat(254)] {
            assert!(validate_node_id(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn user_ids() {
        for ok in ["u1", "alice@example.com", "名前", "with space", &"u".repeat(128)] {
            assert_eq!(validate_user_id(ok), Ok(()), "{ok}");
        }
        for bad in ["", "tab\there", "nl\n", "nul\0", &"u".repeat(129)] {
            assert!(validate_user_id(bad).is_err(), "{bad:?}");
        }
    }
}
