//! Image decoding, preprocessing and datasets.

pub mod augment;
pub mod csv;
pub mod dataset;
pub mod decode;
pub mod loader;
pub mod mixup;
pub mod preprocess;
pub mod sampler;
pub mod walk;

pub use crate::rng::Rng;
pub use augment::*;
pub use csv::{is_csv_path, CsvForm, CsvSplits, CsvTable};
pub use dataset::{Dataset, Sample, Source};
pub use decode::*;
pub use loader::{Batch, Loader, Unreadable};
pub use mixup::{Mix, MixupConfig};
pub use preprocess::*;
pub use sampler::balanced_order;
pub use walk::{
    collect_images, is_image_path, report_skipped, walk_images, SkippedFile, Walk, IMAGE_EXTENSIONS,
};
