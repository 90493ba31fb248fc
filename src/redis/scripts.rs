//! The Lua scripts of `lua/`, loaded once and run by EVALSHA with a NOSCRIPT fallback.
//!
//! Invariant: every state change of a notification is exactly one of these scripts, so each
//! change is atomic in Redis; Rust code never writes notification keys directly.

use redis::Script;

/// All scripts, cheap to clone (each holds its source and SHA1).
#[derive(Clone)]
pub struct Scripts {
    pub enqueue: Script,
    pub claim: Script,
    pub settle: Script,
    pub release: Script,
    pub renew: Script,
    pub replay: Script,
    pub sweep: Script,
    pub intake_ack: Script,
    pub publish: Script,
    pub device_join: Script,
    pub device_touch: Script,
    pub device_leave: Script,
    pub node_id: Script,
}

impl Scripts {
    /// Builds the script handles (no Redis round trip; the first call loads each script).
    pub fn new() -> Self {
        Self {
            enqueue: Script::new(include_str!("../../lua/enqueue.lua")),
            claim: Script::new(include_str!("../../lua/claim.lua")),
            settle: Script::new(include_str!("../../lua/settle.lua")),
            release: Script::new(include_str!("../../lua/release.lua")),
            renew: Script::new(include_str!("../../lua/renew.lua")),
            replay: Script::new(include_str!("../../lua/replay.lua")),
            sweep: Script::new(include_str!("../../lua/sweep.lua")),
            intake_ack: Script::new(include_str!("../../lua/intake_ack.lua")),
            publish: Script::new(include_str!("../../lua/publish.lua")),
            device_join: Script::new(include_str!("../../lua/device_join.lua")),
            device_touch: Script::new(include_str!("../../lua/device_touch.lua")),
            device_leave: Script::new(include_str!("../../lua/device_leave.lua")),
            node_id: Script::new(include_str!("../../lua/node_id.lua")),
        }
    }

    /// Every script with its name, for loading at startup (`SCRIPT LOAD`).
    pub fn all(&self) -> [(&'static str, &Script); 13] {
        [
            ("enqueue", &self.enqueue),
            ("claim", &self.claim),
            ("settle", &self.settle),
            ("release", &self.release),
            ("renew", &self.renew),
            ("replay", &self.replay),
            ("sweep", &self.sweep),
            ("intake_ack", &self.intake_ack),
            ("publish", &self.publish),
            ("device_join", &self.device_join),
            ("device_touch", &self.device_touch),
            ("device_leave", &self.device_leave),
            ("node_id", &self.node_id),
        ]
    }
}

impl Default for Scripts {
    fn default() -> Self {
        Self::new()
    }
}
