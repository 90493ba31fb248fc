//! A simulated device fleet (`paynotify simulate-devices`, tests, benchmarks): each device
//! connects, says hello, pings every `heartbeat`, answers every call with
//! `{"echo": method, "params": params}` (unless it is black-holed: then it reads nothing and
//! answers nothing), and reconnects with backoff when its connection ends.
//!
//! Invariant: each simulated device is its own task and reconnects with backoff, so the fleet
//! keeps its size through node restarts.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

/// Counters of a fleet.
#[derive(Default, Debug)]
pub struct FleetStats {
    pub online: AtomicU64,
    pub calls_answered: AtomicU64,
    pub reconnects: AtomicU64,
}

/// TLS for a fleet: a connector and the name the listener's certificate must carry.
pub type Tls = (
    tokio_rustls::TlsConnector,
    rustls::pki_types::ServerName<'static>,
);

/// A connector that trusts the CA certificates in `ca_file` (PEM), for the host of `addr`.
pub fn tls_to(addr: &str, ca_file: &std::path::Path) -> Result<Tls, String> {
    use rustls::pki_types::{pem::PemObject, CertificateDer, ServerName};
    let mut roots = rustls::RootCertStore::empty();
    for cert in
        CertificateDer::pem_file_iter(ca_file).map_err(|e| format!("{}: {e}", ca_file.display()))?
    {
        let cert = cert.map_err(|e| format!("{}: {e}", ca_file.display()))?;
        roots.add(cert).map_err(|e| e.to_string())?;
    }
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let name = ServerName::try_from(host.to_string()).map_err(|e| e.to_string())?;
    let config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok((tokio_rustls::TlsConnector::from(Arc::new(config)), name))
}

/// Runs one device until `stop`; over TLS when `tls` is given.
#[allow(clippy::too_many_arguments)]
pub async fn device(
    addr: String,
    tls: Option<Tls>,
    id: String,
    token: String,
    heartbeat: Duration,
    black_hole: bool,
    stats: Arc<FleetStats>,
    stop: CancellationToken,
) {
    let mut backoff = Duration::from_millis(100);
    while !stop.is_cancelled() {
        if let Ok(stream) = TcpStream::connect(&addr).await {
            let _ = stream.set_nodelay(true);
            let welcomed = match &tls {
                None => {
                    run_connection(stream, &id, &token, heartbeat, black_hole, &stats, &stop).await
                }
                Some((connector, name)) => match connector.connect(name.clone(), stream).await {
                    Ok(s) => {
                        run_connection(s, &id, &token, heartbeat, black_hole, &stats, &stop).await
                    }
                    Err(_) => false,
                },
            };
            if welcomed {
                backoff = Duration::from_millis(100);
            }
        }
        if stop.is_cancelled() {
            return;
        }
        stats.reconnects.fetch_add(1, Ordering::Relaxed);
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {},
            _ = stop.cancelled() => return,
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

/// One connection's life; true if it was welcomed.
async fn run_connection<S>(
    stream: S,
    id: &str,
    token: &str,
    heartbeat: Duration,
    black_hole: bool,
    stats: &FleetStats,
    stop: &CancellationToken,
) -> bool
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let (r, mut w) = tokio::io::split(stream);
    let mut lines = BufReader::new(r).lines();
    let hello = json!({"type": "hello", "device_id": id, "token": token});
    if w.write_all(format!("{hello}\n").as_bytes()).await.is_err() {
        return false;
    }
    match lines.next_line().await {
        Ok(Some(line)) if line.contains("\"welcome\"") => {}
        _ => return false,
    }
    stats.online.fetch_add(1, Ordering::Relaxed);
    // Real fleets are not in step: each device starts its ping cycle at a random phase.
    let phase = heartbeat.mul_f64(rand::random::<f64>());
    let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + phase, heartbeat);
    loop {
        tokio::select! {
            line = lines.next_line(), if !black_hole => match line {
                Ok(Some(line)) => {
                    let Ok(frame) = serde_json::from_str::<Value>(&line) else { continue };
                    if frame["type"] == "call" {
                        let reply = json!({"type": "reply", "id": frame["id"], "result": {"echo": frame["method"], "params": frame["params"]}});
                        if w.write_all(format!("{reply}\n").as_bytes()).await.is_err() { break }
                        stats.calls_answered.fetch_add(1, Ordering::Relaxed);
                    }
                }
                _ => break,
            },
            _ = ping.tick() => {
                if w.write_all(b"{\"type\":\"ping\"}\n").await.is_err() { break }
            }
            _ = stop.cancelled() => break,
        }
    }
    stats.online.fetch_sub(1, Ordering::Relaxed);
    true
}
