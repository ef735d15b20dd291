//! Occlusion (Zeiler and Fergus, 2014), as Captum's `Occlusion`: a
//! `window x window` patch of every channel is set to the baseline at
//! positions `stride` apart, and each pixel's attribution is the mean, over
//! the patches that cover it, of how much the explained logit fell
//! (`f(x) - f(x occluded)`). Pixels no patch covers get 0. The window
//! covers every channel, so the map is the per-pixel value (not a sum over
//! channels).

use engine::{Model, Region, Span, Variant};
use rayon::prelude::*;

use crate::error::ExplainError;

/// Occluded copies run forward in one pass: bounds the memory of a pass.
const INPUTS_PER_PASS: usize = 512;

/// Occlusion's settings, resolved against the data set's normalisation.
#[derive(Clone, Debug, PartialEq)]
pub struct Occlusion {
    pub window: usize,
    pub stride: usize,
    /// The occluding value per input channel (normalised).
    pub baseline: Vec<f32>,
}

impl Occlusion {
    /// The window's top-left corners along an axis of `size` pixels.
    fn corners(&self, size: usize) -> Vec<usize> {
        (0..=size - self.window).step_by(self.stride).collect()
    }

    /// The maps (N·H·W) of the images `x` for `targets`; `logits` are the
    /// model's logits for `x`.
    pub fn maps(&self, model: &Model, x: &[f32], logits: &[f32], targets: &[usize]) -> Result<Vec<f32>, ExplainError> {
        let shape = model.input;
        let (channels, height, width) = (shape.channels, shape.height, shape.width);
        if self.window == 0 || self.stride == 0 || self.window > height.min(width) {
            return Err(ExplainError::Shape(format!(
                "occlusion window {} with stride {} does not fit {height}x{width} images",
                self.window, self.stride
            )));
        }
        if self.baseline.len() != channels {
            return Err(ExplainError::Shape(format!(
                "an occlusion baseline of {} channel(s) for {channels}",
                self.baseline.len()
            )));
        }
        let (len, plane) = (shape.len(), height * width);
        let images = x.len() / len;
        let corners: Vec<(usize, usize)> =
            self.corners(height).into_iter().flat_map(|y| self.corners(width).into_iter().map(move |x| (y, x))).collect();
        // How many windows cover each pixel (the same for every image).
        let mut cover = vec![0u32; plane];
        for &(y0, x0) in &corners {
            for y in y0..y0 + self.window {
                cover[y * width + x0..][..self.window].iter_mut().for_each(|c| *c += 1);
            }
        }
        let mut maps = vec![0.0f32; images * plane];
        let per_pass = (INPUTS_PER_PASS / corners.len()).max(1);
        for first in (0..images).step_by(per_pass) {
            let count = per_pass.min(images - first);
            let mut occluded = Vec::with_capacity(count * corners.len() * len);
            let mut changes = Vec::with_capacity(count * corners.len());
            for image in first..first + count {
                let original = &x[image * len..][..len];
                for &(y0, x0) in &corners {
                    let start = occluded.len();
                    occluded.extend_from_slice(original);
                    let copy = &mut occluded[start..];
                    for (c, &value) in self.baseline.iter().enumerate() {
                        for y in y0..y0 + self.window {
                            copy[c * plane + y * width + x0..][..self.window].fill(value);
                        }
                    }
                    let span = |start| Span { start, end: start + self.window };
                    changes.push(Variant { base: image - first, region: Region { rows: span(y0), cols: span(x0) } });
                }
            }
            // The same logits as `model.forward(&occluded)`, recomputing only
            // what each window changes where that is a small part of a plane.
            let originals = &x[first * len..][..count * len];
            let occluded_logits =
                model.forward_variants(originals, &occluded, &changes).map_err(|e| ExplainError::Shape(e.to_string()))?;
            let classes = model.classes;
            maps[first * plane..][..count * plane].par_chunks_mut(plane).enumerate().for_each(|(i, map)| {
                let image = first + i;
                let target = targets[image];
                let unoccluded = logits[image * classes + target];
                for (k, &(y0, x0)) in corners.iter().enumerate() {
                    let drop = unoccluded - occluded_logits[(i * corners.len() + k) * classes + target];
                    for y in y0..y0 + self.window {
                        map[y * width + x0..][..self.window].iter_mut().for_each(|m| *m += drop);
                    }
                }
                map.iter_mut().zip(&cover).for_each(|(m, &c)| {
                    if c > 0 {
                        *m /= c as f32
                    }
                });
            });
        }
        Ok(maps)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::dense_model;
    use common::image::ImageShape;

    /// A linear model on 1x4x4 images: the logit is `Σ w_i x_i`, so
    /// occluding a window with 0 drops the logit by the window's `Σ w_i x_i`.
    fn linear(weights: Vec<f32>) -> Model {
        dense_model(ImageShape { channels: 1, height: 4, width: 4 }, &[("fc", 1, weights)])
    }

    #[test]
    fn disjoint_windows_give_each_pixel_its_windows_drop() {
        let weights: Vec<f32> = (0..16).map(|i| i as f32 - 7.0).collect();
        let model = linear(weights.clone());
        let x: Vec<f32> = (0..16).map(|i| (i % 3) as f32).collect();
        let logits = model.forward(&x).unwrap();
        let occlusion = Occlusion { window: 2, stride: 2, baseline: vec![0.0] };
        let map = occlusion.maps(&model, &x, &logits, &[0]).unwrap();
        for (wy, wx) in [(0, 0), (0, 2), (2, 0), (2, 2)] {
            let pixels = [(wy, wx), (wy, wx + 1), (wy + 1, wx), (wy + 1, wx + 1)];
            let drop: f32 = pixels.iter().map(|&(y, x0)| weights[y * 4 + x0] * x[y * 4 + x0]).sum();
            for (y, x0) in pixels {
                assert!((map[y * 4 + x0] - drop).abs() < 1e-5, "pixel ({y}, {x0}): {} vs {drop}", map[y * 4 + x0]);
            }
        }
    }

    /// Overlapping windows (3x3, stride 1, on 4x4: four windows) average
    /// the drops of the windows over each pixel; a baseline of 1 on a model
    /// whose logit sums the pixels drops it by `Σ (x - 1)` over the window.
    #[test]
    fn overlapping_windows_average_their_drops() {
        let model = linear(vec![1.0; 16]);
        let x: Vec<f32> = (0..16).map(|i| i as f32 / 4.0).collect();
        let logits = model.forward(&x).unwrap();
        let occlusion = Occlusion { window: 3, stride: 1, baseline: vec![1.0] };
        let map = occlusion.maps(&model, &x, &logits, &[0]).unwrap();
        let drop = |y0: usize, x0: usize| -> f32 {
            (y0..y0 + 3).flat_map(|y| (x0..x0 + 3).map(move |c| (y, c))).map(|(y, c)| x[y * 4 + c] - 1.0).sum()
        };
        let windows = [(0, 0), (0, 1), (1, 0), (1, 1)];
        for y in 0..4 {
            for c in 0..4 {
                let covering: Vec<f32> = windows
                    .iter()
                    .filter(|&&(y0, x0)| (y0..y0 + 3).contains(&y) && (x0..x0 + 3).contains(&c))
                    .map(|&(y0, x0)| drop(y0, x0))
                    .collect();
                let expected = covering.iter().sum::<f32>() / covering.len() as f32;
                assert!((map[y * 4 + c] - expected).abs() < 1e-5, "pixel ({y}, {c})");
            }
        }
    }

    #[test]
    fn a_window_larger_than_the_image_is_an_error() {
        let model = linear(vec![1.0; 16]);
        let occlusion = Occlusion { window: 5, stride: 1, baseline: vec![0.0] };
        let err = occlusion.maps(&model, &[0.0; 16], &[0.0], &[0]).unwrap_err().to_string();
        assert!(err.contains("window 5") && err.contains("4x4"), "{err}");
    }
}
