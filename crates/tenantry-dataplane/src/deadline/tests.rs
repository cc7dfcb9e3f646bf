//! Tests of the coarse deadlines: they fire about on time, a finished future wins, slots are
//! freed, and threads without a sweeper use tokio's timer.

use std::pin::pin;

use super::*;

fn worker() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

fn live() -> usize {
    TABLE.with(|t| t.borrow().live)
}

/// `fut` under a deadline `after` from now, as the proxy runs an upstream exchange.
async fn bounded<F: Future>(after: Duration, fut: F) -> (Result<F::Output, Elapsed>, bool) {
    let mut d = Deadline::at(Instant::now() + after);
    let out = race(&mut d, pin!(fut)).await;
    let coarse = matches!(d.state, Armed::Slot(..));
    (out, coarse)
}

#[test]
fn a_pending_future_times_out_within_a_tick_or_two() {
    worker().block_on(async {
        let sweeper = tokio::spawn(sweeper());
        tokio::task::yield_now().await;
        let start = Instant::now();
        let (out, coarse) = bounded(Duration::from_millis(50), std::future::pending::<()>()).await;
        assert_eq!(out, Err(Elapsed));
        assert!(coarse, "a worker with a sweeper uses its table");
        let took = start.elapsed();
        assert!(took >= Duration::from_millis(50), "fired early: {took:?}");
        assert!(
            took < Duration::from_millis(50) + 20 * TICK,
            "fired late: {took:?}"
        );
        assert_eq!(live(), 0, "the slot is freed");
        sweeper.abort();
    });
}

#[test]
fn a_future_that_finishes_wins_and_frees_its_slot() {
    worker().block_on(async {
        let sweeper = tokio::spawn(sweeper());
        tokio::task::yield_now().await;
        let (tx, rx) = tokio::sync::oneshot::channel::<u32>();
        let waiting = tokio::spawn(bounded(Duration::from_secs(60), rx));
        tokio::task::yield_now().await;
        assert_eq!(live(), 1, "the waiting future holds a slot");
        tx.send(7).expect("send");
        assert_eq!(waiting.await.expect("join").0, Ok(Ok(7)));
        assert_eq!(live(), 0);
        // Many at once, some finished and some dropped while pending: no slot is left.
        let mut tasks = Vec::new();
        for i in 0..100u64 {
            tasks.push(tokio::spawn(bounded(
                Duration::from_secs(60),
                tokio::time::sleep(Duration::from_millis(i % 3)),
            )));
        }
        for (i, t) in tasks.into_iter().enumerate() {
            if i % 2 == 0 {
                t.abort();
            } else {
                assert_eq!(t.await.expect("join").0, Ok(()));
            }
        }
        tokio::task::yield_now().await;
        assert_eq!(live(), 0, "every slot is freed");
        sweeper.abort();
    });
}

#[test]
fn without_a_sweeper_a_tokio_timer_is_used() {
    worker().block_on(async {
        let start = Instant::now();
        let (out, coarse) = bounded(Duration::from_millis(20), std::future::pending::<()>()).await;
        assert_eq!(out, Err(Elapsed));
        assert!(!coarse, "no sweeper: a tokio timer");
        assert!(start.elapsed() >= Duration::from_millis(20));
        assert_eq!(live(), 0);
    });
}

#[test]
fn a_sweeper_that_goes_fires_what_is_pending() {
    let rt = worker();
    // The join handle is awaited on a second `block_on`, after the sweeper has gone.
    #[allow(clippy::async_yields_async)]
    let waiting = rt.block_on(async {
        let sweeper = tokio::spawn(sweeper());
        tokio::task::yield_now().await;
        let waiting = tokio::spawn(bounded(
            Duration::from_secs(60),
            std::future::pending::<()>(),
        ));
        tokio::task::yield_now().await;
        assert_eq!(live(), 1);
        sweeper.abort();
        let _ = sweeper.await;
        waiting
    });
    let outcome = rt.block_on(waiting).expect("join").0;
    assert_eq!(outcome, Err(Elapsed), "woken and told its deadline passed");
    // The thread has no sweeper now: a new deadline uses a tokio timer.
    rt.block_on(async {
        let (out, coarse) = bounded(Duration::from_millis(1), std::future::pending::<()>()).await;
        assert_eq!(out, Err(Elapsed));
        assert!(!coarse);
    });
}
