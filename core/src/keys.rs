//! Redis key names, all built from one configurable prefix (default `rtc:`),
//! so several rtc installations can share a Redis.

/// The Redis keys of one rtc installation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keys {
    prefix: String,
}

impl Default for Keys {
    fn default() -> Self {
        Self::new(crate::config::DEFAULT_KEY_PREFIX)
    }
}

impl Keys {
    pub fn new(prefix: impl Into<String>) -> Self {
        Self { prefix: prefix.into() }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Stream the socket nodes `XADD` their heartbeats to (field `hb`).
    pub fn heartbeats(&self) -> String {
        self.key("heartbeats")
    }

    /// The leader lease: holder id and fencing epoch, with a TTL.
    pub fn leader(&self) -> String {
        self.key("lb:leader")
    }

    /// Counter `INCR`ed on every lease acquisition: the fencing epoch.
    pub fn leader_epoch(&self) -> String {
        self.key("lb:epoch")
    }

    /// The current assignment JSON (fenced write by the leader).
    pub fn assignment(&self) -> String {
        self.key("assignment")
    }

    /// Pub/sub channel on which the leader announces a new assignment epoch.
    pub fn assignment_events(&self) -> String {
        self.key("assignment:events")
    }

    /// The current scale decision JSON (fenced write by the leader).
    pub fn scale_decision(&self) -> String {
        self.key("scale:decision")
    }

    fn key(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_prefix_gives_the_documented_names() {
        let k = Keys::default();
        assert_eq!(k.heartbeats(), "rtc:heartbeats");
        assert_eq!(k.leader(), "rtc:lb:leader");
        assert_eq!(k.leader_epoch(), "rtc:lb:epoch");
        assert_eq!(k.assignment(), "rtc:assignment");
        assert_eq!(k.assignment_events(), "rtc:assignment:events");
        assert_eq!(k.scale_decision(), "rtc:scale:decision");
    }

    #[test]
    fn custom_prefix_applies_to_every_key() {
        let k = Keys::new("staging:rtc:");
        assert_eq!(k.heartbeats(), "staging:rtc:heartbeats");
        assert_eq!(k.scale_decision(), "staging:rtc:scale:decision");
    }
}
