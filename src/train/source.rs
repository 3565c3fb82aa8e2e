//! Where batches come from: the trait the `train` stage implements over the preprocessed
//! store, and an in-memory implementation (tests, small data).

use super::TrainError;
use crate::model::Rng;
use crate::store::SampleShape;

/// One batch, host-side.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    /// `[batch, assets, T, features]` row-major.
    pub x: Vec<f32>,
    /// Class index per sample.
    pub y: Vec<u32>,
    /// Per-sample weight (time weighting); 1.0 when unused. Multiplies the class weight.
    pub weights: Vec<f32>,
}

impl Batch {
    /// Samples in the batch.
    pub fn len(&self) -> usize {
        self.y.len()
    }

    /// Whether the batch is empty.
    pub fn is_empty(&self) -> bool {
        self.y.is_empty()
    }

    /// Check lengths against the sample shape.
    pub fn validate(&self, shape: SampleShape) -> Result<(), TrainError> {
        let n = self.y.len();
        if n == 0 {
            return Err(TrainError::Batch("empty batch".into()));
        }
        if self.x.len() != n * shape.len() {
            return Err(TrainError::Batch(format!(
                "x has {} values; {n} samples of {shape} need {}",
                self.x.len(),
                n * shape.len()
            )));
        }
        if self.weights.len() != n {
            return Err(TrainError::Batch(format!(
                "{} weights for {n} samples",
                self.weights.len()
            )));
        }
        Ok(())
    }
}

/// A split of the samples.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Split {
    /// Shuffled per epoch.
    Train,
    /// In order.
    Validation,
    /// In order; only for evaluation (an in-memory source has none).
    Test,
}

/// Iterator of batches handed out by a source for one pass.
pub type BatchIter<'a> = Box<dyn Iterator<Item = Result<Batch, TrainError>> + 'a>;

/// A source of batches. Implementations stream from disk, shuffle the training split within a
/// bounded buffer and may prefetch on a background thread.
///
/// Contract for reproducibility and resume: the batches of `(Split::Train, epoch, seed)` depend
/// only on those arguments (and the data), never on earlier calls; validation order is fixed.
pub trait BatchSource {
    /// Shape of one sample.
    fn sample_shape(&self) -> SampleShape;
    /// Samples in a split (for progress and ETA).
    fn len(&self, split: Split) -> usize;
    /// One pass over `split` in batches of at most `batch_size`. `epoch` is 1-based.
    fn batches(
        &mut self,
        split: Split,
        epoch: u32,
        seed: u64,
        batch_size: usize,
    ) -> Result<BatchIter<'_>, TrainError>;
}

/// The shuffling RNG of `epoch` (1-based): a function of `(seed, epoch)` alone, so a resumed
/// run draws what an uninterrupted one would. `stream` separates the sources' uses.
pub fn epoch_rng(seed: u64, epoch: u32, stream: &str) -> Rng {
    Rng::new(seed ^ u64::from(epoch).rotate_left(32), stream)
}

/// Run a batch iterator on a background thread, keeping up to `depth` batches ready
/// (`training.prefetch_batches`), so reading and slicing overlap the training step. Errors
/// are passed through in order; the thread stops when the returned iterator is dropped.
pub fn prefetch<I>(iter: I, depth: usize) -> BatchIter<'static>
where
    I: Iterator<Item = Result<Batch, TrainError>> + Send + 'static,
{
    let (tx, rx) = std::sync::mpsc::sync_channel(depth.max(1));
    std::thread::spawn(move || {
        for item in iter {
            // The receiver is gone: training stopped, nothing left to do.
            if tx.send(item).is_err() {
                break;
            }
        }
    });
    Box::new(rx.into_iter())
}

/// Samples held in memory; the training split is fully shuffled each epoch.
#[derive(Debug, Clone)]
pub struct InMemorySource {
    shape: SampleShape,
    train: (Vec<f32>, Vec<u32>, Vec<f32>),
    validation: (Vec<f32>, Vec<u32>, Vec<f32>),
}

fn check_split(
    name: &str,
    shape: SampleShape,
    (x, y, w): &(Vec<f32>, Vec<u32>, Vec<f32>),
) -> Result<(), TrainError> {
    if x.len() != y.len() * shape.len() || w.len() != y.len() {
        return Err(TrainError::Batch(format!(
            "{name} split: {} values, {} labels, {} weights do not match samples of {shape}",
            x.len(),
            y.len(),
            w.len()
        )));
    }
    Ok(())
}

impl InMemorySource {
    /// Wrap `(x, y, weights)` for the training and validation splits.
    pub fn new(
        shape: SampleShape,
        train: (Vec<f32>, Vec<u32>, Vec<f32>),
        validation: (Vec<f32>, Vec<u32>, Vec<f32>),
    ) -> Result<Self, TrainError> {
        check_split("training", shape, &train)?;
        check_split("validation", shape, &validation)?;
        Ok(Self {
            shape,
            train,
            validation,
        })
    }
}

impl BatchSource for InMemorySource {
    fn sample_shape(&self) -> SampleShape {
        self.shape
    }

    fn len(&self, split: Split) -> usize {
        match split {
            Split::Train => self.train.1.len(),
            Split::Validation => self.validation.1.len(),
            Split::Test => 0,
        }
    }

    fn batches(
        &mut self,
        split: Split,
        epoch: u32,
        seed: u64,
        batch_size: usize,
    ) -> Result<BatchIter<'_>, TrainError> {
        let (data, order) = match split {
            Split::Train => {
                let mut order: Vec<usize> = (0..self.train.1.len()).collect();
                epoch_rng(seed, epoch, "shuffle").shuffle(&mut order);
                (&self.train, order)
            }
            Split::Validation => (&self.validation, (0..self.validation.1.len()).collect()),
            Split::Test => (&self.validation, Vec::new()),
        };
        let per = self.shape.len();
        let batch_size = batch_size.max(1);
        let iter = (0..order.len().div_ceil(batch_size)).map(move |i| {
            let idx = &order[i * batch_size..((i + 1) * batch_size).min(order.len())];
            let mut x = Vec::with_capacity(idx.len() * per);
            for &j in idx {
                x.extend_from_slice(&data.0[j * per..(j + 1) * per]);
            }
            Ok(Batch {
                x,
                y: idx.iter().map(|&j| data.1[j]).collect(),
                weights: idx.iter().map(|&j| data.2[j]).collect(),
            })
        });
        Ok(Box::new(iter))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(i: u32) -> Result<Batch, TrainError> {
        Ok(Batch {
            x: vec![i as f32],
            y: vec![i],
            weights: vec![1.0],
        })
    }

    #[test]
    fn prefetch_keeps_order_and_passes_errors_through() {
        let items = vec![
            batch(0),
            batch(1),
            Err(TrainError::Batch("bad row".into())),
            batch(3),
        ];
        let got: Vec<_> = prefetch(items.into_iter(), 2).collect();
        assert_eq!(got.len(), 4);
        assert_eq!(got[1].as_ref().unwrap().y, vec![1]);
        assert!(got[2].as_ref().unwrap_err().to_string().contains("bad row"));
        assert_eq!(got[3].as_ref().unwrap().y, vec![3]);
    }

    #[test]
    fn prefetch_stops_when_dropped_early() {
        let endless = (0..).map(batch);
        let first: Vec<_> = prefetch(endless, 3).take(5).collect();
        assert_eq!(first.len(), 5);
    }

    #[test]
    fn in_memory_source_shuffles_by_epoch_and_seed_only() {
        let shape = SampleShape {
            assets: 1,
            time_steps: 1,
            features: 1,
        };
        let n = 10;
        let data = (
            (0..n).map(|i| i as f32).collect(),
            (0..n).collect(),
            vec![1.0; n as usize],
        );
        let mut s = InMemorySource::new(shape, data, (vec![], vec![], vec![])).unwrap();
        let order = |s: &mut InMemorySource, epoch| -> Vec<u32> {
            s.batches(Split::Train, epoch, 9, 4)
                .unwrap()
                .flat_map(|b| b.unwrap().y)
                .collect()
        };
        let e1 = order(&mut s, 1);
        assert_eq!(e1, order(&mut s, 1));
        assert_ne!(e1, order(&mut s, 2));
        let mut sorted = e1.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..n).collect::<Vec<_>>());
        let sizes: Vec<usize> = s
            .batches(Split::Train, 1, 9, 4)
            .unwrap()
            .map(|b| b.unwrap().len())
            .collect();
        assert_eq!(sizes, vec![4, 4, 2]);
    }
}
