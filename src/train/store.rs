//! [`BatchSource`] over the preprocessed store: windows sliced from the row shards on the fly,
//! the training split shuffled within a bounded buffer, batches prefetched on a thread.
//!
//! The training samples (window ends, in time order) are cut into blocks of
//! `training.shuffle_buffer` samples. Each epoch visits the blocks in a seeded random order
//! and shuffles the samples inside each block; only one block's rows (its steps plus one
//! window of history) are held in memory at a time, read from the shards it touches. So the
//! order depends only on `(epoch, seed)` (resume equivalence) and memory on the buffer size,
//! never on the data length.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::source::{Batch, BatchIter, BatchSource, Split, epoch_rng, prefetch};
use super::{TrainError, check_memory_budget};
use crate::model::{ModelSpec, Rng};
use crate::store::SampleShape;
use crate::store::{
    RowLayout, SplitRange, StoreManifest, StoreSamples, load_samples, read_rows_f32,
};

/// One sample: window end step, class, time weight.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Sample {
    end: usize,
    label: u32,
    weight: f32,
}

/// What every batch iterator of one source shares.
#[derive(Debug)]
struct Shared {
    dir: PathBuf,
    manifest: StoreManifest,
    layout: RowLayout,
    window: usize,
    train: Vec<Sample>,
    validation: Vec<Sample>,
    test: Vec<Sample>,
    class_mean_change_pct: Vec<f64>,
}

/// Batches from the store at `dir`.
#[derive(Debug, Clone)]
pub struct StoreSource {
    shared: Arc<Shared>,
    shuffle_buffer: usize,
    prefetch: usize,
}

fn source_err(e: impl std::error::Error + Send + Sync + 'static) -> TrainError {
    TrainError::Source(Box::new(e))
}

impl StoreSource {
    /// Opens the store (manifest already read), reading its sample index.
    pub fn open(
        dir: &Path,
        manifest: StoreManifest,
        shuffle_buffer: usize,
        prefetch: usize,
    ) -> Result<Self, TrainError> {
        let samples = load_samples(dir, &manifest).map_err(source_err)?;
        Self::with_samples(dir, manifest, &samples, shuffle_buffer, prefetch)
    }

    /// Like [`StoreSource::open`] with the sample index already read (a caller that also
    /// needs the per-step arrays reads `samples.npz` once). Keeps the samples of every split
    /// (window end, label, time weight), not the per-step arrays.
    pub fn with_samples(
        dir: &Path,
        manifest: StoreManifest,
        samples: &StoreSamples,
        shuffle_buffer: usize,
        prefetch: usize,
    ) -> Result<Self, TrainError> {
        let pick = |ends: &[usize]| -> Result<Vec<Sample>, TrainError> {
            ends.iter()
                .map(|&end| {
                    let label = samples.labels[end];
                    if label < 0 {
                        return Err(TrainError::Batch(format!(
                            "{}: sample ending at step {end} has no label",
                            dir.display()
                        )));
                    }
                    Ok(Sample {
                        end,
                        label: label as u32,
                        weight: samples.weights[end] as f32,
                    })
                })
                .collect()
        };
        let train = pick(&samples.ends[0])?;
        let validation = pick(&samples.ends[1])?;
        let test = pick(&samples.ends[2])?;
        let classes = manifest.class_names.len();
        let (mut sum, mut count) = (vec![0.0; classes], vec![0u64; classes]);
        for s in &train {
            let change = samples.price_changes[s.end];
            if let Some(c) = sum.get_mut(s.label as usize)
                && change.is_finite()
            {
                *c += change;
                count[s.label as usize] += 1;
            }
        }
        let class_mean_change_pct = sum
            .iter()
            .zip(&count)
            .map(|(s, n)| if *n == 0 { 0.0 } else { s / *n as f64 })
            .collect();
        Ok(Self {
            shared: Arc::new(Shared {
                dir: dir.to_path_buf(),
                layout: manifest.layout(),
                window: manifest.window_steps,
                manifest,
                train,
                validation,
                test,
                class_mean_change_pct,
            }),
            shuffle_buffer: shuffle_buffer.max(1),
            prefetch,
        })
    }

    /// A source over the training samples whose window ends lie in `train` and in
    /// `validation` (one rolling fold of the training split), with windows of `window` steps
    /// (at most the store's: its samples are purged for its window). The test split is left out.
    pub fn fold(
        &self,
        train: SplitRange,
        validation: SplitRange,
        window: usize,
    ) -> Result<Self, TrainError> {
        let s = &self.shared;
        if window == 0 || window > s.window {
            return Err(TrainError::Option(format!(
                "a window of {window} steps: the preprocessed store holds windows of at most {} \
                 (preprocessing.window_steps)",
                s.window
            )));
        }
        let pick = |r: SplitRange| -> Vec<Sample> {
            s.train
                .iter()
                .filter(|x| x.end >= r.start && x.end < r.end)
                .copied()
                .collect()
        };
        Ok(Self {
            shared: Arc::new(Shared {
                dir: s.dir.clone(),
                manifest: s.manifest.clone(),
                layout: s.layout,
                window,
                train: pick(train),
                validation: pick(validation),
                test: Vec::new(),
                class_mean_change_pct: s.class_mean_change_pct.clone(),
            }),
            shuffle_buffer: self.shuffle_buffer,
            prefetch: self.prefetch,
        })
    }

    /// The store's manifest.
    pub fn manifest(&self) -> &StoreManifest {
        &self.shared.manifest
    }

    /// Mean relative price change (%) of the training samples of each class.
    pub fn class_mean_change_pct(&self) -> &[f64] {
        &self.shared.class_mean_change_pct
    }

    /// Bytes one training step holds besides the model: the rows of one shuffle block (its
    /// samples' steps plus a window of history, as f32), the largest row shard decoded while
    /// the block is read, the prefetched batches, and the sample lists.
    pub fn host_bytes(&self, batch_size: usize) -> u64 {
        let s = &self.shared;
        let row = s.layout.columns as u64 * 4;
        let block_steps = self.block_steps() as u64;
        let shard = s
            .manifest
            .shards
            .iter()
            .map(|r| r.steps as u64)
            .max()
            .unwrap_or(0);
        let batch = (batch_size * self.sample_shape().len()) as u64 * 4;
        let samples = ((s.train.len() + s.validation.len() + s.test.len())
            * std::mem::size_of::<Sample>()) as u64;
        (block_steps + shard) * row * 2 + batch * (self.prefetch as u64 + 2) + samples
    }

    /// Checks that model, optimizer and data together fit `budget` bytes.
    pub fn check_budget(
        &self,
        spec: &ModelSpec,
        batch_size: usize,
        budget: u64,
    ) -> Result<(), TrainError> {
        let host = self.host_bytes(batch_size);
        let model = check_memory_budget(spec, batch_size, budget.saturating_sub(host)).map_err(
            |e| match e {
                TrainError::MemoryBudget { needed, detail, .. } => TrainError::MemoryBudget {
                    needed: needed + host,
                    budget,
                    detail: format!(
                        "{detail}, plus {host} for the shuffle block of {} samples and {} \
                         prefetched batches (training.shuffle_buffer, training.prefetch_batches)",
                        self.shuffle_buffer, self.prefetch
                    ),
                },
                other => other,
            },
        )?;
        tracing::debug!(
            model = model.total(),
            host,
            budget,
            "training memory estimate"
        );
        Ok(())
    }

    /// Widest step span of one block of the training split.
    fn block_steps(&self) -> usize {
        let s = &self.shared;
        s.train
            .chunks(self.shuffle_buffer)
            .chain(s.validation.chunks(self.shuffle_buffer))
            .chain(s.test.chunks(self.shuffle_buffer))
            .map(|b| b[b.len() - 1].end + 1 - b[0].end + s.window)
            .max()
            .unwrap_or(0)
    }
}

impl BatchSource for StoreSource {
    fn sample_shape(&self) -> SampleShape {
        self.shared.layout.sample_shape(self.shared.window)
    }

    fn len(&self, split: Split) -> usize {
        match split {
            Split::Train => self.shared.train.len(),
            Split::Validation => self.shared.validation.len(),
            Split::Test => self.shared.test.len(),
        }
    }

    fn batches(
        &mut self,
        split: Split,
        epoch: u32,
        seed: u64,
        batch_size: usize,
    ) -> Result<BatchIter<'_>, TrainError> {
        let shared = Arc::clone(&self.shared);
        let samples = match split {
            Split::Train => &shared.train,
            Split::Validation => &shared.validation,
            Split::Test => &shared.test,
        };
        let mut blocks: Vec<(usize, usize)> = (0..samples.len())
            .step_by(self.shuffle_buffer)
            .map(|a| (a, (a + self.shuffle_buffer).min(samples.len())))
            .collect();
        let mut rng = epoch_rng(seed, epoch, "store-shuffle");
        if split == Split::Train {
            rng.shuffle(&mut blocks);
        }
        let iter = Batches {
            shared: Arc::clone(&shared),
            split,
            blocks: blocks.into_iter(),
            rng,
            batch_size: batch_size.max(1),
            block: None,
        };
        Ok(prefetch(iter, self.prefetch))
    }
}

/// Rows of one block in memory and its samples in visiting order.
struct Block {
    first_step: usize,
    rows: Vec<f32>,
    order: Vec<Sample>,
    next: usize,
}

struct Batches {
    shared: Arc<Shared>,
    split: Split,
    blocks: std::vec::IntoIter<(usize, usize)>,
    rng: Rng,
    batch_size: usize,
    block: Option<Block>,
}

impl Batches {
    /// Reads the rows of steps `first..=last` from the shards that hold them.
    fn read_steps(&self, first: usize, last: usize) -> Result<Vec<f32>, TrainError> {
        let s = &self.shared;
        let n = s.layout.columns;
        let mut rows = Vec::with_capacity((last + 1 - first) * n);
        for shard in &s.manifest.shards {
            let (a, b) = (shard.first_step, shard.first_step + shard.steps);
            if b <= first || a > last {
                continue;
            }
            let data = read_rows_f32(&s.dir.join(&shard.file), n, Some(&shard.sha256))
                .map_err(source_err)?;
            let (from, to) = (first.max(a) - a, (last + 1).min(b) - a);
            rows.extend_from_slice(&data[from * n..to * n]);
        }
        if rows.len() != (last + 1 - first) * n {
            return Err(TrainError::Batch(format!(
                "{}: the row shards do not cover steps {first}..={last}",
                s.dir.display()
            )));
        }
        Ok(rows)
    }

    fn load_block(&mut self, (a, b): (usize, usize)) -> Result<Block, TrainError> {
        let samples = match self.split {
            Split::Train => &self.shared.train[a..b],
            Split::Validation => &self.shared.validation[a..b],
            Split::Test => &self.shared.test[a..b],
        };
        let first_step = samples[0].end + 1 - self.shared.window;
        let rows = self.read_steps(first_step, samples[samples.len() - 1].end)?;
        let mut order = samples.to_vec();
        if self.split == Split::Train {
            self.rng.shuffle(&mut order);
        }
        Ok(Block {
            first_step,
            rows,
            order,
            next: 0,
        })
    }
}

impl Iterator for Batches {
    type Item = Result<Batch, TrainError>;

    fn next(&mut self) -> Option<Self::Item> {
        let layout = self.shared.layout;
        let window = self.shared.window;
        let per = layout.sample_shape(window).len();
        let mut batch = Batch {
            x: Vec::with_capacity(self.batch_size * per),
            y: Vec::with_capacity(self.batch_size),
            weights: Vec::with_capacity(self.batch_size),
        };
        // A batch may take samples from two consecutive blocks.
        while batch.len() < self.batch_size {
            if self.block.as_ref().is_none_or(|b| b.next == b.order.len()) {
                let Some(range) = self.blocks.next() else {
                    break;
                };
                match self.load_block(range) {
                    Ok(b) => self.block = Some(b),
                    Err(e) => {
                        self.blocks = Vec::new().into_iter();
                        return Some(Err(e));
                    }
                }
                continue;
            }
            let block = self.block.as_mut().expect("block loaded above");
            let take = (self.batch_size - batch.len()).min(block.order.len() - block.next);
            for s in &block.order[block.next..block.next + take] {
                layout.push_window(&block.rows, s.end - block.first_step, window, &mut batch.x);
                batch.y.push(s.label);
                batch.weights.push(s.weight);
            }
            block.next += take;
        }
        (!batch.is_empty()).then_some(Ok(batch))
    }
}
