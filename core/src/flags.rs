//! A command line built up in code. The services' test builders
//! (`rtc_socket::testing::TestNode`, `rtc_load_balancer::testing::TestLb`)
//! start from base flags and add what each test needs; the services parse
//! with clap's `args_override_self`, so a later flag wins.

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Flags(Vec<String>);

impl Flags {
    /// `--flag value` pairs.
    pub fn new(pairs: &[(&str, &str)]) -> Self {
        Self(pairs.iter().flat_map(|(f, v)| [f.to_string(), v.to_string()]).collect())
    }

    /// Adds `flag value`.
    pub fn push(&mut self, flag: &str, value: &str) {
        self.0.extend([flag.to_owned(), value.to_owned()]);
    }

    /// Adds raw arguments (flags with or without values).
    pub fn extend(&mut self, raw: &[&str]) {
        self.0.extend(raw.iter().map(|s| s.to_string()));
    }

    pub fn contains(&self, flag: &str) -> bool {
        self.0.iter().any(|a| a == flag)
    }

    pub fn as_slice(&self) -> &[String] {
        &self.0
    }

    pub fn into_vec(self) -> Vec<String> {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_then_additions_in_order() {
        let mut flags = Flags::new(&[("--a", "1")]);
        flags.push("--b", "2");
        flags.extend(&["--c"]);
        assert_eq!(flags.as_slice(), ["--a", "1", "--b", "2", "--c"]);
        assert!(flags.contains("--b") && !flags.contains("2x"));
    }
}
