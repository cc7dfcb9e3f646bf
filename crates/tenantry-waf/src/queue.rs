//! The inspection queue: one FIFO per tenant, served round robin, so a tenant's request waits
//! behind at most one inspection of each other tenant with work queued, never behind another
//! tenant's whole backlog.
//!
//! The queue is bounded. When it is full, the tenant with the longest queue pays: a request of
//! a tenant with at least two fewer queued takes the place of that tenant's newest one
//! (longest-queue drop, as fair-queueing schedulers do). A request of the longest tenant, or
//! of one a single request short of it (the swap would only make it the longest), is refused.
//! So one or two heavy tenants cannot fill it against a third.

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;
use std::sync::{Condvar, Mutex, MutexGuard};

/// Why [`FairQueue::push`] did not queue an item; the item comes back.
#[derive(Debug)]
pub(crate) enum Refused<T> {
    /// The queue is full and the pushing key's queue is the longest, or one item short of
    /// it.
    Full(T),
    /// The queue was closed.
    Closed(T),
}

/// A bounded multi-producer, multi-consumer queue, fair between keys.
pub(crate) struct FairQueue<K, T> {
    state: Mutex<State<K, T>>,
    ready: Condvar,
    capacity: usize,
}

struct State<K, T> {
    /// Each key with items queued, and its items, oldest first.
    queues: HashMap<K, VecDeque<T>>,
    /// The keys with items queued, in the order they are served.
    ring: VecDeque<K>,
    len: usize,
    closed: bool,
    /// Pops wait while set (tests hold the queue to build a backlog deterministically).
    held: bool,
    /// The keys of the items taken, in order (tests check the service order).
    #[cfg(test)]
    taken: Vec<K>,
}

impl<K: Hash + Eq + Clone, T> FairQueue<K, T> {
    /// An empty queue holding at most `capacity` items (at least one).
    pub(crate) fn new(capacity: usize) -> Self {
        FairQueue {
            state: Mutex::new(State {
                queues: HashMap::new(),
                ring: VecDeque::new(),
                len: 0,
                closed: false,
                held: false,
                #[cfg(test)]
                taken: Vec::new(),
            }),
            ready: Condvar::new(),
            capacity: capacity.max(1),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State<K, T>> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues `item` for `key`. `Ok(Some(evicted))` when the queue was full and another
    /// key's newest item made room: the caller answers it. When the queue is full, items
    /// nobody waits for any more (`dead`) are dropped first.
    pub(crate) fn push(
        &self,
        key: &K,
        item: T,
        dead: impl Fn(&T) -> bool,
    ) -> Result<Option<T>, Refused<T>> {
        let mut s = self.lock();
        if s.closed {
            return Err(Refused::Closed(item));
        }
        if s.len >= self.capacity {
            s.drop_dead(&dead);
        }
        let mine = s.queues.get(key).map_or(0, VecDeque::len);
        let mut evicted = None;
        if s.len >= self.capacity {
            let longest = s
                .queues
                .iter()
                .max_by_key(|(_, q)| q.len())
                .map(|(k, q)| (k.clone(), q.len()));
            match longest {
                // Swapping must leave the longest queue at least as long as this key's.
                Some((k, n)) if n > mine + 1 => {
                    evicted = s.queues.get_mut(&k).and_then(VecDeque::pop_back);
                    s.len -= 1;
                    // It had more than one item: it stays in the ring.
                }
                _ => return Err(Refused::Full(item)),
            }
        }
        if mine == 0 {
            s.ring.push_back(key.clone());
        }
        s.queues.entry(key.clone()).or_default().push_back(item);
        s.len += 1;
        drop(s);
        self.ready.notify_one();
        Ok(evicted)
    }

    /// The next item, blocking until there is one: the oldest item of the key whose turn it
    /// is. `None` once the queue is closed.
    pub(crate) fn pop(&self) -> Option<T> {
        let mut s = self.lock();
        loop {
            if s.closed {
                return None;
            }
            if !s.held
                && let Some(item) = s.take()
            {
                return Some(item);
            }
            s = self.ready.wait(s).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// Closes the queue: pops return `None` and pushes are refused. Queued items are dropped.
    pub(crate) fn close(&self) {
        let mut s = self.lock();
        s.closed = true;
        s.queues.clear();
        s.ring.clear();
        s.len = 0;
        drop(s);
        self.ready.notify_all();
    }

    /// Holds (`true`) or releases the queue: while held, pops wait and items accumulate.
    #[cfg(test)]
    pub(crate) fn hold(&self, held: bool) {
        self.lock().held = held;
        self.ready.notify_all();
    }

    /// The keys of the items taken so far, in the order they were taken.
    #[cfg(test)]
    pub(crate) fn taken(&self) -> Vec<K> {
        self.lock().taken.clone()
    }

    /// Items queued.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.lock().len
    }
}

impl<K: Hash + Eq + Clone, T> State<K, T> {
    /// Drops the items for which `dead` holds (a full queue's scan; keys left without items
    /// leave the ring).
    fn drop_dead(&mut self, dead: &impl Fn(&T) -> bool) {
        let mut removed = 0;
        self.queues.retain(|_, q| {
            let n = q.len();
            q.retain(|item| !dead(item));
            removed += n - q.len();
            !q.is_empty()
        });
        if removed > 0 {
            self.len -= removed;
            let queues = &self.queues;
            self.ring.retain(|k| queues.contains_key(k));
        }
    }

    /// Takes the front key's oldest item and moves the key to the back of the ring (or out
    /// of it, when that was its last item).
    fn take(&mut self) -> Option<T> {
        // Every key in the ring has a non-empty queue; a key without one would only be
        // skipped, never stall the keys behind it.
        while let Some(key) = self.ring.pop_front() {
            let Some(queue) = self.queues.get_mut(&key) else {
                continue;
            };
            let item = queue.pop_front();
            #[cfg(test)]
            if item.is_some() {
                self.taken.push(key.clone());
            }
            if queue.is_empty() {
                self.queues.remove(&key);
            } else {
                self.ring.push_back(key);
            }
            if let Some(item) = item {
                self.len -= 1;
                return Some(item);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::sync::Arc;

    use super::*;

    /// Every item is waited for.
    fn live(_: &u32) -> bool {
        false
    }

    fn drain(q: &FairQueue<&'static str, u32>) -> Vec<u32> {
        let mut out = Vec::new();
        while q.len() > 0 {
            out.push(q.pop().unwrap());
        }
        out
    }

    #[test]
    fn tenants_are_served_in_turn_each_in_order() {
        let q = FairQueue::new(100);
        for i in 0..5 {
            q.push(&"heavy", i, live).unwrap();
        }
        q.push(&"light", 100, live).unwrap();
        q.push(&"other", 200, live).unwrap();
        q.push(&"light", 101, live).unwrap();
        // heavy was first; then each key in the order it became non-empty.
        assert_eq!(drain(&q), [0, 100, 200, 1, 101, 2, 3, 4]);
    }

    #[test]
    fn a_full_queue_makes_room_from_the_longest_tenant() {
        let q = FairQueue::new(4);
        for i in 0..3 {
            q.push(&"a", i, live).unwrap();
        }
        q.push(&"b", 10, live).unwrap();
        // Full; "a" is the longest: its own push is refused.
        assert!(matches!(q.push(&"a", 3, live), Err(Refused::Full(3))));
        // "c" takes the place of "a"'s newest.
        assert_eq!(q.push(&"c", 20, live).unwrap(), Some(2));
        // a:2, b:1, c:1. "b" would end up as long as "a" was: nothing to gain, refused.
        assert!(matches!(q.push(&"b", 11, live), Err(Refused::Full(11))));
        assert_eq!(q.len(), 4);
        assert_eq!(drain(&q), [0, 10, 20, 1]);
    }

    #[test]
    fn two_heavy_tenants_cannot_shut_out_a_third() {
        let q = FairQueue::new(8);
        for i in 0..4 {
            q.push(&"a", i, live).unwrap();
            q.push(&"b", 10 + i, live).unwrap();
        }
        assert!(matches!(q.push(&"a", 4, live), Err(Refused::Full(_))));
        let evicted = q.push(&"c", 20, live).unwrap().unwrap();
        assert!(evicted == 3 || evicted == 13, "{evicted}");
        assert!(drain(&q).contains(&20));
    }

    #[test]
    fn close_wakes_waiting_consumers_and_refuses_pushes() {
        let q = Arc::new(FairQueue::<&'static str, u32>::new(4));
        let consumer = {
            let q = Arc::clone(&q);
            std::thread::spawn(move || q.pop())
        };
        std::thread::sleep(std::time::Duration::from_millis(20));
        q.close();
        assert_eq!(consumer.join().unwrap(), None);
        assert!(matches!(q.push(&"a", 1, live), Err(Refused::Closed(1))));
    }

    #[test]
    fn a_waiting_consumer_gets_a_pushed_item() {
        let q = Arc::new(FairQueue::<&'static str, u32>::new(4));
        let consumer = {
            let q = Arc::clone(&q);
            std::thread::spawn(move || q.pop())
        };
        std::thread::sleep(std::time::Duration::from_millis(20));
        q.push(&"a", 7, live).unwrap();
        assert_eq!(consumer.join().unwrap(), Some(7));
    }

    #[test]
    fn a_full_queue_drops_abandoned_items_before_evicting_a_live_one() {
        let q = FairQueue::new(4);
        for i in 0..4 {
            q.push(&"a", i, live).unwrap();
        }
        // 1 and 2 were abandoned: they make room, nobody is evicted.
        let abandoned = |i: &u32| *i == 1 || *i == 2;
        assert_eq!(q.push(&"b", 10, abandoned).unwrap(), None);
        assert_eq!(q.push(&"a", 4, abandoned).unwrap(), None);
        assert_eq!(q.len(), 4);
        assert_eq!(drain(&q), vec![0, 10, 3, 4]);
    }
}
