//! binance-ml: Binance order-book snapshots to calibrated price-move classifiers.
//!
//! The binary (`src/main.rs`) is a thin shell over this library; tests and benches use it too.
//! The modules form layers that import downward only; README "Layout" lists them and
//! `tests/layering.rs` holds the code to that list.

pub mod allocator;
pub mod cli;
pub mod commands;
pub mod config;
pub mod data;
pub mod diagnostics;
pub mod evaluate;
pub mod exit;
pub mod http;
pub mod interrupt;
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
