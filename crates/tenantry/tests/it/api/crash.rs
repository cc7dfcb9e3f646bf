//! Crash safety: `kill -9` in the middle of a burst of concurrent writes, restart on the same
//! store, and check that what is there is consistent (routes with their backends and audit
//! rows, counts within the plan, acknowledged writes kept, the proxy serving the store).

use std::collections::BTreeSet;
use std::sync::atomic::AtomicUsize;

use super::*;

store_test!(kill_9_mid_burst_then_restart, |backend| async {
    let echo = echo_backends(3).await;
    let pool: Vec<SocketAddr> = echo.iter().map(|b| b.addr).collect();
    let dir = Arc::new(TempDir::new());
    let mut s = backend.start_in(Arc::clone(&dir)).await;
    let admin = s.admin().await;
    // Pro: 10 users, 50 routes, 10 backends per route, 10 hosts. The burst asks for more.
    let owner = s.tenant(&admin, "acme", "pro").await;

    let done = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for i in 0..60usize {
        let c = owner.clone();
        let finished = Arc::clone(&done);
        let backends: Vec<SocketAddr> = pool.iter().copied().take(1 + i % 3).collect();
        let body = route(
            &format!("r{i}"),
            &format!("h{}.localhost", i % 12),
            &format!("/p{i}"),
            &backends,
        );
        tasks.push(tokio::spawn(async move {
            let bytes = serde_json::to_vec(&body).expect("json");
            let r = c
                .try_raw(
                    "POST",
                    "/api/tenants/acme/routes",
                    &[("content-type", "application/json")],
                    bytes,
                )
                .await;
            finished.fetch_add(1, Ordering::Relaxed);
            (format!("r{i}"), r.map(|r| r.status.as_u16()))
        }));
        if i % 5 == 0 {
            let c = owner.clone();
            let finished = Arc::clone(&done);
            let email = format!("u{i}@acme.test");
            tasks.push(tokio::spawn(async move {
                let body = json!({"email": email, "password": PASSWORD, "role": "viewer"});
                let r = c
                    .try_raw(
                        "POST",
                        "/api/tenants/acme/users",
                        &[("content-type", "application/json")],
                        serde_json::to_vec(&body).expect("json"),
                    )
                    .await;
                finished.fetch_add(1, Ordering::Relaxed);
                (email, r.map(|r| r.status.as_u16()))
            }));
        }
    }
    let total = tasks.len();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while done.load(Ordering::Relaxed) < total / 2 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    s.t.signal("KILL");
    assert!(
        s.t.wait_exit(Duration::from_secs(10)).await.is_some(),
        "kill -9 did not stop it"
    );
    let mut acknowledged = BTreeSet::new();
    let mut failed = 0;
    for t in tasks {
        match t.await.expect("task") {
            (name, Ok(201)) => {
                acknowledged.insert(name);
            }
            (_, Ok(status)) => assert!(
                status == 403 || status == 409,
                "a burst write answered {status} before the crash"
            ),
            (_, Err(_)) => failed += 1,
        }
    }
    eprintln!(
        "{}: {} of {total} writes acknowledged, {failed} cut off by kill -9",
        backend.name(),
        acknowledged.len()
    );
    drop(s);

    // Restart on the same data directory (SQLite file, JWT secret) or database.
    let s = backend.start_in(Arc::clone(&dir)).await;
    let admin = s.admin().await;
    let owner = s.login("owner@acme.test", PASSWORD).await;
    let sub = owner.must_get("/api/tenants/acme/subscription").await;
    assert_eq!(sub["plan"], "pro");
    let routes = owner.must_get("/api/tenants/acme/routes").await;
    let routes = routes.as_array().expect("routes");
    let users = owner.must_get("/api/tenants/acme/users").await;
    let users = users.as_array().expect("users");
    assert!(routes.len() <= 50, "{} routes on Pro", routes.len());
    assert!(users.len() <= 10, "{} users on Pro", users.len());
    let hosts: BTreeSet<&str> = routes.iter().filter_map(|r| r["host"].as_str()).collect();
    assert!(hosts.len() <= 10, "{} hosts on Pro", hosts.len());
    let audit = owner.must_get("/api/tenants/acme/audit?limit=1000").await;
    let audit = audit.as_array().expect("audit");
    let route_ids: BTreeSet<&str> = routes.iter().filter_map(|r| r["id"].as_str()).collect();
    let emails: BTreeSet<&str> = users.iter().filter_map(|u| u["email"].as_str()).collect();
    for name in &acknowledged {
        assert!(
            route_ids.contains(name.as_str()) || emails.contains(name.as_str()),
            "{name} was acknowledged (201) but is gone after the crash"
        );
    }
    let client = HttpClient::new();
    for r in routes {
        let id = r["id"].as_str().expect("id");
        let backends = r["backends"].as_array().expect("backends");
        let i: usize = id[1..].parse().expect("burst route id");
        assert_eq!(backends.len(), 1 + i % 3, "route {id} lost backends: {r}");
        assert!(
            audit
                .iter()
                .any(|e| e["action"] == "route.create" && e["target"] == id),
            "route {id} has no audit row"
        );
        let host = r["host"].as_str().expect("host");
        let path = r["path_prefix"].as_str().unwrap_or("/");
        let reply = client.get(s.t.http, host, path).await.expect("proxy");
        assert_eq!(
            reply.status,
            200,
            "route {id} ({host}{path}) is not served after restart: {}",
            reply.json()
        );
    }
    for e in audit.iter().filter(|e| e["action"] == "route.create") {
        let id = e["target"].as_str().expect("target");
        assert!(
            route_ids.contains(id),
            "audit row for route {id}, which does not exist"
        );
    }

    // The store still takes writes.
    let r = owner
        .post(
            "/api/tenants/acme/routes",
            route("after", "h0.localhost", "/after", &pool[..1]),
        )
        .await;
    assert!(
        r.0 == 201 || r.1["error"] == "plan_limit",
        "{} {}",
        r.0,
        r.1
    );
    let r = admin
        .post("/api/tenants", json!({"tenant_id": "after-crash"}))
        .await;
    assert_status(r, 201);
});
