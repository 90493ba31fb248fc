//! Caps on open connections, shared by every listener of a node (HTTP, websockets and the
//! device listener count against one total).
//!
//! Invariant: a connection holds a [`ConnGuard`] for its whole life; the counts go down when it
//! is dropped, however the connection ends.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use crate::util::lock;

/// Caps on open connections, shared by the listeners of a node.
#[derive(Clone)]
pub struct ConnLimits {
    inner: Arc<LimitsInner>,
}

struct LimitsInner {
    max_total: usize,
    /// 0: no cap per address.
    max_per_ip: usize,
    open: Mutex<(usize, HashMap<IpAddr, usize>)>,
}

/// Why a connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// `--max-connections` reached.
    Full,
    /// `--max-connections-per-ip` reached for this address.
    PerIp,
}

impl Refused {
    /// The error code and message a refused client is told.
    pub fn describe(self) -> (&'static str, &'static str) {
        match self {
            Refused::Full => (
                "too_many_connections",
                "this node has --max-connections open; try another node or later",
            ),
            Refused::PerIp => (
                "too_many_connections_from_address",
                "this address has --max-connections-per-ip open",
            ),
        }
    }
}

/// Counts one open connection until dropped.
pub struct ConnGuard {
    limits: ConnLimits,
    ip: IpAddr,
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        let mut open = lock(&self.limits.inner.open);
        open.0 = open.0.saturating_sub(1);
        if let Some(n) = open.1.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                open.1.remove(&self.ip);
            }
        }
    }
}

impl ConnLimits {
    /// At most `max_total` connections, and `max_per_ip` from one address (0: no such cap).
    pub fn new(max_total: usize, max_per_ip: usize) -> Self {
        Self {
            inner: Arc::new(LimitsInner {
                max_total: max_total.max(1),
                max_per_ip,
                open: Mutex::new((0, HashMap::new())),
            }),
        }
    }

    /// Takes a place for a connection from `ip`, or says why not.
    pub fn admit(&self, ip: IpAddr) -> Result<ConnGuard, Refused> {
        let mut open = lock(&self.inner.open);
        if open.0 >= self.inner.max_total {
            return Err(Refused::Full);
        }
        let from_ip = open.1.get(&ip).copied().unwrap_or(0);
        if self.inner.max_per_ip > 0 && from_ip >= self.inner.max_per_ip {
            return Err(Refused::PerIp);
        }
        open.0 += 1;
        open.1.insert(ip, from_ip + 1);
        Ok(ConnGuard {
            limits: self.clone(),
            ip,
        })
    }
}
