//! The deploy files agree with the code: `deploy/rabbitmq/definitions.json` (classic queues)
//! and `definitions.quorum.json` (`--queue-type quorum`) pre-declare exactly the topology every
//! binary declares at start (`tributary::broker::topology`). RabbitMQ refuses a redeclaration whose
//! arguments differ (`PRECONDITION_FAILED`), so a mismatch here would stop every worker on a
//! broker provisioned from such a file. Needs no broker.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use clap::CommandFactory;
use serde_json::{Value, json};
use tributary::broker::topology::Topology;
use tributary::names::{Names, Stage, delay_label};
use tributary::policy::parse_delays;
use tributary::runtime::config::QueueType;

const NAMESPACE: &str = "tributary";

/// Each definitions file and the queue type of the binaries it is for.
const FILES: [(&str, QueueType); 2] = [
    ("definitions.json", QueueType::Classic),
    ("definitions.quorum.json", QueueType::Quorum),
];

fn definitions(file: &str) -> Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy/rabbitmq")
        .join(file);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("parsing {}: {e}", path.display()))
}

/// The fetcher's default `--retry-delays`, read from its clap definition (not from the
/// environment, which may override it).
fn default_retry_ladder() -> Vec<Duration> {
    let command = fetcher_worker::Config::command();
    let arg = command
        .get_arguments()
        .find(|a| a.get_id() == "retry_delays")
        .expect("fetcher-worker has --retry-delays");
    let default = arg
        .get_default_values()
        .first()
        .and_then(|v| v.to_str())
        .expect("--retry-delays has a default");
    parse_delays(default).unwrap()
}

/// What a fetcher-worker with default settings declares in namespace `tributary` (the other
/// binaries declare the same without the delay queues).
fn topology(queue_type: QueueType) -> Topology {
    Topology::new(Names::new(NAMESPACE), queue_type)
        .with_retries(Stage::Fetch, &default_retry_ladder())
}

/// The definitions file the binaries' topology calls for.
fn expected_definitions(queue_type: QueueType) -> Value {
    let names = Names::new(NAMESPACE);
    let topology = topology(queue_type);
    let queues: Vec<Value> = topology
        .queues()
        .into_iter()
        .map(|spec| {
            json!({"name": spec.name, "vhost": "/", "durable": true, "auto_delete": false,
                   "arguments": spec.arguments})
        })
        .collect();
    let bindings: Vec<Value> = topology
        .queues()
        .into_iter()
        .map(|spec| {
            json!({"source": names.exchange(), "vhost": "/", "destination": spec.name,
                   "destination_type": "queue", "routing_key": spec.routing_key,
                   "arguments": {}})
        })
        .collect();
    json!({
        "vhosts": [{"name": "/"}],
        "exchanges": [{"name": names.exchange(), "vhost": "/", "type": "direct",
                       "durable": true, "auto_delete": false, "internal": false,
                       "arguments": {}}],
        "queues": queues,
        "bindings": bindings,
    })
}

/// `TRIBUTARY_WRITE_DEFINITIONS=1 cargo test -p tributary-tests --test e2e deploy::` writes
/// the definitions files from the topology (after a topology change); the other tests then
/// check them.
#[test]
fn write_definitions_when_asked() {
    if std::env::var("TRIBUTARY_WRITE_DEFINITIONS").as_deref() != Ok("1") {
        return;
    }
    for (file, queue_type) in FILES {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../deploy/rabbitmq")
            .join(file);
        let text = serde_json::to_string_pretty(&expected_definitions(queue_type)).unwrap();
        std::fs::write(&path, text + "\n").unwrap();
    }
}

fn array<'a>(defs: &'a Value, file: &str, key: &str) -> &'a Vec<Value> {
    defs[key]
        .as_array()
        .unwrap_or_else(|| panic!("{file} has no `{key}` array"))
}

#[test]
fn the_default_ladder_is_the_documented_one() {
    let labels: Vec<String> = default_retry_ladder()
        .into_iter()
        .map(delay_label)
        .collect();
    assert_eq!(labels, ["1s", "5s", "30s", "2m", "10m"]);
}

#[test]
fn definitions_declare_the_exchange_as_the_binaries_do() {
    for (file, _) in FILES {
        let defs = definitions(file);
        assert_eq!(
            array(&defs, file, "exchanges"),
            &vec![json!({
                "name": Names::new(NAMESPACE).exchange(),
                "vhost": "/",
                "type": "direct",
                "durable": true,
                "auto_delete": false,
                "internal": false,
                "arguments": {},
            })],
            "{file}"
        );
        let vhosts: Vec<&str> = array(&defs, file, "vhosts")
            .iter()
            .map(|v| v["name"].as_str().unwrap())
            .collect();
        assert_eq!(vhosts, ["/"], "{file}");
    }
}

#[test]
fn definitions_declare_exactly_the_queues_of_the_topology() {
    for (file, queue_type) in FILES {
        let defs = definitions(file);
        let queues = array(&defs, file, "queues");
        let topology = topology(queue_type);
        let listed: Vec<&str> = queues
            .iter()
            .map(|q| q["name"].as_str().expect("a queue has a name"))
            .collect();
        let expected = topology.queue_names();
        assert_eq!(
            listed.iter().copied().collect::<BTreeSet<_>>(),
            expected.iter().map(String::as_str).collect::<BTreeSet<_>>(),
            "{file}: queue names differ"
        );
        assert_eq!(
            listed.len(),
            expected.len(),
            "{file}: a queue is listed twice"
        );

        for spec in topology.queues() {
            let queue = queues.iter().find(|q| q["name"] == spec.name.as_str());
            assert_eq!(
                queue,
                Some(&json!({
                    "name": spec.name,
                    "vhost": "/",
                    "durable": true,
                    "auto_delete": false,
                    "arguments": spec.arguments,
                })),
                "{file}: queue {} differs from what the binaries declare",
                spec.name
            );
        }
    }
}

#[test]
fn definitions_bind_each_queue_with_its_routing_key() {
    let exchange = Names::new(NAMESPACE).exchange().to_string();
    for (file, queue_type) in FILES {
        let defs = definitions(file);
        let bindings = array(&defs, file, "bindings");
        let listed: BTreeSet<String> = bindings
            .iter()
            .map(|b| serde_json::to_string(b).unwrap())
            .collect();
        let expected: BTreeSet<String> = topology(queue_type)
            .queues()
            .into_iter()
            .map(|spec| {
                serde_json::to_string(&json!({
                    "source": exchange,
                    "vhost": "/",
                    "destination": spec.name,
                    "destination_type": "queue",
                    "routing_key": spec.routing_key,
                    "arguments": {},
                }))
                .unwrap()
            })
            .collect();
        assert_eq!(listed, expected, "{file}");
        assert_eq!(
            bindings.len(),
            expected.len(),
            "{file}: a binding is listed twice"
        );
    }
}

#[test]
fn definitions_carry_no_credentials_and_nothing_else() {
    for (file, _) in FILES {
        let defs = definitions(file);
        let keys: BTreeSet<&str> = defs
            .as_object()
            .unwrap_or_else(|| panic!("{file} is not an object"))
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(
            keys,
            BTreeSet::from(["vhosts", "exchanges", "queues", "bindings"]),
            "{file}: users, permissions, policies and parameters stay out of the repository"
        );
    }
}
