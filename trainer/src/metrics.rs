//! The training loss and accuracy accumulated between checkpoints; the
//! table they go into is `common::artifacts::tables::metrics`.

use serde::{Deserialize, Serialize};

/// Training loss and accuracy accumulated between two checkpoints.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RunningMean {
    pub loss_sum: f64,
    pub batches: u64,
    pub correct: u64,
    pub images: u64,
}

impl RunningMean {
    pub fn add(&mut self, loss: f64, correct: usize, images: usize) {
        self.loss_sum += loss;
        self.batches += 1;
        self.correct += correct as u64;
        self.images += images as u64;
    }

    /// Mean loss and accuracy, then a fresh start.
    pub fn take(&mut self) -> (f64, f64) {
        let means = (self.loss_sum / self.batches.max(1) as f64, self.correct as f64 / self.images.max(1) as f64);
        *self = Self::default();
        means
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn running_mean_averages_and_resets() {
        let mut r = RunningMean::default();
        r.add(1.0, 3, 4);
        r.add(2.0, 1, 4);
        assert_eq!(r.take(), (1.5, 0.5));
        assert_eq!(r, RunningMean::default());
    }
}
