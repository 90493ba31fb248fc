//! Every Redis key and channel name paynotify uses, built in one place.
//!
//! Invariant: all keys of one partition share the hash tag `{pN}` (after the configurable
//! prefix), so every script's keys hash to one slot and the scripts run unchanged on Redis
//! Cluster. The intake and rejected streams are the documented names app servers write to.

/// Key builder for one prefix and partition count.
#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
    partitions: u32,
    /// The hash tag of each partition (`pN`, or on a Cluster a tag chosen by its slot).
    tags: std::sync::Arc<Vec<String>>,
}

/// Redis Cluster's slot of a hash tag (CRC16/XMODEM modulo 16384).
pub fn slot_of(tag: &str) -> u16 {
    crc16::State::<crc16::XMODEM>::calculate(tag.as_bytes()) % 16384
}

/// A tag for partition `p` of `n` whose slot falls in the `p`-th `n`th of the slot space, so the
/// partitions spread evenly over masters that split the slots evenly (as `redis-cli --cluster
/// create` does). Deterministic: every node computes the same tags.
fn spread_tag(p: u32, n: u32) -> String {
    let (low, high) = (
        (u64::from(p) * 16384 / u64::from(n)) as u16,
        (u64::from(p + 1) * 16384 / u64::from(n)) as u16,
    );
    (0u32..)
        .map(|k| format!("p{p}.{k}"))
        .find(|tag| (low..high).contains(&slot_of(tag)))
        .unwrap_or_else(|| format!("p{p}"))
}

/// The keys of one partition.
#[derive(Debug, Clone)]
pub struct PartitionKeys {
    /// ZSET: member `<seq:016x>:<id>` (`delivery::meta::member_of`, `lua/meta.lua`) scored by
    /// next attempt time or lease expiry (ms).
    pub due: String,
    /// HASH: id -> normalized spec JSON.
    pub spec: String,
    /// HASH: id -> meta JSON (`lua/meta.lua`, `delivery::meta::Meta`).
    pub meta: String,
    /// HASH: id -> attempt records joined by `,`.
    pub log: String,
    /// ZSET: id -> delivered at (ms); drives retention.
    pub done: String,
    /// ZSET: id -> died at (ms).
    pub dead: String,
    /// STRING: counter for member order and fencing tokens.
    pub seq: String,
    /// HASH: counters (enqueued, delivering, delivered, dead, attempts).
    pub stats: String,
}

impl Keys {
    /// Keys under `prefix`, notifications spread over `partitions` (at least 1), with the
    /// partition tags `{p0}`, `{p1}`, … (one Redis server).
    pub fn new(prefix: &str, partitions: u32) -> Self {
        let partitions = partitions.max(1);
        Self {
            prefix: prefix.to_string(),
            partitions,
            tags: std::sync::Arc::new((0..partitions).map(|p| format!("p{p}")).collect()),
        }
    }

    /// The same for a Redis Cluster: each partition's tag is chosen so that the partitions'
    /// slots spread evenly over the slot space (`{p0.3}`, `{p1.17}`, …); plain `{pN}` tags put
    /// 6 of 12 partitions on one of 3 masters.
    pub fn for_cluster(prefix: &str, partitions: u32) -> Self {
        let partitions = partitions.max(1);
        Self {
            prefix: prefix.to_string(),
            partitions,
            tags: std::sync::Arc::new((0..partitions).map(|p| spread_tag(p, partitions)).collect()),
        }
    }

    /// [`for_cluster`](Self::for_cluster) on a Redis Cluster, else [`new`](Self::new).
    pub fn for_target(prefix: &str, partitions: u32, cluster: bool) -> Self {
        if cluster {
            Self::for_cluster(prefix, partitions)
        } else {
            Self::new(prefix, partitions)
        }
    }

    fn tag(&self, p: u32) -> &str {
        self.tags
            .get(p as usize)
            .map(String::as_str)
            .unwrap_or("p0")
    }

    /// Number of partitions.
    pub fn partitions(&self) -> u32 {
        self.partitions
    }

    /// The partition an id lives in: FNV-1a of the id, so it is stable across processes.
    pub fn partition_of(&self, id: &str) -> u32 {
        let mut hash: u32 = 0x811c_9dc5;
        for byte in id.as_bytes() {
            hash ^= u32::from(*byte);
            hash = hash.wrapping_mul(0x0100_0193);
        }
        hash % self.partitions
    }

    /// The keys of partition `p`.
    pub fn partition(&self, p: u32) -> PartitionKeys {
        let base = format!("{}:{{{}}}", self.prefix, self.tag(p));
        let k = |name: &str| format!("{base}:{name}");
        PartitionKeys {
            due: k("due"),
            spec: k("spec"),
            meta: k("meta"),
            log: k("log"),
            done: k("done"),
            dead: k("dead"),
            seq: k("seq"),
            stats: k("stats"),
        }
    }

    /// HASH of partition `p`: the attempts settled in hour `hour` (ms / 3,600,000), field
    /// `<minute of the hour>:<verdict>` -> count. Kept 26 h (`lua/settle.lua`), read by the
    /// console's chart.
    pub fn attempts_hour(&self, p: u32, hour: i64) -> String {
        format!("{}:{{{}}}:attempts:{hour}", self.prefix, self.tag(p))
    }

    /// HASH: node id -> its latest report (`lua/node_report.lua`), one key for the cluster.
    /// STRING: the partition count of `prefix`, recorded by the first node (`redis::partitions`).
    pub fn partitions_record(prefix: &str) -> String {
        format!("{prefix}:partitions")
    }

    pub fn nodes(&self) -> String {
        format!("{}:{{nodes}}:reports", self.prefix)
    }

    /// STREAM: the console's audit log (who did what, when), capped.
    pub fn audit(&self) -> String {
        format!("{}:{{audit}}:log", self.prefix)
    }

    /// Stream app servers `XADD` notifications to.
    pub fn intake(&self) -> String {
        format!("{}:intake", self.prefix)
    }

    /// Stream of intake entries that could not be accepted, each with its reason.
    pub fn rejected(&self) -> String {
        format!("{}:rejected", self.prefix)
    }

    /// Shard channel of partition `p` that wakes idle workers when one of its entries becomes
    /// the earliest due (published by the partition's scripts, so it shares their hash tag).
    pub fn wake_channel(&self, p: u32) -> String {
        format!("{}:{{{}}}:wake", self.prefix, self.tag(p))
    }

    /// The wake channels of every partition.
    pub fn wake_channels(&self) -> Vec<String> {
        (0..self.partitions).map(|p| self.wake_channel(p)).collect()
    }

    /// HASH `{seq, result}` holding an order's latest result (own hash tag per order).
    pub fn order_result(&self, order_id: &str) -> String {
        format!("{}:result:{{{}}}", self.prefix, order_id)
    }

    /// Shard channel carrying an order's results to the nodes with subscribers for it (same
    /// hash tag as the order's result key, which `publish.lua` writes in the same script).
    pub fn order_channel(&self, order_id: &str) -> String {
        format!("{}:order:{{{}}}", self.prefix, order_id)
    }

    /// The order id of an order channel, if `channel` is one.
    pub fn order_of_channel<'a>(&self, channel: &'a str) -> Option<&'a str> {
        channel
            .strip_prefix(self.prefix.as_str())
            .and_then(|c| c.strip_prefix(":order:{"))
            .and_then(|c| c.strip_suffix('}'))
    }

    /// HASH `{node, conn, since, last_seen}`: where a device is connected (own hash tag per device).
    pub fn device_presence(&self, device_id: &str) -> String {
        format!("{}:device:{{{}}}", self.prefix, device_id)
    }

    /// Pub/sub channel of one node: calls and sends for its devices, replies to its callers.
    pub fn node_channel(&self, node_id: &str) -> String {
        format!("{}:node:{{{}}}", self.prefix, node_id)
    }

    /// STRING: the process instance holding node id `node_id` (TTL, refreshed while it runs).
    pub fn node_alive(&self, node_id: &str) -> String {
        format!("{}:node:{{{}}}:alive", self.prefix, node_id)
    }

    /// HASH `{doc, sealed, version}`: one merchant's record (own hash tag per merchant).
    pub fn merchant(&self, merchant_id: &str) -> String {
        format!("{}:merchant:{{m:{}}}", self.prefix, merchant_id)
    }

    /// HASH: a merchant's health state (`merchant_health.lua`), same hash tag as its record.
    pub fn merchant_health(&self, merchant_id: &str) -> String {
        format!("{}:merchant:{{m:{}}}:health", self.prefix, merchant_id)
    }

    /// HASH: a merchant's attempt counts and latency histogram in one minute (`period` "m",
    /// index = unix minute) or one hour (`period` "h", index = unix hour).
    pub fn merchant_bucket(&self, merchant_id: &str, period: &str, index: i64) -> String {
        format!(
            "{}:merchant:{{m:{}}}:{period}:{index}",
            self.prefix, merchant_id
        )
    }

    /// HASH: one destination's (host:port) shared lane: its circuit breaker and window
    /// (`lane_sync.lua`; own hash tag per destination).
    pub fn lane(&self, destination: &str) -> String {
        format!("{}:lane:{{d:{}}}", self.prefix, destination)
    }

    /// ZSET: the nodes sending to a destination, by last report (same hash tag as its lane).
    pub fn lane_nodes(&self, destination: &str) -> String {
        format!("{}:lane:{{d:{}}}:nodes", self.prefix, destination)
    }

    /// ZSET of merchant ids (all scores 0, so ordered by id): the paged list. Written before a
    /// record is made and after it is removed, so the list may name a merchant that is gone for
    /// a moment, never miss one that is there.
    pub fn merchant_index(&self) -> String {
        format!("{}:merchants", self.prefix)
    }

    /// Consumer group name on the intake stream.
    pub fn intake_group(&self) -> &'static str {
        "paynotify"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partition_keys_share_one_hash_tag() {
        let keys = Keys::new("paynotify", 4);
        let p = keys.partition(3);
        for key in [
            &p.due, &p.spec, &p.meta, &p.log, &p.done, &p.dead, &p.seq, &p.stats,
        ] {
            assert!(key.starts_with("paynotify:{p3}:"), "{key}");
        }
    }

    #[test]
    fn partition_of_is_stable_and_in_range() {
        let keys = Keys::new("x", 7);
        for i in 0..1000 {
            let id = format!("order-{i}");
            let p = keys.partition_of(&id);
            assert!(p < 7);
            assert_eq!(p, keys.partition_of(&id));
        }
        assert_eq!(Keys::new("x", 1).partition_of("anything"), 0);
    }

    #[test]
    fn cluster_tags_spread_the_partitions_over_the_slot_space() {
        for n in [1u32, 3, 12, 64] {
            let keys = Keys::for_cluster("paynotify", n);
            for p in 0..n {
                let due = keys.partition(p).due;
                let tag = due
                    .split('{')
                    .nth(1)
                    .and_then(|t| t.split('}').next())
                    .unwrap();
                let slot = u64::from(slot_of(tag));
                assert!(
                    slot * u64::from(n) / 16384 == u64::from(p),
                    "partition {p} of {n}: slot {slot}"
                );
                assert!(keys.wake_channel(p).contains(&format!("{{{tag}}}")));
            }
        }
        // The known answer for Redis' slot function: CLUSTER KEYSLOT foo = 12182.
        assert_eq!(slot_of("foo"), 12182);
    }

    #[test]
    fn channels_share_the_hash_tag_of_their_keys() {
        let keys = Keys::new("pn", 3);
        assert_eq!(keys.wake_channel(2), "pn:{p2}:wake");
        assert_eq!(keys.order_channel("o-1"), "pn:order:{o-1}");
        assert_eq!(keys.order_result("o-1"), "pn:result:{o-1}");
        assert_eq!(keys.order_of_channel("pn:order:{o-1}"), Some("o-1"));
        assert_eq!(keys.order_of_channel("pn:node:{x}"), None);
        assert_eq!(keys.wake_channels().len(), 3);
    }
}
