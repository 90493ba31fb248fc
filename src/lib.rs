//! paynotify: tells the world a payment happened, reliably, at scale.
//!
//! The library behind the `paynotify` binary. [`run`] starts one node with the roles of its
//! [`Config`] on a bound listener and stops when the shutdown token is cancelled; tests call the
//! same function. See ARCHITECTURE.md for the code map and the dependency rule.
#![forbid(unsafe_code)]

pub mod cli;
pub mod config;
pub mod delivery;
pub mod dev;
pub mod devices;
pub mod http;
pub mod intake;
pub mod limits;
pub mod metrics;
pub mod node;
pub mod ops;
pub mod push;
pub mod redis;
pub mod shutdown;
pub mod tls;
pub mod token;
pub mod util;

#[cfg(test)]
mod layout;

pub use config::Config;
pub use node::{run, run_with, run_with_listeners, RunError};
pub use util::{new_id, now_ms};
