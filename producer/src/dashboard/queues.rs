//! Per-stage queue numbers for the overview. With `--management-url` they come from the
//! RabbitMQ management API ([`super::management`]: ready, unacked, consumers, rates, the
//! delay queues); without it, or while it does not answer, from passive declares (ready and
//! consumers of each stage queue and its dead-letter queue: AMQP has no "unacked" or rates).

use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use lapin::{Channel, Connection};
use serde::Serialize;
use tributary::names::{Names, Stage};

/// What a queue of the overview is to its stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum QueueKind {
    Stage,
    /// The stage's delay queues, summed.
    Delay,
    Dead,
}

/// One queue's numbers; `None` when the queue does not exist (yet) or the source has no
/// such number.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct QueueRow {
    pub queue: String,
    pub stage: &'static str,
    pub kind: QueueKind,
    pub ready: Option<u64>,
    pub unacked: Option<u64>,
    pub consumers: Option<u32>,
    /// Messages published to it, and acked from it, per second.
    pub rate_in: Option<f64>,
    pub rate_out: Option<f64>,
}

/// The stage queues and their dead-letter queues, in pipeline order, by passive declares.
pub async fn declared_rows(conn: &Connection, names: &Names) -> Vec<QueueRow> {
    let mut channel = conn.create_channel().await.ok();
    let mut rows = Vec::with_capacity(Stage::ALL.len() * 2);
    for stage in Stage::ALL {
        let queues = [
            (names.queue(stage), QueueKind::Stage),
            (names.dead_queue(stage), QueueKind::Dead),
        ];
        for (queue, kind) in queues {
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
                kind,
                ready: found.map(|f| u64::from(f.0)),
                unacked: None,
                consumers: found.map(|f| f.1),
                rate_in: None,
                rate_out: None,
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
