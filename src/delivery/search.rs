//! Finding notifications for the console: newest first across every partition, filtered by
//! state, merchant, time, reason and text; the dead grouped by error; the per-minute attempt
//! chart; and the replay of one merchant's dead.
//!
//! Invariant: a search reads at most [`SCAN_BUDGET`] entries per call and says where it
//! stopped (a cursor), so a query that matches nothing in millions costs a bounded amount per
//! page; pages never skip or repeat an entry (the cursor is the last (score, member) examined,
//! and ties at one millisecond are ordered by member). Text search never looks at header
//! values (they may be credentials); a delivered entry keeps no body (it is compacted), so
//! there it looks at the id and the URL.

use std::collections::BTreeMap;

use serde::Serialize;

use super::meta::{id_of_member, Meta, State};
use super::store::Store;
use crate::redis::Result;

/// Most entries one search call examines.
pub const SCAN_BUDGET: usize = 5000;
/// Most dead entries read to group failures by error.
pub const GROUP_SAMPLE: usize = 10_000;

/// What to look for. Every filter is optional.
#[derive(Debug, Clone, Default)]
pub struct Query {
    pub state: Option<State>,
    pub merchant: Option<String>,
    /// Substring of the reason a dead notification died of.
    pub reason: Option<String>,
    /// Substring (ASCII case-insensitive) of the id, the url or the body.
    pub text: Option<String>,
    /// The state's time (next attempt, lease end, delivered at, died at) from / to, ms.
    pub from_ms: Option<i64>,
    pub to_ms: Option<i64>,
    /// Continue after this cursor (from a previous page).
    pub after: Option<Cursor>,
    pub limit: usize,
}

/// Where a page stopped: the last (score, member) examined.
#[derive(Debug, Clone, PartialEq)]
pub struct Cursor {
    pub score: i64,
    pub member: String,
}

impl Cursor {
    pub fn encode(&self) -> String {
        format!("{}~{}", self.score, self.member)
    }

    pub fn decode(s: &str) -> Option<Self> {
        let (score, member) = s.split_once('~')?;
        Some(Self {
            score: score.parse().ok()?,
            member: member.to_string(),
        })
    }
}

/// One notification found.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Hit {
    pub id: String,
    pub state: &'static str,
    pub merchant: Option<String>,
    pub url: Option<String>,
    /// The state's time: next attempt (scheduled), lease end (delivering), delivered at, died at.
    pub at: i64,
    pub attempts: u32,
    pub reason: Option<String>,
}

/// One page of a search.
#[derive(Debug, Clone, Serialize)]
pub struct Page {
    pub hits: Vec<Hit>,
    /// Give it back as `after` for the next page; `None` when nothing is left.
    pub next: Option<String>,
    /// Entries examined for this page.
    pub scanned: usize,
}

/// A sorted set to read, newest first.
struct Source {
    partition: u32,
    key: String,
    /// Due-set members are `<seq>:<id>`; the others are ids.
    due: bool,
}

fn sources(store: &Store, state: Option<State>) -> Vec<Source> {
    let keys = store.keys();
    let mut out = Vec::new();
    for p in 0..keys.partitions() {
        let pk = keys.partition(p);
        let mut add = |key: String, due| {
            out.push(Source {
                partition: p,
                key,
                due,
            })
        };
        match state {
            Some(State::Scheduled | State::Delivering) => add(pk.due, true),
            Some(State::Delivered) => add(pk.done, false),
            Some(State::Dead) => add(pk.dead, false),
            None => {
                add(pk.due, true);
                add(pk.done, false);
                add(pk.dead, false);
            }
        }
    }
    out
}

/// A candidate: (score, member, source index).
type Candidate = (i64, String, usize);

impl Store {
    /// Up to `chunk` entries of `src` strictly before `after` in (score desc, member desc)
    /// order and at or after `from`; true when there may be more.
    async fn below(
        &self,
        src: &Source,
        after: Option<&Cursor>,
        upper: Option<i64>,
        from: Option<i64>,
        chunk: usize,
    ) -> Result<(Vec<(String, i64)>, bool)> {
        let max = after
            .map(|c| c.score.to_string())
            .or(upper.map(|u| u.to_string()))
            .unwrap_or_else(|| "+inf".into());
        let min = from.map_or_else(|| "-inf".into(), |f| f.to_string());
        let mut offset = 0;
        loop {
            let got: Vec<(String, f64)> = self
                .redis()
                .query(
                    redis::cmd("ZRANGE")
                        .arg(&src.key)
                        .arg(&max)
                        .arg(&min)
                        .arg("BYSCORE")
                        .arg("REV")
                        .arg("LIMIT")
                        .arg(offset)
                        .arg(chunk)
                        .arg("WITHSCORES"),
                )
                .await?;
            let full = got.len() == chunk;
            let kept: Vec<(String, i64)> = got
                .into_iter()
                .map(|(m, s)| (m, s as i64))
                .filter(|(m, s)| match after {
                    Some(c) => *s < c.score || (*s == c.score && *m < c.member),
                    None => true,
                })
                .collect();
            // Everything fetched was at or after the cursor (many ties): read on past them.
            if kept.is_empty() && full {
                offset += chunk;
                continue;
            }
            return Ok((kept, full));
        }
    }

    /// One page of notifications matching `q`, newest first.
    // long: the merge of every source's next entries is one loop over shared state.
    pub async fn search(&self, q: &Query) -> Result<Page> {
        let srcs = sources(self, q.state);
        let limit = q.limit.clamp(1, 500);
        let chunk = (2 * limit / srcs.len().max(1)).clamp(10, 200);
        let mut cursor = q.after.clone();
        let mut hits = Vec::new();
        let mut scanned = 0;
        // A source is done when it has nothing left before the cursor that was not examined.
        let mut done = vec![false; srcs.len()];
        loop {
            let mut candidates: Vec<Candidate> = Vec::new();
            let mut frontier: Option<(i64, String)> = None;
            let mut full = vec![false; srcs.len()];
            for (i, src) in srcs.iter().enumerate() {
                if done[i] {
                    continue;
                }
                let (got, more) = self
                    .below(src, cursor.as_ref(), q.to_ms, q.from_ms, chunk)
                    .await?;
                full[i] = more;
                if let (true, Some((m, s))) = (more, got.last()) {
                    let f = (*s, m.clone());
                    if frontier.as_ref().is_none_or(|cur| f > *cur) {
                        frontier = Some(f);
                    }
                }
                candidates.extend(got.into_iter().map(|(m, s)| (s, m, i)));
            }
            // Only entries at or after the highest last-fetched entry of an unfinished source are
            // in exact order; the rest are read again next round.
            let mut dropped = vec![false; srcs.len()];
            candidates.retain(|(s, m, i)| {
                let keep = frontier
                    .as_ref()
                    .is_none_or(|(fs, fm)| (*s, m.as_str()) >= (*fs, fm.as_str()));
                if !keep {
                    dropped[*i] = true;
                }
                keep
            });
            for i in 0..srcs.len() {
                done[i] = done[i] || (!full[i] && !dropped[i]);
            }
            candidates.sort_by(|a, b| (b.0, &b.1).cmp(&(a.0, &a.1)));
            let mut last = None;
            for (b, batch) in candidates.chunks(100).enumerate() {
                let matched = self.filter(&srcs, batch, q).await?;
                for (k, (s, m, _)) in batch.iter().enumerate() {
                    scanned += 1;
                    last = Some(Cursor {
                        score: *s,
                        member: m.clone(),
                    });
                    if let Some(hit) = matched.get(&k) {
                        hits.push(hit.clone());
                    }
                    if hits.len() >= limit || scanned >= SCAN_BUDGET {
                        let more = b * 100 + k + 1 < candidates.len() || done.iter().any(|d| !d);
                        return Ok(Page {
                            hits,
                            next: if more { last.map(|c| c.encode()) } else { None },
                            scanned,
                        });
                    }
                }
            }
            if done.iter().all(|d| *d) {
                return Ok(Page {
                    hits,
                    next: None,
                    scanned,
                });
            }
            if let Some(l) = last {
                cursor = Some(l);
            }
        }
    }

    /// The meta and spec texts of `ids` in partition `p` (`None` where an entry is gone).
    pub(super) async fn metas_and_specs(
        &self,
        p: u32,
        ids: &[&String],
    ) -> Result<(Vec<Option<String>>, Vec<Option<String>>)> {
        let pk = self.keys().partition(p);
        self.redis()
            .pipeline(
                redis::pipe()
                    .cmd("HMGET")
                    .arg(&pk.meta)
                    .arg(ids)
                    .cmd("HMGET")
                    .arg(&pk.spec)
                    .arg(ids),
            )
            .await
    }

    /// The hits among `batch` (by position), read from meta and spec.
    async fn filter(
        &self,
        srcs: &[Source],
        batch: &[Candidate],
        q: &Query,
    ) -> Result<BTreeMap<usize, Hit>> {
        let mut by_partition: BTreeMap<u32, Vec<(usize, String)>> = BTreeMap::new();
        for (k, (_, member, i)) in batch.iter().enumerate() {
            let src = &srcs[*i];
            let id = if src.due {
                id_of_member(member).unwrap_or(member).to_string()
            } else {
                member.clone()
            };
            by_partition.entry(src.partition).or_default().push((k, id));
        }
        let mut out = BTreeMap::new();
        for (p, items) in by_partition {
            let ids: Vec<&String> = items.iter().map(|(_, id)| id).collect();
            let (metas, specs) = self.metas_and_specs(p, &ids).await?;
            for (((k, id), meta), spec) in items.iter().zip(metas).zip(specs) {
                // Gone between the reads (retention): not a hit. A delivered entry has no spec.
                let Some(meta) = meta else {
                    continue;
                };
                let meta = Meta::decode(id, &meta)?;
                if let Some(hit) = matches(id, &meta, spec.as_deref(), batch[*k].0, q) {
                    out.insert(*k, hit);
                }
            }
        }
        Ok(out)
    }
}

/// The hit for one entry, if it passes every filter of `q`.
fn matches(id: &str, meta: &Meta, spec: Option<&str>, at: i64, q: &Query) -> Option<Hit> {
    if q.state.is_some_and(|s| s != meta.state) {
        return None;
    }
    let spec: serde_json::Value = spec
        .and_then(|s| serde_json::from_str(s).ok())
        .unwrap_or_default();
    let merchant = spec
        .get("merchant")
        .and_then(|m| m.as_str())
        .map(str::to_string)
        .or_else(|| meta.merchant.clone());
    if q.merchant
        .as_ref()
        .is_some_and(|m| merchant.as_ref() != Some(m))
    {
        return None;
    }
    if let Some(r) = &q.reason {
        if !meta
            .reason
            .as_deref()
            .is_some_and(|have| contains_ci(have, r))
        {
            return None;
        }
    }
    let url = spec
        .get("url")
        .and_then(|u| u.as_str())
        .map(str::to_string)
        .or_else(|| meta.url.clone());
    if let Some(t) = &q.text {
        let body = match spec.get("body") {
            Some(serde_json::Value::String(s)) => s.clone(),
            Some(other) => other.to_string(),
            None => String::new(),
        };
        let found = [id, url.as_deref().unwrap_or(""), &body]
            .iter()
            .any(|h| contains_ci(h, t));
        if !found {
            return None;
        }
    }
    Some(Hit {
        id: id.to_string(),
        state: meta.state.as_str(),
        merchant,
        url,
        at,
        attempts: meta.attempts,
        reason: meta.reason.clone(),
    })
}

fn contains_ci(haystack: &str, needle: &str) -> bool {
    haystack
        .to_ascii_lowercase()
        .contains(&needle.to_ascii_lowercase())
}

/// The error a dead notification's reason is grouped under: the last attempt's error, with
/// long numbers (times, sizes) blurred so "timed out after 10001 ms" and "… 10004 ms" group.
pub fn error_group(reason: &str) -> String {
    let last = reason.rsplit_once("; last: ").map_or(reason, |(_, l)| l);
    let mut out = String::new();
    let mut digits = String::new();
    for c in last.chars().chain(std::iter::once(' ')) {
        if c.is_ascii_digit() {
            digits.push(c);
            continue;
        }
        if digits.len() >= 4 {
            out.push('…');
        } else {
            out.push_str(&digits);
        }
        digits.clear();
        out.push(c);
    }
    out.trim_end().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cursor_round_trips_with_any_member() {
        let c = Cursor {
            score: 1_795_000_000_123,
            member: "0000000000000001:order~1".into(),
        };
        assert_eq!(Cursor::decode(&c.encode()), Some(c));
        assert_eq!(Cursor::decode("x~y"), None);
        assert_eq!(Cursor::decode("nothing"), None);
    }

    #[test]
    fn errors_group_by_the_last_error_with_long_numbers_blurred() {
        assert_eq!(
            error_group("attempts exhausted after 8 tries; last: HTTP 500"),
            "HTTP 500"
        );
        assert_eq!(
            error_group("attempts exhausted after 3 tries; last: timed out after 10004 ms"),
            error_group("attempts exhausted after 2 tries; last: timed out after 10001 ms"),
        );
        assert_eq!(error_group("url refused"), "url refused");
    }
}
