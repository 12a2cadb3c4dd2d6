//! Integration tests: the real pipeline and the real binary on the real models and photos of
//! `../shared/assets` (or `$PORTIER_ASSETS`). One test binary, modules by subject.

// Tests fail loudly on the first unexpected value: unwrap is the point here.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod appliance;
mod cli;
mod common;
mod distance;
mod enroll_live;
mod faults;
#[cfg(feature = "hailo")]
#[allow(dead_code)]
mod hailo_double;
mod liveness;
mod mqtt;
mod mqtt_hardening;
mod npu_check;
#[cfg(feature = "hailo")]
mod npu_device;
mod parity;
mod recognition;
mod selftest;
