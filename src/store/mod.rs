//! The preprocessed store: the contract between `preprocess`, which writes it, and the stages
//! that read it (`diagnose`, `train`, `evaluate`, `finetune`). Its manifest, key, readers and
//! the value types it records (row layout, split ranges, scaler) live here, below all of them.

mod dataset;
pub mod layout;
pub mod manifest;
pub mod read;
pub mod scaler;

pub use layout::{RowLayout, SampleShape};
pub use manifest::{GapCounts, RowShard, STORE_FORMAT_VERSION, SplitRange, StoreManifest};
pub use read::{
    StoreSamples, load_samples, read_manifest, read_rows, read_rows_f32, store_dir, store_dir_with,
    store_key, verify_store,
};
pub use scaler::Scaler;
