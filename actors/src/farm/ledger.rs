//! What every run of a farm knows about each worker: batches in flight, batches answered, and
//! where a batch stood in the worker's queue when it was sent (to tell the batch that killed a
//! worker from those queued behind it).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// One per worker, shared by every run (several may go on at once, e.g. in a service).
#[derive(Debug, Default)]
pub(super) struct Ledger {
    /// Batches sent to it and not answered yet, by all runs.
    in_flight: AtomicUsize,
    /// Batches it answered, ever.
    answered: AtomicU64,
    /// Held while a ticket is taken and its frame sent, so that tickets are in queue order.
    pub(super) order: std::sync::Mutex<()>,
}

/// Where a batch stood in its worker's queue when it was sent.
#[derive(Clone, Copy, Debug)]
pub(super) struct Ticket {
    /// Batches in flight ahead of it.
    ahead: usize,
    /// The worker's `answered` count then.
    answered: u64,
}

impl Ledger {
    /// Batches in flight to this worker, by all runs.
    pub(super) fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::SeqCst)
    }

    /// Counts a batch as sent (call under `order`, with the send).
    pub(super) fn send(&self) -> Ticket {
        Ticket {
            ahead: self.in_flight.fetch_add(1, Ordering::SeqCst),
            answered: self.answered.load(Ordering::SeqCst),
        }
    }

    /// Counts a batch as done: `answered` when the worker replied to it.
    pub(super) fn done(&self, answered: bool) {
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
        if answered {
            self.answered.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// Whether the batch of `ticket` was at the head of the worker's queue (all batches ahead
    /// of it were answered), i.e. running when the worker died, rather than queued behind the
    /// batch that killed it.
    pub(super) fn was_running(&self, ticket: Ticket) -> bool {
        self.answered.load(Ordering::SeqCst) - ticket.answered >= ticket.ahead as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_sent_to_an_idle_worker_was_running() {
        let ledger = Ledger::default();
        let ticket = ledger.send();
        ledger.done(false); // the worker died with it
        assert!(ledger.was_running(ticket));
    }

    #[test]
    fn a_batch_queued_behind_an_unanswered_one_was_not_running() {
        let ledger = Ledger::default();
        let _first = ledger.send();
        let second = ledger.send();
        assert_eq!(ledger.in_flight(), 2);
        // The worker died while running the first: neither was answered.
        ledger.done(false);
        ledger.done(false);
        assert!(!ledger.was_running(second));
    }

    #[test]
    fn once_the_batches_ahead_are_answered_the_next_is_running() {
        let ledger = Ledger::default();
        let _first = ledger.send();
        let second = ledger.send();
        ledger.done(true);
        assert!(ledger.was_running(second));
        ledger.done(false);
        assert_eq!(ledger.in_flight(), 0);
    }
}
