//! Measures the limiter: the in-process decision cost, then Redis decisions under concurrency.
//!
//! ```text
//! cargo run --release -p tenantry-limits --example limiter_bench -- \
//!     [--redis URL] [--seconds 5] [--concurrency 64] [--local-checks 1000000] [--keys 1000]
//! ```
//!
//! Prints lines like `local: 85 ns/decision` and
//! `redis: 64 concurrent, 41234 decisions/s, p50 410 us, p99 1020 us`.
//! Only talks to the given Redis (default 127.0.0.1:6379); its keys expire by themselves
//! within 100 ms and are deleted at the end.

use std::error::Error;
use std::hint::black_box;
use std::time::{Duration, Instant};

use tenantry_limits::{Limiter, Rate, RedisOptions, Source};

struct Args {
    redis: String,
    seconds: f64,
    concurrency: usize,
    local_checks: u64,
    keys: usize,
}

const USAGE: &str = "usage: limiter_bench [--redis URL] [--seconds N] [--concurrency N] \
                     [--local-checks N] [--keys N] [--no-redis]";

fn parse_args() -> Result<Args, Box<dyn Error>> {
    let mut a = Args {
        redis: "redis://127.0.0.1:6379".to_owned(),
        seconds: 5.0,
        concurrency: 64,
        local_checks: 1_000_000,
        keys: 1000,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "-h" || flag == "--help" {
            println!("{USAGE}");
            std::process::exit(0);
        }
        if flag == "--no-redis" {
            a.redis.clear();
            continue;
        }
        let value = it
            .next()
            .ok_or_else(|| format!("{flag} needs a value\n{USAGE}"))?;
        match flag.as_str() {
            "--redis" => a.redis = value,
            "--seconds" => a.seconds = value.parse()?,
            "--concurrency" => a.concurrency = value.parse()?,
            "--local-checks" => a.local_checks = value.parse()?,
            "--keys" => a.keys = value.parse()?,
            _ => return Err(format!("unknown argument {flag}\n{USAGE}").into()),
        }
    }
    a.keys = a.keys.max(1);
    a.concurrency = a.concurrency.max(1);
    Ok(a)
}

/// A tiny xorshift, so key choice costs nothing and needs no dependency.
fn next(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

fn bench_local(args: &Args) -> Result<(), Box<dyn Error>> {
    let rt = tokio::runtime::Builder::new_current_thread().build()?;
    let limiter = Limiter::local();
    let keys: Vec<String> = (0..args.keys)
        .map(|i| format!("tn:rl:bench:route:k{i}"))
        .collect();
    // Roughly half allowed, half denied once warm.
    let rate = Rate::per_second(1000, 100);
    let per_key = args.keys as u64;
    let ns = rt.block_on(async {
        let mut allowed = 0u64;
        for i in 0..per_key.saturating_mul(100) {
            let k = &keys[(i % per_key) as usize];
            allowed += u64::from(limiter.check(k, rate).await.allowed);
        }
        let start = Instant::now();
        let mut s = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..args.local_checks {
            let k = &keys[(next(&mut s) % per_key) as usize];
            allowed += u64::from(limiter.check(black_box(k), rate).await.allowed);
        }
        black_box(allowed);
        start.elapsed().as_nanos() as f64 / args.local_checks.max(1) as f64
    });
    println!(
        "local: {ns:.0} ns/decision ({} checks over {} keys, 1 thread)",
        args.local_checks, args.keys
    );
    Ok(())
}

fn percentile(sorted: &[u32], q: f64) -> u32 {
    if sorted.is_empty() {
        return 0;
    }
    let idx = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

fn bench_redis(args: &Args) -> Result<(), Box<dyn Error>> {
    // One single-threaded runtime, the shape of a gateway worker: concurrent decisions are
    // batched into shared script calls.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let limiter = Limiter::redis(RedisOptions::new(&args.redis))?;
        let wait = Instant::now();
        while !limiter.backend_up() {
            if wait.elapsed() > Duration::from_secs(3) {
                println!("redis: not reachable at {}, skipped", args.redis);
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let prefix = format!("tn:bench:{}:", std::process::id());
        let keys: std::sync::Arc<Vec<String>> = std::sync::Arc::new(
            (0..args.keys)
                .map(|i| format!("{prefix}rl:route:k{i}"))
                .collect(),
        );
        let rate = Rate::per_second(1000, 100);
        let deadline = Instant::now() + Duration::from_secs_f64(args.seconds.max(0.1));
        let start = Instant::now();
        let mut tasks = Vec::new();
        for t in 0..args.concurrency {
            let limiter = limiter.clone();
            let keys = keys.clone();
            tasks.push(tokio::spawn(async move {
                let mut lat = Vec::with_capacity(200_000);
                let mut other = 0u64;
                let mut s = 0x2545_f491_4f6c_dd1du64 ^ ((t as u64 + 1) << 32);
                while Instant::now() < deadline {
                    let k = &keys[(next(&mut s) % keys.len() as u64) as usize];
                    let t0 = Instant::now();
                    let d = limiter.check(k, rate).await;
                    lat.push(u32::try_from(t0.elapsed().as_micros()).unwrap_or(u32::MAX));
                    if d.source != Source::Shared {
                        other += 1;
                    }
                }
                (lat, other)
            }));
        }
        let mut all = Vec::new();
        let mut not_shared = 0;
        for t in tasks {
            let (lat, other) = t.await?;
            all.extend(lat);
            not_shared += other;
        }
        let elapsed = start.elapsed().as_secs_f64();
        all.sort_unstable();
        println!(
            "redis: {} concurrent, {:.0} decisions/s, p50 {} us, p99 {} us, {:.1} decisions per Redis call (1 thread)",
            args.concurrency,
            all.len() as f64 / elapsed,
            percentile(&all, 0.50),
            percentile(&all, 0.99),
            all.len() as f64 / limiter.backend_calls().max(1) as f64,
        );
        if not_shared > 0 || limiter.backend_errors() > 0 {
            println!(
                "redis: warning: {not_shared} decisions did not come from redis, {} backend errors",
                limiter.backend_errors()
            );
        }
        // The keys expire by themselves; delete them anyway.
        if let Ok(client) = redis::Client::open(args.redis.as_str())
            && let Ok(mut conn) = client.get_multiplexed_async_connection().await
        {
            for chunk in keys.chunks(500) {
                let _: Result<i64, _> = redis::cmd("DEL").arg(chunk).query_async(&mut conn).await;
            }
        }
        Ok::<(), Box<dyn Error>>(())
    })
}

fn main() -> Result<(), Box<dyn Error>> {
    let args = parse_args()?;
    bench_local(&args)?;
    if !args.redis.is_empty() {
        bench_redis(&args)?;
    }
    Ok(())
}
