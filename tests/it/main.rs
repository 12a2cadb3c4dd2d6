//! Integration tests: the real pipeline and the real binary on the real models and photos of
//! `../shared/assets` (or `$PORTIER_ASSETS`). One test binary, modules by subject.

mod cli;
mod common;
mod parity;
mod recognition;
