//! Redis rate-limit decisions batched per worker thread.
//!
//! The gateway runs one single-threaded runtime per worker. When many requests wait for a
//! decision at once (they arrived in the same turn of the event loop), sending each as its own
//! `EVALSHA` costs a script call in Redis (~5–8 µs of redis-server CPU on this machine) and a
//! command through redis-rs in the gateway (~13,000 instructions) per request. Here the first
//! decision of a turn opens a batch and spawns its flush; the decisions asked for before the
//! flush runs (it is queued behind the tasks already ready) join the batch; the flush sends
//! them as one call of the same script with several keys. Each decision is still taken
//! atomically by the script, on the shared counter, in order; nothing is decided locally.
//!
//! Within a batch, the decisions for one key (with the same parameters) form one *run*, sent
//! once with its size: under load a batch is mostly one tenant's or one route's key, and the
//! script decides a run of `n` requests at one instant in one step (the first ones fit, the
//! rest do not), which is exactly what `n` separate decisions at that instant give. So
//! neither redis-server nor the command's encoding pays per request.
//!
//! On a runtime that is not single-threaded (tests, tools) decisions go one by one.

use std::cell::RefCell;

use tokio::runtime::{Handle, RuntimeFlavor};
use tokio::sync::oneshot;

use crate::local::{Outcome, Params};
use crate::shared::{RedisBackend, RunAsk};
use crate::{Inner, Limiter};

/// Most runs (keys) in one script call; a batch with more is sent as several calls, pipelined
/// on the connection. A call holds Redis for about a microsecond per run.
const MAX_PER_CALL: usize = 64;

/// One key's decisions in a batch (with one set of parameters), in the order they were asked
/// for: the first waiter, then the others.
struct Run {
    key: Box<str>,
    params: Params,
    first: oneshot::Sender<Option<Outcome>>,
    more: Vec<oneshot::Sender<Option<Outcome>>>,
}

impl Run {
    fn len(&self) -> u64 {
        self.more.len() as u64 + 1
    }

    /// Sends every waiter its answer: `answer(i)` for the `i`-th, from 0.
    fn answer(self, answer: impl Fn(u64) -> Option<Outcome>) {
        let _ = self.first.send(answer(0));
        for (i, w) in (1u64..).zip(self.more) {
            let _ = w.send(answer(i));
        }
    }
}

thread_local! {
    /// This thread's open batches, by backend id.
    static OPEN: RefCell<Vec<(u64, Vec<Run>)>> = const { RefCell::new(Vec::new()) };
}

/// Adds a decision to this thread's open batch (opening it and spawning its flush if there is
/// none). `None` when the current runtime is not single-threaded: the caller decides alone.
/// The receiver yields `None` when the batch failed (the caller falls back).
pub(crate) fn enqueue(
    limiter: &Limiter,
    backend: &RedisBackend,
    key: &str,
    params: Params,
) -> Option<oneshot::Receiver<Option<Outcome>>> {
    let handle = Handle::try_current().ok()?;
    if handle.runtime_flavor() != RuntimeFlavor::CurrentThread {
        return None;
    }
    let (tx, rx) = oneshot::channel();
    let id = backend.id();
    let new_run = |first| Run {
        key: key.into(),
        params,
        first,
        more: Vec::new(),
    };
    let opened = OPEN.with(|open| {
        let mut open = open.borrow_mut();
        match open.iter_mut().find(|(i, _)| *i == id) {
            Some((_, runs)) => {
                // The key's run, if it is among the last call's worth of runs (a bound on the
                // search when a batch has many keys; a key found in no run starts another,
                // which the script decides after the earlier one, or in a parallel call).
                let at = runs
                    .iter()
                    .rev()
                    .take(MAX_PER_CALL)
                    .position(|r| r.params == params && *r.key == *key);
                match at {
                    Some(back) => {
                        let last = runs.len() - 1;
                        runs[last - back].more.push(tx);
                    }
                    None => runs.push(new_run(tx)),
                }
                false
            }
            None => {
                open.push((id, vec![new_run(tx)]));
                true
            }
        }
    });
    if opened {
        handle.spawn(flush(limiter.clone(), Unflushed(id)));
    }
    Some(rx)
}

/// Owned by a flush until it has taken its batch. A flush dropped before it ran (its runtime
/// shut down) drops the open batch with it, so the waiters fall back instead of waiting for
/// ever, and no later decision on this thread joins a batch that will never be sent.
struct Unflushed(u64);

impl Unflushed {
    /// Takes the open batch (this guard's job is then done).
    fn take(self) -> Option<Vec<Run>> {
        let id = self.0;
        std::mem::forget(self);
        OPEN.with(|open| {
            let mut open = open.borrow_mut();
            let at = open.iter().position(|(i, _)| *i == id)?;
            Some(open.swap_remove(at).1)
        })
    }
}

impl Drop for Unflushed {
    fn drop(&mut self) {
        let id = self.0;
        // The batch is dropped outside the borrow: its senders' receivers may wake tasks.
        let batch = OPEN
            .try_with(|open| {
                let mut open = open.try_borrow_mut().ok()?;
                let at = open.iter().position(|(i, _)| *i == id)?;
                Some(open.swap_remove(at).1)
            })
            .ok()
            .flatten();
        drop(batch);
    }
}

/// Sends this thread's open batch, once the tasks that were ready when it opened have run
/// (and joined it).
async fn flush(limiter: Limiter, batch: Unflushed) {
    let Some(mut batch) = batch.take() else {
        return;
    };
    let inner: &Inner = limiter.inner();
    let Some(backend) = inner.redis.as_ref() else {
        return;
    };
    if batch.len() <= MAX_PER_CALL {
        decide(inner, backend, batch).await;
        return;
    }
    let mut calls = tokio::task::JoinSet::new();
    while !batch.is_empty() {
        let rest = batch.split_off(batch.len().min(MAX_PER_CALL));
        let chunk = std::mem::replace(&mut batch, rest);
        let limiter = limiter.clone();
        calls.spawn(async move {
            let inner = limiter.inner();
            if let Some(backend) = inner.redis.as_ref() {
                decide(inner, backend, chunk).await;
            }
        });
    }
    while calls.join_next().await.is_some() {}
}

/// One script call for `runs`; every waiter gets its outcome, or `None` to fall back.
async fn decide(inner: &Inner, backend: &RedisBackend, runs: Vec<Run>) {
    let asks: Vec<RunAsk<'_>> = runs
        .iter()
        .map(|r| RunAsk {
            key: &r.key,
            params: r.params,
            n: r.len(),
        })
        .collect();
    let decided = backend.gcra(&inner.clock, &asks).await;
    drop(asks);
    match decided {
        Some(decided) => {
            for (run, got) in runs.into_iter().zip(decided) {
                let params = run.params;
                run.answer(|i| Some(got.outcome(i, params)));
            }
        }
        None => {
            for run in runs {
                run.answer(|_| None);
            }
        }
    }
}
