//! A Redis Cluster of private `redis-server` children, for the cluster tests and the scale
//! benchmark.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::{Error, RedisChildError, RedisServer};

/// How long [`RedisCluster`] waits for the cluster to settle.
const CLUSTER_READY_TIMEOUT: Duration = Duration::from_secs(20);

/// A Redis Cluster of private `redis-server` children: masters only, no replicas.
///
/// Invariants: every master is a persistent [`RedisServer`] (append-only file, fsync always,
/// `nodes.conf` in its own temp dir) on a port `p` whose cluster bus port `p + 10000` was free
/// too; together they serve all 16384 slots. [`start`](Self::start) and every method that
/// starts a master return only once every running master reports `cluster_state:ok` with all
/// 16384 slots ok. A restarted master comes back on the same port with the same node id, slots
/// and data. Dropping the handle kills every master.
pub struct RedisCluster {
    masters: Vec<RedisServer>,
}

impl RedisCluster {
    /// Starts `masters` masters (at least 3 for `redis-cli --cluster create`), joins them with
    /// `redis-cli --cluster create ... --cluster-replicas 0`, which spreads the slots evenly, and
    /// waits (up to 20 s) until the cluster is ok on every node.
    pub fn start(masters: usize) -> Result<Self, Error> {
        let mut taken = Vec::with_capacity(masters);
        let mut nodes = Vec::with_capacity(masters);
        for _ in 0..masters {
            let port = free_cluster_port(&taken)?;
            taken.push(port);
            let extra = [
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
                "--cluster-node-timeout",
                "2000",
            ]
            .map(String::from)
            .to_vec();
            nodes.push(RedisServer::start_configured(port, true, extra)?);
        }
        let cluster = Self { masters: nodes };
        cluster.create()?;
        cluster.wait_ok()?;
        Ok(cluster)
    }

    fn cli_binary() -> String {
        std::env::var("PAYNOTIFY_REDIS_CLI").unwrap_or_else(|_| "redis-cli".into())
    }

    /// `redis-cli --cluster create`: assigns the slots and makes the nodes meet.
    fn create(&self) -> Result<(), Error> {
        let binary = Self::cli_binary();
        let output = Command::new(&binary)
            .arg("--cluster")
            .arg("create")
            .args(self.ports().iter().map(|p| format!("127.0.0.1:{p}")))
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .map_err(|source| RedisChildError::Spawn { binary, source })?;
        if !output.status.success() {
            return Err(Error::ClusterCreate {
                status: output.status.to_string(),
                output: format!(
                    "{}{}",
                    String::from_utf8_lossy(&output.stdout),
                    String::from_utf8_lossy(&output.stderr)
                ),
                logs: self.logs(),
            });
        }
        Ok(())
    }

    /// Waits until every running master says `cluster_state:ok`, `cluster_slots_assigned` and
    /// `cluster_slots_ok` 16384 (so no master is still flagged as failing by another).
    fn wait_ok(&self) -> Result<(), Error> {
        let deadline = Instant::now() + CLUSTER_READY_TIMEOUT;
        let mut last = String::new();
        loop {
            let mut all_ok = true;
            for node in self.masters.iter().filter(|m| m.is_running()) {
                match cluster_info(node.port()) {
                    Ok(info) => {
                        let field = |name: &str| {
                            info.lines()
                                .find_map(|l| l.trim().strip_prefix(name)?.strip_prefix(':'))
                                .unwrap_or("")
                                .to_string()
                        };
                        let ok = field("cluster_state") == "ok"
                            && field("cluster_slots_assigned") == "16384"
                            && field("cluster_slots_ok") == "16384";
                        if !ok {
                            all_ok = false;
                            last = format!("node 127.0.0.1:{}:\n{info}", node.port());
                        }
                    }
                    Err(e) => {
                        all_ok = false;
                        last = format!("node 127.0.0.1:{}: {e}", node.port());
                    }
                }
            }
            if all_ok {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(Error::ClusterNotReady {
                    timeout: CLUSTER_READY_TIMEOUT,
                    last,
                    logs: self.logs(),
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Every master's log, each under a header naming its port.
    fn logs(&self) -> String {
        self.masters
            .iter()
            .map(|m| format!("--- 127.0.0.1:{} ---\n{}", m.port(), m.log()))
            .collect::<Vec<_>>()
            .join("\n")
    }

    fn master_mut(&mut self, index: usize) -> Result<&mut RedisServer, Error> {
        let masters = self.masters.len();
        self.masters
            .get_mut(index)
            .ok_or(Error::NoSuchMaster { index, masters })
    }

    /// `redis://127.0.0.1:<port>` of each master, in start order (stable across restarts).
    pub fn urls(&self) -> Vec<String> {
        self.masters.iter().map(RedisServer::url).collect()
    }

    /// [`urls`](Self::urls) joined with commas: the seed list for a cluster client.
    pub fn url_list(&self) -> String {
        self.urls().join(",")
    }

    /// The client port of each master, in start order (stable across restarts).
    pub fn ports(&self) -> Vec<u16> {
        self.masters.iter().map(RedisServer::port).collect()
    }

    /// The process id of master `index`, if it runs.
    pub fn pid(&self, index: usize) -> Option<u32> {
        self.masters.get(index).and_then(RedisServer::pid)
    }

    /// The log of master `index` so far (empty for an unknown index).
    pub fn log(&self, index: usize) -> String {
        self.masters
            .get(index)
            .map(RedisServer::log)
            .unwrap_or_default()
    }

    /// Kills master `index` (SIGKILL) and reaps it; returns at once. The other masters mark it
    /// failed after the node timeout (2 s), and the cluster then refuses commands until it is
    /// back ([`start_master`](Self::start_master)). Does nothing if it is already stopped.
    pub fn stop_master(&mut self, index: usize) -> Result<(), Error> {
        self.master_mut(index)?.stop();
        Ok(())
    }

    /// Starts a [`stop`](Self::stop_master)ped master again on the same port and dir (same node
    /// id, slots and data) and waits until the whole cluster is ok again. A running master is
    /// left alone (the wait still happens).
    pub fn start_master(&mut self, index: usize) -> Result<(), Error> {
        self.master_mut(index)?.start_again()?;
        self.wait_ok()
    }

    /// Kills master `index` (SIGKILL), starts it again on the same port and dir, and waits until
    /// the whole cluster is ok again. A restarted master stays unwritable for about 2 s (Redis
    /// gives the cluster time to reconfigure), so this takes at least that long.
    pub fn restart_master(&mut self, index: usize) -> Result<(), Error> {
        self.stop_master(index)?;
        self.start_master(index)
    }

    /// The index of the master that serves `key`'s slot (asked of the first running master).
    /// Moves the slot of `key`, with its keys, to master `to` (Redis' own resharding steps:
    /// IMPORTING/MIGRATING, MIGRATE, then SETSLOT NODE on every master). Clients subscribed to
    /// shard channels of that slot are unsubscribed by the old owner.
    pub fn move_slot_of(&self, key: &str, to: usize) -> Result<(), Error> {
        let from = self.master_of_key(key)?;
        let (Some(src), Some(dst)) = (self.masters.get(from), self.masters.get(to)) else {
            return Err(Error::NoSuchMaster {
                index: to,
                masters: self.masters.len(),
            });
        };
        if from == to {
            return Ok(());
        }
        let (mut src_conn, mut dst_conn) = (connect(src.port())?, connect(dst.port())?);
        let slot: u16 = redis::cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(key)
            .query(&mut src_conn)?;
        let id = |conn: &mut redis::Connection| -> Result<String, Error> {
            Ok(redis::cmd("CLUSTER").arg("MYID").query(conn)?)
        };
        let (src_id, dst_id) = (id(&mut src_conn)?, id(&mut dst_conn)?);
        redis::cmd("CLUSTER")
            .arg("SETSLOT")
            .arg(slot)
            .arg("IMPORTING")
            .arg(&src_id)
            .exec(&mut dst_conn)?;
        redis::cmd("CLUSTER")
            .arg("SETSLOT")
            .arg(slot)
            .arg("MIGRATING")
            .arg(&dst_id)
            .exec(&mut src_conn)?;
        let keys: Vec<String> = redis::cmd("CLUSTER")
            .arg("GETKEYSINSLOT")
            .arg(slot)
            .arg(1000)
            .query(&mut src_conn)?;
        if !keys.is_empty() {
            redis::cmd("MIGRATE")
                .arg("127.0.0.1")
                .arg(dst.port())
                .arg("")
                .arg(0)
                .arg(5000)
                .arg("KEYS")
                .arg(&keys)
                .exec(&mut src_conn)?;
        }
        for m in self.masters.iter().filter(|m| m.is_running()) {
            redis::cmd("CLUSTER")
                .arg("SETSLOT")
                .arg(slot)
                .arg("NODE")
                .arg(&dst_id)
                .exec(&mut connect(m.port())?)?;
        }
        Ok(())
    }

    pub fn master_of_key(&self, key: &str) -> Result<usize, Error> {
        let node = self
            .masters
            .iter()
            .find(|m| m.is_running())
            .ok_or(Error::NoSuchMaster {
                index: 0,
                masters: 0,
            })?;
        let mut conn = connect(node.port())?;
        let slot: u16 = redis::cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(key)
            .query(&mut conn)?;
        let nodes: String = redis::cmd("CLUSTER").arg("NODES").query(&mut conn)?;
        // <id> <ip:port@cport> <flags> <master> <ping> <pong> <epoch> <link> <slot ranges...>
        for line in nodes.lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let Some(port) = fields
                .get(1)
                .and_then(|a| a.split('@').next())
                .and_then(|a| a.rsplit(':').next())
                .and_then(|p| p.parse::<u16>().ok())
            else {
                continue;
            };
            let serves = fields.iter().skip(8).any(|range| {
                let (lo, hi) = range.split_once('-').unwrap_or((range, range));
                matches!((lo.parse::<u16>(), hi.parse::<u16>()), (Ok(lo), Ok(hi)) if lo <= slot && slot <= hi)
            });
            if serves {
                if let Some(i) = self.masters.iter().position(|m| m.port() == port) {
                    return Ok(i);
                }
            }
        }
        Err(Error::SlotUnserved(slot))
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for master in &mut self.masters {
            master.stop();
        }
    }
}

/// A plain (non-cluster) connection to one local node, with short timeouts.
fn connect(port: u16) -> Result<redis::Connection, Error> {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}"))?;
    let conn = client.get_connection_with_timeout(Duration::from_secs(1))?;
    conn.set_read_timeout(Some(Duration::from_secs(1)))?;
    conn.set_write_timeout(Some(Duration::from_secs(1)))?;
    Ok(conn)
}

/// `CLUSTER INFO` of one local node.
fn cluster_info(port: u16) -> Result<String, Error> {
    let mut conn = connect(port)?;
    Ok(redis::cmd("CLUSTER").arg("INFO").query(&mut conn)?)
}

/// A port `p`, not in `taken`, such that `p` and its cluster bus port `p + 10000` were both
/// free a moment ago. Both lie below the kernel's ephemeral range when it leaves room, so that
/// outgoing connections do not take them in the meantime.
fn free_cluster_port(taken: &[u16]) -> Result<u16, Error> {
    use rand::Rng;
    const TRIES: usize = 1000;
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(32768);
    let high = if ephemeral_low >= 10_000 + 10_000 + 1000 {
        ephemeral_low - 10_000
    } else {
        55_535
    };
    let mut rng = rand::thread_rng();
    for _ in 0..TRIES {
        let port = rng.gen_range(10_000..high) as u16;
        if taken.contains(&port)
            || taken.contains(&(port + 10_000))
            || taken.iter().any(|t| t + 10_000 == port)
        {
            continue;
        }
        let free = |p: u16| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok();
        if free(port) && free(port + 10_000) {
            return Ok(port);
        }
    }
    Err(Error::NoClusterPort(TRIES))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Three masters form a cluster; keys written through their owners survive a SIGKILL and
    /// restart of master 1, and the cluster is ok again afterwards.
    #[test]
    fn cluster_starts_serves_and_survives_a_master_restart() {
        let started = Instant::now();
        let mut cluster = RedisCluster::start(3).unwrap();
        assert_eq!(cluster.ports().len(), 3);
        assert_eq!(cluster.urls().len(), 3);
        assert_eq!(cluster.url_list().split(',').count(), 3);
        for port in cluster.ports() {
            let info = cluster_info(port).unwrap();
            assert!(info.contains("cluster_state:ok"), "{port}: {info}");
            assert!(info.contains("cluster_known_nodes:3"), "{port}: {info}");
        }

        let mut owners = Vec::new();
        for p in 0..12 {
            let key = format!("{{p{p}}}x");
            let owner = cluster.master_of_key(&key).unwrap();
            let mut conn = connect(cluster.ports()[owner]).unwrap();
            let _: () = redis::cmd("SET")
                .arg(&key)
                .arg(format!("v{p}"))
                .query(&mut conn)
                .unwrap();
            owners.push((key, owner, format!("v{p}")));
        }
        // A wrong node answers MOVED: the owner really is the owner.
        let (key, owner, _) = &owners[0];
        let other = (owner + 1) % 3;
        let err = redis::cmd("GET")
            .arg(key)
            .query::<Option<String>>(&mut connect(cluster.ports()[other]).unwrap())
            .unwrap_err();
        assert_eq!(
            err.redirect_node().map(|(addr, _slot)| addr.to_string()),
            Some(format!("127.0.0.1:{}", cluster.ports()[*owner])),
            "{err}"
        );

        let on_1: Vec<_> = owners.iter().filter(|(_, o, _)| *o == 1).collect();
        assert!(!on_1.is_empty(), "no {{pN}} tag on master 1: {owners:?}");
        let pid_before = cluster.pid(1);
        cluster.restart_master(1).unwrap();
        assert_ne!(cluster.pid(1), pid_before);
        for port in cluster.ports() {
            let info = cluster_info(port).unwrap();
            assert!(info.contains("cluster_state:ok"), "{port}: {info}");
        }
        let mut conn = connect(cluster.ports()[1]).unwrap();
        for (key, _, value) in &on_1 {
            let got: Option<String> = redis::cmd("GET").arg(key).query(&mut conn).unwrap();
            assert_eq!(got.as_ref(), Some(value), "{key} lost in the restart");
        }
        // The slot map did not move.
        for (key, owner, _) in &owners {
            assert_eq!(cluster.master_of_key(key).unwrap(), *owner, "{key}");
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "{:?}",
            started.elapsed()
        );
    }
}
