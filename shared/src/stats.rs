//! Count / sum / min / max statistics and how they merge.

use serde::Serialize;

use crate::message::Record;

/// The consolidated statistics of one group.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct GroupStats {
    /// Records merged in.
    pub records: u64,
    /// Values merged in.
    pub count: u64,
    pub sum: f64,
    pub min: f64,
    pub max: f64,
    pub mean: f64,
}

impl GroupStats {
    pub fn empty() -> Self {
        Self {
            records: 0,
            count: 0,
            sum: 0.0,
            min: f64::INFINITY,
            max: f64::NEG_INFINITY,
            mean: 0.0,
        }
    }

    /// Merges one record's statistics.
    pub fn add_record(&mut self, record: &Record) {
        self.merge(1, record.count, record.sum, record.min, record.max);
    }

    pub fn merge(&mut self, records: u64, count: u64, sum: f64, min: f64, max: f64) {
        self.records += records;
        self.count += count;
        self.sum += sum;
        self.min = self.min.min(min);
        self.max = self.max.max(max);
        self.mean = if self.count == 0 {
            0.0
        } else {
            self.sum / self.count as f64
        };
    }
}

/// The statistics of a list of values as one record.
pub fn record_of(group: String, values: &[f64]) -> Option<Record> {
    if values.is_empty() {
        return None;
    }
    let mut min = f64::INFINITY;
    let mut max = f64::NEG_INFINITY;
    let mut sum = 0.0;
    for v in values {
        sum += v;
        min = min.min(*v);
        max = max.max(*v);
    }
    Some(Record {
        group,
        count: values.len() as u64,
        sum,
        min,
        max,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merging_records() {
        let a = record_of("g".into(), &[1.0, 2.0, 3.0]).unwrap();
        let b = record_of("g".into(), &[-1.5]).unwrap();
        let mut g = GroupStats::empty();
        g.add_record(&a);
        g.add_record(&b);
        assert_eq!(g.records, 2);
        assert_eq!(g.count, 4);
        assert_eq!(g.sum, 4.5);
        assert_eq!(g.min, -1.5);
        assert_eq!(g.max, 3.0);
        assert_eq!(g.mean, 1.125);
        assert!(record_of("g".into(), &[]).is_none());
    }
}
