//! The dead, for operators: failures grouped by merchant and error, and the replay of every
//! dead notification of one merchant.
//!
//! Invariant: grouping reads at most [`GROUP_SAMPLE`](super::search::GROUP_SAMPLE) of the
//! newest dead entries and says how many it read; a merchant replay reads the dead sets in
//! batches and replays only entries whose spec names that merchant.

use std::collections::BTreeMap;

use serde::Serialize;

use super::meta::Meta;
use super::search::{error_group, GROUP_SAMPLE};
use super::store::Store;
use crate::redis::Result;

/// Dead notifications that share a merchant and an error.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Group {
    pub merchant: Option<String>,
    pub error: String,
    pub count: usize,
    /// The newest of them.
    pub latest_id: String,
    pub latest_at: i64,
}

/// The groups, largest first, and how many dead entries were read to make them.
#[derive(Debug, Clone, Serialize)]
pub struct Groups {
    pub groups: Vec<Group>,
    pub sampled: usize,
    pub total_dead: usize,
}

/// Most dead entries one merchant replay reads.
pub const MERCHANT_REPLAY_SCAN: usize = 200_000;

impl Store {
    /// The newest dead entries' ids, died-at and (meta, spec) texts of partition `p`, `count`
    /// from `offset` (newest first).
    async fn dead_page(
        &self,
        p: u32,
        offset: usize,
        count: usize,
    ) -> Result<Vec<(String, i64, Option<String>, Option<String>)>> {
        let pk = self.keys().partition(p);
        let ids: Vec<(String, f64)> = self
            .redis()
            .query(
                redis::cmd("ZRANGE")
                    .arg(&pk.dead)
                    .arg(offset)
                    .arg(offset + count.max(1) - 1)
                    .arg("REV")
                    .arg("WITHSCORES"),
            )
            .await?;
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let names: Vec<&String> = ids.iter().map(|(id, _)| id).collect();
        let (metas, specs) = self.metas_and_specs(p, &names).await?;
        Ok(ids
            .into_iter()
            .zip(metas.into_iter().zip(specs))
            .map(|((id, at), (m, s))| (id, at as i64, m, s))
            .collect())
    }

    /// The dead grouped by merchant and error, from the newest [`GROUP_SAMPLE`] entries.
    pub async fn dead_groups(&self) -> Result<Groups> {
        let parts = self.keys().partitions().max(1) as usize;
        let per = GROUP_SAMPLE.div_ceil(parts);
        let mut groups: BTreeMap<(Option<String>, String), Group> = BTreeMap::new();
        let (mut sampled, mut total_dead) = (0, 0);
        for p in 0..self.keys().partitions() {
            let pk = self.keys().partition(p);
            let n: usize = self
                .redis()
                .query(redis::cmd("ZCARD").arg(&pk.dead))
                .await?;
            total_dead += n;
            for (id, at, meta, spec) in self.dead_page(p, 0, per).await? {
                let (Some(meta), Some(spec)) = (meta, spec) else {
                    continue;
                };
                sampled += 1;
                let meta = Meta::decode(&id, &meta)?;
                let error = error_group(meta.reason.as_deref().unwrap_or(""));
                let merchant = merchant_of(&spec);
                let g = groups
                    .entry((merchant.clone(), error.clone()))
                    .or_insert(Group {
                        merchant,
                        error,
                        count: 0,
                        latest_id: id.clone(),
                        latest_at: at,
                    });
                g.count += 1;
                if at > g.latest_at {
                    g.latest_at = at;
                    g.latest_id = id;
                }
            }
        }
        let mut groups: Vec<Group> = groups.into_values().collect();
        groups.sort_by(|a, b| b.count.cmp(&a.count).then(b.latest_at.cmp(&a.latest_at)));
        Ok(Groups {
            groups,
            sampled,
            total_dead,
        })
    }

    /// Replays every dead notification of `merchant` (reading at most
    /// [`MERCHANT_REPLAY_SCAN`] dead entries). Returns (replayed, read everything).
    pub async fn replay_merchant(&self, merchant: &str, now_ms: i64) -> Result<(usize, bool)> {
        let mut replayed = 0;
        let mut read = 0;
        for p in 0..self.keys().partitions() {
            // Replayed entries leave the dead set, so the offset moves by the kept ones only.
            let mut offset = 0;
            loop {
                if read >= MERCHANT_REPLAY_SCAN {
                    return Ok((replayed, false));
                }
                let page = self.dead_page(p, offset, 500).await?;
                if page.is_empty() {
                    break;
                }
                read += page.len();
                let n = page.len();
                let ids: Vec<String> = page
                    .into_iter()
                    .filter(|(_, _, _, spec)| {
                        spec.as_deref().and_then(merchant_of).as_deref() == Some(merchant)
                    })
                    .map(|(id, ..)| id)
                    .collect();
                let got = if ids.is_empty() {
                    0
                } else {
                    self.replay(&ids, now_ms).await?.len()
                };
                replayed += got;
                offset += n - got;
                if n < 500 {
                    break;
                }
            }
        }
        Ok((replayed, true))
    }
}

/// The merchant a stored spec names.
fn merchant_of(spec: &str) -> Option<String> {
    let v: serde_json::Value = serde_json::from_str(spec).ok()?;
    v.get("merchant")?.as_str().map(str::to_string)
}
