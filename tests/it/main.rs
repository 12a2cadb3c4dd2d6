//! Integration tests: the real pipeline on the real models and photos of `../shared/assets`
//! (or `$PORTIER_ASSETS`). One test binary, modules by subject.

mod common;
mod parity;
