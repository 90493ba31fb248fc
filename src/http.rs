//! The HTTP edge: the server loop and its limits, one state, the API handlers, health, and the
//! gateway's public routes.
//!
//! Invariant: domain modules never name an axum handler, extractor or response type; handlers
//! here turn requests into domain calls and domain outcomes into JSON with stable error codes.

pub mod auth;
pub mod console;
pub mod error;
pub mod gateway;
pub mod health;
pub mod server;
pub mod state;
pub mod v1;
