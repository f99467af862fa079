//! The load profile: how many users are online over time.
//!
//! A profile is a list of phases, separated by commas, blanks or new lines
//! (a file may add `#` comments):
//!
//! ```text
//! ramp:60s:0->2000     linear from 0 to 2000 users over 60 s
//! plateau:60s:2000     hold 2000 users
//! spike:20s:5000       jump to 5000 users at once and hold them
//! ramp:60s:2000->0
//! idle:30s             no users (same as idle:30s:0)
//! ```
//!
//! Durations are `<n>ms`, `<n>s`, `<n>m`, `<n>h` or a bare number of
//! seconds. The schedule is pure: [`Profile::target_at`] maps the time since
//! the start to the number of users that should be online.

use std::fmt;

/// Longest profile accepted (a day): every run is bounded in time.
pub const MAX_PROFILE_MS: u64 = 24 * 3600 * 1000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Ramp,
    Plateau,
    Spike,
    Idle,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Ramp => "ramp",
            Kind::Plateau => "plateau",
            Kind::Spike => "spike",
            Kind::Idle => "idle",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Phase {
    pub kind: Kind,
    pub duration_ms: u64,
    /// Users at the start of the phase (equal to `to` except for ramps).
    pub from: u64,
    /// Users at the end of the phase.
    pub to: u64,
}

impl Phase {
    /// Users online `t_ms` into this phase.
    fn target_at(&self, t_ms: u64) -> u64 {
        if self.kind != Kind::Ramp || self.duration_ms == 0 {
            return self.to;
        }
        let frac = (t_ms.min(self.duration_ms)) as f64 / self.duration_ms as f64;
        let value = self.from as f64 + (self.to as f64 - self.from as f64) * frac;
        value.round().max(0.0) as u64
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d = format_duration(self.duration_ms);
        match self.kind {
            Kind::Ramp => write!(f, "ramp:{d}:{}->{}", self.from, self.to),
            kind => write!(f, "{}:{d}:{}", kind.name(), self.to),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Profile {
    pub phases: Vec<Phase>,
}

impl Profile {
    /// Parses phases separated by commas, blanks or new lines; `#` starts a
    /// comment that runs to the end of its line.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut phases = Vec::new();
        for line in text.lines() {
            let line = line.split('#').next().unwrap_or_default();
            for item in line.split(|c: char| c == ',' || c.is_whitespace()).filter(|s| !s.is_empty()) {
                phases.push(parse_phase(item)?);
            }
        }
        if phases.is_empty() {
            return Err("the profile has no phase".into());
        }
        let profile = Self { phases };
        if profile.duration_ms() == 0 {
            return Err("the profile lasts 0 s".into());
        }
        if profile.duration_ms() > MAX_PROFILE_MS {
            return Err(format!("the profile lasts {}, more than 24 h", format_duration(profile.duration_ms())));
        }
        Ok(profile)
    }

    pub fn duration_ms(&self) -> u64 {
        self.phases.iter().map(|p| p.duration_ms).sum()
    }

    /// The most users the profile ever asks for.
    pub fn peak(&self) -> u64 {
        self.phases.iter().map(|p| p.from.max(p.to)).max().unwrap_or(0)
    }

    /// Users that should be online `t_ms` after the start; `None` once the
    /// profile is over.
    pub fn target_at(&self, t_ms: u64) -> Option<u64> {
        let mut start = 0;
        for phase in &self.phases {
            if t_ms < start + phase.duration_ms {
                return Some(phase.target_at(t_ms - start));
            }
            start += phase.duration_ms;
        }
        None
    }

    /// Index and kind name of the phase running at `t_ms`.
    pub fn phase_at(&self, t_ms: u64) -> Option<(usize, &'static str)> {
        let mut start = 0;
        for (i, phase) in self.phases.iter().enumerate() {
            if t_ms < start + phase.duration_ms {
                return Some((i, phase.kind.name()));
            }
            start += phase.duration_ms;
        }
        None
    }
}

impl fmt::Display for Profile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self.phases.iter().map(|p| p.to_string()).collect();
        f.write_str(&parts.join(","))
    }
}

fn parse_phase(item: &str) -> Result<Phase, String> {
    let bad = |why: &str| {
        format!(
            "bad phase {item:?}: {why} (expected e.g. ramp:60s:0->2000, plateau:60s:2000, spike:20s:5000, idle:30s)"
        )
    };
    let mut parts = item.split(':');
    let kind = match parts.next().unwrap_or_default().to_ascii_lowercase().as_str() {
        "ramp" => Kind::Ramp,
        "plateau" | "hold" => Kind::Plateau,
        "spike" => Kind::Spike,
        "idle" => Kind::Idle,
        other => return Err(bad(&format!("unknown kind {other:?}"))),
    };
    let duration_ms = parse_duration(parts.next().ok_or_else(|| bad("no duration"))?).map_err(|e| bad(&e))?;
    let users = parts.next();
    if parts.next().is_some() {
        return Err(bad("too many fields"));
    }
    let count = |s: &str| s.trim().parse::<u64>().map_err(|_| bad(&format!("{s:?} is not a user count")));
    let (from, to) = match (kind, users) {
        (Kind::Ramp, Some(u)) => {
            let (a, b) = u.split_once("->").ok_or_else(|| bad("a ramp needs FROM->TO"))?;
            (count(a)?, count(b)?)
        }
        (Kind::Ramp, None) => return Err(bad("a ramp needs FROM->TO")),
        (Kind::Idle, None) => (0, 0),
        (_, Some(u)) => {
            let n = count(u)?;
            (n, n)
        }
        (_, None) => return Err(bad("no user count")),
    };
    Ok(Phase { kind, duration_ms, from, to })
}

/// `500ms`, `20s`, `2m`, `1h`, or a bare number of seconds.
pub fn parse_duration(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let (number, unit_ms) = if let Some(n) = text.strip_suffix("ms") {
        (n, 1)
    } else if let Some(n) = text.strip_suffix('s') {
        (n, 1000)
    } else if let Some(n) = text.strip_suffix('m') {
        (n, 60_000)
    } else if let Some(n) = text.strip_suffix('h') {
        (n, 3_600_000)
    } else {
        (text, 1000)
    };
    let n: f64 = number.parse().map_err(|_| format!("{text:?} is not a duration"))?;
    if !n.is_finite() || n < 0.0 {
        return Err(format!("{text:?} is not a duration"));
    }
    let ms = n * unit_ms as f64;
    if ms > MAX_PROFILE_MS as f64 {
        return Err(format!("{text:?} is longer than 24 h"));
    }
    Ok(ms.round() as u64)
}

fn format_duration(ms: u64) -> String {
    if ms.is_multiple_of(1000) { format!("{}s", ms / 1000) } else { format!("{ms}ms") }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn demo() -> Profile {
        Profile::parse("ramp:60s:0->2000,plateau:60s:2000,spike:20s:5000,ramp:60s:2000->0,idle:30s:0").unwrap()
    }

    #[test]
    fn parses_the_documented_phases() {
        let p = demo();
        assert_eq!(p.phases.len(), 5);
        assert_eq!(p.phases[0], Phase { kind: Kind::Ramp, duration_ms: 60_000, from: 0, to: 2000 });
        assert_eq!(p.phases[2], Phase { kind: Kind::Spike, duration_ms: 20_000, from: 5000, to: 5000 });
        assert_eq!(p.phases[4], Phase { kind: Kind::Idle, duration_ms: 30_000, from: 0, to: 0 });
        assert_eq!(p.duration_ms(), 230_000);
        assert_eq!(p.peak(), 5000);
        assert_eq!(p.to_string(), "ramp:60s:0->2000,plateau:60s:2000,spike:20s:5000,ramp:60s:2000->0,idle:30s:0");
        assert_eq!(Profile::parse(&p.to_string()).unwrap(), p);
    }

    #[test]
    fn a_file_may_use_lines_blanks_and_comments() {
        let text = "# warm up\nramp:10s:0->100   # slowly\n\nhold:5s:100 idle:500ms\n";
        let p = Profile::parse(text).unwrap();
        assert_eq!(p.phases.len(), 3);
        assert_eq!(p.phases[1].kind, Kind::Plateau);
        assert_eq!(p.duration_ms(), 15_500);
    }

    #[test]
    fn the_schedule_follows_the_phases() {
        let p = demo();
        assert_eq!(p.target_at(0), Some(0));
        assert_eq!(p.target_at(30_000), Some(1000));
        assert_eq!(p.target_at(59_999), Some(2000));
        assert_eq!(p.target_at(60_000), Some(2000));
        assert_eq!(p.target_at(119_999), Some(2000));
        assert_eq!(p.target_at(120_000), Some(5000));
        assert_eq!(p.target_at(140_000), Some(2000));
        assert_eq!(p.target_at(170_000), Some(1000));
        assert_eq!(p.target_at(200_000), Some(0));
        assert_eq!(p.target_at(229_999), Some(0));
        assert_eq!(p.target_at(230_000), None);
        assert_eq!(p.phase_at(125_000), Some((2, "spike")));
        assert_eq!(p.phase_at(230_000), None);
        // Monotone within a ramp.
        let mut last = 0;
        for t in (0..60_000).step_by(250) {
            let n = p.target_at(t).unwrap();
            assert!(n >= last);
            last = n;
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Ok(500));
        assert_eq!(parse_duration("20s"), Ok(20_000));
        assert_eq!(parse_duration("1.5s"), Ok(1500));
        assert_eq!(parse_duration("2m"), Ok(120_000));
        assert_eq!(parse_duration("1h"), Ok(3_600_000));
        assert_eq!(parse_duration("7"), Ok(7000));
        for bad in ["", "s", "-1s", "abc", "1d", "25h", "NaNs"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn bad_profiles_are_refused_with_the_reason() {
        for (text, why) in [
            ("", "no phase"),
            ("# only a comment", "no phase"),
            ("climb:10s:5", "unknown kind"),
            ("ramp:10s:5", "FROM->TO"),
            ("ramp:10s", "FROM->TO"),
            ("plateau:10s", "no user count"),
            ("plateau:10s:x", "not a user count"),
            ("plateau:10s:5:6", "too many fields"),
            ("plateau", "no duration"),
            ("plateau:0s:5", "lasts 0 s"),
            ("plateau:23h:5,plateau:2h:5", "more than 24 h"),
        ] {
            let err = Profile::parse(text).unwrap_err();
            assert!(err.contains(why), "{text:?}: {err}");
        }
    }
}
