//! The rtc KEDA external scaler. Built in issue #5; for now its settings are
//! defined so the workspace layout and configuration rules are in place.

pub mod config;
