//! binance-ml: Binance order-book snapshots to calibrated price-move classifiers.
//!
//! The binary (`src/main.rs`) is a thin shell over this library; tests and benches use it too.
//! Layers, from the bottom up (README "Layout"; `tests/layering.rs` holds the code to them):
//! `exit`, `allocator` -> `config` -> `logging`, `plot`, `tracking` -> `data` -> `store` ->
//! `preprocess` -> `diagnostics`, `model` -> `train` -> `predict`, `record` -> `evaluate` ->
//! `pipeline` -> `cli` -> `commands` -> `main`.

pub mod allocator;
pub mod cli;
pub mod commands;
pub mod config;
pub mod data;
pub mod diagnostics;
pub mod evaluate;
pub mod exit;
pub mod logging;
pub mod model;
pub mod pipeline;
pub mod plot;
pub mod predict;
pub mod preprocess;
pub mod record;
pub mod store;
pub mod tracking;
pub mod train;
