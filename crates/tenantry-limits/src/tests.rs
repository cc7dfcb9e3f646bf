//! Parity of the Lua script with the Rust GCRA (needs Redis at 127.0.0.1:6379).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use crate::Rate;
use crate::local::{Outcome, Params, Run, gcra};
use crate::shared::{COUNTER_LUA, GCRA_LUA, RunAsk, params_us, runs_from_reply};

const URL: &str = "redis://127.0.0.1:6379";

async fn conn_or_skip() -> Option<redis::aio::MultiplexedConnection> {
    let conn = async {
        let c = redis::Client::open(URL).ok()?;
        tokio::time::timeout(Duration::from_secs(2), c.get_multiplexed_async_connection())
            .await
            .ok()?
            .ok()
    }
    .await;
    if conn.is_none() {
        let reason = format!("redis is not reachable at {URL}");
        assert!(
            std::env::var("TENANTRY_REQUIRE_SERVICES").as_deref() != Ok("1"),
            "{reason} (TENANTRY_REQUIRE_SERVICES=1)"
        );
        eprintln!("skipped: {reason}");
    }
    conn
}

fn prefix(name: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("tn:test:{name}:{}:{nanos}:", std::process::id())
}

#[tokio::test]
async fn lua_matches_rust_gcra() {
    let Some(mut conn) = conn_or_skip().await else {
        return;
    };
    let p = prefix("parity");
    let script = redis::Script::new(GCRA_LUA);
    let base: u64 = 1_700_000_000_000_000;
    let ms = 1000u64;
    let rates = [
        Rate::per_second(10, 5),
        Rate::per_minute(60, 50),
        Rate::per_second(7, 3),
        Rate::new(1, Duration::from_secs(3600), 1),
        Rate::per_second(1000, 0),
        Rate::new(3, Duration::from_millis(10), 2),
    ];
    let steps = [
        0,
        0,
        0,
        0,
        0,
        0,
        1,
        50 * ms,
        50 * ms,
        99 * ms,
        250 * ms,
        250 * ms,
        250 * ms,
        1000 * ms,
        1001 * ms,
        10_000 * ms,
        10_000 * ms,
        7_200_000 * ms,
    ];
    let mut keys = Vec::new();
    let mut mismatches = Vec::new();
    let fields = |o: &Outcome| (o.allowed, o.remaining, o.reset_after, o.retry_after);
    for (i, rate) in rates.iter().enumerate() {
        let key = format!("{p}{i}");
        keys.push(key.clone());
        let params = params_us(*rate).unwrap();
        let mut stored = 0u64;
        for (j, off) in steps.iter().enumerate() {
            let now = base + off;
            // Runs of 1 to 4 requests at one instant.
            let n = (j % 4) as u64 + 1;
            // The script's PX is relative to the server's real clock while `now` here is fake:
            // a short-lived key can expire between two steps when the machine is slow. Give
            // the script exactly the state the Rust side has.
            if stored != 0 {
                let _: () = redis::cmd("SET")
                    .arg(&key)
                    .arg(stored)
                    .arg("PX")
                    .arg(60_000)
                    .query_async(&mut conn)
                    .await
                    .unwrap();
            }
            let reply: Vec<u8> = script
                .key(&key)
                .arg(now)
                .arg(params.t)
                .arg(params.tau)
                .arg(n)
                .invoke_async(&mut conn)
                .await
                .unwrap();
            let ask = RunAsk {
                key: &key,
                params,
                n,
            };
            let run = runs_from_reply(&reply, &[ask]).unwrap()[0];
            for i in 0..n {
                let want: Outcome = gcra(stored, now, params);
                let got = run.outcome(i, params);
                if fields(&got) != fields(&want) {
                    mismatches.push(format!(
                        "rate {rate:?} step {j} (+{off} us) request {i} of {n}: lua {:?} rust {:?}",
                        fields(&got),
                        fields(&want)
                    ));
                }
                if want.allowed {
                    stored = want.new_tat;
                }
            }
            let tat: Option<u64> = redis::cmd("GET")
                .arg(&key)
                .query_async(&mut conn)
                .await
                .unwrap();
            if stored != 0 {
                // the key may have expired in real time for short rates; when present it is exact
                if let Some(tat) = tat.filter(|t| *t != stored) {
                    mismatches.push(format!(
                        "rate {rate:?} step {j}: stored tat {tat}, rust {stored}"
                    ));
                }
            }
        }
    }
    // Clean up before asserting, so a failure leaves no keys behind.
    let _: i64 = redis::cmd("DEL")
        .arg(&keys)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(mismatches.is_empty(), "{mismatches:#?}");
}

/// One call with the same key several times, interleaved with another key, decides as the
/// same decisions taken one after the other (the script reads and writes each key once).
#[tokio::test]
async fn lua_batch_with_repeated_keys_matches_sequential_gcra() {
    let Some(mut conn) = conn_or_skip().await else {
        return;
    };
    let p = prefix("batch");
    let (a, b) = (format!("{p}a"), format!("{p}b"));
    // Real time: the keys' PX must not expire them during the test.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64;
    let pa = params_us(Rate::per_second(10, 3)).unwrap();
    let pb = params_us(Rate::per_minute(60, 2)).unwrap();
    // a's bucket starts part-used: a stored arrival time 150 ms ahead.
    let _: () = redis::cmd("SET")
        .arg(&a)
        .arg(now + 150_000)
        .arg("PX")
        .arg(60_000)
        .query_async(&mut conn)
        .await
        .unwrap();
    // Runs (key, how many), a's and b's interleaved.
    let order = [
        (&a, 2),
        (&b, 1),
        (&a, 1),
        (&b, 3),
        (&a, 3),
        (&a, 1),
        (&b, 1),
    ];
    let params_of = |k: &String| if *k == a { pa } else { pb };
    let gcra_script = redis::Script::new(GCRA_LUA);
    let mut script = gcra_script.prepare_invoke();
    script.arg(now);
    let asks: Vec<RunAsk<'_>> = order
        .iter()
        .map(|(k, n)| RunAsk {
            key: k,
            params: params_of(k),
            n: *n,
        })
        .collect();
    for ask in &asks {
        script
            .key(ask.key)
            .arg(ask.params.t)
            .arg(ask.params.tau)
            .arg(ask.n);
    }
    let reply: Vec<u8> = script.invoke_async(&mut conn).await.unwrap();
    let runs = runs_from_reply(&reply, &asks).unwrap();
    assert_eq!(runs.len(), order.len());
    let mut stored = std::collections::HashMap::from([(a.clone(), now + 150_000), (b.clone(), 0)]);
    let mut mismatches = Vec::new();
    let mut allowed = 0;
    for ((k, n), run) in order.iter().zip(&runs) {
        let params = params_of(k);
        for i in 0..*n {
            let want = gcra(stored[*k], now, params);
            let got = run.outcome(i, params);
            let fields = |o: &Outcome| (o.allowed, o.remaining, o.reset_after, o.retry_after);
            if fields(&got) != fields(&want) {
                mismatches.push(format!(
                    "{k} request {i} of {n}: lua {:?} rust {:?}",
                    fields(&got),
                    fields(&want)
                ));
            }
            if want.allowed {
                allowed += 1;
                stored.insert((*k).clone(), want.new_tat);
            }
        }
    }
    // Both outcomes happen: a's bucket (1 left: 150 of 300 ms used, 100 ms each) and b's (2
    // left) are overdrawn.
    assert!(allowed > 0 && allowed < 12, "{allowed} of 12 allowed");
    for k in [&a, &b] {
        let tat: Option<u64> = redis::cmd("GET")
            .arg(k)
            .query_async(&mut conn)
            .await
            .unwrap();
        if tat != Some(stored[k]) {
            mismatches.push(format!("{k}: stored {tat:?}, rust {}", stored[k]));
        }
    }
    let _: i64 = redis::cmd("DEL")
        .arg(&[&a, &b])
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(mismatches.is_empty(), "{mismatches:#?}");
}

#[tokio::test]
async fn counter_script_sets_ttl_only_once() {
    let Some(mut conn) = conn_or_skip().await else {
        return;
    };
    let key = format!("{}c", prefix("counter"));
    let script = redis::Script::new(COUNTER_LUA);
    let v: i64 = script
        .key(&key)
        .arg(2)
        .arg(10_000)
        .invoke_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(v, 2);
    let v: i64 = script
        .key(&key)
        .arg(3)
        .arg(60_000)
        .invoke_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(v, 5);
    let pttl: i64 = redis::cmd("PTTL")
        .arg(&key)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(pttl > 0 && pttl <= 10_000, "pttl {pttl}");
    // A key left without expiry (e.g. by someone else's INCR) gets one on the next add.
    let _: () = redis::cmd("PERSIST")
        .arg(&key)
        .query_async(&mut conn)
        .await
        .unwrap();
    let v: i64 = script
        .key(&key)
        .arg(1)
        .arg(5_000)
        .invoke_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(v, 6);
    let pttl: i64 = redis::cmd("PTTL")
        .arg(&key)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(pttl > 0 && pttl <= 5_000, "pttl {pttl}");
    let _: i64 = redis::cmd("DEL")
        .arg(&key)
        .query_async(&mut conn)
        .await
        .unwrap();
}

#[test]
fn params_in_microseconds() {
    let p = params_us(Rate::per_second(10, 5)).unwrap();
    assert_eq!((p.t, p.tau), (100_000, 500_000));
    assert!(params_us(Rate::per_second(0, 5)).is_none());
    // rates beyond one per microsecond saturate at T = 1 us
    let p = params_us(Rate::per_second(10_000_000, 3)).unwrap();
    assert_eq!((p.t, p.tau), (1, 3));
    let p = params_us(Rate::new(1, Duration::MAX, u64::MAX)).unwrap();
    assert_eq!((p.t, p.tau), (crate::shared::CAP_US, crate::shared::CAP_US));
}

#[test]
fn script_replies_are_read_in_pairs_and_checked() {
    let p = Params {
        t: 100_000,
        tau: 500_000,
    };
    let ask = |n| RunAsk {
        key: "k",
        params: p,
        n,
    };
    let runs = runs_from_reply(b"3 100000 0 500000", &[ask(4), ask(2)]).unwrap();
    assert_eq!(
        runs,
        [
            Run {
                allowed: 3,
                d0: 100_000
            },
            Run {
                allowed: 0,
                d0: 500_000
            }
        ]
    );
    assert_eq!(runs_from_reply(b"", &[]).unwrap().len(), 0);
    for (bad, n) in [
        // too few or too many numbers, not numbers
        (&b"1"[..], 1),
        (b"1 0 2", 1),
        (b"1 x", 1),
        (b"1 0.5", 1),
        (b"1 -5", 1),
        (b"1 99999999999999999999", 1),
        // more allowed than asked, or allowed beyond the tolerance
        (b"3 0", 2),
        (b"1 400001", 1),
    ] {
        assert!(
            runs_from_reply(bad, &[ask(n)]).is_none(),
            "{}",
            String::from_utf8_lossy(bad)
        );
    }
}

/// A run's outcomes are those of its requests decided one after the other at one instant,
/// whatever the bucket's state, for rates of every shape (checked without Redis: the run's two
/// numbers are taken from the sequential decisions).
#[test]
fn run_outcomes_match_sequential_gcra() {
    let now = 1_700_000_000_000_000u64;
    let rates = [
        Rate::per_second(10, 5),
        Rate::per_minute(60, 50),
        Rate::per_second(7, 3),
        Rate::per_second(1000, 0),
        Rate::new(3, Duration::from_millis(10), 2),
        Rate::new(1, Duration::from_secs(3600), 1),
    ];
    for rate in rates {
        let p = params_us(rate).unwrap();
        for ahead in [
            0,
            1,
            p.t / 2,
            p.t,
            p.tau.saturating_sub(1),
            p.tau,
            p.tau + p.t,
        ] {
            for stored in [0, now.saturating_sub(p.t), now + ahead] {
                let n = 60;
                let d0 = stored.max(now) - now;
                let mut s = stored;
                let mut want = Vec::new();
                for _ in 0..n {
                    let o = gcra(s, now, p);
                    if o.allowed {
                        s = o.new_tat;
                    }
                    want.push(o);
                }
                let allowed = want.iter().filter(|o| o.allowed).count() as u64;
                assert!(want.iter().take(allowed as usize).all(|o| o.allowed));
                let run = Run { allowed, d0 };
                for (i, w) in (0u64..).zip(&want) {
                    let got = run.outcome(i, p);
                    let fields =
                        |o: &Outcome| (o.allowed, o.remaining, o.reset_after, o.retry_after);
                    assert_eq!(
                        fields(&got),
                        fields(w),
                        "{rate:?} stored {stored} request {i}"
                    );
                }
            }
        }
    }
}
