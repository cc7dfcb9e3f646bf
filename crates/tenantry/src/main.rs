//! The tenantry binary.
fn main() {}
