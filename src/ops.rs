//! What operators need to see across the cluster, beside the notifications themselves: the
//! nodes that are alive ([`nodes`]) and the audit log of console actions ([`audit`]).
//!
//! Invariant: both live in one small key each (`Keys::nodes`, `Keys::audit`), bounded by the
//! node count and by the audit cap, never by traffic.

pub mod audit;
pub mod nodes;
