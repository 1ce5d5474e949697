//! The Vision Transformer model: config, weights, forward pass.

pub mod interp;
