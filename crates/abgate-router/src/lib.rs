//! Pure routing decisions for abgate: no I/O, every rule a plain unit test.
#![forbid(unsafe_code)]
pub mod sticky;
