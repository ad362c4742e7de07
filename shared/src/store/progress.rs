//! A job's progress over time, for the dashboard's rate chart: the sorted set
//! `ns:{job}:progress` of samples `t aggregated dead`, scored by time (seconds). The
//! dashboard's sampler adds one each second a job makes progress, so a job page (and a
//! restarted `producer serve`) draws the whole run; it keeps the last [`KEPT`] and, like
//! the job's other keys, expires `--result-ttl` after its last change (same `{job}` hash
//! tag, so one slot of a Redis Cluster).

use redis::AsyncCommands as _;
use serde::Serialize;
use uuid::Uuid;

use super::{Store, StoreError};

/// Samples kept per job: an hour at one a second.
pub const KEPT: isize = 3600;

/// Tasks of a job aggregated and dead at `t` (seconds since the epoch).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Point {
    pub t: f64,
    pub aggregated: u64,
    pub dead: u64,
}

/// Adds a sample, trims to [`KEPT`] and renews the expiry, in one round trip. A sample is
/// taken when the job's counters moved, which renewed its other keys' expiry just before.
pub async fn remember(store: &Store, job: Uuid, point: Point) -> Result<(), StoreError> {
    let key = store.names().progress_key(job);
    let member = format!("{:.3} {} {}", point.t, point.aggregated, point.dead);
    let _: () = redis::pipe()
        .zadd(&key, member, point.t)
        .ignore()
        .zremrangebyrank(&key, 0, -(KEPT + 1))
        .ignore()
        .expire(&key, store.ttl().as_secs() as i64)
        .ignore()
        .query_async(&mut store.connection())
        .await?;
    Ok(())
}

/// The job's samples, oldest first.
pub async fn history(store: &Store, job: Uuid) -> Result<Vec<Point>, StoreError> {
    let mut conn = store.connection();
    let members: Vec<String> = conn.zrange(store.names().progress_key(job), 0, -1).await?;
    Ok(members.iter().filter_map(|m| parse(m)).collect())
}

fn parse(member: &str) -> Option<Point> {
    let mut parts = member.split(' ');
    Some(Point {
        t: parts.next()?.parse().ok()?,
        aggregated: parts.next()?.parse().ok()?,
        dead: parts.next()?.parse().ok()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_round_trip_through_their_member_text() {
        let point = parse("1700000000.250 120 3").unwrap();
        assert_eq!(
            point,
            Point {
                t: 1_700_000_000.25,
                aggregated: 120,
                dead: 3
            }
        );
        assert!(parse("1 2").is_none() && parse("1 x 2").is_none());
    }
}
