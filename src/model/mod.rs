//! The Vision Transformer model: config, weights, forward pass.

pub mod config;
pub mod interp;
pub mod vit;
pub mod weights;

pub use config::*;
pub use vit::{Vit, VitOutput};
