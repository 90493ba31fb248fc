//! Attempts per minute by outcome, from the hourly counters `lua/settle.lua` keeps per
//! partition (`Keys::attempts_hour`, kept 26 h).
//!
//! Invariant: a minute with no counter reads as zero, never as missing, so a chart always has
//! one bucket per minute of its range.

use serde::Serialize;

use super::store::Store;
use crate::redis::Result;

/// One minute of attempts.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Minute {
    /// Start of the minute (ms).
    pub at: i64,
    pub delivered: i64,
    pub retry: i64,
    pub dead: i64,
}

impl Store {
    /// The last `minutes` minutes (1..=1440) up to and including the one holding `now_ms`,
    /// oldest first.
    pub async fn attempts_per_minute(&self, now_ms: i64, minutes: usize) -> Result<Vec<Minute>> {
        let minutes = minutes.clamp(1, 1440) as i64;
        let last = now_ms / 60_000;
        let first = last - minutes + 1;
        let mut out: Vec<Minute> = (first..=last)
            .map(|m| Minute {
                at: m * 60_000,
                ..Minute::default()
            })
            .collect();
        let hours: Vec<i64> = (first / 60..=last / 60).collect();
        let keys = self.keys();
        let mut pipe = redis::pipe();
        for p in 0..keys.partitions() {
            for h in &hours {
                pipe.hgetall(keys.attempts_hour(p, *h));
            }
        }
        let all: Vec<std::collections::HashMap<String, i64>> = self.redis().pipeline(&pipe).await?;
        for (n, fields) in all.into_iter().enumerate() {
            let hour = hours[n % hours.len()];
            for (field, count) in fields {
                let Some((minute, verdict)) = field.split_once(':') else {
                    continue;
                };
                let Ok(minute) = minute.parse::<i64>() else {
                    continue;
                };
                let at = hour * 60 + minute;
                if at < first || at > last {
                    continue;
                }
                let slot = &mut out[(at - first) as usize];
                match verdict {
                    "delivered" => slot.delivered += count,
                    "retry" => slot.retry += count,
                    "dead" => slot.dead += count,
                    _ => {}
                }
            }
        }
        Ok(out)
    }
}
