//! The figures a policy is judged by, tallied second by second.

use serde::Serialize;

/// A direction change within this long of the previous action is a flap.
pub const FLAP_WINDOW_MS: u64 = 10 * 60 * 1000;

/// The figures of one policy on one trace (`--json` field names).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Figures {
    /// Users over the capacity of the node that owns them (or with no
    /// owner), plus users away reconnecting after a drop or a move, summed
    /// over seconds.
    pub unserved_user_seconds: f64,
    /// The most users unserved in one second (a user away for a 200 ms move
    /// counts 0.2).
    pub peak_unserved: f64,
    /// Seconds with a node above 90 % of its capacity.
    pub overload_seconds: u64,
    /// Pods that existed (starting, serving or draining), in hours.
    pub node_hours: f64,
    /// Changes of the workload's replica count.
    pub scale_actions: u32,
    /// Scale actions in the opposite direction of the previous one, within
    /// 10 minutes of it.
    pub flaps: u32,
    /// Users told to move because their partition changed owner.
    pub users_moved: f64,
    /// Users on pods deleted without a drain.
    pub users_dropped: f64,
    /// The longest stretch with more users than the serving nodes' capacity:
    /// from the start of a surge to enough ready capacity.
    pub surge_to_capacity_s: u64,
}

/// One second of the cluster.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Second {
    pub users: f64,
    /// Serving nodes × capacity.
    pub ready_capacity: f64,
    /// Users refused for capacity, or whose partition has no owner.
    pub over_capacity: f64,
    /// Users away reconnecting, times the part of the second they are away
    /// (their user-seconds are counted when they leave).
    pub away: f64,
    pub overloaded: bool,
    pub pods: u32,
}

/// The running tally, and the series the chart draws.
#[derive(Debug, Clone, Default)]
pub struct Tally {
    pub figures: Figures,
    node_seconds: u64,
    last_action: Option<(u64, bool)>,
    short_since: Option<u64>,
    seconds: u64,
    /// Per second: serving capacity and unserved users.
    pub ready_capacity: Vec<f64>,
    pub unserved: Vec<f64>,
}

impl Tally {
    pub fn second(&mut self, s: Second) {
        let f = &mut self.figures;
        f.unserved_user_seconds += s.over_capacity;
        let unserved = s.over_capacity + s.away;
        f.peak_unserved = f.peak_unserved.max(unserved);
        f.overload_seconds += u64::from(s.overloaded);
        self.node_seconds += u64::from(s.pods);
        f.node_hours = self.node_seconds as f64 / 3600.0;
        if s.users > s.ready_capacity {
            let since = *self.short_since.get_or_insert(self.seconds);
            f.surge_to_capacity_s = f.surge_to_capacity_s.max(self.seconds + 1 - since);
        } else {
            self.short_since = None;
        }
        self.seconds += 1;
        self.ready_capacity.push(s.ready_capacity);
        self.unserved.push(unserved);
    }

    pub fn scale_action(&mut self, now_ms: u64, from: u32, to: u32) {
        let up = to > from;
        self.figures.scale_actions += 1;
        if let Some((at, was_up)) = self.last_action
            && was_up != up
            && now_ms.saturating_sub(at) < FLAP_WINDOW_MS
        {
            self.figures.flaps += 1;
        }
        self.last_action = Some((now_ms, up));
    }

    pub fn dropped(&mut self, users: f64, away_ms: u64) {
        self.figures.users_dropped += users;
        self.figures.unserved_user_seconds += users * away_ms as f64 / 1000.0;
    }

    pub fn moved(&mut self, users: f64, away_ms: u64) {
        self.figures.users_moved += users;
        self.figures.unserved_user_seconds += users * away_ms as f64 / 1000.0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn second(users: f64, ready_capacity: f64) -> Second {
        let over_capacity = (users - ready_capacity).max(0.0);
        Second { users, ready_capacity, over_capacity, away: 0.0, overloaded: false, pods: 2 }
    }

    #[test]
    fn flaps_are_direction_changes_within_ten_minutes() {
        let mut t = Tally::default();
        t.scale_action(0, 2, 4);
        t.scale_action(60_000, 4, 6);
        t.scale_action(120_000, 6, 5); // down 1 min after up: a flap
        t.scale_action(120_000 + FLAP_WINDOW_MS, 5, 7); // 10 min later: not one
        assert_eq!((t.figures.scale_actions, t.figures.flaps), (4, 1));
    }

    #[test]
    fn a_surge_lasts_until_the_serving_capacity_is_enough() {
        let mut t = Tally::default();
        for s in [second(100.0, 200.0), second(300.0, 200.0), second(300.0, 200.0), second(300.0, 400.0)] {
            t.second(s);
        }
        t.second(second(500.0, 400.0));
        assert_eq!(t.figures.surge_to_capacity_s, 2);
        assert_eq!(t.figures.unserved_user_seconds, 300.0);
        assert_eq!(t.figures.peak_unserved, 100.0);
        assert_eq!(t.figures.node_hours, 10.0 / 3600.0);
        t.dropped(50.0, 5000);
        t.moved(10.0, 200);
        assert_eq!(t.figures.unserved_user_seconds, 300.0 + 250.0 + 2.0);
        assert_eq!((t.figures.users_dropped, t.figures.users_moved), (50.0, 10.0));
    }
}
