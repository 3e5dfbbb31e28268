//! Requests gathered into batches: what arrives while a batch of its kind
//! is in flight waits, and goes with the others in the next one.
//!
//! A stampede's holds and releases are thousands of small transactions a
//! second; on PostgreSQL, what each costs is mostly its statements' start
//! and end, its commit and its round trips, not its rows. Made together,
//! a hundred holds of one event cost about what one does: one read of the
//! event, one statement taking each category's places, one writing the
//! holds, one change of the live feed and one commit. Nothing waits for a
//! batch to fill: a request that finds fewer than [`Gather::at_once`]
//! batches of its kind in flight starts one at once, alone if need be, so
//! a quiet shop answers as soon as before.
//!
//! Every batch runs as a task of its own on the storage's runtime: a
//! caller that goes does not stop it, and each request is answered once,
//! by the batch that took it (or again by a later one, if its batch gave
//! it back).

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;
use std::sync::Mutex;

use tokio::sync::oneshot;

use crate::storage::{Result, StorageError};

/// A request waiting for its batch, and where its answer goes.
pub(super) struct Waiting<R, T> {
    pub asked: R,
    pub answer: oneshot::Sender<Result<T>>,
}

impl<R, T> Waiting<R, T> {
    /// Whether no one awaits the answer any more (a buyer who hung up).
    pub fn abandoned(&self) -> bool {
        self.answer.is_closed()
    }

    /// Answers the request (no one left to hear it: nothing to do).
    pub fn answer(self, out: Result<T>) {
        let _ = self.answer.send(out);
    }
}

/// A batch of requests.
pub(super) type Batch<R, T> = Vec<Waiting<R, T>>;

/// Where a request's answer comes.
pub(super) type Answered<T> = oneshot::Receiver<Result<T>>;

/// The requests of one kind, by key (an event), gathered into batches.
pub(super) struct Gather<K, R, T> {
    queues: Mutex<HashMap<K, Queue<R, T>>>,
    /// Batches of one key in flight at once, at most.
    at_once: usize,
    /// Requests in one batch, at most.
    most: usize,
}

struct Queue<R, T> {
    waiting: VecDeque<Waiting<R, T>>,
    running: usize,
}

impl<K: Hash + Eq + Clone, R, T> Gather<K, R, T> {
    pub fn new(at_once: usize, most: usize) -> Self {
        Gather {
            queues: Mutex::default(),
            at_once: at_once.max(1),
            most: most.max(1),
        }
    }

    /// Adds `asked` to `key`'s queue, and a receiver of its answer; and a
    /// batch for the caller to start now, if fewer than `at_once` run.
    pub fn push(&self, key: &K, asked: R) -> (Answered<T>, Option<Batch<R, T>>) {
        let (answer, answered) = oneshot::channel();
        let mut queues = self.queues.lock().unwrap_or_else(|p| p.into_inner());
        let queue = queues.entry(key.clone()).or_insert_with(|| Queue {
            waiting: VecDeque::new(),
            running: 0,
        });
        queue.waiting.push_back(Waiting { asked, answer });
        let batch = (queue.running < self.at_once).then(|| {
            queue.running += 1;
            self.take(queue)
        });
        (answered, batch)
    }

    /// Called by a runner whose batch is done, with the requests it gives
    /// back to be made again (first, as they came first): the next batch
    /// it is to run, or `None` once `key`'s queue is empty (the runner
    /// then ends).
    pub fn next(&self, key: &K, again: Batch<R, T>) -> Option<Batch<R, T>> {
        let mut queues = self.queues.lock().unwrap_or_else(|p| p.into_inner());
        let queue = queues.get_mut(key)?;
        for w in again.into_iter().rev() {
            queue.waiting.push_front(w);
        }
        if queue.waiting.is_empty() {
            queue.running = queue.running.saturating_sub(1);
            if queue.running == 0 {
                queues.remove(key);
            }
            return None;
        }
        Some(self.take(queue))
    }

    /// A runner of `key` stopped half-way: the requests waiting are
    /// answered, if no other runner is left to take them.
    fn gone(&self, key: &K) {
        let mut queues = self.queues.lock().unwrap_or_else(|p| p.into_inner());
        let Some(queue) = queues.get_mut(key) else {
            return;
        };
        queue.running = queue.running.saturating_sub(1);
        if queue.running > 0 {
            return;
        }
        if let Some(queue) = queues.remove(key) {
            for w in queue.waiting {
                w.answer(Err(StorageError::Backend(
                    "the batch that was to make the request stopped".into(),
                )));
            }
        }
    }

    /// The next batch: the first `most` requests waiting.
    fn take(&self, queue: &mut Queue<R, T>) -> Batch<R, T> {
        let n = queue.waiting.len().min(self.most);
        queue.waiting.drain(..n).collect()
    }
}

/// A batch runner's hold on its queue. Should the runner stop half-way
/// (a panic: never expected), its queue is told when this is dropped, so
/// that the requests waiting are answered and later ones start runners of
/// their own; a runner that ran out of requests says [`Running::done`].
pub(super) struct Running<'a, K: Hash + Eq + Clone, R, T> {
    gather: &'a Gather<K, R, T>,
    key: K,
    done: bool,
}

impl<'a, K: Hash + Eq + Clone, R, T> Running<'a, K, R, T> {
    pub fn new(gather: &'a Gather<K, R, T>, key: K) -> Self {
        Running {
            gather,
            key,
            done: false,
        }
    }

    /// The runner ended as it should: [`Gather::next`] found no request.
    pub fn done(mut self) {
        self.done = true;
    }
}

impl<K: Hash + Eq + Clone, R, T> Drop for Running<'_, K, R, T> {
    fn drop(&mut self) {
        if !self.done {
            self.gather.gone(&self.key);
        }
    }
}

/// Whether a batch that failed with `e` is worth making again one request
/// at a time: the database refused something of it (one request's fault,
/// perhaps), or one of them waited too long (a lock held by another); not
/// when the database is away or busy, where each would fail alike.
pub(super) fn not_of_all(e: &StorageError) -> bool {
    match e {
        StorageError::Unavailable(m) => m.starts_with("55P03:") || m.starts_with("57014:"),
        _ => true,
    }
}

/// The answer of a request whose batch ended without one (its task
/// stopped): never expected, but a caller must not wait for ever.
pub(super) fn lost<T>(
    answered: std::result::Result<Result<T>, oneshot::error::RecvError>,
) -> Result<T> {
    answered.unwrap_or_else(|_| {
        Err(StorageError::Backend(
            "the batch making the request ended without an answer".into(),
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_starts_a_batch_while_few_run_and_waits_for_the_next_when_not() {
        let g: Gather<u8, u32, ()> = Gather::new(2, 3);
        let (_a, first) = g.push(&1, 10);
        assert_eq!(first.map(|b| b.len()), Some(1));
        let (_b, second) = g.push(&1, 11);
        assert!(second.is_some(), "two may run at once");
        let mut kept = Vec::new();
        for i in 0..5 {
            let (rx, batch) = g.push(&1, 20 + i);
            assert!(batch.is_none(), "a third waits");
            kept.push(rx);
        }
        // Another key is not held back.
        let (_c, other) = g.push(&2, 30);
        assert!(other.is_some());
        // A runner done takes the next, at most three, in order.
        let next = g.next(&1, Vec::new()).unwrap();
        assert_eq!(
            next.iter().map(|w| w.asked).collect::<Vec<_>>(),
            [20, 21, 22]
        );
        // Requests given back go first.
        let again: Vec<_> = next.into_iter().take(1).collect();
        let next = g.next(&1, again).unwrap();
        assert_eq!(
            next.iter().map(|w| w.asked).collect::<Vec<_>>(),
            [20, 23, 24]
        );
        assert!(g.next(&1, Vec::new()).is_none());
        assert!(g.next(&1, Vec::new()).is_none());
        // Both runners ended: the next request starts a batch at once.
        let (_d, fresh) = g.push(&1, 40);
        assert!(fresh.is_some());
    }

    #[test]
    fn a_runner_that_stops_half_way_leaves_no_request_waiting_for_ever() {
        let g: Gather<u8, u32, ()> = Gather::new(1, 10);
        let (_a, first) = g.push(&1, 10);
        let running = Running::new(&g, 1);
        let (mut waiting, none) = g.push(&1, 11);
        assert!(none.is_none());
        drop(first);
        // The runner panics: dropped without saying it was done.
        drop(running);
        assert!(matches!(
            waiting.try_recv(),
            Ok(Err(StorageError::Backend(_)))
        ));
        // The next request starts a runner.
        assert!(g.push(&1, 12).1.is_some());
        // A runner done as it should leaves the queue alone.
        let running = Running::new(&g, 1);
        let (mut later, none) = g.push(&1, 13);
        assert!(none.is_none());
        running.done();
        assert!(later.try_recv().is_err(), "still waiting for its batch");
    }
}
