//! Adam with PyTorch's update rule (`torch.optim.Adam`, no weight decay).
//!
//! Ours rather than dfdx's `Adam`: resuming a killed run must restore the
//! moment estimates exactly, and dfdx keeps them private.

use rayon::prelude::*;

/// Values per parallel job of an update.
const CHUNK: usize = 1 << 15;

/// Optimizer state for a list of parameter buffers.
#[derive(Clone, Debug, PartialEq)]
pub struct Adam {
    pub learning_rate: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub epsilon: f64,
    /// Updates taken so far.
    pub steps: u64,
    /// First and second moment estimates, one buffer per parameter.
    pub first_moments: Vec<Vec<f32>>,
    pub second_moments: Vec<Vec<f32>>,
}

impl Adam {
    /// PyTorch's defaults (betas 0.9, 0.999; eps 1e-8) for parameters of
    /// these lengths.
    pub fn new(learning_rate: f64, parameter_lengths: &[usize]) -> Self {
        Self {
            learning_rate,
            beta1: 0.9,
            beta2: 0.999,
            epsilon: 1e-8,
            steps: 0,
            first_moments: parameter_lengths.iter().map(|&n| vec![0.0; n]).collect(),
            second_moments: parameter_lengths.iter().map(|&n| vec![0.0; n]).collect(),
        }
    }

    /// One update of every parameter with its gradient.
    pub fn step(&mut self, parameters: Vec<&mut Vec<f32>>, gradients: &[Vec<f32>]) {
        assert_eq!(parameters.len(), gradients.len(), "one gradient per parameter");
        assert_eq!(parameters.len(), self.first_moments.len(), "optimizer built for these parameters");
        self.steps += 1;
        let t = self.steps as i32;
        let step_size = (self.learning_rate / (1.0 - self.beta1.powi(t))) as f32;
        let correction2_sqrt = (1.0 - self.beta2.powi(t)).sqrt() as f32;
        let (b1, b2, eps) = (self.beta1 as f32, self.beta2 as f32, self.epsilon as f32);
        for (((param, grad), m), v) in
            parameters.into_iter().zip(gradients).zip(&mut self.first_moments).zip(&mut self.second_moments)
        {
            assert_eq!(param.len(), grad.len(), "gradient length");
            // Every value is updated alone, so splitting the buffers over
            // threads changes no result.
            param
                .par_chunks_mut(CHUNK)
                .zip(grad.par_chunks(CHUNK))
                .zip(m.par_chunks_mut(CHUNK))
                .zip(v.par_chunks_mut(CHUNK))
                .for_each(|(((param, grad), m), v)| {
                    for (((p, &g), m), v) in param.iter_mut().zip(grad).zip(m.iter_mut()).zip(v.iter_mut()) {
                        *m += (1.0 - b1) * (g - *m);
                        *v = *v * b2 + (1.0 - b2) * g * g;
                        let denom = v.sqrt() / correction2_sqrt + eps;
                        *p -= step_size * *m / denom;
                    }
                });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The first update of Adam moves every parameter by about `lr` against
    /// the sign of its gradient (m̂ / sqrt(v̂) = g / |g|).
    #[test]
    fn first_step_is_lr_times_sign_and_state_accumulates() {
        let mut adam = Adam::new(0.01, &[3]);
        let mut p = vec![1.0f32, 2.0, 3.0];
        adam.step(vec![&mut p], &[vec![0.5, -4.0, 0.0]]);
        assert!((p[0] - 0.99).abs() < 1e-6 && (p[1] - 2.01).abs() < 1e-6 && p[2] == 3.0, "{p:?}");
        assert_eq!(adam.steps, 1);
        assert!((adam.first_moments[0][1] + 0.4).abs() < 1e-6);
        assert!((adam.second_moments[0][1] - 0.016).abs() < 1e-6);
    }

    /// Hand-computed second step with gradients 1 then 2:
    /// m = 0.1 then 0.29, v = 0.001 then 0.004999, corrections 0.19 and 0.001999.
    #[test]
    fn second_step_by_hand() {
        let mut adam = Adam::new(0.1, &[1]);
        let mut p = vec![0.0f32];
        adam.step(vec![&mut p], &[vec![1.0]]);
        adam.step(vec![&mut p], &[vec![2.0]]);
        let m_hat = 0.29 / 0.19;
        let v_hat = 0.004999f64 / 0.001999;
        let expected = -0.1 - 0.1 * m_hat / (v_hat.sqrt() + 1e-8);
        assert!((p[0] as f64 - expected).abs() < 1e-5, "{} vs {expected}", p[0]);
    }
}
