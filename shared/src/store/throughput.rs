//! The dashboard's throughput history: one sample per second (URLs/s fetched and
//! aggregated) in the sorted set `ns:throughput`, scored by time and trimmed to a span, so
//! a new page, or a restarted `producer serve`, can draw the last minutes.

use std::time::Duration;

use redis::AsyncCommands as _;
use serde::Serialize;

use super::{Store, StoreError};

/// One throughput sample: URLs per second fetched and aggregated, at `t` (seconds).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Rate {
    pub t: f64,
    pub fetched: f64,
    pub aggregated: f64,
}

/// Adds a sample to `ns:throughput` and drops those older than `keep`.
pub async fn remember(store: &Store, rate: Rate, keep: Duration) -> Result<(), StoreError> {
    let key = store.names().throughput_key();
    let member = format!("{:.3} {:.3} {:.3}", rate.t, rate.fetched, rate.aggregated);
    let mut conn = store.connection();
    let _: i64 = conn.zadd(&key, member, rate.t).await?;
    let oldest = rate.t - keep.as_secs_f64();
    let _: i64 = conn.zrembyscore(&key, "-inf", oldest).await?;
    let _: bool = conn.expire(&key, keep.as_secs() as i64).await?;
    Ok(())
}

/// The samples of the last `span`, oldest first.
pub async fn history(store: &Store, span: Duration) -> Result<Vec<Rate>, StoreError> {
    let from = crate::message::now_ms() as f64 / 1000.0 - span.as_secs_f64();
    let mut conn = store.connection();
    let members: Vec<String> = conn
        .zrangebyscore(store.names().throughput_key(), from, "+inf")
        .await?;
    Ok(members.iter().filter_map(|m| parse(m)).collect())
}

fn parse(member: &str) -> Option<Rate> {
    let mut parts = member.split(' ').map(str::parse::<f64>);
    Some(Rate {
        t: parts.next()?.ok()?,
        fetched: parts.next()?.ok()?,
        aggregated: parts.next()?.ok()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_round_trip_through_their_member_text() {
        let member = "1700000000.250 12.500 3.000";
        let rate = parse(member).unwrap();
        assert_eq!(
            (rate.t, rate.fetched, rate.aggregated),
            (1_700_000_000.25, 12.5, 3.0)
        );
        assert!(parse("1 2").is_none() && parse("a b c").is_none());
    }
}
