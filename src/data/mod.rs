//! Image decoding, preprocessing and datasets.

pub mod preprocess;
pub mod rng;

pub use preprocess::*;
pub use rng::Rng;
