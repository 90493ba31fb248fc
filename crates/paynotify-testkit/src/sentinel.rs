//! Redis Sentinels watching one private primary, for failover tests.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{free_port, Error, RedisChildError, RedisServer};

/// Redis Sentinels (`redis-server <conf> --sentinel`) watching one primary, for failover tests.
///
/// Invariants: each Sentinel has its own port and writable config file in one temp dir (a
/// Sentinel rewrites its file); [`start`](Self::start) returns once every Sentinel answers and
/// reports the primary; dropping the handle kills them all.
pub struct RedisSentinels {
    children: Vec<(Child, u16)>,
    dir: tempfile::TempDir,
    master: String,
}

impl RedisSentinels {
    /// Starts `count` Sentinels monitoring `primary` as `master` with `quorum`, declaring it down
    /// after `down_after` without answers.
    pub fn start(
        primary: &RedisServer,
        master: &str,
        count: usize,
        quorum: usize,
        down_after: Duration,
    ) -> Result<Self, Error> {
        let dir = tempfile::Builder::new()
            .prefix("paynotify-sentinel-")
            .tempdir()?;
        let mut sentinels = Self {
            children: Vec::new(),
            dir,
            master: master.to_string(),
        };
        for i in 0..count {
            let port = free_port()?;
            let conf = sentinels.dir.path().join(format!("sentinel-{i}.conf"));
            std::fs::write(
                &conf,
                format!(
                    "port {port}\nbind 127.0.0.1\ndir {dir}\nlogfile {dir}/sentinel-{i}.log\n\
                     sentinel monitor {master} 127.0.0.1 {primary} {quorum}\n\
                     sentinel down-after-milliseconds {master} {down}\n\
                     sentinel failover-timeout {master} 5000\n\
                     sentinel parallel-syncs {master} 1\n",
                    dir = sentinels.dir.path().display(),
                    primary = primary.port(),
                    down = down_after.as_millis(),
                ),
            )?;
            let binary = RedisServer::binary();
            let child = Command::new(&binary)
                .arg(&conf)
                .arg("--sentinel")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .map_err(|source| RedisChildError::Spawn { binary, source })?;
            sentinels.children.push((child, port));
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        for (_, port) in &sentinels.children {
            loop {
                if sentinels.primary_port_from(*port).is_ok() {
                    break;
                }
                if Instant::now() > deadline {
                    return Err(Error::SentinelsNotReady(sentinels.logs()));
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        Ok(sentinels)
    }

    /// `redis://127.0.0.1:<port>,...` for every Sentinel.
    pub fn url_list(&self) -> String {
        let urls: Vec<String> = self
            .children
            .iter()
            .map(|(_, p)| format!("redis://127.0.0.1:{p}"))
            .collect();
        urls.join(",")
    }

    /// The port of the primary, as the first Sentinel reports it now.
    pub fn primary_port(&self) -> Result<u16, Error> {
        let port = self.children.first().map(|(_, p)| *p).unwrap_or(0);
        self.primary_port_from(port)
    }

    fn primary_port_from(&self, sentinel_port: u16) -> Result<u16, Error> {
        let client = redis::Client::open(format!("redis://127.0.0.1:{sentinel_port}"))?;
        let mut conn = client.get_connection_with_timeout(Duration::from_secs(1))?;
        let (_host, port): (String, u16) = redis::cmd("SENTINEL")
            .arg("get-master-addr-by-name")
            .arg(&self.master)
            .query(&mut conn)?;
        Ok(port)
    }

    /// Every Sentinel's log so far.
    pub fn logs(&self) -> String {
        (0..self.children.len())
            .map(|i| {
                std::fs::read_to_string(self.dir.path().join(format!("sentinel-{i}.log")))
                    .unwrap_or_default()
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for RedisSentinels {
    fn drop(&mut self) {
        for (child, _) in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
