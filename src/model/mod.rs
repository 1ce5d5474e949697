//! The Vision Transformer model: config, parameter table, host tensors, forward pass.

pub mod attentions;
pub mod config;
pub mod drop_path;
pub mod host;
pub mod interp;
pub mod params;
pub mod vit;

pub use attentions::VitAttentions;
pub use config::*;
pub use drop_path::{drop_path_rates, DropPathMasks, DropPathScales};
pub use host::HostTensor;
pub use params::{Param, ParamTable};
pub use vit::{Vit, VitOutput};
