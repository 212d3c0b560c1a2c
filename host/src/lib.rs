//! The gaussedge host: datasets, the EfficientNet description and its tch
//! trainer, the ONNX writer, statistics fitting, and the serial client
//! behind the `gaussedge` CLI.

pub mod arch;
pub use gaussedge_data as data;
#[cfg(feature = "train")]
pub mod net;
pub mod onnx;
#[cfg(feature = "train")]
pub mod parity;
pub mod prep;
pub mod rng;
pub mod util;
pub mod fit;
#[cfg(feature = "train")]
pub mod train;
pub mod cli;
pub mod client;
pub mod eval;
pub mod merge;
pub mod demo;
