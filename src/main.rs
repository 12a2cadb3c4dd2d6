//! The `portier` command line.
fn main() {}
