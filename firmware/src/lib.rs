//! The gaussedge firmware core: what a microcontroller runs.
//!
//! `no_std` and without an allocator: the sans-IO protocol [`server`], the
//! A/B slot [`persist`]ence, and the [`platform`] trait that hides the
//! backbone, storage and camera. A device supplies a [`platform::Platform`]
//! (the simulator's is tract, files and a dataset; a microcontroller's its
//! NPU, flash and sensor) and feeds the server the bytes its link receives.
//! With the `mem` feature, `mem` is a platform in memory for tests and fuzzing.
#![no_std]
#![warn(missing_docs)]

#[cfg(any(test, feature = "alloc"))]
extern crate alloc;
#[cfg(test)]
extern crate std;

#[cfg(any(test, feature = "mem"))]
pub mod mem;
pub mod persist;
pub mod platform;
#[cfg(any(test, feature = "alloc"))]
pub mod samples;
pub mod server;
