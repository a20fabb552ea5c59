//! Reading a strategy's numeric parameters with defaults and ranges, reporting every problem.

use std::collections::{BTreeMap, BTreeSet};

/// One bad parameter (or, with `param: None`, a problem with the strategy as a whole).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParamProblem {
    pub param: Option<String>,
    pub message: String,
}

/// Reads parameters one by one, remembering which were used and what was wrong.
pub(crate) struct ParamReader<'a> {
    params: &'a BTreeMap<String, f64>,
    used: BTreeSet<&'static str>,
    problems: Vec<ParamProblem>,
}

impl<'a> ParamReader<'a> {
    pub(crate) fn new(params: &'a BTreeMap<String, f64>) -> Self {
        Self { params, used: BTreeSet::new(), problems: Vec::new() }
    }

    /// A whole-number parameter in `min..=max`.
    pub(crate) fn period(&mut self, key: &'static str, default: usize, min: usize, max: usize) -> usize {
        self.used.insert(key);
        let Some(&value) = self.params.get(key) else { return default };
        if value.fract() != 0.0 || value < min as f64 || value > max as f64 {
            self.problem(key, format!("must be a whole number from {min} to {max}, got {value}"));
            return default;
        }
        value as usize
    }

    /// A real parameter in `min..=max`.
    pub(crate) fn real(&mut self, key: &'static str, default: f64, min: f64, max: f64) -> f64 {
        self.used.insert(key);
        let Some(&value) = self.params.get(key) else { return default };
        if !value.is_finite() || value < min || value > max {
            self.problem(key, format!("must be from {min} to {max}, got {value}"));
            return default;
        }
        value
    }

    pub(crate) fn problem(&mut self, key: &'static str, message: String) {
        self.problems.push(ParamProblem { param: Some(key.to_owned()), message });
    }

    /// Reports unknown keys and returns `value` if nothing was wrong.
    pub(crate) fn finish<T>(mut self, strategy: &str, value: T) -> Result<T, Vec<ParamProblem>> {
        let expected: Vec<&str> = self.used.iter().copied().collect();
        for key in self.params.keys() {
            if !self.used.contains(key.as_str()) {
                self.problems.push(ParamProblem {
                    param: Some(key.clone()),
                    message: format!("unknown parameter for {strategy} (expected {})", expected.join(", ")),
                });
            }
        }
        if self.problems.is_empty() { Ok(value) } else { Err(self.problems) }
    }
}
