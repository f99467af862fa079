//! Where the client is in its user's messages: the last id it delivered
//! (the whole dedupe is one comparison, `rtc_core::protocol::is_new`) and
//! the first welcome's `live_from`, which together name the resume point of
//! the next connect (`rtc_core::protocol::resume_point`).

use rtc_core::protocol::{MessageId, is_new, resume_point};

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Cursor {
    last: Option<MessageId>,
    live_from: Option<MessageId>,
}

impl Cursor {
    /// Starts after `last` (an id the application processed before), or
    /// from nothing.
    pub(crate) fn new(last: Option<MessageId>) -> Self {
        Self { last, live_from: None }
    }

    #[cfg(test)]
    pub(crate) fn last_id(&self) -> Option<MessageId> {
        self.last
    }

    /// Whether `id` is new; a new id becomes the last one.
    pub(crate) fn accept(&mut self, id: MessageId) -> bool {
        let new = is_new(self.last, id);
        if new {
            self.last = Some(id);
        }
        new
    }

    /// Notes a welcome's `live_from`; only the first one counts (a later
    /// session starts live after messages the first one may not have
    /// delivered).
    pub(crate) fn welcomed(&mut self, live_from: MessageId) {
        self.live_from.get_or_insert(live_from);
    }

    /// What the connect URL adds after the token: `&last_id=P:O`,
    /// `&from_id=P:O` or nothing (a first connect).
    pub(crate) fn query(&self) -> String {
        resume_point(self.last, self.live_from).map(|(key, id)| format!("&{key}={id}")).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> MessageId {
        s.parse().unwrap()
    }

    #[test]
    fn only_ids_above_the_last_are_new() {
        let mut c = Cursor::new(Some(id("3:10")));
        assert!(!c.accept(id("3:10")), "the same id again");
        assert!(!c.accept(id("3:2")), "an older id");
        assert_eq!(c.last_id(), Some(id("3:10")), "a duplicate does not move the last id");
        assert!(c.accept(id("3:11")));
        assert!(c.accept(id("3:15")));
        assert!(!c.accept(id("3:12")), "below the last one, even if never seen");
        assert_eq!(c.last_id(), Some(id("3:15")));
        // Another partition (the partition count changed): starts over there.
        assert!(c.accept(id("4:1")));
        assert_eq!(c.last_id(), Some(id("4:1")));
        let mut fresh = Cursor::new(None);
        assert!(fresh.accept(id("0:0")));
    }

    #[test]
    fn the_resume_point_is_the_last_id_else_the_first_live_from() {
        let mut c = Cursor::new(None);
        assert_eq!(c.query(), "", "a first connect resumes nothing");
        c.welcomed(id("3:7"));
        c.welcomed(id("3:9"));
        assert_eq!(c.query(), "&from_id=3:7", "the first welcome's live_from, kept");
        assert!(c.accept(id("3:8")));
        assert_eq!(c.query(), "&last_id=3:8");
        let mut resumed = Cursor::new(Some(id("5:2")));
        resumed.welcomed(id("5:40"));
        assert_eq!(resumed.query(), "&last_id=5:2", "a last id wins over live_from");
    }
}
