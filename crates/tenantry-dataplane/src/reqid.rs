//! Request ids: kept from the client's `X-Request-Id` when sane, generated otherwise.

use std::cell::Cell;
use std::time::{SystemTime, UNIX_EPOCH};

use http::HeaderValue;

thread_local! {
    static STATE: Cell<u64> = Cell::new(seed());
}

fn seed() -> u64 {
    let t = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let local = 0u8;
    let addr = std::ptr::addr_of!(local) as u64;
    (t ^ addr.rotate_left(32) ^ u64::from(std::process::id())) | 1
}

/// splitmix64 step: fast, well distributed, not cryptographic (ids need uniqueness only).
fn next() -> u64 {
    STATE.with(|s| {
        let v = s.get().wrapping_add(0x9e37_79b9_7f4a_7c15);
        s.set(v);
        let mut z = v;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    })
}

/// A new 32-hex-digit id.
pub fn generate() -> HeaderValue {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut buf = [0u8; 32];
    let id = (u128::from(next()) << 64) | u128::from(next());
    // Lowest nibble last: digit i is nibble 31 - i.
    for (i, digit) in buf.iter_mut().enumerate() {
        *digit = HEX[((id >> (4 * (31 - i))) & 0xf) as usize];
    }
    // One allocation (the owner), and clones are reference counts: `from_bytes` would copy
    // into a `Vec` whose first clone (the access log and the upstream request keep the id)
    // allocates again.
    HeaderValue::from_maybe_shared(bytes::Bytes::from_owner(buf))
        .unwrap_or_else(|_| HeaderValue::from_static("0"))
}

/// Whether a client-supplied id is worth keeping: 1 to 128 visible ASCII characters.
pub fn acceptable(v: &HeaderValue) -> bool {
    let b = v.as_bytes();
    !b.is_empty() && b.len() <= 128 && b.iter().all(|c| (0x21..0x7f).contains(c))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generates_distinct_hex_ids() {
        let a = generate();
        let b = generate();
        assert_ne!(a, b);
        assert_eq!(a.len(), 32);
        assert!(a.as_bytes().iter().all(u8::is_ascii_hexdigit));
        assert!(acceptable(&a));
        assert!(!acceptable(&HeaderValue::from_static("has space")));
    }
}
