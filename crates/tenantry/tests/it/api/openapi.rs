//! The OpenAPI document: served without credentials, OpenAPI 3, lists every endpoint of the
//! issue, documents a 4xx answer on every operation, and matches the router (every
//! documented operation exists and is guarded).

use super::*;

/// The endpoints the issue asks for.
const REQUIRED: &[(&str, &str)] = &[
    ("post", "/api/auth/login"),
    ("post", "/api/signup"),
    ("get", "/api/me"),
    ("get", "/api/tenants"),
    ("post", "/api/tenants"),
    ("get", "/api/tenants/{tenant_id}"),
    ("patch", "/api/tenants/{tenant_id}"),
    ("delete", "/api/tenants/{tenant_id}"),
    ("get", "/api/tenants/{tenant_id}/users"),
    ("post", "/api/tenants/{tenant_id}/users"),
    ("patch", "/api/tenants/{tenant_id}/users/{user_id}"),
    ("delete", "/api/tenants/{tenant_id}/users/{user_id}"),
    ("get", "/api/tenants/{tenant_id}/routes"),
    ("post", "/api/tenants/{tenant_id}/routes"),
    ("get", "/api/tenants/{tenant_id}/routes/{route_id}"),
    ("put", "/api/tenants/{tenant_id}/routes/{route_id}"),
    ("delete", "/api/tenants/{tenant_id}/routes/{route_id}"),
    (
        "post",
        "/api/tenants/{tenant_id}/routes/{route_id}/backends/{address}/drain",
    ),
    ("get", "/api/tenants/{tenant_id}/api-keys"),
    ("post", "/api/tenants/{tenant_id}/api-keys"),
    ("get", "/api/plans"),
    ("post", "/api/plans"),
    ("put", "/api/plans/{plan}"),
    ("put", "/api/tenants/{tenant_id}/subscription"),
    ("get", "/api/tenants/{tenant_id}/audit"),
    ("get", "/api/openapi.json"),
];

const PUBLIC: &[(&str, &str)] = &[
    ("post", "/api/auth/login"),
    ("post", "/api/signup"),
    ("get", "/api/openapi.json"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_document_lists_and_guards_every_endpoint() {
    let s = Backend::sqlite().start().await;
    let anon = s.api();
    let r = anon
        .raw("GET", "/api/openapi.json", &[], bytes::Bytes::new())
        .await;
    assert_eq!(r.status, 200);
    assert!(
        r.headers["content-type"]
            .to_str()
            .is_ok_and(|c| c.starts_with("application/json")),
        "{:?}",
        r.headers
    );
    let doc = r.json();
    assert!(
        doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.")),
        "openapi: {}",
        doc["openapi"]
    );
    assert!(doc["info"]["title"].is_string());
    let paths = doc["paths"].as_object().expect("paths");

    let mut missing = Vec::new();
    for (m, p) in REQUIRED {
        if paths.get(*p).and_then(|item| item.get(*m)).is_none() {
            missing.push(format!("{} {p}", m.to_uppercase()));
        }
    }

    let mut operations = 0;
    let mut without_4xx = Vec::new();
    let mut unguarded = Vec::new();
    for (p, item) in paths {
        for m in ["get", "post", "put", "patch", "delete"] {
            let Some(op) = item.get(m) else { continue };
            operations += 1;
            let responses = op["responses"].as_object().expect("responses");
            // A path parameter is a placeholder of the path; query parameters are not.
            for param in op["parameters"].as_array().into_iter().flatten() {
                if param["in"] == "path" {
                    let name = param["name"].as_str().unwrap_or_default();
                    assert!(
                        p.contains(&format!("{{{name}}}")),
                        "{} {p}: path parameter {name:?} is not in the path",
                        m.to_uppercase()
                    );
                }
            }
            // The document itself cannot fail; every other operation documents its errors.
            if p != "/api/openapi.json" && !responses.keys().any(|code| code.starts_with('4')) {
                without_4xx.push(format!("{} {p}", m.to_uppercase()));
            }
            // The operation exists in the router and, unless public, asks for credentials.
            let concrete = p
                .replace("{tenant_id}", "acme")
                .replace("{address}", "127.0.0.1:1")
                .replace(['{', '}'], "");
            let r = anon.call(&m.to_uppercase(), &concrete, None).await;
            if PUBLIC.contains(&(m, p.as_str())) {
                assert!(
                    r.0 != 404 && r.0 != 405 && r.0 != 401,
                    "{} {p}: public but answered {} {}",
                    m.to_uppercase(),
                    r.0,
                    r.1
                );
            } else if r.0 != 401 || r.1["error"] != "unauthorized" {
                unguarded.push(format!("{} {p}: {} {}", m.to_uppercase(), r.0, r.1));
            }
        }
    }
    assert!(operations >= REQUIRED.len(), "{operations} operations");
    assert!(
        without_4xx.is_empty(),
        "operations without a 4xx response: {without_4xx:#?}"
    );
    assert!(
        unguarded.is_empty(),
        "documented operations not answering 401 without credentials (missing from the router, or unguarded): {unguarded:#?}"
    );
    // The error body is a documented schema.
    assert!(
        doc["components"]["schemas"]["ErrorBody"].is_object(),
        "no ErrorBody schema"
    );
    assert!(doc["components"]["securitySchemes"]["bearer"].is_object());
    assert!(missing.is_empty(), "not in the document: {missing:#?}");
}
