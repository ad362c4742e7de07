//! The fast path of [`crate::json_stats::JsonStats`] for the common shape: the document is
//! one record and both pointers name top-level members (`/symbol`, `/prices`). One pass
//! reads those two members and skips the others without building a tree of the document.
//! Any other shape, and any document it cannot read, goes the general way, which then
//! gives the same record or the same error.

use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use tributary::message::Record;
use tributary::stats::record_of;

/// The member a pointer of one token names, unescaped (`/a~1b` names `a/b`); `None` for
/// any other pointer.
pub fn top_level_member(pointer: &str) -> Option<String> {
    let token = pointer.strip_prefix('/')?;
    (!token.contains('/')).then(|| token.replace("~1", "/").replace("~0", "~"))
}

/// The record of `body` when its members `group` (a string or number) and `values` (a
/// number or an array of numbers, not empty) read cleanly; `None` otherwise.
pub fn record(body: &[u8], group: &str, values: &str) -> Option<Record> {
    let mut de = serde_json::Deserializer::from_slice(body);
    let (group, values) = de.deserialize_map(Members { group, values }).ok()?;
    de.end().ok()?;
    record_of(group?, &values?)
}

/// Reads a document's object, keeping the two members it is after (the last of each, as
/// a parsed tree would).
#[derive(Clone, Copy)]
struct Members<'k> {
    group: &'k str,
    values: &'k str,
}

impl<'de> Visitor<'de> for Members<'_> {
    type Value = (Option<String>, Option<Vec<f64>>);

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let (mut group, mut values) = (None, None);
        while let Some(member) = map.next_key_seed(Which(self))? {
            match member {
                Member::Group => group = group_text(map.next_value::<serde_json::Value>()?),
                Member::Values => values = Some(map.next_value_seed(Numbers)?),
                Member::Other => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok((group, values))
    }
}

/// The group as the general way prints it; `None` for anything but a string or number.
fn group_text(value: serde_json::Value) -> Option<String> {
    match value {
        serde_json::Value::String(s) => Some(s),
        serde_json::Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

enum Member {
    Group,
    Values,
    Other,
}

/// Tells which member a key names, without allocating it.
struct Which<'k>(Members<'k>);

impl<'de> DeserializeSeed<'de> for Which<'_> {
    type Value = Member;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Member, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for Which<'_> {
    type Value = Member;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a member name")
    }

    fn visit_str<E: de::Error>(self, key: &str) -> Result<Member, E> {
        Ok(if key == self.0.group {
            Member::Group
        } else if key == self.0.values {
            Member::Values
        } else {
            Member::Other
        })
    }
}

/// A number or an array of numbers, as `f64`s (anything else is an error).
struct Numbers;

impl<'de> DeserializeSeed<'de> for Numbers {
    type Value = Vec<f64>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Vec<f64>, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Numbers {
    type Value = Vec<f64>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a number or an array of numbers")
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Vec<f64>, E> {
        Ok(vec![v])
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Vec<f64>, E> {
        Ok(vec![v as f64])
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Vec<f64>, E> {
        Ok(vec![v as f64])
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<f64>, A::Error> {
        let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(16));
        while let Some(v) = seq.next_element::<f64>()? {
            out.push(v);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_single_token_pointers_name_a_member() {
        assert_eq!(top_level_member("/prices").as_deref(), Some("prices"));
        assert_eq!(top_level_member("/a~1b~0c").as_deref(), Some("a/b~c"));
        assert_eq!(top_level_member("/a/b"), None);
        assert_eq!(top_level_member(""), None);
    }

    #[test]
    fn reads_the_two_members_and_skips_the_rest() {
        let body = br#"{"id":1,"x":{"deep":[1,{"y":null}]},"symbol":"A","prices":[2,0.5,-1e3]}"#;
        let r = record(body, "symbol", "prices").unwrap();
        assert_eq!((r.group.as_str(), r.count, r.sum), ("A", 3, -997.5));
        assert_eq!((r.min, r.max), (-1000.0, 2.0));
        let r = record(br#"{"symbol":7,"prices":4}"#, "symbol", "prices").unwrap();
        assert_eq!((r.group.as_str(), r.count), ("7", 1));
    }

    #[test]
    fn leaves_anything_unusual_to_the_general_way() {
        for body in [
            &br#"{"symbol":"A","prices":[1,"x"]}"#[..],
            br#"{"symbol":"A","prices":[]}"#,
            br#"{"symbol":"A","prices":null}"#,
            br#"{"symbol":{},"prices":[1]}"#,
            br#"{"prices":[1]}"#,
            br#"[1,2]"#,
            br#"{"symbol":"A","prices":[1]} trailing"#,
            b"<html>",
        ] {
            assert!(record(body, "symbol", "prices").is_none(), "{body:?}");
        }
    }
}
