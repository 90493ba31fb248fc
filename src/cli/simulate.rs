//! A simulated device fleet (`paynotify simulate-devices`, tests, benchmarks): each device
//! connects, says hello, pings every `heartbeat`, answers every call with
//! `{"echo": method, "params": params}` (unless it is black-holed: then it reads nothing and
//! answers nothing), and reconnects with backoff when its connection ends.
//!
//! Invariant: each simulated device is its own task and reconnects with backoff, so the fleet
//! keeps its size through node restarts.

use clap::Args;

use super::ops::config_err;

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

/// `simulate-devices`: a fleet of simulated devices for demos and load tests.
#[derive(Debug, Clone, Args)]
pub struct SimulateArgs {
    /// The device listener to connect to.
    #[arg(
        long,
        env = "PAYNOTIFY_DEVICE_CONNECT",
        default_value = "127.0.0.1:7070"
    )]
    pub connect: String,
    /// Connect with TLS, trusting the CA certificate(s) in this PEM file (for a listener
    /// started with --device-tls-cert); the certificate must name the host of --connect.
    #[arg(long, env = "PAYNOTIFY_DEVICE_TLS_CA", value_name = "PEM")]
    pub tls_ca: Option<std::path::PathBuf>,
    /// How many devices.
    #[arg(long, default_value_t = 10)]
    pub count: usize,
    /// Device ids are this prefix plus a number.
    #[arg(long, default_value = "sim-")]
    pub id_prefix: String,
    /// How often each device pings.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub heartbeat: Duration,
    /// How many of the devices (the last ones) read and answer nothing.
    #[arg(long, default_value_t = 0)]
    pub black_hole: usize,
    /// Token secret used to mint each device's token.
    #[arg(
        long,
        env = "PAYNOTIFY_TOKEN_SECRET",
        value_delimiter = ',',
        hide_env_values = true,
        required = true
    )]
    pub token_secret: Vec<String>,
}

/// Runs `simulate-devices` until Ctrl-C.
pub async fn run(args: SimulateArgs) -> Result<(), u8> {
    use crate::cli::simulate::{device, FleetStats};
    use std::sync::atomic::Ordering;
    let stats = std::sync::Arc::new(FleetStats::default());
    let stop = tokio_util::sync::CancellationToken::new();
    tokio::spawn(crate::shutdown::cancel_on_signal(stop.clone()));
    let expiry = crate::util::now_ms() / 1000 + 30 * 24 * 3600;
    let tls = match &args.tls_ca {
        Some(ca) => Some(
            crate::cli::simulate::tls_to(&args.connect, ca)
                .map_err(|e| config_err(format!("--tls-ca: {e}")))?,
        ),
        None => None,
    };
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..args.count {
        let id = format!("{}{i}", args.id_prefix);
        crate::delivery::schema::validate_id(&id)
            .map_err(|m| config_err(format!("device id {id:?}: {m}")))?;
        let token = crate::token::mint(&args.token_secret, crate::token::Kind::Device, &id, expiry)
            .map_err(|e| config_err(e.to_string()))?;
        let black_hole = i >= args.count.saturating_sub(args.black_hole);
        tasks.spawn(device(
            args.connect.clone(),
            tls.clone(),
            id,
            token,
            args.heartbeat,
            black_hole,
            stats.clone(),
            stop.clone(),
        ));
    }
    let mut report = tokio::time::interval(Duration::from_secs(5));
    loop {
        tokio::select! {
            _ = report.tick() => eprintln!(
                "devices online {}/{}, calls answered {}, reconnects {}",
                stats.online.load(Ordering::Relaxed),
                args.count,
                stats.calls_answered.load(Ordering::Relaxed),
                stats.reconnects.load(Ordering::Relaxed)
            ),
            _ = stop.cancelled() => break,
        }
    }
    while tasks.join_next().await.is_some() {}
    Ok(())
}
