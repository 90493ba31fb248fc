//! A notification's meta entry (its state) and its due-set member, as Rust types.
//!
//! The format is defined once, in the header of `lua/meta.lua`, the codec every script that
//! touches meta is built with (see `redis::scripts`); [`Meta`] is its Rust reading, and a unit
//! test fails when the field list there and the fields here disagree. Only the scripts write
//! meta: Rust decodes it for the views (`Store::show`, `Store::dead_list`).

use serde::{Deserialize, Serialize};

use crate::redis::StoreError;

/// Hex digits of the sequence number in a due-set member (`MEMBER_SEQ_WIDTH` of `lua/meta.lua`).
pub const MEMBER_SEQ_WIDTH: usize = 16;

/// The due-set member of `id`, enqueued with sequence number `seq` (`member_of` of
/// `lua/meta.lua`): `<seq as MEMBER_SEQ_WIDTH lower-case hex digits>:<id>`.
pub fn member_of(seq: u64, id: &str) -> String {
    format!("{seq:0width$x}:{id}", width = MEMBER_SEQ_WIDTH)
}

/// The id of a due-set member (`id_of_member` of `lua/meta.lua`), or `None` when it is not one.
pub fn id_of_member(member: &str) -> Option<&str> {
    let (seq, id) = member.split_at_checked(MEMBER_SEQ_WIDTH)?;
    let id = id.strip_prefix(':')?;
    seq.bytes().all(|b| b.is_ascii_hexdigit()).then_some(id)
}

/// The state of a notification (field `s`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// In the due set, score = next attempt.
    Scheduled,
    /// In the due set, score = lease expiry, with an owner and a fencing token.
    Delivering,
    /// In the done set until retention ends.
    Delivered,
    /// In the dead set.
    Dead,
}

impl State {
    /// The stored word, also the `state` of the API's views.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Scheduled => "scheduled",
            State::Delivering => "delivering",
            State::Delivered => "delivered",
            State::Dead => "dead",
        }
    }
}

/// A meta entry: HASH `meta`, id -> this, as JSON. Times are ms since the epoch; the scripts
/// store them (and the token) as strings, read here as numbers (numbers are accepted too).
/// Fields the scripts leave out when they have no value are `Option`s. Unknown fields are
/// ignored, so a newer script's addition does not break an older reader.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Meta {
    #[serde(rename = "s")]
    pub state: State,
    /// The due-set member ([`member_of`]), kept until the entry is delivered (a compacted
    /// delivered entry has none).
    #[serde(rename = "m", default)]
    pub member: String,
    /// Attempts made over the notification's life.
    #[serde(rename = "a")]
    pub attempts: u32,
    /// Attempts made before the current round (a replay sets it to `attempts`).
    #[serde(rename = "b", default)]
    pub round_base: u32,
    /// Leases that expired without an outcome in the current round.
    #[serde(rename = "st", default)]
    pub stalls: u32,
    /// Fencing token of the latest claim (0 before the first).
    #[serde(rename = "t", with = "ms", default)]
    pub token: i64,
    /// Owner (node id) of the lease, while delivering.
    #[serde(rename = "o", default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// Lease expiry, while delivering.
    #[serde(
        rename = "l",
        default,
        with = "opt_ms",
        skip_serializing_if = "Option::is_none"
    )]
    pub lease_until: Option<i64>,
    /// When the latest claimed attempt was due.
    #[serde(
        rename = "d",
        default,
        with = "opt_ms",
        skip_serializing_if = "Option::is_none"
    )]
    pub due_at: Option<i64>,
    /// Created.
    #[serde(rename = "c", with = "ms")]
    pub created: i64,
    /// When the next (or running) attempt is scheduled for; none once delivered or dead by an
    /// outcome.
    #[serde(
        rename = "n",
        default,
        with = "opt_ms",
        skip_serializing_if = "Option::is_none"
    )]
    pub next_at: Option<i64>,
    /// Finished: delivered at, or died at.
    #[serde(
        rename = "f",
        default,
        with = "opt_ms",
        skip_serializing_if = "Option::is_none"
    )]
    pub finished: Option<i64>,
    /// Why it died.
    #[serde(rename = "r", default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Digest of the spec (16 hex digits of SHA-256, [`spec_digest`]).
    #[serde(rename = "h", default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    /// Delivered (compacted) only: when the delivering attempt started.
    #[serde(
        rename = "ls",
        default,
        with = "opt_ms",
        skip_serializing_if = "Option::is_none"
    )]
    pub last_started: Option<i64>,
    /// Delivered only: its HTTP status.
    #[serde(rename = "hs", default, skip_serializing_if = "Option::is_none")]
    pub last_status: Option<u16>,
    /// Delivered only: its latency (ms).
    #[serde(rename = "lt", default, skip_serializing_if = "Option::is_none")]
    pub last_latency_ms: Option<u64>,
    /// Delivered only: the node that made it.
    #[serde(rename = "nd", default, skip_serializing_if = "Option::is_none")]
    pub last_node: Option<String>,
    /// Delivered only: the merchant the spec named.
    #[serde(rename = "mc", default, skip_serializing_if = "Option::is_none")]
    pub merchant: Option<String>,
    /// Delivered only: the URL it was delivered to.
    #[serde(rename = "u", default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
}

/// The digest a spec is kept as once delivered: 16 hex digits of its SHA-256.
pub fn spec_digest(spec_json: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(spec_json.as_bytes())
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The summary a delivered attempt is settled with (`lua/meta.lua` `meta_delivered`).
pub fn delivered_summary(
    status: u16,
    latency_ms: u64,
    started_ms: i64,
    merchant: Option<&str>,
    url: &str,
) -> String {
    format!(
        "{status}|{latency_ms}|{started_ms}|{}|{url}",
        merchant.unwrap_or("")
    )
}

impl Meta {
    /// Every field's stored name, in the order of `lua/meta.lua`'s header.
    pub const FIELDS: [&'static str; 20] = [
        "s", "m", "a", "b", "st", "t", "o", "l", "d", "c", "n", "f", "r", "h", "ls", "hs", "lt",
        "nd", "mc", "u",
    ];

    /// Decodes the stored meta of `id`; a corrupt entry is an error naming the id, never a
    /// default.
    pub fn decode(id: &str, raw: &str) -> Result<Self, StoreError> {
        serde_json::from_str(raw)
            .map_err(|e| StoreError::Reply(format!("corrupt meta entry of {id:?}: {e}")))
    }

    /// The stored form (what the scripts write): times and token as strings.
    pub fn encode(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// A time or token: stored as a string of digits (the scripts' choice), also read from a number.
mod ms {
    use serde::{de, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &i64, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(v)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
        d.deserialize_any(Visitor)
    }

    pub(super) struct Visitor;

    impl de::Visitor<'_> for Visitor {
        type Value = i64;

        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("an integer, or a string of one")
        }

        fn visit_i64<E: de::Error>(self, v: i64) -> Result<i64, E> {
            Ok(v)
        }

        fn visit_u64<E: de::Error>(self, v: u64) -> Result<i64, E> {
            i64::try_from(v).map_err(E::custom)
        }

        fn visit_str<E: de::Error>(self, v: &str) -> Result<i64, E> {
            v.parse()
                .map_err(|_| E::invalid_value(de::Unexpected::Str(v), &self))
        }
    }
}

/// An optional time (absent or null: none).
mod opt_ms {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &Option<i64>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(v) => s.collect_str(v),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
        #[derive(Deserialize)]
        struct Time(#[serde(with = "super::ms")] i64);
        Ok(Option::<Time>::deserialize(d)?.map(|t| t.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PRELUDE: &str = include_str!("../../lua/meta.lua");

    /// The `@field` names of `lua/meta.lua`'s header, in order.
    fn lua_fields() -> Vec<&'static str> {
        PRELUDE
            .lines()
            .filter_map(|l| l.strip_prefix("-- @field "))
            .filter_map(|l| l.split_whitespace().next())
            .collect()
    }

    fn full() -> Meta {
        Meta {
            state: State::Dead,
            member: member_of(7, "x"),
            attempts: 3,
            round_base: 1,
            stalls: 2,
            token: 42,
            owner: Some("node-a".into()),
            lease_until: Some(1_700_000_000_100),
            due_at: Some(1_700_000_000_000),
            created: 1_699_999_999_000,
            next_at: Some(1_700_000_000_000),
            finished: Some(1_700_000_000_200),
            reason: Some("gone".into()),
            digest: Some("0123456789abcdef".into()),
            last_started: Some(1_700_000_000_150),
            last_status: Some(200),
            last_latency_ms: Some(12),
            last_node: Some("node-a".into()),
            merchant: Some("m1".into()),
            url: Some("https://m1.example/notify".into()),
        }
    }

    #[test]
    fn the_lua_codec_and_rust_name_the_same_fields() {
        assert_eq!(
            lua_fields(),
            Meta::FIELDS,
            "lua/meta.lua's @field lines vs Meta::FIELDS"
        );
        // Meta::FIELDS is what serde reads and writes: a full entry has exactly those keys.
        let json: serde_json::Value = serde_json::from_str(&full().encode()).unwrap();
        let mut keys: Vec<&str> = json
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        let mut fields = Meta::FIELDS.to_vec();
        keys.sort_unstable();
        fields.sort_unstable();
        assert_eq!(keys, fields);
        // The states the codec accepts are the four of State.
        let states = PRELUDE
            .lines()
            .find_map(|l| l.strip_prefix("local META_STATES = {"))
            .unwrap();
        for s in [
            State::Scheduled,
            State::Delivering,
            State::Delivered,
            State::Dead,
        ] {
            assert!(
                states.contains(&format!("{} = true", s.as_str())),
                "{states}"
            );
        }
        assert_eq!(states.matches("= true").count(), 4, "{states}");
    }

    #[test]
    fn the_lua_codec_and_rust_make_the_same_members() {
        let width = PRELUDE
            .lines()
            .find_map(|l| l.strip_prefix("local MEMBER_SEQ_WIDTH = "))
            .unwrap();
        assert_eq!(width.trim().parse::<usize>().unwrap(), MEMBER_SEQ_WIDTH);
        // What enqueue.lua made before the codec: string.format('%016x', seq) .. ':' .. id
        assert_eq!(member_of(255, "a:b"), "00000000000000ff:a:b");
        assert_eq!(id_of_member("00000000000000ff:a:b"), Some("a:b"));
        assert_eq!(id_of_member(&member_of(u64::MAX, "")), Some(""));
        assert_eq!(id_of_member("ff:a"), None);
        assert_eq!(id_of_member("00000000000000fg:a"), None);
        assert_eq!(id_of_member("00000000000000ff-a"), None);
    }

    #[test]
    fn meta_decodes_every_state_with_and_without_optional_fields() {
        // As enqueue.lua writes it (cjson: counts as numbers, times and token as strings).
        let new = r#"{"s":"scheduled","m":"0000000000000001:n1","a":0,"b":0,"st":0,"t":"0","c":"1700000000000","n":"1700000000500"}"#;
        let m = Meta::decode("n1", new).unwrap();
        assert_eq!(m.state, State::Scheduled);
        assert_eq!(m.member, "0000000000000001:n1");
        assert_eq!((m.attempts, m.round_base, m.stalls, m.token), (0, 0, 0, 0));
        assert_eq!(
            (m.created, m.next_at),
            (1_700_000_000_000, Some(1_700_000_000_500))
        );
        assert_eq!((m.owner, m.lease_until, m.due_at), (None, None, None));
        assert_eq!((m.finished, m.reason), (None, None));

        let leased = r#"{"s":"delivering","m":"0000000000000001:n1","a":1,"b":0,"st":1,"t":"17","o":"node-a","l":"1700000030000","d":"1700000000500","c":"1700000000000","n":"1700000000500"}"#;
        let m = Meta::decode("n1", leased).unwrap();
        assert_eq!(m.state, State::Delivering);
        assert_eq!((m.attempts, m.stalls, m.token), (1, 1, 17));
        assert_eq!(m.owner.as_deref(), Some("node-a"));
        assert_eq!(m.lease_until, Some(1_700_000_030_000));
        assert_eq!(m.due_at, Some(1_700_000_000_500));

        let delivered = r#"{"s":"delivered","m":"0000000000000001:n1","a":2,"b":0,"st":0,"t":"18","d":"1700000000500","c":"1700000000000","f":"1700000001000"}"#;
        let m = Meta::decode("n1", delivered).unwrap();
        assert_eq!(m.state, State::Delivered);
        assert_eq!((m.next_at, m.finished), (None, Some(1_700_000_001_000)));

        // cjson escapes '/'; times written as numbers are read too.
        let dead = r#"{"s":"dead","m":"0000000000000001:n1","a":3,"b":1,"st":0,"t":"19","c":1700000000000,"f":"1700000002000","r":"410 Gone \/ stop"}"#;
        let m = Meta::decode("n1", dead).unwrap();
        assert_eq!(m.state, State::Dead);
        assert_eq!((m.attempts, m.round_base), (3, 1));
        assert_eq!(m.created, 1_700_000_000_000);
        assert_eq!(m.reason.as_deref(), Some("410 Gone / stop"));

        // Unknown fields are ignored; what encode writes decodes to the same.
        let extra = new.replacen('{', r#"{"zz":[1],"#, 1);
        assert_eq!(Meta::decode("n1", &extra).unwrap().state, State::Scheduled);
        assert_eq!(Meta::decode("x", &full().encode()).unwrap(), full());
    }

    #[test]
    fn a_corrupt_meta_entry_is_an_error_naming_the_id() {
        let ok = r#"{"s":"scheduled","m":"0000000000000001:n1","a":0,"b":0,"st":0,"t":"0","c":"1","n":"2"}"#;
        let corrupt = [
            "",
            "not json",
            "[]",
            &ok.replace("scheduled", "unknown"),
            &ok.replace(r#""c":"1""#, r#""c":"soon""#),
            &ok.replace(r#""c":"1","#, ""),
            &ok.replace(r#""s":"scheduled","#, ""),
            &ok.replace(r#""a":0"#, r#""a":-1"#),
            &ok.replace(r#""n":"2""#, r#""n":"2.5""#),
        ];
        for raw in corrupt {
            let err = Meta::decode("order-9", raw).expect_err(raw);
            assert!(
                matches!(&err, StoreError::Reply(m) if m.contains("\"order-9\"")),
                "{raw}: {err}"
            );
        }
    }
}
