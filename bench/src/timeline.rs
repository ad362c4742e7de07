//! When a pipeline run reached its milestones (first task fetched, first aggregated, every
//! task fetched, processed, aggregated), read off the job status the bench polls anyway:
//! it shows how much of a short run is filling and draining the pipeline rather than
//! its steady rate.

use std::time::Duration;

use tributary::store::JobStatus;

/// Seconds from the producer's start to each milestone, at the status poll's resolution.
#[derive(Debug, Clone, Copy, Default)]
pub struct Timeline {
    pub first_fetched: Option<f64>,
    pub first_aggregated: Option<f64>,
    pub all_fetched: Option<f64>,
    pub all_processed: Option<f64>,
    pub all_aggregated: Option<f64>,
}

impl Timeline {
    /// Records the milestones `status` reached `at` (the first time each is seen).
    pub fn observe(&mut self, status: &JobStatus, at: Duration) {
        let at = at.as_secs_f64();
        let all = |n: u64| status.total > 0 && n >= status.total;
        let mark = |slot: &mut Option<f64>, reached: bool| {
            if reached && slot.is_none() {
                *slot = Some(at);
            }
        };
        mark(&mut self.first_fetched, status.fetched > 0);
        mark(&mut self.first_aggregated, status.aggregated > 0);
        mark(&mut self.all_fetched, all(status.fetched));
        mark(&mut self.all_processed, all(status.processed));
        mark(&mut self.all_aggregated, all(status.aggregated));
    }

    /// The milestones in order, as (name, seconds).
    pub fn entries(&self) -> [(&'static str, Option<f64>); 5] {
        [
            ("first_fetched", self.first_fetched),
            ("first_aggregated", self.first_aggregated),
            ("all_fetched", self.all_fetched),
            ("all_processed", self.all_processed),
            ("all_aggregated", self.all_aggregated),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tributary::store::EnqueueState;
    use uuid::Uuid;

    fn status(total: u64, fetched: u64, processed: u64, aggregated: u64) -> JobStatus {
        JobStatus {
            job_id: Uuid::nil(),
            total,
            fetched,
            processed,
            aggregated,
            retrying: 0,
            deferred: 0,
            dead: 0,
            enqueue: EnqueueState::Complete,
            done: aggregated == total,
        }
    }

    #[test]
    fn each_milestone_keeps_the_first_time_it_was_seen() {
        let mut t = Timeline::default();
        t.observe(&status(10, 0, 0, 0), Duration::from_millis(10));
        t.observe(&status(10, 4, 1, 0), Duration::from_millis(20));
        t.observe(&status(10, 10, 6, 3), Duration::from_millis(30));
        t.observe(&status(10, 10, 10, 10), Duration::from_millis(40));
        t.observe(&status(10, 10, 10, 10), Duration::from_millis(50));
        assert_eq!(t.first_fetched, Some(0.02));
        assert_eq!(t.first_aggregated, Some(0.03));
        assert_eq!(t.all_fetched, Some(0.03));
        assert_eq!(t.all_processed, Some(0.04));
        assert_eq!(t.all_aggregated, Some(0.04));
    }

    #[test]
    fn an_empty_total_reaches_nothing() {
        let mut t = Timeline::default();
        t.observe(&status(0, 0, 0, 0), Duration::from_millis(10));
        assert!(t.entries().iter().all(|(_, at)| at.is_none()));
    }
}
