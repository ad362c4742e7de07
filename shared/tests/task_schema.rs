//! `docs/task.schema.json` against `Task::from_json`: the examples of the schema are valid,
//! and on every sample the schema and the parser agree (both accept or both refuse), except
//! for a few spellings the parser accepts that the schema, stricter, refuses.

use serde_json::{Value, json};
use tributary::message::Task;

const SCHEMA: &str = include_str!("../../docs/task.schema.json");
const JOB: &str = "6f1c1b7e-4a55-4d0e-9a3c-0a8a3f3f2b10";
const TASK: &str = "0e5d1c52-7a8b-4f5e-9d53-2f1b0c6a9e11";

fn validator() -> jsonschema::Validator {
    let schema: Value = serde_json::from_str(SCHEMA).expect("the schema is JSON");
    jsonschema::draft202012::options()
        .should_validate_formats(true)
        .build(&schema)
        .expect("the schema is a valid JSON Schema")
}

/// A minimal valid task with `changes` applied (a `null` change removes the field).
fn task(changes: Value) -> Value {
    let mut t = json!({"v": 1, "job_id": JOB, "url": "https://api.example.com/quotes/AAPL"});
    for (key, value) in changes.as_object().expect("an object of changes") {
        match value {
            Value::Null => t.as_object_mut().unwrap().remove(key),
            other => t
                .as_object_mut()
                .unwrap()
                .insert(key.clone(), other.clone()),
        };
    }
    t
}

fn valid_samples() -> Vec<Value> {
    vec![
        task(json!({})),
        task(json!({"task_id": TASK})),
        task(json!({"url": "http://127.0.0.1:8080/quotes/1.json?x=1#f"})),
        task(json!({"url": "HTTPS://API.EXAMPLE.COM/"})),
        task(json!({"url": "http://user:pw@a.example/p"})),
        task(json!({"headers": {"accept": "application/json", "X-Api-Key": "k\tv"}})),
        task(json!({"headers": {}})),
        task(json!({"meta": {"any": ["json", 1, null]}})),
        task(json!({"meta": "a string"})),
        task(json!({"extra": "unknown fields are ignored"})),
        json!({"v": 1, "job_id": JOB, "url": "http://a.example/", "headers": null, "meta": null}),
    ]
}

fn invalid_samples() -> Vec<Value> {
    let many: serde_json::Map<String, Value> =
        (0..33).map(|i| (format!("x-h{i}"), json!("v"))).collect();
    vec![
        json!("https://api.example.com/quotes/AAPL"),
        json!([]),
        task(json!({"v": null})),
        task(json!({"v": 2})),
        task(json!({"v": "1"})),
        task(json!({"job_id": null})),
        task(json!({"job_id": "not-a-uuid"})),
        task(json!({"job_id": 7})),
        task(json!({"task_id": "nope"})),
        task(json!({"url": null})),
        task(json!({"url": 3})),
        task(json!({"url": "ftp://a.example/x"})),
        task(json!({"url": "file:///etc/passwd"})),
        task(json!({"url": "api.example.com/quotes"})),
        task(json!({"url": "http://"})),
        task(json!({"url": format!("http://a.example/{}", "x".repeat(8192))})),
        task(json!({"headers": {"host": "evil"}})),
        task(json!({"headers": {"Transfer-Encoding": "chunked"}})),
        task(json!({"headers": {"x bad": "v"}})),
        task(json!({"headers": {"x-ok": "a\r\nb"}})),
        task(json!({"headers": {"x-ok": "x".repeat(4097)}})),
        task(json!({"headers": {"x-ok": 1}})),
        task(json!({"headers": ["accept"]})),
        task(json!({"headers": Value::Object(many)})),
    ]
}

fn parses(sample: &Value) -> bool {
    Task::from_json(sample.to_string().as_bytes(), "m#0").is_ok()
}

#[test]
fn the_schema_examples_are_valid_tasks() {
    let schema: Value = serde_json::from_str(SCHEMA).unwrap();
    let validator = validator();
    let examples = schema["examples"].as_array().expect("examples");
    assert!(!examples.is_empty());
    for example in examples {
        assert!(validator.is_valid(example), "{example}");
        assert!(parses(example), "{example}");
    }
    // The task the producer publishes satisfies the schema.
    let produced = Task::new(JOB.parse().unwrap(), "https://a.example/q".into());
    let produced: Value = serde_json::from_slice(&produced.to_json()).unwrap();
    assert!(validator.is_valid(&produced), "{produced}");
}

#[test]
fn the_schema_agrees_with_the_parser() {
    let validator = validator();
    for sample in valid_samples() {
        assert!(validator.is_valid(&sample), "schema refuses {sample}");
        assert!(parses(&sample), "from_json refuses {sample}");
    }
    for sample in invalid_samples() {
        assert!(!validator.is_valid(&sample), "schema accepts {sample}");
        assert!(!parses(&sample), "from_json accepts {sample}");
    }
}

#[test]
fn the_schema_is_stricter_only_on_spelling() {
    // UUIDs in simple, braced or URN form: the parser takes them, the schema (RFC 9562
    // hyphenated form) does not. Publishers should send the hyphenated form.
    let validator = validator();
    for job in [
        "6f1c1b7e4a554d0e9a3c0a8a3f3f2b10",
        "{6f1c1b7e-4a55-4d0e-9a3c-0a8a3f3f2b10}",
        "urn:uuid:6f1c1b7e-4a55-4d0e-9a3c-0a8a3f3f2b10",
    ] {
        let sample = task(json!({ "job_id": job }));
        assert!(!validator.is_valid(&sample), "{sample}");
        assert!(parses(&sample), "{sample}");
    }
}
