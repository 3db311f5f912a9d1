//! A small tabular classification data set: read from CSV, split into
//! train and eval with a seeded shuffle, standardized with the train
//! split's statistics, and sharded by rank.
//!
//! The CSV is scikit-learn's layout: a header `n_samples,n_features,
//! class names...`, then one row per sample, features then the class index.

use std::path::Path;

use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;

/// Features a data set may have.
const MAX_FEATURES: usize = 1 << 20;

/// Features and labels.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Split {
    /// One row of features per sample.
    pub x: Vec<Vec<f64>>,
    /// The class of each sample.
    pub y: Vec<usize>,
}

impl Split {
    /// Samples in the split.
    pub fn len(&self) -> usize {
        self.y.len()
    }

    /// Every `world_size`-th sample from `rank`: this rank's shard.
    pub fn shard(&self, rank: usize, world_size: usize) -> Split {
        let pick = |i: &usize| i % world_size == rank;
        Split {
            x: (0..self.len())
                .filter(pick)
                .map(|i| self.x[i].clone())
                .collect(),
            y: (0..self.len()).filter(pick).map(|i| self.y[i]).collect(),
        }
    }
}

/// A data set ready to train on.
#[derive(Debug, Clone, PartialEq)]
pub struct Dataset {
    /// Training samples.
    pub train: Split,
    /// Held-out samples for evaluation.
    pub eval: Split,
    /// Feature count.
    pub features: usize,
    /// Class names, in index order.
    pub classes: Vec<String>,
}

impl Dataset {
    /// Reads the CSV at `path` (a regular file of at most 256 MiB), holds
    /// out `eval_fraction` of it, and standardizes the features.
    #[cfg(test)]
    pub fn load(path: &Path, eval_fraction: f64, seed: u64) -> Result<Self, String> {
        let bytes = wasmhooks::files::read_regular(path, 256 << 20)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        Self::parse(&bytes, path, eval_fraction, seed)
    }

    /// Parses CSV text read from `path` (named in messages), holds out
    /// `eval_fraction` of it, and standardizes the features.
    pub fn parse(bytes: &[u8], path: &Path, eval_fraction: f64, seed: u64) -> Result<Self, String> {
        let mut reader = csv::ReaderBuilder::new()
            .has_headers(false)
            .flexible(true)
            .from_reader(bytes);
        let mut records = reader.records();
        let header = records
            .next()
            .ok_or_else(|| format!("{}: empty", path.display()))?
            .map_err(|e| format!("{}: {e}", path.display()))?;
        let features: usize = header
            .get(1)
            .and_then(|f| f.trim().parse().ok())
            .ok_or_else(|| {
                format!(
                    "{}: header must be `n_samples,n_features,classes...`",
                    path.display()
                )
            })?;
        if features > MAX_FEATURES {
            return Err(format!(
                "{}: {features} features; at most {MAX_FEATURES}",
                path.display()
            ));
        }
        let classes: Vec<String> = header.iter().skip(2).map(str::to_owned).collect();
        let mut all = Split::default();
        for (line, record) in records.enumerate() {
            let record = record.map_err(|e| format!("{}: {e}", path.display()))?;
            let bad = || {
                format!(
                    "{}: row {}: expected {features} numbers and a class",
                    path.display(),
                    line + 2
                )
            };
            if record.len() != features + 1 {
                return Err(bad());
            }
            let x = record
                .iter()
                .take(features)
                .map(|v| v.trim().parse::<f64>())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|_| bad())?;
            let y: usize = record[features].trim().parse().map_err(|_| bad())?;
            if y >= classes.len() {
                return Err(format!(
                    "{}: row {}: class {y} has no name",
                    path.display(),
                    line + 2
                ));
            }
            all.x.push(x);
            all.y.push(y);
        }
        if all.len() < 2 {
            return Err(format!("{}: needs at least two samples", path.display()));
        }
        let mut order: Vec<usize> = (0..all.len()).collect();
        order.shuffle(&mut StdRng::seed_from_u64(seed));
        let held = ((all.len() as f64 * eval_fraction).round() as usize).clamp(1, all.len() - 1);
        let take = |idx: &[usize]| Split {
            x: idx.iter().map(|&i| all.x[i].clone()).collect(),
            y: idx.iter().map(|&i| all.y[i]).collect(),
        };
        let mut data = Dataset {
            eval: take(&order[..held]),
            train: take(&order[held..]),
            features,
            classes,
        };
        data.standardize();
        Ok(data)
    }

    /// Scales each feature to zero mean and unit variance over the train
    /// split, and applies the same scaling to the eval split.
    fn standardize(&mut self) {
        let n = self.train.len() as f64;
        for f in 0..self.features {
            let mean = self.train.x.iter().map(|r| r[f]).sum::<f64>() / n;
            let var = self
                .train
                .x
                .iter()
                .map(|r| (r[f] - mean).powi(2))
                .sum::<f64>()
                / n;
            let std = var.sqrt().max(1e-12);
            for row in self.train.x.iter_mut().chain(self.eval.x.iter_mut()) {
                row[f] = (row[f] - mean) / std;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn iris() -> Dataset {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/job/data/iris.csv");
        Dataset::load(&path, 0.2, 7).unwrap()
    }

    #[test]
    fn loads_splits_and_standardizes_iris() {
        let data = iris();
        assert_eq!((data.train.len(), data.eval.len()), (120, 30));
        assert_eq!(data.features, 4);
        assert_eq!(data.classes, ["setosa", "versicolor", "virginica"]);
        let mean0 = data.train.x.iter().map(|r| r[0]).sum::<f64>() / 120.0;
        assert!(mean0.abs() < 1e-9);
        assert_eq!(iris(), data, "the split is reproducible from the seed");
    }

    #[test]
    fn shards_cover_the_split_once() {
        let data = iris();
        let a = data.train.shard(0, 2);
        let b = data.train.shard(1, 2);
        assert_eq!(a.len() + b.len(), data.train.len());
        assert_eq!(a.x[0], data.train.x[0]);
        assert_eq!(b.x[0], data.train.x[1]);
    }

    #[test]
    fn bad_rows_name_the_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.csv");
        std::fs::write(&path, "2,2,a,b\n1,2,0\n1,x,1\n").unwrap();
        let err = Dataset::load(&path, 0.5, 1).unwrap_err();
        assert!(err.contains("row 3"), "{err}");
    }
}
