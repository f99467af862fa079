//! The traffic a scaling policy is judged on: users online and messages per
//! second, one sample a second.
//!
//! - Built-in shapes ([`Shape`]), scaled by a base user count, with seeded
//!   noise of ±2 % so that no policy is tuned to a perfectly smooth curve.
//! - A CSV of `seconds,users,msgs_per_s` ([`Trace::from_csv`]), held
//!   between its rows.
//! - The per-second timeline the load generator writes in `scripts/demo`
//!   ([`Trace::from_timeline`]), so a real run can be replayed.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Deserialize;

/// One second of traffic.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    pub users: f64,
    pub msgs_per_s: f64,
}

/// Traffic over time: `samples[t]` is second `t`.
#[derive(Debug, Clone, PartialEq)]
pub struct Trace {
    pub name: String,
    pub samples: Vec<Sample>,
}

/// How the built-in shapes are scaled.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Scale {
    /// Users at the shape's multiplier 1 (its trough or starting level).
    pub base_users: f64,
    /// Messages per second each user's traffic adds.
    pub msgs_per_user: f64,
    pub seed: u64,
}

impl Default for Scale {
    fn default() -> Self {
        Self { base_users: 1000.0, msgs_per_user: 0.2, seed: 1 }
    }
}

/// The built-in traffic shapes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// 24 h compressed to 2 h: a night trough and two daily peaks, ×6
    /// between trough and peak.
    Diurnal,
    /// ×10 within 60 s, then a decay over 20 min.
    FlashCrowd,
    /// A 4-minute sawtooth between ×1 and ×4, for an hour.
    Sawtooth,
    /// ×10 over an hour.
    SlowRamp,
    /// A plateau that drops to 5 % and stays there.
    IdleDrop,
}

impl Shape {
    pub const ALL: [Shape; 5] = [Shape::Diurnal, Shape::FlashCrowd, Shape::Sawtooth, Shape::SlowRamp, Shape::IdleDrop];

    /// The name in tables, `--json` and `--trace`.
    pub fn name(self) -> &'static str {
        match self {
            Shape::Diurnal => "diurnal",
            Shape::FlashCrowd => "flash-crowd",
            Shape::Sawtooth => "sawtooth",
            Shape::SlowRamp => "slow-ramp",
            Shape::IdleDrop => "idle-drop",
        }
    }

    pub fn from_name(name: &str) -> Option<Shape> {
        Shape::ALL.into_iter().find(|s| s.name() == name)
    }

    fn seconds(self) -> u64 {
        match self {
            Shape::Diurnal => 2 * 3600,
            Shape::FlashCrowd => 31 * 60,
            Shape::Sawtooth | Shape::IdleDrop => 3600,
            Shape::SlowRamp => 80 * 60,
        }
    }

    /// The multiplier of the base user count at second `t`, before noise.
    pub fn multiplier(self, t: f64) -> f64 {
        match self {
            Shape::Diurnal => {
                // The hour of a compressed day; peaks at 12:30 and 20:30,
                // each a bump 2.5 hours wide, on a night-time floor.
                let hour = t / self.seconds() as f64 * 24.0;
                let bump = |centre: f64| (-((hour - centre) / 2.5).powi(2)).exp();
                1.0 + 5.0 * bump(12.5).max(bump(20.5))
            }
            Shape::FlashCrowd => {
                let (calm, surge, decay) = (300.0, 60.0, 1200.0);
                if t < calm {
                    1.0
                } else if t < calm + surge {
                    1.0 + 9.0 * (t - calm) / surge
                } else if t < calm + surge + decay {
                    // Back to the base over the decay, fastest at first.
                    let left = 1.0 - (t - calm - surge) / decay;
                    1.0 + 9.0 * left * left
                } else {
                    1.0
                }
            }
            Shape::Sawtooth => 1.0 + 3.0 * (t % 240.0) / 240.0,
            Shape::SlowRamp => 1.0 + 9.0 * ((t - 600.0) / 3600.0).clamp(0.0, 1.0),
            Shape::IdleDrop => {
                let (plateau, drop) = (1200.0, 60.0);
                let low = 0.05 * 6.0;
                if t < plateau { 6.0 } else { 6.0 - (6.0 - low) * ((t - plateau) / drop).min(1.0) }
            }
        }
    }

    pub fn trace(self, scale: &Scale) -> Trace {
        let mut rng = StdRng::seed_from_u64(scale.seed ^ self.seconds());
        let samples = (0..self.seconds())
            .map(|t| {
                let users = (scale.base_users * self.multiplier(t as f64) * rng.random_range(0.98..1.02)).round();
                Sample { users, msgs_per_s: users * scale.msgs_per_user }
            })
            .collect();
        Trace { name: self.name().to_owned(), samples }
    }
}

#[derive(Debug, PartialEq, thiserror::Error)]
pub enum TraceError {
    #[error("line {line}: {reason}")]
    Line { line: usize, reason: String },
    #[error("no samples")]
    Empty,
}

/// A line of the load generator's `--timeline` (other fields ignored).
#[derive(Deserialize)]
struct TimelineLine {
    elapsed_s: f64,
    target_users: f64,
    messages_sent_per_s: f64,
}

impl Trace {
    /// `seconds,users,msgs_per_s` rows, seconds increasing, an optional
    /// header; each row holds until the next.
    pub fn from_csv(name: &str, text: &str) -> Result<Trace, TraceError> {
        let mut rows = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || (i == 0 && line.starts_with(|c: char| c.is_ascii_alphabetic())) {
                continue;
            }
            let bad = |reason: String| TraceError::Line { line: i + 1, reason };
            let fields: Vec<&str> = line.split(',').map(str::trim).collect();
            let [seconds, users, msgs] = fields[..] else {
                return Err(bad(format!("expected seconds,users,msgs_per_s, got {line:?}")));
            };
            let number = |what: &str, v: &str| match v.parse::<f64>() {
                Ok(x) if x.is_finite() && x >= 0.0 => Ok(x),
                _ => Err(bad(format!("{what} is not a number >= 0: {v:?}"))),
            };
            let row = (number("seconds", seconds)?, number("users", users)?, number("msgs_per_s", msgs)?);
            if rows.last().is_some_and(|&(last, _, _)| row.0 <= last) {
                return Err(bad(format!("seconds must increase: {}", row.0)));
            }
            rows.push(row);
        }
        Self::held(name, &rows)
    }

    /// The load generator's per-second timeline (JSON lines): the users it
    /// wanted online (its profile, the offered load) and its send rate.
    pub fn from_timeline(name: &str, text: &str) -> Result<Trace, TraceError> {
        let mut rows = Vec::new();
        for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
            let l: TimelineLine =
                serde_json::from_str(line).map_err(|e| TraceError::Line { line: i + 1, reason: e.to_string() })?;
            if rows.last().is_none_or(|&(last, _, _)| l.elapsed_s > last) {
                rows.push((l.elapsed_s, l.target_users, l.messages_sent_per_s));
            }
        }
        Self::held(name, &rows)
    }

    /// One sample a second from rows of `(seconds, users, msgs_per_s)`, each
    /// holding until the next; the first starts at second 0.
    fn held(name: &str, rows: &[(f64, f64, f64)]) -> Result<Trace, TraceError> {
        let Some(&(end, _, _)) = rows.last() else { return Err(TraceError::Empty) };
        let start = rows[0].0;
        let mut samples = Vec::with_capacity((end - start) as usize + 1);
        let mut row = 0;
        for t in 0..=(end - start).round() as u64 {
            while row + 1 < rows.len() && rows[row + 1].0 - start <= t as f64 {
                row += 1;
            }
            let (_, users, msgs_per_s) = rows[row];
            samples.push(Sample { users, msgs_per_s });
        }
        Ok(Trace { name: name.to_owned(), samples })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn users(trace: &Trace) -> Vec<f64> {
        trace.samples.iter().map(|s| s.users).collect()
    }

    fn max(v: &[f64]) -> f64 {
        v.iter().copied().fold(f64::MIN, f64::max)
    }

    fn min(v: &[f64]) -> f64 {
        v.iter().copied().fold(f64::MAX, f64::min)
    }

    #[test]
    fn the_shapes_are_what_their_names_say() {
        let scale = Scale::default();
        let diurnal = users(&Shape::Diurnal.trace(&scale));
        assert_eq!(diurnal.len(), 7200, "24 h in 2 h");
        let ratio = max(&diurnal) / min(&diurnal);
        assert!((5.5..6.5).contains(&ratio), "trough to peak ×6: {ratio}");
        // Two peaks: local maxima of the smooth curve above ×5.
        let m: Vec<f64> = (0..7200).map(|t| Shape::Diurnal.multiplier(t as f64)).collect();
        let peaks = (1..7199).filter(|&t| m[t] > 5.0 && m[t] >= m[t - 1] && m[t] > m[t + 1]).count();
        assert_eq!(peaks, 2);

        let flash = users(&Shape::FlashCrowd.trace(&scale));
        let (before, top) = (flash[299], flash[360]);
        assert!((9.0..11.0).contains(&(top / before)), "×10 within 60 s: {before} -> {top}");
        assert!(flash[360 + 1200 + 1] < 1.05 * scale.base_users, "decayed in 20 min: {}", flash[1561]);
        assert!(flash[900] < flash[600] && flash[600] < flash[361], "decaying");

        let saw = users(&Shape::Sawtooth.trace(&scale));
        assert!(saw[239] > 3.8 * scale.base_users && saw[240] < 1.05 * scale.base_users, "drops every 4 min");
        assert!((saw[479] - saw[239]).abs() < 0.05 * saw[239], "the same each period");

        let ramp = users(&Shape::SlowRamp.trace(&scale));
        let ratio = ramp[600 + 3600] / ramp[600];
        assert!((9.5..10.5).contains(&ratio), "×10 over an hour: {ratio}");

        let idle = users(&Shape::IdleDrop.trace(&scale));
        let ratio = idle[3000] / idle[600];
        assert!((0.045..0.055).contains(&ratio), "down to 5 %: {ratio}");
    }

    #[test]
    fn shapes_are_seeded() {
        let a = Shape::FlashCrowd.trace(&Scale::default());
        assert_eq!(a, Shape::FlashCrowd.trace(&Scale::default()), "the same seed, the same trace");
        assert_ne!(a, Shape::FlashCrowd.trace(&Scale { seed: 2, ..Scale::default() }));
        assert_eq!(a.samples[0].msgs_per_s, a.samples[0].users * 0.2);
        for shape in Shape::ALL {
            assert_eq!(Shape::from_name(shape.name()), Some(shape));
        }
        assert_eq!(Shape::from_name("recorded"), None);
    }

    #[test]
    fn a_csv_holds_each_row_until_the_next_and_refuses_bad_rows() {
        let t = Trace::from_csv("mine", "seconds,users,msgs_per_s\n0,100,10\n3,400,40\n5,50,5\n").unwrap();
        assert_eq!(users(&t), [100.0, 100.0, 100.0, 400.0, 400.0, 50.0]);
        assert_eq!(t.samples[3].msgs_per_s, 40.0);
        for (text, line) in [("0,1,1\n0,2,2", 2), ("0,1", 1), ("0,-1,1", 1), ("0,x,1", 1), ("0,1,1,1", 1)] {
            assert!(
                matches!(Trace::from_csv("bad", text), Err(TraceError::Line { line: l, .. }) if l == line),
                "{text}"
            );
        }
        assert_eq!(Trace::from_csv("empty", "seconds,users,msgs_per_s\n"), Err(TraceError::Empty));
    }

    #[test]
    fn a_recorded_timeline_replays_its_offered_load() {
        let text = [
            r#"{"ts_ms":1,"elapsed_s":1.0,"target_users":10,"users_online":8,"messages_sent_per_s":2.5}"#,
            r#"{"ts_ms":2,"elapsed_s":2.0,"target_users":30,"users_online":25,"messages_sent_per_s":5.0}"#,
            "",
            r#"{"ts_ms":3,"elapsed_s":4.0,"target_users":20,"users_online":20,"messages_sent_per_s":4.0}"#,
        ]
        .join("\n");
        let t = Trace::from_timeline("recorded", &text).unwrap();
        assert_eq!(users(&t), [10.0, 30.0, 30.0, 20.0]);
        assert_eq!(t.samples[1].msgs_per_s, 5.0);
        assert!(matches!(Trace::from_timeline("recorded", "{\"elapsed_s\":1}"), Err(TraceError::Line { line: 1, .. })));
    }
}
