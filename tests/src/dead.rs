//! Dead letters made to order: published to a namespace's dead-letter queues with the
//! headers a worker's dead path writes, for the dashboard's tests and its benchmark.

use std::collections::VecDeque;

use tributary::broker::amqp;
use tributary::broker::deadletter::{TaskRef, dead_properties};
use tributary::broker::topology::Topology;
use tributary::message::stage_content_type;
use tributary::names::{Names, Stage};
use tributary::policy::Failure;
use tributary::runtime::config::QueueType;
use uuid::Uuid;

use crate::app::App;

/// Publishes in flight at once (their confirms awaited oldest first).
const WINDOW: usize = 1000;

/// One dead letter to publish.
#[derive(Debug, Clone)]
pub struct Grave {
    pub stage: Stage,
    pub job: Uuid,
    pub task: Uuid,
    pub url: String,
    pub failure: Failure,
}

impl Grave {
    /// A fetch-stage dead letter of `job` for `url`.
    pub fn fetch(job: Uuid, url: &str, failure: Failure) -> Grave {
        Grave {
            stage: Stage::Fetch,
            job,
            task: Uuid::new_v4(),
            url: url.to_string(),
            failure,
        }
    }
}

/// Publishes every grave to its stage's dead-letter queue (declaring the topology first),
/// confirmed; returns how many.
pub async fn bury(app: &App, graves: impl IntoIterator<Item = Grave>) -> anyhow::Result<u64> {
    let conn = app.broker().await?;
    let channel = amqp::confirm_channel(&conn).await?;
    Topology::new(app.names.clone(), QueueType::Classic)
        .declare(&channel)
        .await?;
    let mut in_flight: VecDeque<(lapin::PublisherConfirm, String)> =
        VecDeque::with_capacity(WINDOW);
    let mut published = 0;
    for grave in graves {
        if in_flight.len() == WINDOW {
            let (confirm, key) = in_flight.pop_front().expect("a full window");
            amqp::confirmed(confirm, &key).await?;
        }
        let key = Names::dead_routing_key(grave.stage);
        let (body, props) = dead_letter(&grave);
        let exchange = app.names.exchange();
        let confirm = amqp::publish(&channel, exchange, &key, &body, props).await?;
        in_flight.push_back((confirm, key));
        published += 1;
    }
    for (confirm, key) in in_flight {
        amqp::confirmed(confirm, &key).await?;
    }
    let _ = conn.close(200, "buried".into()).await;
    Ok(published)
}

/// The body and properties of a grave's dead letter.
fn dead_letter(grave: &Grave) -> (Vec<u8>, lapin::BasicProperties) {
    let task = TaskRef {
        job_id: Some(grave.job),
        task_id: Some(grave.task),
        url: Some(grave.url.clone()),
        enqueued_ms: None,
        traceparent: None,
    };
    let body = serde_json::json!({"job_id": grave.job, "task_id": task.task_id, "url": grave.url});
    let content_type = stage_content_type(grave.stage);
    let props = dead_properties(content_type, grave.stage, &grave.failure, 1, &task);
    (body.to_string().into_bytes(), props)
}
