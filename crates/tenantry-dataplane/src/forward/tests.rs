//! The forwarding fields, written into a head and set in a map: the same fields either way.

use http::header::{self, HeaderMap, HeaderValue};

use super::{Forwarding, write_fields};
use crate::proxy::ConnInfo;

/// The fields `write_fields` writes, parsed back as (name, value) pairs, and whether a framing
/// field was seen.
fn written(f: &Forwarding<'_>, h: &HeaderMap) -> (Vec<(String, String)>, bool) {
    let mut out = Vec::new();
    let declared = write_fields(&mut out, h, Some(f));
    let text = String::from_utf8_lossy(&out).into_owned();
    let fields = text
        .split_terminator("\r\n")
        .map(|line| {
            let (n, v) = line.split_once(": ").expect("name: value");
            (n.to_owned(), v.to_owned())
        })
        .collect();
    (fields, declared)
}

/// The same fields from `apply`, in the map's order.
fn applied(f: &Forwarding<'_>, h: &HeaderMap) -> Vec<(String, String)> {
    let mut h = h.clone();
    f.apply(&mut h);
    h.iter()
        .map(|(n, v)| {
            (
                n.as_str().to_owned(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect()
}

fn sorted(mut v: Vec<(String, String)>) -> Vec<(String, String)> {
    v.sort();
    v
}

fn get<'a>(fields: &'a [(String, String)], name: &str) -> Vec<&'a str> {
    fields
        .iter()
        .filter(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
        .collect()
}

#[test]
fn extends_the_clients_lists_and_replaces_its_other_forwarding_fields() {
    let conn = ConnInfo::new("10.0.0.9:5000".parse().expect("addr"), true);
    let host = HeaderValue::from_static("acme.localhost:8080");
    let rid = HeaderValue::from_static("rid-1");
    let f = Forwarding {
        conn: &conn,
        host: Some(&host),
        request_id: &rid,
    };
    let mut h = HeaderMap::new();
    h.insert(header::HOST, host.clone());
    h.append("x-forwarded-for", HeaderValue::from_static("1.2.3.4"));
    h.append("x-forwarded-for", HeaderValue::from_static("5.6.7.8"));
    h.insert("x-forwarded-proto", HeaderValue::from_static("ftp"));
    h.insert("x-forwarded-host", HeaderValue::from_static("evil"));
    h.insert("x-request-id", HeaderValue::from_static("client-chose"));
    h.insert(header::ACCEPT, HeaderValue::from_static("*/*"));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));

    let (fields, declared) = written(&f, &h);
    assert!(declared, "content-length is left to the caller");
    assert!(get(&fields, "content-length").is_empty());
    assert_eq!(get(&fields, "host"), ["acme.localhost:8080"]);
    assert_eq!(get(&fields, "accept"), ["*/*"]);
    assert_eq!(
        get(&fields, "x-forwarded-for"),
        ["1.2.3.4, 5.6.7.8, 10.0.0.9"]
    );
    assert_eq!(get(&fields, "x-forwarded-proto"), ["https"]);
    assert_eq!(get(&fields, "x-forwarded-host"), ["acme.localhost:8080"]);
    assert_eq!(get(&fields, "x-request-id"), ["rid-1"]);
    assert_eq!(
        get(&fields, "forwarded"),
        ["for=10.0.0.9;proto=https;host=\"acme.localhost:8080\""]
    );

    // hyper's path gets the same fields (its map still holds the framing field).
    let mut via_map = applied(&f, &h);
    via_map.retain(|(n, _)| n != "content-length");
    assert_eq!(sorted(via_map), sorted(fields));
}

#[test]
fn adds_host_from_the_authority_and_extends_forwarded() {
    let v6 = ConnInfo::new("[2001:db8::1]:5000".parse().expect("addr"), false);
    let authority = HeaderValue::from_static("acme.localhost");
    let rid = HeaderValue::from_static("r");
    let f = Forwarding {
        conn: &v6,
        host: Some(&authority),
        request_id: &rid,
    };
    let mut h = HeaderMap::new();
    h.insert(header::FORWARDED, HeaderValue::from_static("for=192.0.2.1"));
    let (fields, declared) = written(&f, &h);
    assert!(!declared);
    assert_eq!(get(&fields, "host"), ["acme.localhost"]);
    assert_eq!(get(&fields, "x-forwarded-for"), ["2001:db8::1"]);
    assert_eq!(get(&fields, "x-forwarded-proto"), ["http"]);
    assert_eq!(
        get(&fields, "forwarded"),
        ["for=192.0.2.1, for=\"[2001:db8::1]\";proto=http;host=acme.localhost"]
    );
    assert_eq!(sorted(applied(&f, &h)), sorted(fields));
}

#[test]
fn a_host_that_is_not_visible_ascii_stays_out_of_forwarded() {
    let conn = ConnInfo::new("127.0.0.1:5000".parse().expect("addr"), false);
    let rid = HeaderValue::from_static("r");
    let odd = HeaderValue::from_bytes(b"caf\xe9.localhost").expect("obs-text");
    for host in [None, Some(&odd)] {
        let f = Forwarding {
            conn: &conn,
            host,
            request_id: &rid,
        };
        let (fields, _) = written(&f, &HeaderMap::new());
        assert_eq!(get(&fields, "forwarded"), ["for=127.0.0.1;proto=http"]);
        assert_eq!(
            get(&fields, "x-forwarded-host").len(),
            usize::from(host.is_some())
        );
        assert_eq!(sorted(applied(&f, &HeaderMap::new())), sorted(fields));
    }
    // A quote or backslash cannot break out of the quoted host.
    let sly = HeaderValue::from_static("a\"b\\c:1");
    let f = Forwarding {
        conn: &conn,
        host: Some(&sly),
        request_id: &rid,
    };
    let (fields, _) = written(&f, &HeaderMap::new());
    assert_eq!(
        get(&fields, "forwarded"),
        ["for=127.0.0.1;proto=http;host=\"abc:1\""]
    );
}
