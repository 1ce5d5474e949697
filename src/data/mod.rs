//! Image decoding, preprocessing and datasets.

pub mod augment;
pub mod preprocess;
pub mod rng;

pub use augment::*;
pub use preprocess::*;
pub use rng::Rng;
pub mod dataset;
pub use dataset::{Dataset, Sample, Source};
