//! The gaussedge device: runs a bundle's ONNX feature extractor with tract,
//! keeps a fixed-capacity Gaussian head, and serves the wire protocol.

pub mod backbone;
pub mod bundle;
