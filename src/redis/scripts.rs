//! The Lua scripts of `lua/`, loaded once and run by EVALSHA with a NOSCRIPT fallback.
//!
//! Invariant: every state change of a notification is exactly one of these scripts, so each
//! change is atomic in Redis; Rust code never writes notification keys directly.

use redis::Script;

/// The source of `lua/<name>.lua`.
macro_rules! lua {
    ($name:literal) => {
        include_str!(concat!("../../lua/", $name, ".lua"))
    };
}

/// The source of `lua/<name>.lua` after the meta codec prelude `lua/meta.lua`: Redis scripts
/// cannot `require`, so every script that reads or writes a meta entry or a due-set member is
/// one chunk with the codec (which defines only locals).
macro_rules! with_meta {
    ($name:literal) => {
        concat!(
            include_str!("../../lua/meta.lua"),
            include_str!(concat!("../../lua/", $name, ".lua"))
        )
    };
}

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
    pub merchant_put: Script,
    pub merchant_delete: Script,
    pub merchant_health: Script,
    pub lane_sync: Script,
    pub lane_probe: Script,
    pub node_report: Script,
}

impl Scripts {
    /// Builds the script handles (no Redis round trip; the first call loads each script).
    pub fn new() -> Self {
        Self {
            enqueue: Script::new(with_meta!("enqueue")),
            claim: Script::new(with_meta!("claim")),
            settle: Script::new(with_meta!("settle")),
            release: Script::new(with_meta!("release")),
            renew: Script::new(with_meta!("renew")),
            replay: Script::new(with_meta!("replay")),
            sweep: Script::new(lua!("sweep")),
            intake_ack: Script::new(lua!("intake_ack")),
            publish: Script::new(lua!("publish")),
            device_join: Script::new(lua!("device_join")),
            device_touch: Script::new(lua!("device_touch")),
            device_leave: Script::new(lua!("device_leave")),
            node_id: Script::new(lua!("node_id")),
            merchant_put: Script::new(lua!("merchant_put")),
            merchant_delete: Script::new(lua!("merchant_delete")),
            merchant_health: Script::new(lua!("merchant_health")),
            lane_sync: Script::new(lua!("lane_sync")),
            lane_probe: Script::new(lua!("lane_probe")),
            node_report: Script::new(lua!("node_report")),
        }
    }

    /// Every script with its name, for loading at startup (`SCRIPT LOAD`).
    pub fn all(&self) -> [(&'static str, &Script); 19] {
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
            ("merchant_put", &self.merchant_put),
            ("merchant_delete", &self.merchant_delete),
            ("merchant_health", &self.merchant_health),
            ("lane_sync", &self.lane_sync),
            ("lane_probe", &self.lane_probe),
            ("node_report", &self.node_report),
        ]
    }
}

impl Default for Scripts {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The scripts built with the `lua/meta.lua` prelude.
    const WITH_META: [&str; 6] = ["enqueue", "claim", "settle", "release", "renew", "replay"];

    fn lua_dir() -> std::path::PathBuf {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("lua")
    }

    fn source(name: &str) -> String {
        std::fs::read_to_string(lua_dir().join(format!("{name}.lua"))).unwrap()
    }

    /// The names `lua/meta.lua` defines (`local NAME =` and `local function name(`).
    fn prelude_names() -> Vec<String> {
        source("meta")
            .lines()
            .filter_map(|l| {
                let rest = l
                    .strip_prefix("local function ")
                    .or(l.strip_prefix("local "))?;
                let end = rest.find(|c: char| !(c.is_alphanumeric() || c == '_'))?;
                Some(rest[..end].to_string())
            })
            .collect()
    }

    /// Only the codec encodes or decodes meta, every script that uses the codec gets it, and
    /// no script redefines a name of it.
    #[test]
    fn meta_scripts_are_built_with_the_codec_prelude() {
        let names = prelude_names();
        assert!(names.contains(&"meta_decode".to_string()), "{names:?}");
        assert!(names.contains(&"id_of_member".to_string()), "{names:?}");
        let scripts = Scripts::new();
        let mut seen = 0;
        for entry in std::fs::read_dir(lua_dir()).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_stem().unwrap().to_str().unwrap().to_string();
            if name == "meta" {
                continue;
            }
            let src = std::fs::read_to_string(&path).unwrap();
            assert!(
                !src.contains("cjson"),
                "{name}.lua uses cjson: meta goes through lua/meta.lua"
            );
            let uses = names.iter().any(|n| src.contains(n.as_str()));
            let (_, script) = scripts
                .all()
                .into_iter()
                .find(|(n, _)| *n == name)
                .unwrap_or_else(|| panic!("{name}.lua is not in Scripts::all()"));
            let prelude = format!("{}{src}", source("meta"));
            let built_with_meta = script.get_hash() == Script::new(&prelude).get_hash();
            assert_eq!(
                WITH_META.contains(&name.as_str()),
                built_with_meta,
                "{name}: WITH_META and Scripts::new disagree"
            );
            assert_eq!(
                uses, built_with_meta,
                "{name}.lua uses the codec: {uses}, built with it: {built_with_meta}"
            );
            for n in &names {
                assert!(
                    !src.contains(&format!("local {n}")) && !src.contains(&format!("function {n}")),
                    "{name}.lua redefines {n}"
                );
            }
            seen += 1;
        }
        assert_eq!(seen, scripts.all().len());
    }
}
