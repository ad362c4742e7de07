//! The quote-document workload: deterministic JSON documents that the
//! pipeline fetches, parses and aggregates, plus the expected aggregate
//! computed directly from the documents and a tolerant comparison against
//! the aggregator's results JSON.
//!
//! Document `i` is
//! `{"id": i, "symbol": "SYM%03d" (i % 50), "prices": [100 numbers]}`;
//! the prices are pseudo-random values in `1.0..=1000.5` with four decimal
//! digits, derived from `(i, k)` by a splitmix64 hash, so every call (and
//! every process, on every platform) produces byte-identical bodies.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use bytes::Bytes;
use serde_json::{Value, json};

/// Number of distinct symbols; document `i` belongs to `symbol(i % SYMBOLS)`.
pub const SYMBOLS: u64 = 50;

/// Number of prices in every document.
pub const PRICES_PER_DOC: usize = 100;

/// Relative tolerance used by [`assert_close`] for `sum`, `min`, `max` and
/// `mean` (the aggregator may add in a different order).
pub const REL_TOLERANCE: f64 = 1e-9;

/// The symbol of document `i`: `"SYM000"` ..= `"SYM049"`.
pub fn symbol(i: u64) -> String {
    format!("SYM{:03}", i % SYMBOLS)
}

/// The prices of document `i`, in document order.
pub fn prices(i: u64) -> Vec<f64> {
    let seed = splitmix64(i ^ 0x7472_6962_7574_6172); // "tributar"
    (0..PRICES_PER_DOC as u64)
        .map(|k| price(splitmix64(seed ^ splitmix64(k))))
        .collect()
}

/// Quote document `i` as a JSON value.
pub fn quote_doc(i: u64) -> Value {
    json!({
        "id": i,
        "symbol": symbol(i),
        "prices": prices(i),
    })
}

/// Quote document `i` serialized as JSON (compact). Computed fresh on
/// every call; identical bytes for identical `i`.
pub fn quote_body(i: u64) -> Bytes {
    // Serializing a `Value` cannot fail (string keys, finite numbers).
    Bytes::from(serde_json::to_vec(&quote_doc(i)).unwrap_or_default())
}

/// Expected aggregate of one symbol group: the same shape the aggregator reports
/// (`records` documents, `count` prices, `sum`, `min`, `max`, `mean = sum / count`), but
/// computed here straight from the documents.
pub type ExpectedGroup = tributary::stats::GroupStats;

/// Expected aggregate of a job: symbol -> group.
pub type Expected = BTreeMap<String, ExpectedGroup>;

/// Computes the expected per-symbol aggregate of the documents `ids`
/// directly from [`quote_doc`]'s data. Each id is counted as often as it
/// appears (pass distinct ids for a job whose URLs are distinct).
pub fn expected_aggregate(ids: impl IntoIterator<Item = u64>) -> Expected {
    let mut out = Expected::new();
    for i in ids {
        let g = out.entry(symbol(i)).or_insert_with(ExpectedGroup::empty);
        g.records += 1;
        for p in prices(i) {
            g.count += 1;
            g.sum += p;
            g.min = g.min.min(p);
            g.max = g.max.max(p);
        }
    }
    for g in out.values_mut() {
        g.mean = g.sum / g.count as f64;
    }
    out
}

/// Compares the aggregator's results JSON
/// (`{"job_id": .., "groups": {"SYM000": {"records", "count", "sum", "min",
/// "max", "mean"}, ..}}`) with `expected`. A bare `groups` object is
/// accepted too. Returns every mismatch found, one per line.
///
/// The group sets must be equal, `records` and `count` exactly equal, and
/// `sum`, `min`, `max`, `mean` equal to [`REL_TOLERANCE`] relative.
pub fn check_close(actual: &Value, expected: &Expected) -> Result<(), String> {
    let groups = match actual.get("groups") {
        Some(g) => g,
        None if actual.get("job_id").is_none() => actual,
        None => return Err("results JSON has no \"groups\" field".to_owned()),
    };
    let Some(groups) = groups.as_object() else {
        return Err(format!("\"groups\" is not an object: {groups}"));
    };

    let mut problems = Vec::new();
    let missing: Vec<&str> = expected
        .keys()
        .filter(|k| !groups.contains_key(k.as_str()))
        .map(String::as_str)
        .collect();
    if !missing.is_empty() {
        problems.push(format!("missing groups: {missing:?}"));
    }
    let extra: Vec<&str> = groups
        .keys()
        .filter(|k| !expected.contains_key(k.as_str()))
        .map(String::as_str)
        .collect();
    if !extra.is_empty() {
        problems.push(format!("unexpected groups: {extra:?}"));
    }

    for (name, want) in expected {
        let Some(got) = groups.get(name) else {
            continue;
        };
        for (field, want) in [("records", want.records), ("count", want.count)] {
            match got.get(field).and_then(Value::as_u64) {
                Some(v) if v == want => {}
                Some(v) => problems.push(format!("{name}.{field}: got {v}, expected {want}")),
                None => problems.push(format!(
                    "{name}.{field}: expected unsigned integer {want}, got {}",
                    got.get(field).unwrap_or(&Value::Null)
                )),
            }
        }
        for (field, want) in [
            ("sum", want.sum),
            ("min", want.min),
            ("max", want.max),
            ("mean", want.mean),
        ] {
            match got.get(field).and_then(Value::as_f64) {
                Some(v) if approx_eq(v, want) => {}
                Some(v) => problems.push(format!(
                    "{name}.{field}: got {v}, expected {want} (relative error {:e})",
                    (v - want).abs() / want.abs().max(f64::MIN_POSITIVE)
                )),
                None => problems.push(format!(
                    "{name}.{field}: expected number {want}, got {}",
                    got.get(field).unwrap_or(&Value::Null)
                )),
            }
        }
    }

    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("\n"))
    }
}

/// Panics with a list of every mismatch unless [`check_close`] accepts
/// `actual` (the aggregator's results JSON) against `expected`.
#[track_caller]
pub fn assert_close(actual: &Value, expected: &Expected) {
    if let Err(problems) = check_close(actual, expected) {
        let mut msg = String::from("aggregate results do not match the expected aggregate:\n");
        for line in problems.lines() {
            let _ = writeln!(msg, "  {line}");
        }
        let _ = write!(
            msg,
            "({} expected groups, {} prices expected in total)",
            expected.len(),
            expected.values().map(|g| g.count).sum::<u64>()
        );
        panic!("{msg}");
    }
}

/// `a` and `b` equal to [`REL_TOLERANCE`] relative (exactly equal if zero).
fn approx_eq(a: f64, b: f64) -> bool {
    a == b || (a - b).abs() <= REL_TOLERANCE * a.abs().max(b.abs())
}

/// Maps a 64-bit hash to a price in `1.0..=1000.5` with four decimals
/// that is never an integer.
fn price(h: u64) -> f64 {
    let unit = (h >> 11) as f64 / (1u64 << 53) as f64; // [0, 1)
    let p = ((1.0 + unit * 999.0) * 10_000.0).round() / 10_000.0;
    if p.fract() == 0.0 { p + 0.5 } else { p }
}

/// splitmix64's finalizer (Steele, Lea, Flood 2014).
fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The results JSON an exact aggregator would produce.
    fn results_json(expected: &Expected) -> Value {
        json!({ "job_id": "job-1", "groups": expected })
    }

    #[test]
    fn documents_are_deterministic() {
        for i in [0, 1, 49, 50, 12_345, u64::MAX] {
            assert_eq!(quote_body(i), quote_body(i));
            assert_eq!(quote_doc(i), quote_doc(i));
            let parsed: Value = serde_json::from_slice(&quote_body(i)).unwrap();
            assert_eq!(parsed, quote_doc(i));
        }
        assert_ne!(quote_body(1), quote_body(2));
        assert_ne!(prices(1), prices(51));
    }

    #[test]
    fn document_shape() {
        for i in 0..2_000 {
            let doc = quote_doc(i);
            assert_eq!(doc["id"], json!(i));
            assert_eq!(doc["symbol"], json!(format!("SYM{:03}", i % 50)));
            let prices = doc["prices"].as_array().unwrap();
            assert_eq!(prices.len(), PRICES_PER_DOC);
            for p in prices {
                let p = p.as_f64().unwrap();
                assert!((1.0..=1000.5).contains(&p), "doc {i}: price {p}");
                assert_ne!(p.fract(), 0.0, "doc {i}: integer price {p}");
            }
            let len = quote_body(i).len();
            assert!((800..=2000).contains(&len), "doc {i}: {len} bytes");
        }
        assert_eq!(symbol(0), "SYM000");
        assert_eq!(symbol(149), "SYM049");
    }

    #[test]
    fn prices_have_several_decimals() {
        let text = String::from_utf8(quote_body(7).to_vec()).unwrap();
        assert!(text.starts_with("{\"id\":7,\"prices\":["), "{text}");
        assert!(text.ends_with("],\"symbol\":\"SYM007\"}"), "{text}");
        let decimals: usize = prices(7)
            .iter()
            .map(|p| p.to_string().split('.').nth(1).map_or(0, str::len))
            .sum();
        assert!(decimals >= 3 * PRICES_PER_DOC, "{decimals}");
    }

    #[test]
    fn golden_values() {
        // Pinned so that an accidental change of the generator is noticed:
        // stored results and benchmarks depend on these exact bytes.
        assert_eq!(prices(0)[0], GOLDEN_P0);
        assert_eq!(prices(12_345)[99], GOLDEN_P12345);
        assert_eq!(quote_body(3).len(), GOLDEN_LEN3);
    }

    const GOLDEN_P0: f64 = 481.1323;
    const GOLDEN_P12345: f64 = 649.9981;
    const GOLDEN_LEN3: usize = 914;

    #[test]
    fn expected_aggregate_by_hand() {
        let ids = [3_u64, 53, 103, 4];
        let expected = expected_aggregate(ids);
        assert_eq!(
            expected.keys().collect::<Vec<_>>(),
            vec!["SYM003", "SYM004"]
        );

        let all: Vec<f64> = [3_u64, 53, 103].iter().flat_map(|&i| prices(i)).collect();
        let g = &expected["SYM003"];
        assert_eq!(g.records, 3);
        assert_eq!(g.count, 300);
        let sum: f64 = all.iter().sum();
        assert!(approx_eq(g.sum, sum));
        assert_eq!(g.min, all.iter().copied().fold(f64::INFINITY, f64::min));
        assert_eq!(g.max, all.iter().copied().fold(f64::NEG_INFINITY, f64::max));
        assert!(approx_eq(g.mean, sum / 300.0));
        assert!(g.min < g.mean && g.mean < g.max);

        let g = &expected["SYM004"];
        assert_eq!((g.records, g.count), (1, 100));
        assert!(expected_aggregate([]).is_empty());
        assert_eq!(expected_aggregate(0..1_000).len(), 50);
    }

    #[test]
    fn close_results_are_accepted() {
        let expected = expected_aggregate(0..500);
        assert_close(&results_json(&expected), &expected);
        // A bare groups object works too.
        assert_close(&json!(expected), &expected);

        // Adding in another order changes the sum by rounding only.
        let mut reordered = expected.clone();
        for (name, g) in reordered.iter_mut() {
            let mut all: Vec<f64> = (0..500)
                .filter(|&i| &symbol(i) == name)
                .flat_map(prices)
                .collect();
            all.reverse();
            g.sum = all.iter().sum();
            g.mean = g.sum / g.count as f64;
        }
        assert_close(&results_json(&reordered), &expected);
    }

    #[test]
    fn mismatches_are_reported() {
        let expected = expected_aggregate(0..100);
        let base = results_json(&expected);

        let mut v = base.clone();
        v["groups"]["SYM001"]["records"] = json!(3);
        let err = check_close(&v, &expected).unwrap_err();
        assert!(err.contains("SYM001.records: got 3, expected 2"), "{err}");

        let mut v = base.clone();
        let sum = v["groups"]["SYM002"]["sum"].as_f64().unwrap();
        v["groups"]["SYM002"]["sum"] = json!(sum * (1.0 + 1e-7));
        let err = check_close(&v, &expected).unwrap_err();
        assert!(err.contains("SYM002.sum"), "{err}");

        let mut v = base.clone();
        v["groups"].as_object_mut().unwrap().remove("SYM003");
        v["groups"]["SYM999"] = json!({});
        let err = check_close(&v, &expected).unwrap_err();
        assert!(err.contains("missing groups: [\"SYM003\"]"), "{err}");
        assert!(err.contains("unexpected groups: [\"SYM999\"]"), "{err}");

        let mut v = base.clone();
        v["groups"]["SYM004"]["min"] = json!("1.5");
        let err = check_close(&v, &expected).unwrap_err();
        assert!(err.contains("SYM004.min: expected number"), "{err}");

        let err = check_close(&json!({"job_id": "x"}), &expected).unwrap_err();
        assert!(err.contains("no \"groups\""), "{err}");
    }

    #[test]
    #[should_panic(expected = "SYM000.count: got 1, expected 100")]
    fn assert_close_panics() {
        let expected = expected_aggregate([0]);
        let mut v = results_json(&expected);
        v["groups"]["SYM000"]["count"] = json!(1);
        assert_close(&v, &expected);
    }
}
