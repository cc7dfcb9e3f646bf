//! Coarse per-worker deadlines: a request's upstream deadline costs a slot in its worker's
//! table, not a timer-wheel entry.
//!
//! `tokio::time::timeout` arms a timer for every request: an entry registered in the runtime's
//! timer wheel on first poll and removed on drop, under the driver's lock, plus its polls.
//! Replacing it saved ~575 of the ~18,500 user-space instructions a proxied request took
//! (`bench/proxy-instructions.sh`). Nearly every deadline is cancelled long before it fires,
//! and a response timeout does not need a millisecond's precision. So each proxy worker runs
//! one [`sweeper`] task, and a [`Deadline`] on that worker only writes its instant and the
//! task's waker into a thread-local slot; every [`TICK`], while deadlines are pending, the
//! sweeper wakes those that have passed. A deadline therefore fires between its instant and
//! one tick (plus scheduling) later.
//!
//! On a thread without a sweeper (tests, the admin runtime), a [`Deadline`] is a tokio timer.

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

#[cfg(test)]
mod tests;

/// How often the sweeper looks for passed deadlines while any are pending.
pub const TICK: Duration = Duration::from_millis(10);

/// A deadline passed before the future finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Elapsed;

/// One pending deadline.
struct Slot {
    at: Instant,
    waker: Option<Waker>,
    fired: bool,
}

/// A worker thread's deadlines.
#[derive(Default)]
struct Table {
    /// Set by each sweeper that starts on this thread, and unique across threads: a slot is
    /// never read in another thread's table or a later sweeper's.
    generation: u64,
    installed: bool,
    slots: Vec<Option<Slot>>,
    free: Vec<u32>,
    live: usize,
    /// The sweeper's waker, while it waits for a first deadline.
    idle: Option<Waker>,
}

/// Generations of tables, unique across threads (0 is never one).
static GENERATIONS: AtomicU64 = AtomicU64::new(1);

thread_local! {
    static TABLE: RefCell<Table> = RefCell::new(Table::default());
}

impl Table {
    fn insert(&mut self, slot: Slot) -> u32 {
        self.live += 1;
        if let Some(w) = self.idle.take() {
            w.wake();
        }
        match self.free.pop() {
            Some(i) => {
                self.slots[i as usize] = Some(slot);
                i
            }
            None => {
                self.slots.push(Some(slot));
                u32::try_from(self.slots.len() - 1).unwrap_or(u32::MAX)
            }
        }
    }

    fn remove(&mut self, i: u32) {
        if let Some(s) = self.slots.get_mut(i as usize)
            && s.take().is_some()
        {
            self.live -= 1;
            self.free.push(i);
        }
    }

    /// Polls slot `i` of table `generation`: `Ready` once fired, else keeps `cx`'s waker.
    fn poll_slot(&mut self, i: u32, generation: u64, cx: &mut Context<'_>) -> Poll<()> {
        // Another table (the sweeper went as its runtime shuts down, or the deadline moved to
        // another thread): nothing would wake it, so it counts as passed.
        if self.generation != generation {
            return Poll::Ready(());
        }
        match self.slots.get_mut(i as usize) {
            Some(Some(s)) if !s.fired => {
                match &mut s.waker {
                    Some(w) if w.will_wake(cx.waker()) => {}
                    w => *w = Some(cx.waker().clone()),
                }
                Poll::Pending
            }
            _ => Poll::Ready(()),
        }
    }

    /// Fires every deadline at or before `now` (all of them when `now` is `None`).
    fn fire(&mut self, now: Option<Instant>) {
        for s in self.slots.iter_mut().flatten() {
            if !s.fired && now.is_none_or(|n| s.at <= n) {
                s.fired = true;
                if let Some(w) = s.waker.take() {
                    w.wake();
                }
            }
        }
    }
}

/// Runs this thread's deadline sweeper until the task is dropped (its runtime shuts down).
/// Spawn it once on each single-threaded worker runtime, before that worker serves requests;
/// deadlines on that thread then use it.
pub async fn sweeper() {
    /// Uninstalls the sweeper when its task goes, firing what is pending so no waiter hangs.
    struct Installed;
    impl Drop for Installed {
        fn drop(&mut self) {
            let _ = TABLE.try_with(|t| {
                let Ok(mut t) = t.try_borrow_mut() else {
                    return;
                };
                t.installed = false;
                t.idle = None;
                t.fire(None);
            });
        }
    }
    TABLE.with(|t| {
        let mut t = t.borrow_mut();
        // Slots left by an earlier sweeper on this thread were all fired when it went.
        *t = Table {
            generation: GENERATIONS.fetch_add(1, Ordering::Relaxed),
            installed: true,
            ..Table::default()
        };
    });
    let _installed = Installed;
    loop {
        // Sleep until a deadline is pending (the first one wakes this task), then look every
        // tick while any is.
        std::future::poll_fn(|cx| {
            TABLE.with(|t| {
                let mut t = t.borrow_mut();
                if t.live == 0 {
                    t.idle = Some(cx.waker().clone());
                    Poll::Pending
                } else {
                    Poll::Ready(())
                }
            })
        })
        .await;
        tokio::time::sleep(TICK).await;
        let now = Instant::now();
        TABLE.with(|t| t.borrow_mut().fire(Some(now)));
    }
}

/// A deadline, polled beside the future it bounds (see [`race`]). Small and `Unpin`: the
/// future it bounds stays where it is instead of being moved into a wrapper (moving a large
/// future costs more than a timer saves).
#[derive(Debug)]
pub struct Deadline {
    at: Instant,
    state: Armed,
}

#[derive(Debug)]
enum Armed {
    /// Not polled yet.
    No,
    /// A slot in the worker's table, and the table's generation.
    Slot(u32, u64),
    /// A tokio timer, on a thread without a sweeper.
    Timer(Pin<Box<tokio::time::Sleep>>),
}

impl Deadline {
    /// A deadline at `at`. On a worker running [`sweeper`] it is coarse (it fires up to a
    /// [`TICK`] late); elsewhere it is a tokio timer.
    pub fn at(at: Instant) -> Self {
        Self {
            at,
            state: Armed::No,
        }
    }

    /// `Ready` once the deadline has passed; otherwise registers `cx`'s waker to be woken then.
    pub fn poll_elapsed(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        match &mut self.state {
            Armed::Timer(sleep) => return sleep.as_mut().poll(cx),
            &mut Armed::Slot(i, generation) => {
                return TABLE.with(|t| t.borrow_mut().poll_slot(i, generation, cx));
            }
            Armed::No => {}
        }
        let at = self.at;
        let registered = TABLE.with(|t| {
            let mut t = t.borrow_mut();
            t.installed.then(|| {
                let generation = t.generation;
                let waker = Some(cx.waker().clone());
                let i = t.insert(Slot {
                    at,
                    waker,
                    fired: false,
                });
                (i, generation)
            })
        });
        if let Some((i, generation)) = registered {
            self.state = Armed::Slot(i, generation);
            return Poll::Pending;
        }
        let mut sleep = Box::pin(tokio::time::sleep_until(at.into()));
        let poll = sleep.as_mut().poll(cx);
        self.state = Armed::Timer(sleep);
        poll
    }
}

impl Drop for Deadline {
    fn drop(&mut self) {
        if let Armed::Slot(i, generation) = self.state {
            // Dropped while the table is in use (a wake-up that drops a task): the slot stays
            // until the sweeper goes, harmless but for a few ticks of an idle worker.
            let _ = TABLE.try_with(|t| {
                let Ok(mut t) = t.try_borrow_mut() else {
                    return;
                };
                if t.generation == generation {
                    t.remove(i);
                }
            });
        }
    }
}

/// Polls `fut` until it finishes (`Ok`) or `deadline` passes (`Err`). `fut` is borrowed, pinned
/// where it was made.
pub fn race<'a, F: Future>(
    deadline: &'a mut Deadline,
    mut fut: Pin<&'a mut F>,
) -> impl Future<Output = Result<F::Output, Elapsed>> + 'a {
    std::future::poll_fn(move |cx| match fut.as_mut().poll(cx) {
        Poll::Ready(v) => Poll::Ready(Ok(v)),
        Poll::Pending => deadline.poll_elapsed(cx).map(|()| Err(Elapsed)),
    })
}
