//! A private `redis-server` child ([`RedisServer`]), used by `paynotify dev` and, through the
//! `paynotify-testkit` crate (which builds Redis Cluster and Sentinel children on it), by the
//! test suite and the benchmarks.
//!
//! Invariants: every child lives in its own temp dir on a port that was free when it started,
//! and is killed (SIGKILL) and reaped when its handle is dropped; a restart reuses the port and
//! the dir, so clients can reconnect and a persistent server (append-only file, fsync always)
//! keeps its data (a cluster node also keeps its `nodes.conf`, hence its identity and slots).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Starting or stopping a child failed.
#[derive(Debug, thiserror::Error)]
pub enum RedisChildError {
    #[error("cannot start {binary}: {source} (install it with `apt-get install redis-server`, or give a Redis URL)")]
    Spawn {
        binary: String,
        source: std::io::Error,
    },
    #[error("redis-server did not accept connections within 10 s; its log:\n{0}")]
    NotReady(String),
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
}

/// A running `redis-server` child.
pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
    persistent: bool,
    /// Extra command-line arguments given on every (re)start (cluster options).
    extra_args: Vec<String>,
}

impl RedisServer {
    /// Starts a throwaway server (nothing written to disk).
    pub fn start() -> Result<Self, RedisChildError> {
        Self::start_with(false)
    }

    /// Starts a server; with `persistent`, it keeps an append-only file (fsync always) in its
    /// temp dir so a [`restart`](Self::restart) keeps the data.
    pub fn start_with(persistent: bool) -> Result<Self, RedisChildError> {
        Self::start_configured(free_port()?, persistent, Vec::new())
    }

    /// Starts a throwaway server with `extra_args` after the standard ones (TLS options, say);
    /// it still listens in plain text on [`port`](Self::port), which readiness is checked on.
    pub fn start_with_args(extra_args: Vec<String>) -> Result<Self, RedisChildError> {
        Self::start_configured(free_port()?, false, extra_args)
    }

    /// Starts a replica of `primary` (for tests of `WAIT`); returns once it answers, which may
    /// be before its first sync has finished.
    pub fn start_replica_of(primary: &RedisServer) -> Result<Self, RedisChildError> {
        Self::start_configured(
            free_port()?,
            false,
            vec![
                "--replicaof".into(),
                "127.0.0.1".into(),
                primary.port().to_string(),
            ],
        )
    }

    /// Starts a server on `port` (persistent or not, as for [`start_with`](Self::start_with))
    /// with `extra_args` after the standard ones; they are given again on every restart. For a
    /// caller that chooses the port itself (a cluster node, whose bus port must be free too).
    pub fn start_configured(
        port: u16,
        persistent: bool,
        extra_args: Vec<String>,
    ) -> Result<Self, RedisChildError> {
        let dir = tempfile::Builder::new()
            .prefix("paynotify-redis-")
            .tempdir()?;
        let mut server = Self {
            child: None,
            port,
            dir,
            persistent,
            extra_args,
        };
        server.spawn()?;
        Ok(server)
    }

    /// The `redis-server` binary: `$PAYNOTIFY_REDIS_SERVER`, else `redis-server` on the `PATH`.
    pub fn binary() -> String {
        std::env::var("PAYNOTIFY_REDIS_SERVER").unwrap_or_else(|_| "redis-server".into())
    }

    fn spawn(&mut self) -> Result<(), RedisChildError> {
        let binary = Self::binary();
        let mut cmd = Command::new(&binary);
        cmd.arg("--port")
            .arg(self.port.to_string())
            .arg("--bind")
            .arg("127.0.0.1")
            .arg("--dir")
            .arg(self.dir.path())
            .arg("--logfile")
            .arg(self.log_path())
            .arg("--save")
            .arg("")
            .arg("--protected-mode")
            .arg("yes")
            .arg("--maxmemory-policy")
            .arg("noeviction");
        if self.persistent {
            cmd.args(["--appendonly", "yes", "--appendfsync", "always"]);
        } else {
            cmd.args(["--appendonly", "no"]);
        }
        cmd.args(&self.extra_args);
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|source| RedisChildError::Spawn { binary, source })?;
        self.child = Some(child);
        self.wait_ready()
    }

    fn wait_ready(&self) -> Result<(), RedisChildError> {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)) {
                let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
                let mut buf = [0u8; 64];
                if s.write_all(b"PING\r\n").is_ok() {
                    if let Ok(n) = s.read(&mut buf) {
                        if buf[..n].starts_with(b"+PONG") {
                            return Ok(());
                        }
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Err(RedisChildError::NotReady(self.log()))
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The process id of the running server, if any.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether the child was started and not [`stop`](Self::stop)ped since (it may have died).
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("redis.log")
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Kills the server (SIGKILL) and reaps it.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts a [`stop`](Self::stop)ped server again on the same port and dir (empty unless
    /// persistent). Does nothing if it runs.
    pub fn start_again(&mut self) -> Result<(), RedisChildError> {
        if self.child.is_some() {
            return Ok(());
        }
        self.spawn()
    }

    /// Starts it again on the same port and dir (empty unless persistent).
    pub fn restart(&mut self) -> Result<(), RedisChildError> {
        self.stop();
        self.spawn()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A port that was free a moment ago.
pub fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}
