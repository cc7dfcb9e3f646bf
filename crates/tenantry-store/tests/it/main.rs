//! Integration tests of the store. Each `store_test!` runs on SQLite and on PostgreSQL (skipped
//! with a notice when PostgreSQL is not reachable, failed when `TENANTRY_REQUIRE_SERVICES=1`).

// Helpers outside `#[test]` functions unwrap too: a panic there is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

mod access;
mod audit;
mod import;
mod limits;
mod rls;
mod routes;
mod tenants;
