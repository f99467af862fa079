//! Integration tests of the socket node against real Redis and Kafka
//! (librdkafka's mock cluster; tansu in `real_kafka` when available).

#![allow(clippy::unwrap_used)] // a broken fixture should fail the test loudly

mod admission;
mod delivery;
mod drain;
mod faults;
mod frames;
mod handoff;
mod heartbeats;
mod lifecycle;
mod real_kafka;
mod support;
