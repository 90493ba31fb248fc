//! Browser push: an order's result, published once, reaches every browser following that order,
//! whichever node holds its websocket.
//!
//! Invariant: a result is stored and announced by one script with a per-order sequence number;
//! a node subscribes to the order's channel before it reads the stored result, and each
//! subscriber drops sequence numbers it has seen, so a result published before, during or after
//! a subscribe is delivered exactly once. Only nodes with a local subscriber for an order
//! subscribe to its channel.

pub mod hub;
pub mod result;
pub mod session;
pub mod store;

pub use hub::{Hub, HubStats};
pub use result::{
    parse_result, payload, publish, result_frame, ResultDoc, ResultError, MAX_DATA_BYTES,
    MAX_RESULT_BYTES, MAX_STATUS_LEN,
};
pub use store::Results;
