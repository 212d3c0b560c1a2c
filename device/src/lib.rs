//! The gaussedge device simulator and its backbone.
//!
//! The firmware core (protocol server, persistence, platform trait) is the
//! `no_std` crate `gaussedge-firmware`, re-exported here as [`server`],
//! [`persist`] and [`platform`]. This crate adds what runs it on a Linux
//! host or board: tract for the backbone ([`backbone`], with its rewrite
//! ops and kernels), bundles on disk ([`bundle`]), files for the slots and
//! a dataset for the camera ([`sim`]), and a serial-port or PTY transport
//! ([`link`]).
#![cfg_attr(not(feature = "std"), no_std)]

pub use gaussedge_firmware::{persist, platform, server};

/// The backbone on tract, re-exported from its own crate.
#[cfg(feature = "std")]
pub use gaussedge_backbone as backbone;
/// The bundle format, re-exported from its own crate.
#[cfg(feature = "std")]
pub use gaussedge_bundle as bundle;
#[cfg(feature = "std")]
pub mod bundles;
#[cfg(feature = "std")]
pub mod cli;
#[cfg(feature = "std")]
pub mod flash;
#[cfg(feature = "std")]
pub mod link;
#[cfg(feature = "std")]
pub mod sim;
