//! Delivery: the life of a notification from its schema to the merchant's answer.
//!
//! A notification is parsed and normalized ([`schema`]), put on its partition's schedule, claimed
//! by a worker under a lease ([`worker`]), attempted over HTTP behind the SSRF guard and signed
//! ([`attempt`], [`signing`]), and settled: delivered, scheduled again, or dead. Invariant: every
//! state change is one Lua script, fenced by the claim's token (see `redis::store`).

pub mod attempt;
pub mod chart;
pub mod dead;
pub mod lane;
pub mod merchants;
pub mod meta;
pub mod schema;
pub mod search;
pub mod signing;
pub mod store;
pub mod view;
pub mod worker;
