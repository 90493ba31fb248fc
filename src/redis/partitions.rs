//! How many partitions a deployment spreads its notifications over, recorded once in Redis
//! (`<prefix>:partitions`). An id's partition is a hash of the id modulo the count, so two
//! nodes (or a node and a CLI command) with different counts would look for the same id in
//! different places and enqueue into partitions no worker claims.
//!
//! Invariant: every node and CLI command of one prefix uses the recorded count. A different
//! `--partitions` is refused with an error naming both counts, never silently used; without
//! `--partitions`, the recorded count is used, and a fresh Redis gets [`DEFAULT`]. Data written
//! before counts were recorded (partition 0 has keys, nothing is recorded) keeps the count it
//! was written with: `--partitions` if given, else 1, the default of those versions.

use super::keys::Keys;
use super::{Redis, StoreError, Target};

/// Partitions on a fresh Redis when `--partitions` is not given. At 10 million delivered
/// notifications retained, the largest key of a partition, its meta hash (264 bytes per entry
/// measured), holds 10M / 48 × 264 B ≈ 55 MB, under the ~64 MB a Redis Cluster slot migration
/// should move in one piece (BENCHMARKS.md, "key size"); 48 is a multiple of 3 and 6, so the
/// partitions spread evenly over 3- and 6-master clusters.
pub const DEFAULT: u32 = 48;
/// The most partitions `--partitions` accepts.
pub const MAX: u32 = 1024;

#[derive(Debug, thiserror::Error)]
pub enum PartitionsError {
    #[error(
        "Redis records {recorded} partitions for prefix {prefix:?}, but --partitions {requested} \
         was given; ids would be looked for in the wrong partitions. Start every node and \
         command with --partitions {recorded} (or leave the flag out to use the recorded count)"
    )]
    Mismatch {
        prefix: String,
        recorded: u32,
        requested: u32,
    },
    #[error("Redis key {key} holds {value:?}, not a partition count from 1 to {MAX}")]
    Unreadable { key: String, value: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn parse(key: &str, value: &str) -> Result<u32, PartitionsError> {
    match value.parse::<u32>() {
        Ok(n) if (1..=MAX).contains(&n) => Ok(n),
        _ => Err(PartitionsError::Unreadable {
            key: key.to_string(),
            value: value.chars().take(64).collect(),
        }),
    }
}

fn check(prefix: &str, recorded: u32, requested: Option<u32>) -> Result<u32, PartitionsError> {
    match requested {
        Some(requested) if requested != recorded => Err(PartitionsError::Mismatch {
            prefix: prefix.to_string(),
            recorded,
            requested,
        }),
        _ => Ok(recorded),
    }
}

/// The partition count for `prefix` on `target`. With `record`, a count not recorded yet is
/// recorded (nodes and CLI commands record; only a caller that must not write passes false).
pub async fn resolve(
    target: &Target,
    prefix: &str,
    cluster: bool,
    requested: Option<u32>,
    record: bool,
) -> Result<u32, PartitionsError> {
    let redis = Redis::on(target.clone(), Keys::new(prefix, 1));
    let key = Keys::partitions_record(prefix);
    let recorded: Option<String> = redis.query(redis::cmd("GET").arg(&key)).await?;
    if let Some(value) = recorded {
        return check(prefix, parse(&key, &value)?, requested);
    }
    // Nothing recorded: data from before the record keeps its count.
    let legacy = Keys::for_target(prefix, requested.unwrap_or(1), cluster).partition(0);
    let existing: i64 = redis
        .query(
            redis::cmd("EXISTS")
                .arg(&legacy.stats)
                .arg(&legacy.meta)
                .arg(&legacy.due),
        )
        .await?;
    let chosen = match requested {
        Some(n) => n,
        None if existing > 0 => {
            tracing::warn!(
                prefix,
                "notifications from before partition counts were recorded: keeping 1 partition (pass --partitions if they were written with another count)"
            );
            1
        }
        None => DEFAULT,
    };
    if !record {
        return Ok(chosen);
    }
    let _: Option<String> = redis
        .query(
            redis::cmd("SET")
                .arg(&key)
                .arg(chosen.to_string())
                .arg("NX"),
        )
        .await?;
    // Another node may have recorded first, with another count.
    let recorded: Option<String> = redis.query(redis::cmd("GET").arg(&key)).await?;
    match recorded {
        Some(value) => check(prefix, parse(&key, &value)?, requested),
        None => Ok(chosen),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_different_count_is_refused_naming_both() {
        let e = check("pn", 64, Some(12)).unwrap_err().to_string();
        assert!(
            e.contains("64 partitions") && e.contains("--partitions 12"),
            "{e}"
        );
        assert_eq!(check("pn", 64, None).unwrap(), 64);
        assert_eq!(check("pn", 64, Some(64)).unwrap(), 64);
    }

    #[test]
    fn a_recorded_value_out_of_range_is_unreadable() {
        assert!(parse("k", "0").is_err());
        assert!(parse("k", "1025").is_err());
        assert!(parse("k", "abc").is_err());
        assert_eq!(parse("k", "12").unwrap(), 12);
    }
}
