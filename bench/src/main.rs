//! Placeholder for the benchmark runner (being written).
fn main() {}
