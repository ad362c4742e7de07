//! The fetcher's prefetch counted in tasks, not messages.
//!
//! AMQP prefetch counts messages, but a `fetch` message holds one task (foreign
//! publishers) or many (the producer's NDJSON batches). A fixed count of messages either
//! starves the download slots when messages are small or lets one fetcher hoard thousands
//! of tasks when they are large, while the other fetchers of the queue wait. So the fetcher
//! watches how many tasks its deliveries carry and keeps about [`TASKS_PER_SLOT`] tasks per
//! download slot unacked: when the messages' size moves the right prefetch by more than a
//! quarter, the session subscribes again with the new count (RabbitMQ fixes a consumer's
//! prefetch when it subscribes) and drains the old consumer's deliveries.
//!
//! It starts at [`SAMPLE`] messages, so a fetcher joining a backlog of large messages
//! takes a few of them, not `concurrency` of them, before it knows their size; it never
//! goes above `concurrency` messages (one-task messages keep every slot busy, as before)
//! nor below [`MIN_PREFETCH`]. A `--prefetch` given by hand is kept as is.

/// Unacked tasks a fetcher aims to hold per download slot: with the producer's messages
/// (`--batch-size`) it keeps the 20 tasks a slot held when the prefetch was `concurrency`
/// messages of 20 tasks.
pub const TASKS_PER_SLOT: usize = 20;

/// The fewest messages the prefetch goes down to.
pub const MIN_PREFETCH: u16 = 8;

/// Deliveries averaged before each decision, and the prefetch to start with.
pub const SAMPLE: u16 = 16;

/// Decides the consumer's prefetch from the sizes of the deliveries it sees.
#[derive(Debug, Clone)]
pub struct PrefetchSizer {
    current: u16,
    ceiling: u16,
    task_budget: usize,
    adaptive: bool,
    messages: u64,
    tasks: u64,
}

impl PrefetchSizer {
    /// A sizer that aims at `task_budget` unacked tasks with at most `ceiling` messages,
    /// starting at [`SAMPLE`] messages (or `ceiling`, when lower); with `adaptive` false it
    /// always keeps `ceiling` (a prefetch set by hand).
    pub fn new(ceiling: u16, task_budget: usize, adaptive: bool) -> Self {
        let ceiling = ceiling.max(1);
        Self {
            current: if adaptive {
                ceiling.min(SAMPLE)
            } else {
                ceiling
            },
            ceiling,
            task_budget: task_budget.max(1),
            adaptive,
            messages: 0,
            tasks: 0,
        }
    }

    /// The prefetch the consumer has now.
    pub fn current(&self) -> u16 {
        self.current
    }

    /// Notes a delivery of `tasks` tasks; returns the new prefetch when the consumer should
    /// subscribe again with it.
    pub fn observe(&mut self, tasks: usize) -> Option<u16> {
        if !self.adaptive {
            return None;
        }
        self.messages += 1;
        self.tasks += tasks.max(1) as u64;
        if self.messages < u64::from(SAMPLE) {
            return None;
        }
        let per_message = self.tasks.div_ceil(self.messages) as usize;
        self.messages = 0;
        self.tasks = 0;
        let want = self.task_budget.div_ceil(per_message);
        let want = want.clamp(
            usize::from(MIN_PREFETCH.min(self.ceiling)),
            usize::from(self.ceiling),
        );
        let want = u16::try_from(want).unwrap_or(self.ceiling);
        let (now, next) = (u32::from(self.current), u32::from(want));
        let moved = next * 4 < now * 3 || next * 3 > now * 4;
        moved.then(|| {
            self.current = want;
            want
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(sizer: &mut PrefetchSizer, tasks: usize, deliveries: u64) -> Vec<u16> {
        (0..deliveries)
            .filter_map(|_| sizer.observe(tasks))
            .collect()
    }

    fn sizer() -> PrefetchSizer {
        PrefetchSizer::new(128, 128 * TASKS_PER_SLOT, true)
    }

    #[test]
    fn small_messages_open_the_prefetch_up_to_the_ceiling() {
        let mut s = sizer();
        assert_eq!(s.current(), SAMPLE, "it starts small");
        assert_eq!(feed(&mut s, 20, 16), vec![128]);
        assert!(feed(&mut s, 20, 160).is_empty());
        assert!(feed(&mut s, 1, 160).is_empty(), "never above the ceiling");
        assert_eq!(s.current(), 128);
    }

    #[test]
    fn large_messages_bring_the_prefetch_down_to_the_task_budget() {
        let mut s = sizer();
        assert_eq!(feed(&mut s, 50, 16), vec![52]);
        assert!(
            feed(&mut s, 50, 96).is_empty(),
            "no change, no new subscription"
        );
        assert_eq!(feed(&mut s, 1000, 16), vec![MIN_PREFETCH]);
        assert_eq!(
            feed(&mut s, 20, 16),
            vec![128],
            "back up when messages shrink"
        );
    }

    #[test]
    fn small_moves_do_not_subscribe_again() {
        let mut s = sizer();
        assert_eq!(feed(&mut s, 50, 16), vec![52]);
        assert!(
            feed(&mut s, 45, 64).is_empty(),
            "57 is within a quarter of 52"
        );
        let mut s = sizer();
        assert!(
            feed(&mut s, 160, 64).is_empty(),
            "16 messages of 160 tasks are the budget"
        );
        assert_eq!(s.current(), SAMPLE);
    }

    #[test]
    fn a_prefetch_set_by_hand_is_kept() {
        let mut s = PrefetchSizer::new(300, 128 * TASKS_PER_SLOT, false);
        assert_eq!(s.current(), 300);
        assert!(feed(&mut s, 500, 100).is_empty());
        assert_eq!(s.current(), 300);
    }

    #[test]
    fn a_small_ceiling_is_also_the_floor() {
        let mut s = PrefetchSizer::new(4, 4 * TASKS_PER_SLOT, true);
        assert_eq!(s.current(), 4);
        assert!(feed(&mut s, 1000, 64).is_empty());
        assert!(feed(&mut s, 1, 64).is_empty());
        assert_eq!(s.current(), 4);
    }
}
