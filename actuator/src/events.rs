//! The actuator's record of what it did and why: every sync and action is
//! one structured tracing line, and one JSON object appended to the events
//! file (JSONL) that the demo's report and charts read.
//!
//! Fields: `ts_ms` (wall clock), `kind`, `current` (running pods, not
//! stopping, after the event), `desired` (the workload's replicas after the
//! event), `nodes` (the node ids concerned; for `sync`, the running ones),
//! `reason`, and `detail` (the numbers behind it, kind-specific).

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// One KEDA + HPA sync (detail: the full [`crate::sync::SyncOutcome`]).
    Sync,
    /// The desired count went up.
    ScaleOut,
    /// The desired count went down.
    ScaleIn,
    /// A node process was started.
    Spawn,
    /// A node was sent SIGTERM.
    Terminate,
    /// A node process ended (asked to or not).
    Exit,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Sync => "sync",
            Self::ScaleOut => "scale_out",
            Self::ScaleIn => "scale_in",
            Self::Spawn => "spawn",
            Self::Terminate => "terminate",
            Self::Exit => "exit",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Event {
    pub ts_ms: u64,
    pub kind: Kind,
    pub current: u32,
    pub desired: u32,
    pub nodes: Vec<String>,
    pub reason: String,
    #[serde(skip_serializing_if = "serde_json::Value::is_null")]
    pub detail: serde_json::Value,
}

#[derive(Debug, thiserror::Error)]
#[error("cannot open the events file {path}: {source}")]
pub struct EventsError {
    path: PathBuf,
    source: std::io::Error,
}

/// Where events go.
#[derive(Debug, Default)]
pub struct Events {
    file: Option<File>,
}

impl Events {
    /// Appends to `path` (created with its folders) when given.
    pub fn open(path: Option<&Path>) -> Result<Self, EventsError> {
        let Some(path) = path else { return Ok(Self::default()) };
        let err = |source| EventsError { path: path.to_owned(), source };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(err)?;
        }
        let file = std::fs::OpenOptions::new().create(true).append(true).open(path).map_err(err)?;
        Ok(Self { file: Some(file) })
    }

    pub fn record(&mut self, event: &Event) {
        let detail = if event.detail.is_null() { String::new() } else { event.detail.to_string() };
        tracing::info!(
            kind = event.kind.as_str(),
            current = event.current,
            desired = event.desired,
            nodes = ?event.nodes,
            reason = %event.reason,
            detail = %detail,
            "{}",
            event.kind.as_str()
        );
        if let Some(file) = &mut self.file {
            let mut line = serde_json::to_string(event).expect("events serialise");
            line.push('\n');
            // One write per line: a reader never sees half an object.
            if let Err(e) = file.write_all(line.as_bytes()) {
                tracing::warn!(error = %e, "writing the events file failed");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn events_are_appended_as_json_lines() {
        let dir = std::env::temp_dir().join(format!("rtc-actuator-events-{}", std::process::id()));
        let path = dir.join("sub").join("events.jsonl");
        let mut events = Events::open(Some(&path)).unwrap();
        let e = Event {
            ts_ms: 1,
            kind: Kind::ScaleOut,
            current: 2,
            desired: 4,
            nodes: vec![],
            reason: "metric 4".into(),
            detail: serde_json::Value::Null,
        };
        events.record(&e);
        events.record(&Event { kind: Kind::Spawn, nodes: vec!["socket-2".into()], detail: json!({"pid": 7}), ..e });
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["kind"], "scale_out");
        assert!(lines[0].get("detail").is_none());
        assert_eq!(lines[1]["kind"], "spawn");
        assert_eq!(lines[1]["nodes"], json!(["socket-2"]));
        assert_eq!(lines[1]["detail"]["pid"], 7);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
