//! Queue numbers from the RabbitMQ management API (`producer serve --management-url`):
//! what AMQP cannot tell (messages unacked, publish and ack rates) and the delay queues,
//! whose names depend on the workers' retry ladders, found by name prefix.
//!
//! One request per sample (`GET /api/queues/{vhost}?name=^ns\.&use_regex=true`, the
//! columns the overview shows, at most [`PAGE_SIZE`] queues), within [`TIMEOUT`]. The
//! credentials come from the URL's user info and go in an `Authorization` header; the URL
//! is never logged with them.

use std::time::Duration;

use anyhow::Context as _;
use lapin::uri::AMQPUri;
use percent_encoding::percent_decode_str;
use serde::Deserialize;
use tributary::names::{Names, Stage};
use tributary::runtime::cli::UsageError;
use tributary::runtime::redact::redact_url;
use url::Url;

use super::queues::{QueueKind, QueueRow};

/// Longest wait for the management API.
pub const TIMEOUT: Duration = Duration::from_secs(2);
/// Most queues one request reads (a namespace has 9 plus its delay queues).
pub const PAGE_SIZE: usize = 500;

/// A management API endpoint and the vhost the pipeline uses.
#[derive(Clone)]
pub struct Management {
    client: reqwest::Client,
    base: Url,
    user: String,
    password: String,
    vhost: String,
}

impl std::fmt::Debug for Management {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Management({}, vhost {:?})", self.base, self.vhost)
    }
}

impl Management {
    /// `url` is `http(s)://user:password@host:15672` (guest/guest without user info);
    /// the vhost is the one of `amqp_url` (the first `--amqp-url`).
    pub fn new(url: &str, amqp_url: &str) -> Result<Management, UsageError> {
        let bad = |why: &str| UsageError(format!("--management-url {}: {why}", redact_url(url)));
        let mut base = Url::parse(url).map_err(|e| bad(&e.to_string()))?;
        if !matches!(base.scheme(), "http" | "https") {
            return Err(bad("must be an http:// or https:// URL"));
        }
        let decode = |s: &str| {
            percent_decode_str(s)
                .decode_utf8()
                .map(|s| s.into_owned())
                .map_err(|_| bad("user info is not UTF-8"))
        };
        let (user, password) = match base.username() {
            "" => ("guest".to_string(), "guest".to_string()),
            user => (decode(user)?, decode(base.password().unwrap_or(""))?),
        };
        let _ = base.set_username("");
        let _ = base.set_password(None);
        let client = reqwest::Client::builder()
            .timeout(TIMEOUT)
            .build()
            .map_err(|e| bad(&e.to_string()))?;
        Ok(Management {
            client,
            base,
            user,
            password,
            vhost: vhost_of(amqp_url),
        })
    }

    /// The namespace's stage, delay and dead-letter queue rows, in pipeline order.
    pub async fn rows(&self, names: &Names) -> anyhow::Result<Vec<QueueRow>> {
        let queues = self.queues(names.namespace()).await?;
        Ok(rows_of(names, &queues))
    }

    async fn queues(&self, namespace: &str) -> anyhow::Result<Vec<MgmtQueue>> {
        let mut url = self.base.clone();
        url.path_segments_mut()
            .map_err(|()| anyhow::anyhow!("the management URL cannot take a path"))?
            .pop_if_empty()
            .extend(["api", "queues", &self.vhost]);
        url.query_pairs_mut()
            .append_pair("page", "1")
            .append_pair("page_size", &PAGE_SIZE.to_string())
            .append_pair("name", &format!("^{}\\.", regex_escape(namespace)))
            .append_pair("use_regex", "true")
            .append_pair("columns", COLUMNS);
        let response = self
            .client
            .get(url)
            .basic_auth(&self.user, Some(&self.password))
            .send()
            .await
            .map_err(|e| anyhow::anyhow!("management API at {}: {}", self.base, e.without_url()))?;
        let status = response.status();
        anyhow::ensure!(
            status.is_success(),
            "management API at {} answered {status}",
            self.base
        );
        let body = response
            .bytes()
            .await
            .map_err(|e| anyhow::anyhow!("management API at {}: {}", self.base, e.without_url()))?;
        let page: QueuePage = serde_json::from_slice(&body)
            .with_context(|| format!("management API at {}: unexpected answer", self.base))?;
        Ok(page.items)
    }
}

const COLUMNS: &str = "name,messages_ready,messages_unacknowledged,consumers,\
message_stats.publish_details.rate,message_stats.ack_details.rate";

#[derive(Debug, Deserialize)]
struct QueuePage {
    items: Vec<MgmtQueue>,
}

/// One queue as the management API describes it (numbers absent until first sampled).
#[derive(Debug, Default, Deserialize)]
pub struct MgmtQueue {
    pub name: String,
    #[serde(default)]
    pub messages_ready: u64,
    #[serde(default)]
    pub messages_unacknowledged: u64,
    #[serde(default)]
    pub consumers: u32,
    #[serde(default)]
    pub message_stats: MessageStats,
}

#[derive(Debug, Default, Deserialize)]
pub struct MessageStats {
    pub publish_details: Option<RateDetails>,
    pub ack_details: Option<RateDetails>,
}

#[derive(Debug, Default, Deserialize)]
pub struct RateDetails {
    pub rate: f64,
}

/// The rows the overview shows from the namespace's queues: per stage its queue, its delay
/// queues summed (`<ns>.<stage>.retry.*`) and its dead-letter queue; a queue that does not
/// exist has no numbers.
pub fn rows_of(names: &Names, queues: &[MgmtQueue]) -> Vec<QueueRow> {
    let mut rows = Vec::with_capacity(Stage::ALL.len() * 3);
    for stage in Stage::ALL {
        let named = |name: &str| queues.iter().find(|q| q.name == name);
        let queue = names.queue(stage);
        rows.push(row(queue.clone(), stage, QueueKind::Stage, named(&queue)));
        let prefix = format!("{queue}.retry.");
        let delays: Vec<&MgmtQueue> = queues
            .iter()
            .filter(|q| q.name.starts_with(&prefix))
            .collect();
        rows.push(delay_row(format!("{prefix}*"), stage, &delays));
        let dead = names.dead_queue(stage);
        rows.push(row(dead.clone(), stage, QueueKind::Dead, named(&dead)));
    }
    rows
}

fn row(queue: String, stage: Stage, kind: QueueKind, found: Option<&MgmtQueue>) -> QueueRow {
    // A queue not rated yet has moved nothing: 0 per second.
    let rate = |d: &Option<RateDetails>| d.as_ref().map_or(0.0, |d| d.rate);
    QueueRow {
        queue,
        stage: stage.as_str(),
        kind,
        ready: found.map(|q| q.messages_ready),
        unacked: found.map(|q| q.messages_unacknowledged),
        consumers: found.map(|q| q.consumers),
        rate_in: found.map(|q| rate(&q.message_stats.publish_details)),
        rate_out: found.map(|q| rate(&q.message_stats.ack_details)),
    }
}

/// The delay queues of a stage as one row: ready summed, messages in per second summed
/// (they leave by expiring, which the API does not rate).
fn delay_row(queue: String, stage: Stage, delays: &[&MgmtQueue]) -> QueueRow {
    let any = !delays.is_empty();
    let sum = |f: fn(&MgmtQueue) -> u64| any.then(|| delays.iter().map(|q| f(q)).sum());
    QueueRow {
        queue,
        stage: stage.as_str(),
        kind: QueueKind::Delay,
        ready: sum(|q| q.messages_ready),
        unacked: sum(|q| q.messages_unacknowledged),
        consumers: any.then(|| delays.iter().map(|q| q.consumers).sum()),
        rate_in: any.then(|| {
            delays
                .iter()
                .filter_map(|q| q.message_stats.publish_details.as_ref())
                .map(|d| d.rate)
                .sum()
        }),
        rate_out: None,
    }
}

/// The vhost of an AMQP URL, as lapin reads it (`/` without one).
fn vhost_of(amqp_url: &str) -> String {
    amqp_url
        .parse::<AMQPUri>()
        .map(|uri| uri.vhost)
        .ok()
        .filter(|vhost| !vhost.is_empty())
        .unwrap_or_else(|| "/".to_string())
}

/// `s` with the characters a regular expression gives meaning to escaped.
fn regex_escape(s: &str) -> String {
    s.chars()
        .flat_map(|c| {
            let special = "\\.+*?()|[]{}^$".contains(c);
            special.then_some('\\').into_iter().chain([c])
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queue(name: &str, ready: u64, unacked: u64, publish: f64) -> MgmtQueue {
        MgmtQueue {
            name: name.into(),
            messages_ready: ready,
            messages_unacknowledged: unacked,
            consumers: 2,
            message_stats: MessageStats {
                publish_details: Some(RateDetails { rate: publish }),
                ack_details: Some(RateDetails { rate: 1.5 }),
            },
        }
    }

    #[test]
    fn rows_sum_the_delay_queues_of_each_stage() {
        let names = Names::new("ns");
        let queues = [
            queue("ns.fetch", 10, 3, 100.0),
            queue("ns.fetch.retry.5s", 4, 0, 2.0),
            queue("ns.fetch.retry.1m", 1, 0, 0.5),
            queue("ns.fetch.dead", 7, 0, 0.0),
            MgmtQueue {
                name: "ns.process".into(),
                ..Default::default()
            },
        ];
        let rows = rows_of(&names, &queues);
        assert_eq!(rows.len(), 9);
        let fetch = &rows[0];
        assert_eq!(
            (fetch.kind, fetch.ready, fetch.unacked),
            (QueueKind::Stage, Some(10), Some(3))
        );
        assert_eq!((fetch.rate_in, fetch.rate_out), (Some(100.0), Some(1.5)));
        let delay = &rows[1];
        assert_eq!(delay.queue, "ns.fetch.retry.*");
        assert_eq!(
            (delay.kind, delay.ready, delay.rate_in),
            (QueueKind::Delay, Some(5), Some(2.5))
        );
        assert_eq!((rows[2].kind, rows[2].ready), (QueueKind::Dead, Some(7)));
        // Known but not yet rated, and not there at all.
        assert_eq!((rows[3].ready, rows[3].rate_in), (Some(0), Some(0.0)));
        assert_eq!((rows[4].ready, rows[4].consumers), (None, None));
        assert_eq!(
            (rows[8].queue.as_str(), rows[8].ready),
            ("ns.results.dead", None)
        );
    }

    #[test]
    fn the_url_gives_credentials_and_the_amqp_url_the_vhost() {
        let m = Management::new("http://ops:s%3Acret@mq:15672", "amqp://u:p@a/prod%2Fone").unwrap();
        assert_eq!((m.user.as_str(), m.password.as_str()), ("ops", "s:cret"));
        assert_eq!(m.base.as_str(), "http://mq:15672/");
        assert_eq!(m.vhost, "prod/one");
        assert!(!format!("{m:?}").contains("cret"));
        let default = Management::new("https://mq", "amqp://a:5672").unwrap();
        assert_eq!(
            (default.user.as_str(), default.vhost.as_str()),
            ("guest", "/")
        );
        assert_eq!(vhost_of("amqp://a/%2F"), "/");
        let refused = Management::new("ftp://ops:secret@mq", "amqp://a").unwrap_err();
        assert!(
            refused.0.contains("http") && !refused.0.contains("secret"),
            "{}",
            refused.0
        );
        assert!(Management::new("not a url", "amqp://a").is_err());
    }

    #[test]
    fn namespaces_are_matched_literally() {
        assert_eq!(regex_escape("a.b-c"), "a\\.b-c");
        assert_eq!(regex_escape("x+(y)"), "x\\+\\(y\\)");
    }
}
