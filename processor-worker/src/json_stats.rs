//! The built-in processor: JSON statistics configured by JSON Pointers (RFC 6901).
//! `--records` selects the record array (empty: the document is one record), `--group-by`
//! the group key (string or number), `--values` a number or array of numbers.

use tributary::message::{Payload, Record};
use tributary::policy::{ErrorClass, Failure};
use tributary::processor::Processor;
use tributary::stats::record_of;

use crate::flat::top_level_member;

/// The built-in processor of the design.
#[derive(Debug, Clone)]
pub struct JsonStats {
    records: String,
    group_by: String,
    values: String,
    /// The members the fast path reads ([`crate::flat`]), when the document is one record
    /// and both pointers name distinct top-level members.
    flat: Option<(String, String)>,
}

/// A JSON Pointer is empty or starts with `/`.
pub fn parse_pointer(s: &str) -> Result<String, String> {
    if s.is_empty() || s.starts_with('/') {
        Ok(s.to_string())
    } else {
        Err(format!(
            "{s:?} is not a JSON Pointer: it must be empty or start with '/'"
        ))
    }
}

impl JsonStats {
    pub fn new(records: &str, group_by: &str, values: &str) -> Result<Self, String> {
        let (records, group_by, values) = (
            parse_pointer(records)?,
            parse_pointer(group_by)?,
            parse_pointer(values)?,
        );
        let flat = match (top_level_member(&group_by), top_level_member(&values)) {
            (Some(g), Some(v)) if records.is_empty() && g != v => Some((g, v)),
            _ => None,
        };
        Ok(Self {
            records,
            group_by,
            values,
            flat,
        })
    }

    fn record(&self, record: &serde_json::Value, index: Option<usize>) -> Result<Record, Failure> {
        let at = || match index {
            Some(i) => format!(" in record {i}"),
            None => String::new(),
        };
        let group = match record.pointer(&self.group_by) {
            Some(serde_json::Value::String(s)) => s.clone(),
            Some(serde_json::Value::Number(n)) => n.to_string(),
            Some(_) => {
                return Err(Failure::new(
                    ErrorClass::InvalidPayload,
                    format!(
                        "group at {:?}{} is not a string or number",
                        self.group_by,
                        at()
                    ),
                ));
            }
            None => {
                return Err(Failure::new(
                    ErrorClass::InvalidPayload,
                    format!("no group at {:?}{}", self.group_by, at()),
                ));
            }
        };
        let no_values = || {
            Failure::new(
                ErrorClass::NoValues,
                format!("no values at {:?}{}", self.values, at()),
            )
        };
        let values: Vec<f64> = match record.pointer(&self.values) {
            Some(serde_json::Value::Number(n)) => vec![number(n)],
            Some(serde_json::Value::Array(items)) => items
                .iter()
                .enumerate()
                .map(|(i, v)| {
                    v.as_f64().ok_or_else(|| {
                        Failure::new(
                            ErrorClass::InvalidPayload,
                            format!("value {i} at {:?}{} is not a number", self.values, at()),
                        )
                    })
                })
                .collect::<Result<_, _>>()?,
            Some(serde_json::Value::Null) | None => return Err(no_values()),
            Some(_) => {
                return Err(Failure::new(
                    ErrorClass::InvalidPayload,
                    format!("values at {:?}{} are not numbers", self.values, at()),
                ));
            }
        };
        record_of(group, &values).ok_or_else(no_values)
    }
}

fn number(n: &serde_json::Number) -> f64 {
    n.as_f64().unwrap_or(f64::NAN)
}

impl Processor for JsonStats {
    fn process(&self, payload: &Payload) -> Result<Vec<Record>, Failure> {
        if let Some((group, values)) = &self.flat
            && let Some(record) = crate::flat::record(&payload.body, group, values)
        {
            return Ok(vec![record]);
        }
        let doc: serde_json::Value = serde_json::from_slice(&payload.body).map_err(|e| {
            Failure::new(ErrorClass::InvalidPayload, format!("body is not JSON: {e}"))
        })?;
        if self.records.is_empty() {
            return Ok(vec![self.record(&doc, None)?]);
        }
        match doc.pointer(&self.records) {
            Some(serde_json::Value::Array(records)) => records
                .iter()
                .enumerate()
                .map(|(i, r)| self.record(r, Some(i)))
                .collect(),
            Some(_) => Err(Failure::new(
                ErrorClass::InvalidPayload,
                format!("records at {:?} are not an array", self.records),
            )),
            None => Err(Failure::new(
                ErrorClass::InvalidPayload,
                format!("no records at {:?}", self.records),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tributary::message::PayloadHeader;
    use uuid::Uuid;

    fn payload(body: &str) -> Payload {
        Payload {
            header: PayloadHeader {
                v: 1,
                job_id: Uuid::nil(),
                task_id: Uuid::nil(),
                url: "http://a/".into(),
                status: 200,
                content_type: None,
                meta: None,
                attempts: 1,
                enqueued_ms: None,
                traceparent: None,
            },
            body: bytes::Bytes::copy_from_slice(body.as_bytes()),
        }
    }

    fn defaults() -> JsonStats {
        JsonStats::new("", "/symbol", "/prices").unwrap()
    }

    #[test]
    fn whole_document_is_one_record() {
        let r = defaults()
            .process(&payload(r#"{"symbol":"AAPL","prices":[1.5,2.5,-1]}"#))
            .unwrap();
        assert_eq!(
            r,
            vec![Record {
                group: "AAPL".into(),
                count: 3,
                sum: 3.0,
                min: -1.0,
                max: 2.5
            }]
        );
    }

    #[test]
    fn record_arrays_and_numeric_groups() {
        let p = JsonStats::new("/data", "/k", "/v").unwrap();
        let r = p
            .process(&payload(r#"{"data":[{"k":7,"v":1},{"k":"x","v":[2,4]}]}"#))
            .unwrap();
        assert_eq!(r.len(), 2);
        assert_eq!(r[0].group, "7");
        assert_eq!((r[0].count, r[0].sum), (1, 1.0));
        assert_eq!((r[1].group.as_str(), r[1].count, r[1].max), ("x", 2, 4.0));
        let empty = p.process(&payload(r#"{"data":[]}"#)).unwrap();
        assert!(empty.is_empty());
    }

    #[test]
    fn pointer_escapes() {
        let p = JsonStats::new("", "/a~1b", "/c~0d").unwrap();
        let r = p.process(&payload(r#"{"a/b":"g","c~d":[3]}"#)).unwrap();
        assert_eq!(r[0].group, "g");
        assert_eq!(r[0].sum, 3.0);
        assert!(JsonStats::new("", "symbol", "/v").is_err());
    }

    #[test]
    fn bad_payloads_are_classified() {
        let p = defaults();
        let class = |body: &str| p.process(&payload(body)).unwrap_err().class;
        assert_eq!(class("<html>"), ErrorClass::InvalidPayload);
        assert_eq!(class(r#"{"prices":[1]}"#), ErrorClass::InvalidPayload);
        assert_eq!(
            class(r#"{"symbol":{},"prices":[1]}"#),
            ErrorClass::InvalidPayload
        );
        assert_eq!(class(r#"{"symbol":"A"}"#), ErrorClass::NoValues);
        assert_eq!(class(r#"{"symbol":"A","prices":[]}"#), ErrorClass::NoValues);
        assert_eq!(
            class(r#"{"symbol":"A","prices":null}"#),
            ErrorClass::NoValues
        );
        assert_eq!(
            class(r#"{"symbol":"A","prices":[1,"x"]}"#),
            ErrorClass::InvalidPayload
        );
        let recs = JsonStats::new("/data", "/k", "/v").unwrap();
        assert_eq!(
            recs.process(&payload(r#"{"data":{}}"#)).unwrap_err().class,
            ErrorClass::InvalidPayload
        );
    }
}
