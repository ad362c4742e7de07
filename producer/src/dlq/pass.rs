//! One pass over a dead-letter queue (see [`super`]): read unacked, at most what the queue
//! held when the pass began; and what a dead letter says about itself.
//!
//! A pass that only reads (`list`, a dry run, the dashboard) browses: it consumes with a
//! prefetch as large as what it may read (the queue, a page's worth, a budget), so the
//! broker streams the dead letters instead of answering one `basic.get` round trip each
//! (tens of thousands a second instead of a few thousand); past that prefetch it goes on
//! with `basic.get`. A pass that changes what it reads (`replay`, `purge`) takes one dead letter at a
//! time with `basic.get`, so a slow replay never has the whole queue pushed into memory.

use std::time::Duration;

use anyhow::Context as _;
use futures::StreamExt as _;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicGetOptions, BasicQosOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, Consumer};
use tributary::broker::amqp;
use tributary::broker::deadletter::{BrokerDeath, DeadInfo};
use tributary::names::{Names, Stage};

/// header is missing, and a message the broker dead-lettered by itself straight into the
/// dead-letter queue (only an older version's topology did that) is described from the
/// latest entry of its `x-death` header, so its error class is `delivery_limit`.
pub fn describe(properties: &BasicProperties, stage: Stage) -> DeadInfo {
    let mut info = DeadInfo::from_properties(properties);
    info.stage.get_or_insert_with(|| stage.as_str().to_string());
    if info.error.is_none()
        && let Some(death) = BrokerDeath::of(properties)
    {
        info.reason.get_or_insert(death.failure().reason);
        info.attempts = info.attempts.or(death.deliveries);
        info.error = Some(death.class().as_str().to_string());
    }
    info
}

/// A dead letter taken from its queue and not yet acked.
pub(super) struct Dead {
    pub(super) info: DeadInfo,
    pub(super) delivery: lapin::message::Delivery,
}

/// How long a browsing pass waits for the broker's next dead letter before it takes the
/// queue as read through (fewer than counted are there when another pass holds some).
const BROWSE_IDLE: Duration = Duration::from_secs(1);

/// One pass over a dead-letter queue (see the module documentation).
pub(super) struct Pass {
    channel: Channel,
    queue: String,
    pub(super) stage: Stage,
    /// Dead letters in the queue when the pass began, and still to read of them.
    pub(super) depth: u32,
    left: u32,
    /// The consumer of a browsing pass and how many more it may deliver (its prefetch
    /// left); `None`, or nothing left: one `basic.get` per dead letter.
    browser: Option<(Consumer, u64)>,
}

impl Pass {
    /// Opens a pass over the dead-letter queue of `stage`; `browse` for a read-only pass
    /// that reads at most that many.
    pub(super) async fn open(
        conn: &Connection,
        names: &Names,
        stage: Stage,
        browse: Option<u64>,
    ) -> anyhow::Result<Pass> {
        let channel = conn.create_channel().await?;
        let queue = names.dead_queue(stage);
        let opened = async {
            let left = amqp::queue_depth(&channel, &queue).await?;
            let browser = match browse {
                Some(most) if left > 0 && most > 0 => {
                    let prefetch = most.min(u64::from(left));
                    let consumer = browse_from(&channel, &queue, prefetch).await?;
                    Some((consumer, prefetch))
                }
                _ => None,
            };
            Ok::<_, amqp::AmqpError>((left, browser))
        };
        let (left, browser) = opened
            .await
            .with_context(|| format!("cannot open the dead-letter queue {queue}"))?;
        Ok(Pass {
            channel,
            queue,
            stage,
            depth: left,
            left,
            browser,
        })
    }

    /// The next dead letter of the pass, unacked; `None` when the pass is through.
    pub(super) async fn next(&mut self) -> anyhow::Result<Option<Dead>> {
        if self.left == 0 {
            return Ok(None);
        }
        self.left -= 1;
        let delivery = match &mut self.browser {
            // Past its prefetch (a duplicate took a read) the consumer gets nothing more.
            Some((consumer, more)) if *more > 0 => {
                *more -= 1;
                match tokio::time::timeout(BROWSE_IDLE, consumer.next()).await {
                    Ok(Some(delivery)) => Some(delivery),
                    // Nothing more is ready, or the broker cancelled the consumer.
                    Ok(None) | Err(_) => None,
                }
                .transpose()
            }
            _ => self
                .channel
                .basic_get(
                    self.queue.as_str().into(),
                    BasicGetOptions { no_ack: false },
                )
                .await
                .map(|got| got.map(|message| message.delivery)),
        };
        let delivery = delivery
            .with_context(|| format!("cannot read the dead-letter queue {}", self.queue))?;
        Ok(delivery.map(|delivery| Dead {
            info: describe(&delivery.properties, self.stage),
            delivery,
        }))
    }

    /// Ends the pass: the broker has then applied every ack, and everything not acked is
    /// back in the queue, in its place.
    pub(super) async fn close(self) -> anyhow::Result<()> {
        self.channel
            .close(200, "dlq pass done".into())
            .await
            .with_context(|| format!("closing the pass over {}", self.queue))
    }
}

/// Starts the consumer of a browsing pass: a prefetch of what it may read (unlimited past
/// what a prefetch count can say), since nothing it reads is acked before the pass ends.
async fn browse_from(channel: &Channel, queue: &str, most: u64) -> Result<Consumer, lapin::Error> {
    let prefetch = u16::try_from(most).unwrap_or(0);
    channel
        .basic_qos(prefetch, BasicQosOptions::default())
        .await?;
    let tag = format!("dlq-browse-{}", uuid::Uuid::new_v4());
    channel
        .basic_consume(
            queue.into(),
            tag.as_str().into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
}

/// Acks (removes) a dead letter.
pub(super) async fn ack(dead: &Dead) -> anyhow::Result<()> {
    let acked = dead.delivery.acker.ack(BasicAckOptions::default()).await?;
    anyhow::ensure!(
        acked,
        "the broker channel closed before a dead letter could be removed"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use lapin::types::{AMQPValue, FieldTable, LongString};
    use tributary::broker::amqp::HeadersExt;
    use tributary::broker::deadletter::{TaskRef, dead_properties};
    use tributary::message::{
        CONTENT_TYPE_PAYLOADS, CONTENT_TYPE_RESULTS, CONTENT_TYPE_TASK, stage_content_type,
    };
    use tributary::policy::{ErrorClass, Failure};
    use uuid::Uuid;

    #[test]
    fn describe_reads_tributary_headers() {
        let task = TaskRef {
            job_id: Some(Uuid::new_v4()),
            task_id: Some(Uuid::new_v4()),
            url: Some("http://a.example/1".into()),
            enqueued_ms: Some(7),
            traceparent: None,
        };
        let props = dead_properties(
            CONTENT_TYPE_TASK,
            Stage::Fetch,
            &Failure::http(404, None),
            2,
            &task,
        );
        let dead = describe(&props, Stage::Fetch);
        assert_eq!(dead, DeadInfo::from_properties(&props));
        assert_eq!(dead.error.as_deref(), Some(ErrorClass::HttpStatus.as_str()));
        assert_eq!(dead.attempts, Some(2));
    }

    #[test]
    fn describe_fills_the_stage_and_broker_dead_letters() {
        let bare = describe(&BasicProperties::default(), Stage::Results);
        assert_eq!(bare.stage.as_deref(), Some("results"));
        assert_eq!((bare.error, bare.job_id), (None, None));

        let mut headers = FieldTable::default();
        headers.set_str("x-first-death-reason", "delivery_limit");
        headers.set_str("x-first-death-queue", "ns.process");
        headers.insert("x-delivery-count".into(), AMQPValue::LongInt(10));
        headers.insert(
            "x-other".into(),
            AMQPValue::LongString(LongString::from("ignored")),
        );
        let props = BasicProperties::default().with_headers(headers);
        let dead = describe(&props, Stage::Process);
        assert_eq!(
            dead.error.as_deref(),
            Some(ErrorClass::DeliveryLimit.as_str())
        );
        assert_eq!(dead.attempts, Some(10));
        assert_eq!(dead.stage.as_deref(), Some("process"));
        assert!(dead.reason.unwrap().contains("ns.process"));
    }

    #[test]
    fn the_default_content_types_are_the_stages() {
        assert_eq!(stage_content_type(Stage::Fetch), CONTENT_TYPE_TASK);
        assert_eq!(stage_content_type(Stage::Process), CONTENT_TYPE_PAYLOADS);
        assert_eq!(stage_content_type(Stage::Results), CONTENT_TYPE_RESULTS);
    }
}
