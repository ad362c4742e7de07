//! Listing keys by pattern with `SCAN`, never `KEYS` (which blocks a node while it walks
//! every key): on one node, or on a Redis Cluster on each serving master in turn, each
//! reached by a slot it serves, through the client's own slot map (`CLUSTER NODES` may
//! name a node by another address than the one the client connected to).

use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, Slot, SlotAddr};
use redis::{Cmd, aio::ConnectionManager};

use super::conn::{cluster_text, is_serving_master, node_rows};
use super::{RedisConn, StoreError};

/// Keys asked for at each `SCAN` step (a hint to Redis).
const SCAN_COUNT: usize = 1000;

impl RedisConn {
    /// The keys matching `pattern`: on a cluster, from every serving master. Stops
    /// scanning once it holds `enough` keys (the last step may take it past that). A key
    /// may come twice (a node rehashing mid-scan).
    pub async fn scan_keys(
        &mut self,
        pattern: &str,
        enough: usize,
    ) -> Result<Vec<String>, StoreError> {
        let mut keys = Vec::new();
        match self {
            RedisConn::Single(c) => Node::One(c).scan(pattern, enough, &mut keys).await?,
            RedisConn::Cluster(c) => {
                for slot in master_slots(&cluster_text(c, "NODES").await?)? {
                    let route = Route::with_slot(slot, SlotAddr::Master);
                    let master =
                        RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(route));
                    let node = Node::Master(&mut *c, master);
                    node.scan(pattern, enough, &mut keys).await?;
                }
            }
        }
        Ok(keys)
    }
}

/// The node one `SCAN` walks: the only one, or a cluster's master.
enum Node<'a> {
    One(&'a mut ConnectionManager),
    Master(&'a mut ClusterConnection, RoutingInfo),
}

impl Node<'_> {
    /// Walks the node from cursor 0 until the cursor comes back to 0 or `keys` holds
    /// `enough`.
    async fn scan(
        mut self,
        pattern: &str,
        enough: usize,
        keys: &mut Vec<String>,
    ) -> Result<(), StoreError> {
        let mut cursor = 0u64;
        while keys.len() < enough {
            let (next, batch) = self.step(cursor, pattern).await?;
            keys.extend(batch);
            if next == 0 {
                break;
            }
            cursor = next;
        }
        Ok(())
    }

    /// One `SCAN` call: the next cursor and the keys it found.
    async fn step(&mut self, cursor: u64, pattern: &str) -> Result<(u64, Vec<String>), StoreError> {
        let cmd = scan(cursor, pattern);
        Ok(match self {
            Node::One(c) => cmd.query_async(&mut **c).await?,
            Node::Master(c, master) => {
                let value = c.route_command(cmd, master.clone()).await?;
                redis::from_redis_value(value).map_err(redis::RedisError::from)?
            }
        })
    }
}

fn scan(cursor: u64, pattern: &str) -> Cmd {
    let mut cmd = redis::cmd("SCAN");
    cmd.arg(cursor)
        .arg("MATCH")
        .arg(pattern)
        .arg("COUNT")
        .arg(SCAN_COUNT);
    cmd
}

/// From `CLUSTER NODES`: one slot each serving master serves (the first it lists), so a
/// command can be routed to that master. Slots being migrated or imported (`[...]`) do
/// not count; a slot that does not parse is an error, not a master left out.
pub fn master_slots(nodes: &str) -> Result<Vec<Slot>, StoreError> {
    let malformed = |detail: String| StoreError::Corrupt {
        key: "CLUSTER NODES".into(),
        detail,
    };
    let mut slots = Vec::new();
    for row in node_rows(nodes).iter().filter(|f| is_serving_master(f)) {
        let Some(first) = row[8..].iter().find(|s| !s.starts_with('[')) else {
            continue;
        };
        let start = first.split('-').next().unwrap_or(first);
        let slot = start
            .parse()
            .ok()
            .and_then(Slot::new)
            .ok_or_else(|| malformed(format!("slot range {first:?} of node {}", row[0])))?;
        slots.push(slot);
    }
    Ok(slots)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slots(numbers: &[u16]) -> Vec<Slot> {
        numbers.iter().map(|n| Slot::new(*n).unwrap()).collect()
    }

    #[test]
    fn one_slot_per_serving_master() {
        let nodes = "\
a1 127.0.0.1:7000@17000 myself,master - 0 0 1 connected 0-5460
b1 127.0.0.1:7001@17001 master - 0 0 2 connected [5461->-g1] 5462-10922
c1 127.0.0.1:7002@17002 master,fail - 0 0 3 connected
d1 127.0.0.1:7003@17003 slave a1 0 0 1 connected
g1 ::1:7006@17006,node-g master - 0 0 4 connected 10923
h1 127.0.0.1:7007@17007 master - 0 0 5 connected [16000-<-a1]
";
        assert_eq!(master_slots(nodes).unwrap(), slots(&[0, 5462, 10923]));
    }

    #[test]
    fn an_unreadable_slot_is_an_error() {
        let nodes = "a1 127.0.0.1:7000@17000 master - 0 0 1 connected x-5460\n";
        assert!(master_slots(nodes).is_err());
        let out_of_range = "a1 127.0.0.1:7000@17000 master - 0 0 1 connected 16384\n";
        assert!(master_slots(out_of_range).is_err());
    }
}
