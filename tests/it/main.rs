//! Integration tests: real redis-server processes, real HTTP, real sockets.
#![allow(clippy::unwrap_used)]

mod browser;
mod cluster;
mod console;
mod console_api;
mod delivery;
mod devices;
mod enqueue;
mod faults;
mod grafana;
mod helm;
mod hostile;
mod intake;
mod kill;
mod lanes;
mod logs;
mod merchants;
mod openapi;
mod partitions;
mod props;
mod push;
mod replicas;
mod runtime;
mod sentinel;
mod support;
mod tls;
