//! Per-stage queue numbers for the overview: messages ready and consumers of each stage
//! queue and its dead-letter queue, read with passive declares (AMQP has no "unacked" or
//! rates; the throughput chart gives the rates, from the jobs' counters).

use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use lapin::{Channel, Connection};
use serde::Serialize;
use tributary::names::{Names, Stage};

/// One queue's numbers; `None` when the queue does not exist (yet).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct QueueRow {
    pub queue: String,
    pub stage: &'static str,
    pub dead: bool,
    pub ready: Option<u32>,
    pub consumers: Option<u32>,
}

/// The stage queues and their dead-letter queues, in pipeline order.
pub async fn rows(conn: &Connection, names: &Names) -> Vec<QueueRow> {
    let mut channel = conn.create_channel().await.ok();
    let mut rows = Vec::with_capacity(Stage::ALL.len() * 2);
    for stage in Stage::ALL {
        for (queue, dead) in [(names.queue(stage), false), (names.dead_queue(stage), true)] {
            let found = match &channel {
                Some(c) => peek(c, &queue).await,
                None => None,
            };
            // A failed passive declare closes the channel: the next queue needs a new one.
            if found.is_none() {
                channel = conn.create_channel().await.ok();
            }
            rows.push(QueueRow {
                stage: stage.as_str(),
                dead,
                ready: found.map(|f| f.0),
                consumers: found.map(|f| f.1),
                queue,
            });
        }
    }
    if let Some(channel) = channel {
        let _ = channel.close(200, "queue numbers read".into()).await;
    }
    rows
}

async fn peek(channel: &Channel, queue: &str) -> Option<(u32, u32)> {
    let options = QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    let declared = tokio::time::timeout(
        std::time::Duration::from_secs(2),
        channel.queue_declare(queue.into(), options, FieldTable::default()),
    )
    .await
    .ok()?
    .ok()?;
    Some((declared.message_count(), declared.consumer_count()))
}
