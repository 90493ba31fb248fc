//! The device TCP listener (role `gateway`): plain or TLS, under the node's connection caps.
//!
//! Invariant: every accepted connection is its own task, tracked and awaited on shutdown; a
//! connection over the caps is told why in plain text, or over TLS simply closed (a handshake
//! per refused connection would let a flood past the caps).

use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, info_span, warn, Instrument};

use super::link::{refuse, Link};
use super::Devices;

impl Devices {
    /// Accepts device connections on `listener` until `shutdown`; each one is its own task.
    pub async fn run_listener(
        self,
        listener: TcpListener,
        tls: Option<tokio_rustls::TlsAcceptor>,
        limits: crate::limits::ConnLimits,
        shutdown: CancellationToken,
    ) {
        let mut connections = tokio::task::JoinSet::new();
        info!(addr = ?listener.local_addr().ok(), tls = tls.is_some(), "device listener started");
        loop {
            tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((stream, peer)) => {
                        let _ = stream.set_nodelay(true);
                        match limits.admit(peer.ip()) {
                            Ok(guard) => {
                                let this = self.clone();
                                let stop = shutdown.clone();
                                let tls = tls.clone();
                                connections.spawn(async move {
                                    if let Some(link) = Link::open(stream, tls.as_ref()).await {
                                        this.serve_link(link, stop).await;
                                    }
                                    drop(guard);
                                }.instrument(info_span!("device", %peer)));
                            }
                            // Told why in plain text; over TLS simply closed, since a handshake
                            // per refused connection would let a flood past the caps.
                            Err(why) if tls.is_none() => {
                                let (code, message) = why.describe();
                                connections.spawn(async move {
                                    if let Some(mut link) = Link::open(stream, None).await {
                                        refuse(&mut link, code, message).await;
                                    }
                                });
                            }
                            Err(why) => debug!(%peer, ?why, "TLS device connection refused"),
                        }
                    }
                    Err(e) => {
                        warn!(error = %e, "device accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
                _ = shutdown.cancelled() => break,
                Some(_) = connections.join_next() => {}
            }
        }
        while connections.join_next().await.is_some() {}
    }
}
