//! The device benchmark's side-by-side anchor (`BENCH_PEER=mqtt`): the same call pattern over
//! MQTT 5 request/response with mosquitto, in the same invocation as paynotify's run.
//!
//! A private mosquitto (QoS 0, no persistence, anonymous) on a free port; the same number of
//! devices, in two child processes of this benchmark (plus one black-holed device in a third),
//! each device its own MQTT connection subscribed to `dev/<id>/req` with a 5 s keep-alive (the
//! paynotify devices' heartbeat); the caller, in this process, publishes each request with a
//! response topic and correlation data (the MQTT 5 way), the device publishes its answer there,
//! and the caller waits at most the deadline. The caller talks to the broker directly: there is
//! no HTTP hop, no API key and no device token, so this is what the pattern costs with a broker
//! and no more.

use std::collections::HashMap;
use std::io::BufRead;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rumqttc::v5::mqttbytes::v5::{Packet, PublishProperties};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event, MqttOptions};
use tokio::sync::oneshot;

/// Set in the device child processes: `<port>:<id prefix>:<count>:<black hole 0|1>`.
pub const CHILD_ENV: &str = "BENCH_MQTT_DEVICES";

/// A private mosquitto, killed on drop.
pub struct Broker {
    child: std::process::Child,
    pub port: u16,
    _dir: tempfile::TempDir,
}

impl Broker {
    pub fn start() -> Broker {
        let dir = tempfile::tempdir().unwrap();
        let port = paynotify_testkit::free_port().unwrap();
        let conf = dir.path().join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!(
                "listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n\
                 log_dest none\nmax_keepalive 65535\nmax_queued_messages 10000\n\
                 set_tcp_nodelay true\nsys_interval 0\n"
            ),
        )
        .unwrap();
        let bin = std::env::var("BENCH_MOSQUITTO").unwrap_or_else(|_| "/usr/sbin/mosquitto".into());
        let mut child = std::process::Command::new(bin)
            .arg("-c")
            .arg(&conf)
            .spawn()
            .expect("mosquitto (Debian: apt-get install mosquitto; or BENCH_MOSQUITTO=path)");
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Broker {
                    child,
                    port,
                    _dir: dir,
                };
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!("mosquitto never listened on {port}");
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Client options with Nagle off, as on every paynotify socket (otherwise small replies wait
/// for delayed ACKs: tens of ms), and a small QoS 1/2 window: everything here is QoS 0, and
/// rumqttc's default (65,535) preallocates ~10 MB per client, 24 GB for 5,000 devices.
fn options(id: &str, port: u16, keep_alive: Duration) -> MqttOptions {
    let mut opts = MqttOptions::new(id, "127.0.0.1", port);
    opts.set_keep_alive(keep_alive);
    opts.set_outgoing_inflight_upper_limit(16);
    let mut net = rumqttc::NetworkOptions::new();
    net.set_tcp_nodelay(true);
    opts.set_network_options(net);
    opts
}

/// A child process of this benchmark holding devices; killed on drop, and it exits by itself
/// when this process goes away (its stdin closes), so a failed run leaves no fleet behind.
pub struct DeviceProcess {
    child: std::process::Child,
    _stdin: std::process::ChildStdin,
}

impl DeviceProcess {
    pub fn id(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for DeviceProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts a child process of this benchmark holding `count` devices `<prefix>0…`; returns once
/// every one of them is subscribed.
pub fn spawn_devices(port: u16, prefix: &str, count: u64, hole: bool) -> DeviceProcess {
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .env(
            CHILD_ENV,
            format!("{port}:{prefix}:{count}:{}", u8::from(hole)),
        )
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdin = child.stdin.take().unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut lines = std::io::BufReader::new(stdout).lines();
    let ready = matches!(lines.next(), Some(Ok(line)) if line == "ready");
    let process = DeviceProcess {
        child,
        _stdin: stdin,
    };
    assert!(ready, "MQTT devices {prefix} never said ready");
    process
}

/// The device child process (see [`CHILD_ENV`]): connects, subscribes, answers every request
/// with `{"result":{"echo":method,"params":params}}` (as `paynotify simulate-devices` does),
/// the black hole never; says `ready` on stdout once all are subscribed.
pub fn child_main(spec: &str) {
    let parts: Vec<&str> = spec.split(':').collect();
    let [port, prefix, count, hole] = parts[..] else {
        panic!("{CHILD_ENV}={spec}: expected port:prefix:count:hole");
    };
    let (port, count): (u16, u64) = (port.parse().unwrap(), count.parse().unwrap());
    let hole = hole == "1";
    // The parent holds our stdin open for as long as it lives.
    std::thread::spawn(|| {
        let _ = std::io::copy(&mut std::io::stdin(), &mut std::io::sink());
        std::process::exit(0);
    });
    // As `paynotify simulate-devices`: tokio's default multi-threaded runtime.
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async move {
        let ready = Arc::new(AtomicU64::new(0));
        for i in 0..count {
            let (id, ready) = (format!("{prefix}{i}"), ready.clone());
            tokio::spawn(device(port, id, hole, ready));
        }
        while ready.load(Ordering::Relaxed) < count {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        println!("ready");
        std::future::pending::<()>().await;
    });
}

async fn device(port: u16, id: String, hole: bool, ready: Arc<AtomicU64>) {
    let opts = options(&id, port, Duration::from_secs(5));
    let (client, mut events) = AsyncClient::new(opts, 64);
    let topic = format!("dev/{id}/req");
    let mut counted = false;
    loop {
        match events.poll().await {
            // Every (re)connection starts clean: subscribe again.
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                let _ = client.try_subscribe(topic.clone(), QoS::AtMostOnce);
            }
            Ok(Event::Incoming(Packet::SubAck(_))) if !counted => {
                counted = true;
                ready.fetch_add(1, Ordering::Relaxed);
            }
            Ok(Event::Incoming(Packet::Publish(p))) if !hole => {
                let Some(props) = p.properties else { continue };
                let Some(reply_to) = props.response_topic else {
                    continue;
                };
                let Ok(req) = serde_json::from_slice::<serde_json::Value>(&p.payload) else {
                    continue;
                };
                let reply =
                    serde_json::json!({"result": {"echo": req["method"], "params": req["params"]}});
                let props = PublishProperties {
                    correlation_data: props.correlation_data,
                    ..Default::default()
                };
                let body = serde_json::to_vec(&reply).unwrap();
                let _ = client.try_publish_with_properties(
                    reply_to,
                    QoS::AtMostOnce,
                    false,
                    body,
                    props,
                );
            }
            Ok(_) => {}
            // 10,000 connections at once can overflow the accept backlog: retry, as the
            // paynotify simulator does.
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

/// The calling side: one MQTT connection, a reply topic of its own, pending calls by
/// correlation id.
#[derive(Clone)]
pub struct Caller {
    client: AsyncClient,
    pending: Arc<Mutex<HashMap<u64, oneshot::Sender<bytes::Bytes>>>>,
    next: Arc<AtomicU64>,
    reply_topic: String,
}

impl Caller {
    pub async fn connect(port: u16) -> Caller {
        let opts = options("bench-caller", port, Duration::from_secs(30));
        let (client, mut events) = AsyncClient::new(opts, 20_000);
        let pending: Arc<Mutex<HashMap<u64, oneshot::Sender<bytes::Bytes>>>> = Default::default();
        let reply_topic = "bench/caller/replies".to_string();
        let (subscribed_tx, subscribed) = oneshot::channel();
        let (c, p, topic) = (client.clone(), pending.clone(), reply_topic.clone());
        tokio::spawn(async move {
            let mut subscribed_tx = Some(subscribed_tx);
            let mut told = false;
            loop {
                match events.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        let _ = c.try_subscribe(topic.clone(), QoS::AtMostOnce);
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        if let Some(tx) = subscribed_tx.take() {
                            let _ = tx.send(());
                        }
                    }
                    Ok(Event::Incoming(Packet::Publish(reply))) => {
                        let id = reply
                            .properties
                            .and_then(|p| p.correlation_data)
                            .and_then(|d| std::str::from_utf8(&d).ok()?.parse::<u64>().ok());
                        let waiting = id.and_then(|id| p.lock().unwrap().remove(&id));
                        if let Some(tx) = waiting {
                            let _ = tx.send(reply.payload);
                        }
                    }
                    Ok(_) => {}
                    // The broker stopping at the end of the phase included: said once.
                    Err(e) => {
                        if !std::mem::replace(&mut told, true) {
                            eprintln!("MQTT caller: {e}");
                        }
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
            }
        });
        subscribed.await.unwrap();
        Caller {
            client,
            pending,
            next: Arc::new(AtomicU64::new(1)),
            reply_topic,
        }
    }

    /// One call: 200 for an answer with a result, 504 past the deadline, 0 if it could not be
    /// sent (the same codes as the HTTP side).
    pub async fn call(&self, device: &str, body: serde_json::Value, timeout: Duration) -> u16 {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.pending.lock().unwrap().insert(id, tx);
        let props = PublishProperties {
            response_topic: Some(self.reply_topic.clone()),
            correlation_data: Some(id.to_string().into()),
            ..Default::default()
        };
        let payload = serde_json::to_vec(&body).unwrap();
        let topic = format!("dev/{device}/req");
        let sent = self
            .client
            .publish_with_properties(topic, QoS::AtMostOnce, false, payload, props)
            .await;
        let status = match sent {
            Err(_) => 0,
            Ok(()) => match tokio::time::timeout(timeout, rx).await {
                Ok(Ok(reply)) => {
                    let v: serde_json::Value =
                        serde_json::from_slice(&reply).unwrap_or(serde_json::Value::Null);
                    if v.get("result").is_some() {
                        200
                    } else {
                        502
                    }
                }
                Ok(Err(_)) => 0,
                Err(_) => 504,
            },
        };
        self.pending.lock().unwrap().remove(&id);
        status
    }
}
