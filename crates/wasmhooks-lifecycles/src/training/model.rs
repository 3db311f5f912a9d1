//! A small multilayer perceptron (one tanh hidden layer, softmax output)
//! with cross-entropy loss, its gradients by backpropagation, and SGD with
//! momentum. Parameters live in one flat vector, so ranks can average
//! gradients and checkpoints can store them as they are.

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use serde::{Deserialize, Serialize};

/// Parameters of a model with these layer sizes, if the count fits.
pub fn param_count(inputs: usize, hidden: usize, classes: usize) -> Option<usize> {
    hidden
        .checked_mul(inputs)?
        .checked_add(hidden)?
        .checked_add(classes.checked_mul(hidden)?)?
        .checked_add(classes)
}

/// Layer sizes and parameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Mlp {
    /// Inputs.
    pub inputs: usize,
    /// Hidden units.
    pub hidden: usize,
    /// Classes.
    pub classes: usize,
    /// `w1 (hidden x inputs) | b1 (hidden) | w2 (classes x hidden) | b2 (classes)`.
    pub params: Vec<f64>,
}

impl Mlp {
    /// Xavier-initialized weights, zero biases.
    pub fn new(inputs: usize, hidden: usize, classes: usize, seed: u64) -> Self {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut params = vec![0.0; hidden * inputs + hidden + classes * hidden + classes];
        let s1 = (6.0 / (inputs + hidden) as f64).sqrt();
        let s2 = (6.0 / (hidden + classes) as f64).sqrt();
        for (i, p) in params.iter_mut().enumerate() {
            let scale = if i < hidden * inputs {
                s1
            } else if (hidden * inputs + hidden..hidden * inputs + hidden + classes * hidden)
                .contains(&i)
            {
                s2
            } else {
                continue;
            };
            *p = rng.random_range(-scale..scale);
        }
        Mlp {
            inputs,
            hidden,
            classes,
            params,
        }
    }

    fn offsets(&self) -> (usize, usize, usize) {
        let b1 = self.hidden * self.inputs;
        let w2 = b1 + self.hidden;
        let b2 = w2 + self.classes * self.hidden;
        (b1, w2, b2)
    }

    /// Hidden activations and class probabilities for one sample.
    fn forward(&self, x: &[f64]) -> (Vec<f64>, Vec<f64>) {
        let (b1, w2, b2) = self.offsets();
        let p = &self.params;
        let h: Vec<f64> = (0..self.hidden)
            .map(|j| {
                let z: f64 = (0..self.inputs)
                    .map(|i| p[j * self.inputs + i] * x[i])
                    .sum();
                (z + p[b1 + j]).tanh()
            })
            .collect();
        let logits: Vec<f64> = (0..self.classes)
            .map(|k| {
                (0..self.hidden)
                    .map(|j| p[w2 + k * self.hidden + j] * h[j])
                    .sum::<f64>()
                    + p[b2 + k]
            })
            .collect();
        (h, softmax(&logits))
    }

    /// Mean cross-entropy over the batch and its gradient.
    pub fn loss_and_grad(&self, xs: &[Vec<f64>], ys: &[usize]) -> (f64, Vec<f64>) {
        let (b1, w2, b2) = self.offsets();
        let mut grad = vec![0.0; self.params.len()];
        let mut loss = 0.0;
        let n = xs.len().max(1) as f64;
        for (x, &y) in xs.iter().zip(ys) {
            let (h, probs) = self.forward(x);
            loss -= probs[y].max(1e-300).ln();
            // d loss / d logits = probs - onehot(y)
            let dlogits: Vec<f64> = (0..self.classes)
                .map(|k| probs[k] - if k == y { 1.0 } else { 0.0 })
                .collect();
            let mut dh = vec![0.0; self.hidden];
            for k in 0..self.classes {
                grad[b2 + k] += dlogits[k] / n;
                for j in 0..self.hidden {
                    grad[w2 + k * self.hidden + j] += dlogits[k] * h[j] / n;
                    dh[j] += dlogits[k] * self.params[w2 + k * self.hidden + j];
                }
            }
            for j in 0..self.hidden {
                let dz = dh[j] * (1.0 - h[j] * h[j]);
                grad[b1 + j] += dz / n;
                for i in 0..self.inputs {
                    grad[j * self.inputs + i] += dz * x[i] / n;
                }
            }
        }
        (loss / n, grad)
    }

    /// Mean loss and accuracy on a split.
    pub fn evaluate(&self, xs: &[Vec<f64>], ys: &[usize]) -> (f64, f64) {
        let mut loss = 0.0;
        let mut correct = 0usize;
        for (x, &y) in xs.iter().zip(ys) {
            let (_, probs) = self.forward(x);
            loss -= probs[y].max(1e-300).ln();
            let best = (0..self.classes)
                .max_by(|&a, &b| probs[a].total_cmp(&probs[b]))
                .unwrap_or(0);
            correct += usize::from(best == y);
        }
        let n = xs.len().max(1) as f64;
        (loss / n, correct as f64 / n)
    }
}

fn softmax(logits: &[f64]) -> Vec<f64> {
    let max = logits.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let exp: Vec<f64> = logits.iter().map(|l| (l - max).exp()).collect();
    let sum: f64 = exp.iter().sum();
    exp.into_iter().map(|e| e / sum).collect()
}

/// Stochastic gradient descent with momentum.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sgd {
    /// Step size.
    pub learning_rate: f64,
    /// Momentum coefficient.
    pub momentum: f64,
    /// The running update.
    pub velocity: Vec<f64>,
}

impl Sgd {
    /// An optimizer for `n` parameters.
    pub fn new(n: usize, learning_rate: f64, momentum: f64) -> Self {
        Sgd {
            learning_rate,
            momentum,
            velocity: vec![0.0; n],
        }
    }

    /// Applies one update; returns the gradient's L2 norm.
    pub fn step(&mut self, params: &mut [f64], grad: &[f64]) -> f64 {
        for ((p, v), g) in params.iter_mut().zip(&mut self.velocity).zip(grad) {
            *v = self.momentum * *v - self.learning_rate * g;
            *p += *v;
        }
        grad.iter().map(|g| g * g).sum::<f64>().sqrt()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gradients_match_finite_differences() {
        let model = Mlp::new(3, 4, 3, 1);
        let xs = vec![vec![0.5, -1.0, 2.0], vec![-0.3, 0.8, 0.1]];
        let ys = vec![2, 0];
        let (_, grad) = model.loss_and_grad(&xs, &ys);
        for i in (0..model.params.len()).step_by(3) {
            let eps = 1e-6;
            let mut plus = model.clone();
            plus.params[i] += eps;
            let mut minus = model.clone();
            minus.params[i] -= eps;
            let numeric =
                (plus.loss_and_grad(&xs, &ys).0 - minus.loss_and_grad(&xs, &ys).0) / (2.0 * eps);
            assert!(
                (numeric - grad[i]).abs() < 1e-6,
                "param {i}: {numeric} vs {}",
                grad[i]
            );
        }
    }

    #[test]
    fn sgd_lowers_the_loss() {
        let mut model = Mlp::new(2, 8, 2, 3);
        let xs = vec![
            vec![1.0, 1.0],
            vec![-1.0, -1.0],
            vec![1.0, -1.0],
            vec![-1.0, 1.0],
        ];
        let ys = vec![0, 0, 1, 1];
        let mut sgd = Sgd::new(model.params.len(), 0.5, 0.9);
        let first = model.loss_and_grad(&xs, &ys).0;
        for _ in 0..300 {
            let (_, g) = model.loss_and_grad(&xs, &ys);
            sgd.step(&mut model.params, &g);
        }
        let (last, accuracy) = model.evaluate(&xs, &ys);
        assert!(last < first / 10.0, "{first} -> {last}");
        assert_eq!(accuracy, 1.0, "it learns XOR");
    }
}
