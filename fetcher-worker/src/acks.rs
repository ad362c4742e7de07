//! Acking a session's deliveries with few frames: a delivery is acked only once every task
//! in it has a durable outcome, but settled deliveries are acked together, with one
//! `multiple` ack of the highest tag below the oldest unsettled delivery.
//!
//! Deliveries settle out of order (downloads finish when they finish), so a slow task holds
//! back the acks of every later delivery. So that the held-back ones never fill the
//! prefetch window, once more than [`Acks::max_held`] settled deliveries wait behind an
//! unsettled one they are acked one by one.
//!
//! The consumer has a channel of its own (`Session::consumer`), so a `multiple` ack covers
//! only this tracker's deliveries; each delivery is acked exactly once. When the prefetch
//! changes ([`crate::prefetch`]), the new consumer is on the same channel and the old one's
//! last deliveries go to the same tracker, so this still holds.

use std::collections::BTreeMap;

use tokio::time::Instant;

/// A delivery not acked yet; `A` is its acker (`lapin::Acker`).
struct Open<A> {
    acker: A,
    /// Its tasks without a durable outcome yet.
    remaining: usize,
    arrived: Instant,
}

/// What to send to the broker after a delivery settled.
#[derive(Debug)]
pub struct AckPlan<A> {
    /// A `multiple` ack of this acker's tag settles every open delivery up to it.
    pub multiple: Option<A>,
    /// Single acks of settled deliveries held back too long behind an unsettled one.
    pub singles: Vec<A>,
    /// When each acked delivery arrived (for the `delivery_held` metric).
    pub arrivals: Vec<Instant>,
}

impl<A> Default for AckPlan<A> {
    fn default() -> Self {
        Self {
            multiple: None,
            singles: Vec::new(),
            arrivals: Vec::new(),
        }
    }
}

impl<A> AckPlan<A> {
    pub fn is_empty(&self) -> bool {
        self.multiple.is_none() && self.singles.is_empty()
    }
}

/// The open deliveries of one consumer channel, by delivery tag.
pub struct Acks<A> {
    open: BTreeMap<u64, Open<A>>,
    /// Settled deliveries still open because an older one is not settled.
    held: usize,
    max_held: usize,
}

impl<A> Acks<A> {
    /// A tracker that acks singly once more than `max_held` settled deliveries wait.
    pub fn new(max_held: usize) -> Self {
        Self {
            open: BTreeMap::new(),
            held: 0,
            max_held,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.open.is_empty()
    }

    pub fn len(&self) -> usize {
        self.open.len()
    }

    /// Changes [`Acks::max_held`] (the prefetch changed).
    pub fn set_max_held(&mut self, max_held: usize) {
        self.max_held = max_held;
    }

    /// The most settled deliveries held back before they are acked one by one.
    pub fn max_held(&self) -> usize {
        self.max_held
    }

    /// A new delivery with `tasks` tasks (0: settled already, it is only waiting for its
    /// ack).
    pub fn open(&mut self, tag: u64, acker: A, tasks: usize) {
        let arrived = Instant::now();
        let open = Open {
            acker,
            remaining: tasks,
            arrived,
        };
        if tasks == 0 {
            self.held += 1;
        }
        self.open.insert(tag, open);
    }

    /// One task of delivery `tag` has a durable outcome. Unknown tags are ignored.
    pub fn settle(&mut self, tag: u64) {
        if let Some(open) = self.open.get_mut(&tag)
            && open.remaining > 0
        {
            open.remaining -= 1;
            if open.remaining == 0 {
                self.held += 1;
            }
        }
    }

    /// The acks that are due: every settled delivery older than the oldest unsettled one
    /// (one `multiple` ack), and, when too many settled ones are held back, those singly.
    pub fn due(&mut self) -> AckPlan<A> {
        let mut plan = AckPlan::default();
        while let Some(entry) = self.open.first_entry() {
            if entry.get().remaining > 0 {
                break;
            }
            let open = entry.remove();
            self.held -= 1;
            plan.arrivals.push(open.arrived);
            plan.multiple = Some(open.acker);
        }
        if self.held > self.max_held {
            let settled: Vec<u64> = self
                .open
                .iter()
                .filter(|(_, open)| open.remaining == 0)
                .map(|(tag, _)| *tag)
                .collect();
            for tag in settled {
                let open = self.open.remove(&tag).expect("listed above");
                plan.arrivals.push(open.arrived);
                plan.singles.push(open.acker);
            }
            self.held = 0;
        }
        plan
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The tag stands in for the acker.
    fn acker(tag: u64) -> u64 {
        tag
    }

    fn tags(plan: &AckPlan<u64>) -> (Option<u64>, Vec<u64>) {
        (plan.multiple, plan.singles.clone())
    }

    #[test]
    fn settled_deliveries_wait_for_older_ones_then_go_in_one_ack() {
        let mut acks = Acks::new(8);
        for tag in 1..=3 {
            acks.open(tag, acker(tag), 2);
        }
        for _ in 0..2 {
            acks.settle(3);
            acks.settle(2);
        }
        assert!(acks.due().is_empty(), "delivery 1 is not settled");
        acks.settle(1);
        assert!(acks.due().is_empty(), "delivery 1 has a task left");
        acks.settle(1);
        assert_eq!(tags(&acks.due()), (Some(3), vec![]));
        assert!(acks.is_empty());
        acks.settle(1);
        assert!(acks.due().is_empty(), "an acked tag settles nothing again");
    }

    #[test]
    fn too_many_held_back_are_acked_singly() {
        let mut acks = Acks::new(2);
        for tag in 1..=5 {
            acks.open(tag, acker(tag), 1);
        }
        acks.settle(3);
        acks.settle(5);
        assert!(acks.due().is_empty());
        acks.settle(4);
        assert_eq!(tags(&acks.due()), (None, vec![3, 4, 5]));
        acks.settle(2);
        assert_eq!(tags(&acks.due()), (None, vec![]));
        acks.settle(1);
        assert_eq!(tags(&acks.due()), (Some(2), vec![]));
        assert!(acks.is_empty());
    }

    #[test]
    fn empty_deliveries_are_settled_on_arrival() {
        let mut acks = Acks::new(8);
        acks.open(1, acker(1), 0);
        acks.open(2, acker(2), 1);
        acks.open(3, acker(3), 0);
        assert_eq!(tags(&acks.due()), (Some(1), vec![]));
        acks.settle(2);
        assert_eq!(tags(&acks.due()), (Some(3), vec![]));
    }
}
