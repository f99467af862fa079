//! The rtc socket node: WebSocket sessions for the users of the partitions
//! it owns. Built in issue #3; for now its settings are defined so the
//! workspace layout and configuration rules are in place.

pub mod config;
