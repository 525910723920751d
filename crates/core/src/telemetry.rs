//! Telemetry, the pure part: what a device may report ([`Sample`],
//! [`validate_sample`]), how the samples of one time window are summed up
//! ([`Aggregate`], with a mergeable quantile [`Sketch`]), which number an
//! alert rule or an analysis check reads from them ([`Agg`]), and the windows
//! samples are kept in ([`Resolution`], [`DEFAULT_RESOLUTIONS`]).
//!
//! The server keeps one [`Aggregate`] per metric, device and window, stored as
//! JSON; a longer span is read by merging windows ([`Aggregate::merge`]), and a
//! coarser resolution is built the same way from a finer one. Merging is exact
//! for count, min and max, exact up to float rounding for the sum, and keeps
//! the sketch's relative-error guarantee for quantiles.

use crate::validate::is_deceptive;
use crate::Millis;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

/// Longest metric name, characters.
pub const MAX_METRIC_NAME: usize = 200;
/// Longest label name, characters.
pub const MAX_LABEL_NAME: usize = 128;
/// Longest label value, characters.
pub const MAX_LABEL_VALUE: usize = 256;
/// Labels one sample may carry at most. Every label set is a series of its
/// own, so the bound is low.
pub const MAX_SAMPLE_LABELS: usize = 16;
/// Samples one batch (one request of a device) may carry at most.
pub const MAX_BATCH: usize = 10_000;
/// How far a sample's timestamp may lie ahead of the server's clock: 5
/// minutes, for device clocks that run a little fast.
pub const MAX_FUTURE_MS: Millis = 5 * 60 * 1000;
/// How old a sample may be: 7 days, the longest a device buffers samples while
/// offline and the retention of the 1-minute resolution. Older samples would
/// fall into windows already compacted or deleted.
pub const MAX_AGE_MS: Millis = 7 * 24 * 3600 * 1000;

/// One measurement a device reports, e.g.
/// `{"metric":"cpu_temp_celsius","value":61.5,"ts":1700000000000,"labels":{"core":"0"}}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Sample {
    /// A Prometheus-style metric name: `[a-zA-Z_:][a-zA-Z0-9_:]*`, at most 200 characters.
    pub metric: String,
    /// A finite number.
    pub value: f64,
    /// When it was measured, Unix ms; absent means when the server received it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ts: Option<Millis>,
    /// At most 16 labels with Prometheus-style names.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

impl Sample {
    /// The sample's time: its own timestamp, or `received` when it has none.
    pub fn ts_or(&self, received: Millis) -> Millis {
        self.ts.unwrap_or(received)
    }
}

/// A refused sample, naming the field (`value`, `ts`, `labels.core`) and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct SampleError {
    /// The field, as in the JSON (`labels.core`), or `samples[3].value` in a batch.
    pub field: String,
    /// Why, without the field.
    pub message: String,
}

impl SampleError {
    /// An error about `field`.
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        SampleError { field: field.into(), message: message.into() }
    }

    /// The same error for the sample at `index` of a batch: `samples[3].value`.
    pub fn at(self, index: usize) -> Self {
        SampleError { field: format!("samples[{index}].{}", self.field), message: self.message }
    }
}

/// A metric name: `[a-zA-Z_:][a-zA-Z0-9_:]*` (Prometheus's rule), 1 to 200
/// characters. Returns the reason it is refused.
pub fn validate_metric_name(name: &str) -> Result<(), String> {
    let ok_first = |b: u8| b.is_ascii_alphabetic() || b == b'_' || b == b':';
    let ok_rest = |b: u8| ok_first(b) || b.is_ascii_digit();
    let b = name.as_bytes();
    if b.is_empty() || b.len() > MAX_METRIC_NAME {
        return Err(format!("must be 1 to {MAX_METRIC_NAME} characters"));
    }
    if !ok_first(b[0]) || !b[1..].iter().all(|&c| ok_rest(c)) {
        return Err(format!("'{}' must match [a-zA-Z_:][a-zA-Z0-9_:]*", name.escape_debug()));
    }
    Ok(())
}

/// A label name: `[a-zA-Z_][a-zA-Z0-9_]*` (Prometheus's rule), 1 to 128
/// characters, not starting with `__` (reserved, as in Prometheus). Returns
/// the reason it is refused.
pub fn validate_label_name(name: &str) -> Result<(), String> {
    let ok_first = |b: u8| b.is_ascii_alphabetic() || b == b'_';
    let ok_rest = |b: u8| ok_first(b) || b.is_ascii_digit();
    let b = name.as_bytes();
    if b.is_empty() || b.len() > MAX_LABEL_NAME {
        return Err(format!("label name must be 1 to {MAX_LABEL_NAME} characters"));
    }
    if !ok_first(b[0]) || !b[1..].iter().all(|&c| ok_rest(c)) {
        return Err(format!("label name '{}' must match [a-zA-Z_][a-zA-Z0-9_]*", name.escape_debug()));
    }
    if name.starts_with("__") {
        return Err(format!("label name '{name}' starts with '__', which is reserved"));
    }
    Ok(())
}

/// Checks one sample received at `now` (Unix ms): the metric name, a finite
/// value, a timestamp at most [`MAX_FUTURE_MS`] ahead and at most
/// [`MAX_AGE_MS`] behind `now`, and at most [`MAX_SAMPLE_LABELS`] labels with
/// valid names and values of 1 to [`MAX_LABEL_VALUE`] characters without
/// control, bidi or zero-width characters. An empty value is refused because
/// Prometheus treats it as the label's absence: leave the label out instead.
pub fn validate_sample(sample: &Sample, now: Millis) -> Result<(), SampleError> {
    validate_metric_name(&sample.metric).map_err(|m| SampleError::new("metric", m))?;
    if !sample.value.is_finite() {
        return Err(SampleError::new("value", "must be a finite number"));
    }
    if let Some(ts) = sample.ts {
        if ts > now.saturating_add(MAX_FUTURE_MS) {
            return Err(SampleError::new(
                "ts",
                format!(
                    "is {} s in the future, more than {} s ahead of the server's clock",
                    ts.saturating_sub(now) / 1000,
                    MAX_FUTURE_MS / 1000
                ),
            ));
        }
        if ts < now.saturating_sub(MAX_AGE_MS) {
            return Err(SampleError::new("ts", format!("is older than {} days", MAX_AGE_MS / 86_400_000)));
        }
    }
    if sample.labels.len() > MAX_SAMPLE_LABELS {
        return Err(SampleError::new("labels", format!("at most {MAX_SAMPLE_LABELS} labels")));
    }
    for (name, value) in &sample.labels {
        validate_label(name, value)?;
    }
    Ok(())
}

/// Checks one label of a sample: a valid name, and a value of 1 to
/// [`MAX_LABEL_VALUE`] characters without control, bidi or zero-width characters.
pub fn validate_label(name: &str, value: &str) -> Result<(), SampleError> {
    validate_label_name(name).map_err(|m| SampleError::new("labels", m))?;
    let field = || format!("labels.{name}");
    if value.is_empty() {
        return Err(SampleError::new(field(), "must not be empty (leave the label out instead)"));
    }
    if value.chars().count() > MAX_LABEL_VALUE {
        return Err(SampleError::new(field(), format!("must be at most {MAX_LABEL_VALUE} characters")));
    }
    if value.chars().any(is_deceptive) {
        return Err(SampleError::new(field(), "must not contain control, bidi or zero-width characters"));
    }
    Ok(())
}

/// Checks a batch received at `now`: every refused sample's error, its field
/// prefixed with its index (`samples[3].value: must be a finite number`); an
/// empty list means the batch is accepted. A batch over [`MAX_BATCH`] samples
/// gives one error, `samples`, without looking at them.
pub fn validate_batch(samples: &[Sample], now: Millis) -> Vec<SampleError> {
    if samples.len() > MAX_BATCH {
        return vec![SampleError::new("samples", format!("at most {MAX_BATCH} samples in one batch"))];
    }
    samples.iter().enumerate().filter_map(|(i, s)| validate_sample(s, now).err().map(|e| e.at(i))).collect()
}

/// Serde for an `f64` that may be infinite or NaN, which JSON numbers cannot
/// carry: those are written as the strings `"+Inf"`, `"-Inf"` and `"NaN"`
/// (Prometheus's spelling), every other value as a number.
pub(crate) mod lossless_f64 {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &f64, s: S) -> Result<S::Ok, S::Error> {
        if v.is_finite() {
            s.serialize_f64(*v)
        } else if v.is_nan() {
            s.serialize_str("NaN")
        } else if *v > 0.0 {
            s.serialize_str("+Inf")
        } else {
            s.serialize_str("-Inf")
        }
    }

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        N(f64),
        S(String),
    }

    fn from_raw<E: serde::de::Error>(r: Raw) -> Result<f64, E> {
        match r {
            Raw::N(x) => Ok(x),
            Raw::S(s) => match s.as_str() {
                "NaN" => Ok(f64::NAN),
                "+Inf" | "Inf" => Ok(f64::INFINITY),
                "-Inf" => Ok(f64::NEG_INFINITY),
                _ => Err(E::custom(format!("'{s}' is not a number (nor +Inf, -Inf or NaN)"))),
            },
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        from_raw(Raw::deserialize(d)?)
    }

    /// The same for an `Option<f64>`, `None` as `null`.
    pub mod option {
        use super::*;

        pub fn serialize<S: Serializer>(v: &Option<f64>, s: S) -> Result<S::Ok, S::Error> {
            match v {
                Some(x) => super::serialize(x, s),
                None => s.serialize_none(),
            }
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
            Option::<Raw>::deserialize(d)?.map(from_raw).transpose()
        }
    }
}

/// The sketch's default relative accuracy: quantiles within 1%.
pub const DEFAULT_ALPHA: f64 = 0.01;
/// The sketch's default bound on bins per sign. With α = 0.01 that many bins
/// span a ratio of about 6·10¹⁷ between the smallest and largest magnitude
/// before anything is collapsed.
pub const DEFAULT_MAX_BINS: u32 = 2048;
/// The relative accuracies a sketch accepts: `[MIN_ALPHA, MAX_ALPHA]`. Below
/// 10⁻⁴ bin indices would need more than an `i32` for extreme values.
pub const MIN_ALPHA: f64 = 1e-4;
/// See [`MIN_ALPHA`].
pub const MAX_ALPHA: f64 = 0.5;
/// The bounds on a sketch's `max_bins`.
pub const MIN_BINS: u32 = 8;
/// See [`MIN_BINS`].
pub const MAX_BINS: u32 = 65_536;

/// A sketch that cannot be built, merged or read back.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SketchError {
    /// α out of `[MIN_ALPHA, MAX_ALPHA]`.
    #[error("relative accuracy {0} must be in [{MIN_ALPHA}, {MAX_ALPHA}]")]
    Alpha(f64),
    /// `max_bins` out of `[MIN_BINS, MAX_BINS]`.
    #[error("max_bins {0} must be in [{MIN_BINS}, {MAX_BINS}]")]
    MaxBins(u32),
    /// Two sketches of different α cannot be merged.
    #[error("cannot merge sketches of different relative accuracy ({0} and {1})")]
    Incompatible(f64, f64),
    /// A stored sketch that is not consistent.
    #[error("invalid sketch: {0}")]
    Invalid(&'static str),
}

/// A mergeable quantile sketch: DDSketch (Masson, Rim, Lee: "DDSketch: A
/// Fast and Fully-Mergeable Quantile Sketch with Relative-Error Guarantees",
/// VLDB 2019), with the logarithmic mapping and collapsing of the lowest bins.
///
/// A value `x > 0` is counted in bin `i = ⌈log_γ x⌉` with `γ = (1 + α)/(1 − α)`,
/// i.e. `γ^(i−1) < x ≤ γ^i`; negative values in a second set of bins by their
/// magnitude; zero (and magnitudes below `f64::MIN_POSITIVE`, the subnormals)
/// in a counter of its own. A quantile is read as the bin of the value of that
/// rank, estimated as `γ^i·(1 − α)`, which is within relative error α of every
/// value of the bin: the paper's guarantee, `|x̃ − x_q| ≤ α·|x_q|` where `x_q`
/// is the value of rank `⌊q·(n − 1)⌋` of the sorted values. The estimate is
/// clamped to the exact minimum and maximum, which are kept, so `quantile(0)`
/// and `quantile(1)` are exact. Merging adds the bins' counts, so a merged
/// sketch is the very sketch of all the values, as long as nothing collapsed.
///
/// Each sign keeps at most `max_bins` bins; beyond that the lowest bins (the
/// magnitudes nearest zero) are collapsed into the lowest one kept. Quantiles
/// among the collapsed values lose the guarantee, the high ones (what latency
/// alerts read) keep it.
///
/// Written here because the crates at hand either have no serde form (it is
/// stored as JSON, one per aggregation window) or no stable, documented merge;
/// this is a hundred lines, sparse, and exact to the paper. The JSON is
/// `{"alpha":0.01,"max_bins":2048,"zero":1,"pos":[[index,count],…],"neg":[…],"min":…,"max":…}`
/// with the bins sorted by index and empty parts left out; reading it back
/// checks that it is consistent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "SketchRepr", into = "SketchRepr")]
pub struct Sketch {
    alpha: f64,
    /// `ln γ`, derived from `alpha`.
    ln_gamma: f64,
    max_bins: u32,
    zero: u64,
    /// `(index, count)` of positive values, sorted by index, counts > 0.
    pos: Vec<(i32, u64)>,
    /// The same for negative values, indexed by magnitude.
    neg: Vec<(i32, u64)>,
    count: u64,
    /// Exact; `+∞`/`−∞` while empty.
    min: f64,
    max: f64,
}

impl Default for Sketch {
    /// α = [`DEFAULT_ALPHA`], [`DEFAULT_MAX_BINS`] bins per sign.
    fn default() -> Self {
        Sketch::unchecked(DEFAULT_ALPHA, DEFAULT_MAX_BINS)
    }
}

impl Sketch {
    /// An empty sketch with relative accuracy `alpha` and at most `max_bins`
    /// bins per sign.
    pub fn new(alpha: f64, max_bins: u32) -> Result<Sketch, SketchError> {
        if !(MIN_ALPHA..=MAX_ALPHA).contains(&alpha) {
            return Err(SketchError::Alpha(alpha));
        }
        if !(MIN_BINS..=MAX_BINS).contains(&max_bins) {
            return Err(SketchError::MaxBins(max_bins));
        }
        Ok(Sketch::unchecked(alpha, max_bins))
    }

    fn unchecked(alpha: f64, max_bins: u32) -> Sketch {
        Sketch {
            alpha,
            // ln((1 + α)/(1 − α)) = ln(1 + 2α/(1 − α)), precise for small α.
            ln_gamma: (2.0 * alpha / (1.0 - alpha)).ln_1p(),
            max_bins,
            zero: 0,
            pos: Vec::new(),
            neg: Vec::new(),
            count: 0,
            min: f64::INFINITY,
            max: f64::NEG_INFINITY,
        }
    }

    /// The relative accuracy α.
    pub fn alpha(&self) -> f64 {
        self.alpha
    }

    /// The bound on bins per sign.
    pub fn max_bins(&self) -> u32 {
        self.max_bins
    }

    /// How many values were added.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Whether no value was added.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The smallest value added (exact).
    pub fn min(&self) -> Option<f64> {
        (self.count > 0).then_some(self.min)
    }

    /// The largest value added (exact).
    pub fn max(&self) -> Option<f64> {
        (self.count > 0).then_some(self.max)
    }

    /// The number of bins in use, both signs.
    pub fn bins(&self) -> usize {
        self.pos.len() + self.neg.len()
    }

    fn index(&self, magnitude: f64) -> i32 {
        // |ln x| ≤ 745 and ln γ ≥ 2·10⁻⁴ keep this far inside an i32.
        (magnitude.ln() / self.ln_gamma).ceil() as i32
    }

    /// The estimate of bin `i`: `γ^i·(1 − α)`, computed in logs so that the top
    /// bin does not overflow.
    fn estimate(&self, i: i32) -> f64 {
        (f64::from(i) * self.ln_gamma + (-self.alpha).ln_1p()).exp()
    }

    /// Adds one value. Non-finite values are ignored: a sketch has no bin for
    /// them, and [`validate_sample`] refuses them before they get here.
    pub fn add(&mut self, x: f64) {
        if !x.is_finite() {
            return;
        }
        if x.abs() < f64::MIN_POSITIVE {
            self.zero += 1;
        } else {
            let i = self.index(x.abs());
            let max = self.max_bins as usize;
            add_bin(if x > 0.0 { &mut self.pos } else { &mut self.neg }, i, 1, max);
        }
        self.count = self.count.saturating_add(1);
        self.min = self.min.min(x);
        self.max = self.max.max(x);
    }

    /// Adds every value of `other` (same α; the result keeps the smaller
    /// `max_bins` of the two, so merging is commutative).
    pub fn merge(&mut self, other: &Sketch) -> Result<(), SketchError> {
        if self.alpha != other.alpha {
            return Err(SketchError::Incompatible(self.alpha, other.alpha));
        }
        self.max_bins = self.max_bins.min(other.max_bins);
        let max = self.max_bins as usize;
        self.pos = merge_bins(&self.pos, &other.pos);
        collapse(&mut self.pos, max);
        self.neg = merge_bins(&self.neg, &other.neg);
        collapse(&mut self.neg, max);
        self.zero = self.zero.saturating_add(other.zero);
        self.count = self.count.saturating_add(other.count);
        self.min = self.min.min(other.min);
        self.max = self.max.max(other.max);
        Ok(())
    }

    /// The value of rank `⌊q·(n − 1)⌋` (0-based) within relative error α;
    /// `None` when empty or `q` is not in `[0, 1]`.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        if self.count == 0 || !(0.0..=1.0).contains(&q) {
            return None;
        }
        if q == 0.0 {
            return Some(self.min);
        }
        if q == 1.0 {
            return Some(self.max);
        }
        let rank = (q * (self.count - 1) as f64).floor() as u64;
        let clamp = |v: f64| v.clamp(self.min, self.max);
        let mut seen = 0u64;
        // In increasing order of value: negative bins from the largest
        // magnitude down, zero, positive bins from the smallest up.
        for &(i, c) in self.neg.iter().rev() {
            seen = seen.saturating_add(c);
            if seen > rank {
                return Some(clamp(-self.estimate(i)));
            }
        }
        seen = seen.saturating_add(self.zero);
        if seen > rank {
            return Some(clamp(0.0));
        }
        for &(i, c) in &self.pos {
            seen = seen.saturating_add(c);
            if seen > rank {
                return Some(clamp(self.estimate(i)));
            }
        }
        Some(self.max)
    }
}

fn add_bin(bins: &mut Vec<(i32, u64)>, i: i32, n: u64, max: usize) {
    match bins.binary_search_by_key(&i, |b| b.0) {
        Ok(p) => bins[p].1 = bins[p].1.saturating_add(n),
        Err(p) => {
            bins.insert(p, (i, n));
            collapse(bins, max);
        }
    }
}

/// Folds the lowest bins into the lowest one kept until at most `max` remain.
fn collapse(bins: &mut Vec<(i32, u64)>, max: usize) {
    if bins.len() > max {
        let n = bins.len() - max;
        let folded = bins[..=n].iter().fold(0u64, |a, b| a.saturating_add(b.1));
        bins[n].1 = folded;
        bins.drain(..n);
    }
}

fn merge_bins(a: &[(i32, u64)], b: &[(i32, u64)]) -> Vec<(i32, u64)> {
    let mut out = Vec::with_capacity(a.len() + b.len());
    let (mut i, mut j) = (0, 0);
    while i < a.len() && j < b.len() {
        match a[i].0.cmp(&b[j].0) {
            std::cmp::Ordering::Less => {
                out.push(a[i]);
                i += 1;
            }
            std::cmp::Ordering::Greater => {
                out.push(b[j]);
                j += 1;
            }
            std::cmp::Ordering::Equal => {
                out.push((a[i].0, a[i].1.saturating_add(b[j].1)));
                i += 1;
                j += 1;
            }
        }
    }
    out.extend_from_slice(&a[i..]);
    out.extend_from_slice(&b[j..]);
    out
}

/// The stored form of a [`Sketch`].
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SketchRepr {
    alpha: f64,
    max_bins: u32,
    #[serde(default, skip_serializing_if = "is_zero")]
    zero: u64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pos: Vec<(i32, u64)>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    neg: Vec<(i32, u64)>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    min: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    max: Option<f64>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl From<Sketch> for SketchRepr {
    fn from(s: Sketch) -> Self {
        SketchRepr {
            alpha: s.alpha,
            max_bins: s.max_bins,
            zero: s.zero,
            min: s.min(),
            max: s.max(),
            pos: s.pos,
            neg: s.neg,
        }
    }
}

impl TryFrom<SketchRepr> for Sketch {
    type Error = SketchError;
    fn try_from(r: SketchRepr) -> Result<Self, SketchError> {
        let mut s = Sketch::new(r.alpha, r.max_bins)?;
        let mut count = r.zero;
        for bins in [&r.pos, &r.neg] {
            if bins.len() > r.max_bins as usize {
                return Err(SketchError::Invalid("more bins than max_bins"));
            }
            if bins.windows(2).any(|w| w[0].0 >= w[1].0) {
                return Err(SketchError::Invalid("bins not sorted by index"));
            }
            for &(_, c) in bins {
                if c == 0 {
                    return Err(SketchError::Invalid("a bin with a count of 0"));
                }
                count = count.checked_add(c).ok_or(SketchError::Invalid("counts overflow"))?;
            }
        }
        match (count, r.min, r.max) {
            (0, None, None) => {}
            (n, Some(lo), Some(hi)) if n > 0 && lo.is_finite() && hi.is_finite() && lo <= hi => {
                s.min = lo;
                s.max = hi;
            }
            _ => return Err(SketchError::Invalid("min and max must be given, finite and ordered iff not empty")),
        }
        s.zero = r.zero;
        s.pos = r.pos;
        s.neg = r.neg;
        s.count = count;
        Ok(s)
    }
}

/// What an alert rule or an analysis check reads from an [`Aggregate`],
/// written `count`, `sum`, `avg`, `min`, `max`, `last`, `p50`, `p90`, `p95`,
/// `p99`, or `p` and any other percentile (`p99.9`, `p75`); in JSON the same
/// string. Parsing `p50`, `p90`, `p95` or `p99` (also as `p95.0`) always gives
/// their own variant, so printing and parsing round-trip for every parsed value.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Agg {
    Count,
    Sum,
    Avg,
    Min,
    Max,
    Last,
    P50,
    P90,
    P95,
    P99,
    /// Another percentile, in percent: `Percentile(99.9)` is `p99.9`, the
    /// quantile 0.999. In `[0, 100]`.
    Percentile(f64),
}

/// An aggregation that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown aggregation '{0}', expected one of: count sum avg min max last p50 p90 p95 p99, \
     or p and a percentile in [0, 100] such as p99.9"
)]
pub struct ParseAggError(pub String);

impl Agg {
    /// The quantile in `[0, 1]` of a percentile aggregation (`p95` → 0.95),
    /// `None` for the others.
    pub fn quantile(self) -> Option<f64> {
        match self {
            Agg::P50 => Some(0.5),
            Agg::P90 => Some(0.9),
            Agg::P95 => Some(0.95),
            Agg::P99 => Some(0.99),
            Agg::Percentile(p) => Some(p / 100.0),
            _ => None,
        }
    }

    /// Refuses a [`Agg::Percentile`] outside `[0, 100]` (which parsing never
    /// gives, but a value built in code may hold). Returns the reason.
    pub fn validate(self) -> Result<(), String> {
        match self {
            Agg::Percentile(p) if !(0.0..=100.0).contains(&p) => Err(format!("percentile {p} is not in [0, 100]")),
            _ => Ok(()),
        }
    }
}

impl fmt::Display for Agg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            Agg::Count => "count",
            Agg::Sum => "sum",
            Agg::Avg => "avg",
            Agg::Min => "min",
            Agg::Max => "max",
            Agg::Last => "last",
            Agg::P50 => "p50",
            Agg::P90 => "p90",
            Agg::P95 => "p95",
            Agg::P99 => "p99",
            // `f64`'s Display is the shortest text that parses back to it, and
            // never uses an exponent.
            Agg::Percentile(p) => return write!(f, "p{p}"),
        };
        f.write_str(s)
    }
}

impl FromStr for Agg {
    type Err = ParseAggError;
    fn from_str(s: &str) -> Result<Self, ParseAggError> {
        let err = || ParseAggError(s.to_string());
        Ok(match s {
            "count" => Agg::Count,
            "sum" => Agg::Sum,
            "avg" => Agg::Avg,
            "min" => Agg::Min,
            "max" => Agg::Max,
            "last" => Agg::Last,
            _ => {
                let digits = s.strip_prefix('p').ok_or_else(err)?;
                // Plain decimals only: no sign, exponent, `inf` or `nan`.
                let plain = !digits.is_empty()
                    && digits.bytes().all(|b| b.is_ascii_digit() || b == b'.')
                    && digits.bytes().filter(|&b| b == b'.').count() <= 1
                    && !digits.starts_with('.')
                    && !digits.ends_with('.');
                if !plain {
                    return Err(err());
                }
                let p: f64 = digits.parse().map_err(|_| err())?;
                if p == 50.0 {
                    Agg::P50
                } else if p == 90.0 {
                    Agg::P90
                } else if p == 95.0 {
                    Agg::P95
                } else if p == 99.0 {
                    Agg::P99
                } else if (0.0..=100.0).contains(&p) {
                    Agg::Percentile(p)
                } else {
                    return Err(err());
                }
            }
        })
    }
}

impl Serialize for Agg {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Agg {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// The summary of the samples of one metric (of one device, or a group) in
/// one window: what every [`Agg`] is read from. Mergeable, so windows add up
/// to longer spans and finer resolutions to coarser ones.
///
/// While empty (`count == 0`), `min`, `max`, `last` and `last_ts` are 0 and
/// mean nothing. Non-finite values are ignored. The sum may overflow to ±∞
/// for values near `f64::MAX`; it is stored as the string `"+Inf"` then, and
/// [`value`](Aggregate::value) gives `None` for a result that is not finite.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Aggregate {
    /// Values added.
    pub count: u64,
    /// Their sum (possibly ±∞, see above).
    #[serde(with = "lossless_f64")]
    pub sum: f64,
    /// The smallest value, exact.
    pub min: f64,
    /// The largest value, exact.
    pub max: f64,
    /// The value with the latest timestamp (of equal timestamps, the one added last).
    pub last: f64,
    /// The timestamp of `last`, Unix ms.
    pub last_ts: Millis,
    /// The values' distribution, for the percentiles.
    pub sketch: Sketch,
}

impl Aggregate {
    /// An empty aggregate with the default sketch ([`Sketch::default`]).
    pub fn new() -> Aggregate {
        Aggregate::default()
    }

    /// An empty aggregate whose sketch has relative accuracy `alpha` and at
    /// most `max_bins` bins per sign.
    pub fn with_accuracy(alpha: f64, max_bins: u32) -> Result<Aggregate, SketchError> {
        Ok(Aggregate { sketch: Sketch::new(alpha, max_bins)?, ..Aggregate::default() })
    }

    /// Adds one value measured at `ts`; a non-finite value is ignored.
    pub fn add(&mut self, value: f64, ts: Millis) {
        if !value.is_finite() {
            return;
        }
        if self.count == 0 {
            (self.min, self.max, self.last, self.last_ts) = (value, value, value, ts);
        } else {
            self.min = self.min.min(value);
            self.max = self.max.max(value);
            if ts >= self.last_ts {
                (self.last, self.last_ts) = (value, ts);
            }
        }
        self.count = self.count.saturating_add(1);
        self.sum += value;
        self.sketch.add(value);
    }

    /// Adds every value of `other`, as if they had been added after this
    /// aggregate's own (which decides `last` between equal timestamps). Fails,
    /// changing nothing, when the sketches' accuracies differ.
    pub fn merge(&mut self, other: &Aggregate) -> Result<(), SketchError> {
        self.sketch.merge(&other.sketch)?;
        if other.count == 0 {
            return Ok(());
        }
        if self.count == 0 {
            (self.min, self.max, self.last, self.last_ts) = (other.min, other.max, other.last, other.last_ts);
        } else {
            self.min = self.min.min(other.min);
            self.max = self.max.max(other.max);
            if other.last_ts >= self.last_ts {
                (self.last, self.last_ts) = (other.last, other.last_ts);
            }
        }
        self.count = self.count.saturating_add(other.count);
        self.sum += other.sum;
        Ok(())
    }

    /// Reads an aggregate's JSON without its sketch (the sketch comes back
    /// empty): what an aggregation other than a percentile needs, several
    /// times faster to read than the whole. Merging such aggregates keeps
    /// count, sum, min, max and last exact; their percentiles are `None`.
    pub fn from_json_without_sketch(json: &str) -> Result<Aggregate, serde_json::Error> {
        #[derive(Deserialize)]
        struct Summary {
            count: u64,
            #[serde(with = "lossless_f64")]
            sum: f64,
            min: f64,
            max: f64,
            last: f64,
            last_ts: Millis,
        }
        let s: Summary = serde_json::from_str(json)?;
        Ok(Aggregate {
            count: s.count,
            sum: s.sum,
            min: s.min,
            max: s.max,
            last: s.last,
            last_ts: s.last_ts,
            sketch: Sketch::default(),
        })
    }

    /// The aggregation's value: `None` when there are no values (except
    /// `count`, which is then 0), or when the result is not finite.
    /// Percentiles come from the sketch, within its relative accuracy.
    pub fn value(&self, agg: Agg) -> Option<f64> {
        if agg == Agg::Count {
            return Some(self.count as f64);
        }
        if self.count == 0 {
            return None;
        }
        let v = match agg {
            Agg::Count => self.count as f64,
            Agg::Sum => self.sum,
            Agg::Avg => self.sum / self.count as f64,
            Agg::Min => self.min,
            Agg::Max => self.max,
            Agg::Last => self.last,
            _ => self.sketch.quantile(agg.quantile()?)?,
        };
        v.is_finite().then_some(v)
    }
}

/// The start of the window of width `width_ms` that holds `ts`: windows are
/// aligned to the Unix epoch (`[k·width, (k+1)·width)`), negative times
/// included. Panics if `width_ms` is not positive.
pub fn bucket_start(ts: Millis, width_ms: Millis) -> Millis {
    assert!(width_ms > 0, "a window's width must be positive");
    ts - ts.rem_euclid(width_ms)
}

/// A resolution samples are kept at: windows of `width_ms`, kept for
/// `retention_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resolution {
    /// The width of a window, ms (positive).
    pub width_ms: Millis,
    /// How long windows are kept, ms.
    pub retention_ms: Millis,
}

/// The resolutions kept by default, finest first: 10-second windows for 6
/// hours (alerts and the analysis of a wave read these), 1-minute windows for
/// 7 days, 1-hour windows for 90 days.
pub const DEFAULT_RESOLUTIONS: [Resolution; 3] = [
    Resolution { width_ms: 10_000, retention_ms: 6 * 3_600_000 },
    Resolution { width_ms: 60_000, retention_ms: 7 * 86_400_000 },
    Resolution { width_ms: 3_600_000, retention_ms: 90 * 86_400_000 },
];

/// The most windows a read should merge per series, for [`pick_resolution`].
pub const MAX_WINDOWS_PER_READ: i64 = 360;

impl Resolution {
    /// The start of the window that holds `ts`.
    pub fn bucket_start(&self, ts: Millis) -> Millis {
        bucket_start(ts, self.width_ms)
    }

    /// Windows starting before this time are past retention at `now` and may
    /// be deleted.
    pub fn retained_from(&self, now: Millis) -> Millis {
        self.bucket_start(now.saturating_sub(self.retention_ms))
    }

    /// The starts of the first and the last window to merge for the span
    /// `(now − span_ms, now]`: whole windows, so the span read is at least the
    /// one asked for and at most one window longer.
    pub fn covering(&self, now: Millis, span_ms: Millis) -> (Millis, Millis) {
        (self.bucket_start(now.saturating_sub(span_ms).saturating_add(1)), self.bucket_start(now))
    }
}

/// Reads a list of resolutions as an operator writes it, finest first:
/// `WIDTH:RETENTION,…` with durations (`10s:6h,1m:7d,1h:90d`). Each width is
/// at least a second and a multiple of the one before (so a coarser window
/// is merged from whole finer ones); each retention at least its width.
pub fn parse_resolutions(text: &str) -> Result<Vec<Resolution>, String> {
    let mut out: Vec<Resolution> = Vec::new();
    for part in text.split(',').map(str::trim) {
        let (w, r) = part.split_once(':').ok_or_else(|| format!("'{part}' is not WIDTH:RETENTION, e.g. 1m:7d"))?;
        let ms = |d: &str| -> Result<Millis, String> {
            let d = crate::duration::parse(d.trim()).map_err(|e| format!("'{part}': {e}"))?;
            Millis::try_from(d.as_millis()).map_err(|_| format!("'{part}': too long"))
        };
        let (width_ms, retention_ms) = (ms(w)?, ms(r)?);
        if width_ms < 1000 {
            return Err(format!("'{part}': a window is at least 1s"));
        }
        if retention_ms < width_ms {
            return Err(format!("'{part}': windows must be kept at least as long as they are wide"));
        }
        if let Some(prev) = out.last() {
            if width_ms <= prev.width_ms || width_ms % prev.width_ms != 0 {
                return Err(format!(
                    "'{part}': each width must be a larger multiple of the one before ({} ms)",
                    prev.width_ms
                ));
            }
        }
        out.push(Resolution { width_ms, retention_ms });
    }
    Ok(out)
}

/// The resolution to read a span of `span_ms` from: the finest of
/// `resolutions` that still keeps the whole span and needs at most
/// `max_windows` windows per series; failing that, the one that keeps the
/// longest. `None` only for an empty list.
pub fn pick_resolution(resolutions: &[Resolution], span_ms: Millis, max_windows: i64) -> Option<Resolution> {
    resolutions
        .iter()
        .filter(|r| r.width_ms > 0 && r.retention_ms >= span_ms && span_ms / r.width_ms <= max_windows)
        .min_by_key(|r| r.width_ms)
        .or_else(|| resolutions.iter().max_by_key(|r| r.retention_ms))
        .copied()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn an_aggregate_reads_without_its_sketch() {
        let mut a = Aggregate::new();
        for v in [3.0, 1.0, 2.0] {
            a.add(v, v as Millis);
        }
        a.add(f64::MAX, 9);
        a.add(f64::MAX, 10);
        let json = serde_json::to_string(&a).unwrap();
        let light = Aggregate::from_json_without_sketch(&json).unwrap();
        for agg in [Agg::Count, Agg::Min, Agg::Max, Agg::Last, Agg::Avg, Agg::Sum] {
            assert_eq!(light.value(agg), a.value(agg), "{agg}");
        }
        assert_eq!((light.last_ts, light.sum), (10, f64::INFINITY));
        assert_eq!(light.value("p50".parse().unwrap()), None, "no sketch, no percentile");
        assert!(Aggregate::from_json_without_sketch("{\"count\":1}").is_err());
    }

    #[test]
    fn resolutions_parse_finest_first() {
        let r = parse_resolutions("10s:6h, 1m:7d,1h:90d").unwrap();
        assert_eq!(r, DEFAULT_RESOLUTIONS.to_vec());
        assert_eq!(parse_resolutions("1m:7d").unwrap().len(), 1);
        for (bad, says) in [
            ("", "not WIDTH:RETENTION"),
            ("1m", "not WIDTH:RETENTION"),
            ("500ms:1h", "at least 1s"),
            ("1h:1m", "at least as long"),
            ("1m:7d,10s:1h", "larger multiple"),
            ("1m:7d,90s:1d", "larger multiple"),
            ("1m:forever", "'1m:forever'"),
        ] {
            let e = parse_resolutions(bad).unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }

    const NOW: Millis = 1_700_000_000_000;

    fn sample(metric: &str, value: f64) -> Sample {
        Sample { metric: metric.into(), value, ts: None, labels: BTreeMap::new() }
    }

    #[test]
    fn good_samples_pass() {
        let mut s = sample("cpu_temp_celsius", 61.5);
        s.ts = Some(NOW - 1000);
        s.labels.insert("core".into(), "0".into());
        assert_eq!(validate_sample(&s, NOW), Ok(()));
        assert_eq!(validate_sample(&sample("job:errors:rate5m", -3.0), NOW), Ok(()));
        assert_eq!(validate_sample(&sample("_x", 0.0), NOW), Ok(()));
        let json: Sample = serde_json::from_str(r#"{"metric":"up","value":1}"#).unwrap();
        assert_eq!(json, sample("up", 1.0));
        assert_eq!(json.ts_or(NOW), NOW);
        assert_eq!(serde_json::to_string(&json).unwrap(), r#"{"metric":"up","value":1.0}"#);
    }

    #[test]
    fn each_refusal_names_its_field() {
        let check = |s: &Sample, field: &str, msg: &str| {
            let e = validate_sample(s, NOW).unwrap_err();
            assert_eq!(e.field, field, "{e}");
            assert!(e.message.contains(msg), "{e}");
        };
        check(&sample("", 1.0), "metric", "1 to 200");
        check(&sample(&"a".repeat(201), 1.0), "metric", "1 to 200");
        assert_eq!(validate_sample(&sample(&"a".repeat(200), 1.0), NOW), Ok(()));
        check(&sample("9lives", 1.0), "metric", "must match");
        check(&sample("cpu-temp", 1.0), "metric", "must match");
        check(&sample("cpu temp", 1.0), "metric", "must match");
        check(&sample("température", 1.0), "metric", "must match");
        for v in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            check(&sample("up", v), "value", "must be a finite number");
        }
        let at = |ts| Sample { ts: Some(ts), ..sample("up", 1.0) };
        check(&at(NOW + MAX_FUTURE_MS + 1), "ts", "in the future");
        assert_eq!(validate_sample(&at(NOW + MAX_FUTURE_MS), NOW), Ok(()));
        check(&at(NOW - MAX_AGE_MS - 1), "ts", "older than 7 days");
        assert_eq!(validate_sample(&at(NOW - MAX_AGE_MS), NOW), Ok(()));
        check(&at(i64::MIN), "ts", "older");
        check(&at(i64::MAX), "ts", "future");
        let labelled = |k: &str, v: &str| {
            let mut s = sample("up", 1.0);
            s.labels.insert(k.into(), v.into());
            s
        };
        check(&labelled("1core", "0"), "labels", "must match");
        check(&labelled("co-re", "0"), "labels", "must match");
        check(&labelled("__name__", "0"), "labels", "reserved");
        check(&labelled(&"k".repeat(129), "0"), "labels", "1 to 128");
        check(&labelled("core", ""), "labels.core", "must not be empty");
        check(&labelled("core", &"v".repeat(257)), "labels.core", "at most 256");
        assert_eq!(validate_sample(&labelled("core", &"é".repeat(256)), NOW), Ok(()));
        check(&labelled("core", "a\nb"), "labels.core", "control");
        let mut many = sample("up", 1.0);
        for i in 0..17 {
            many.labels.insert(format!("l{i}"), "v".into());
        }
        check(&many, "labels", "at most 16");
        many.labels.remove("l0");
        assert_eq!(validate_sample(&many, NOW), Ok(()));
    }

    #[test]
    fn batch_errors_carry_the_index() {
        let batch = vec![sample("up", 1.0), sample("up", f64::NAN), sample("up", 2.0), sample("9", 0.0)];
        let errs: Vec<String> = validate_batch(&batch, NOW).iter().map(|e| e.to_string()).collect();
        assert_eq!(
            errs,
            vec![
                "samples[1].value: must be a finite number",
                "samples[3].metric: '9' must match [a-zA-Z_:][a-zA-Z0-9_:]*"
            ]
        );
        assert!(validate_batch(&batch[..1], NOW).is_empty());
        let big = vec![sample("up", 1.0); MAX_BATCH + 1];
        let errs = validate_batch(&big, NOW);
        assert_eq!(errs.len(), 1);
        assert_eq!(errs[0].field, "samples");
        assert!(validate_batch(&big[..MAX_BATCH], NOW).is_empty());
    }

    #[test]
    fn aggs_parse_print_and_serialize() {
        for (s, a) in [
            ("count", Agg::Count),
            ("sum", Agg::Sum),
            ("avg", Agg::Avg),
            ("min", Agg::Min),
            ("max", Agg::Max),
            ("last", Agg::Last),
            ("p50", Agg::P50),
            ("p90", Agg::P90),
            ("p95", Agg::P95),
            ("p99", Agg::P99),
            ("p99.9", Agg::Percentile(99.9)),
            ("p0", Agg::Percentile(0.0)),
            ("p100", Agg::Percentile(100.0)),
        ] {
            assert_eq!(s.parse::<Agg>(), Ok(a), "{s}");
            assert_eq!(a.to_string(), s);
            assert_eq!(serde_json::to_string(&a).unwrap(), format!("\"{s}\""));
            assert_eq!(serde_json::from_str::<Agg>(&format!("\"{s}\"")).unwrap(), a);
        }
        assert_eq!("p95.0".parse::<Agg>(), Ok(Agg::P95));
        assert!((Agg::Percentile(99.9).quantile().unwrap() - 0.999).abs() < 1e-12);
        assert_eq!(Agg::P95.quantile(), Some(0.95));
        assert_eq!(Agg::Avg.quantile(), None);
        for bad in ["", "p", "p101", "p-1", "p1e2", "pinf", "pnan", "p.5", "p5.", "p1.2.3", "AVG", "median", "p+5"] {
            assert!(bad.parse::<Agg>().is_err(), "{bad}");
        }
        assert!("mean".parse::<Agg>().unwrap_err().to_string().contains("p99.9"));
        assert!(Agg::Percentile(101.0).validate().is_err());
        assert!(Agg::Percentile(f64::NAN).validate().is_err());
        assert_eq!(Agg::P99.validate(), Ok(()));
    }

    #[test]
    fn an_aggregate_answers_every_agg() {
        let mut a = Aggregate::new();
        assert_eq!(a.value(Agg::Count), Some(0.0));
        for agg in [Agg::Sum, Agg::Avg, Agg::Min, Agg::Max, Agg::Last, Agg::P50, Agg::Percentile(10.0)] {
            assert_eq!(a.value(agg), None, "{agg}");
        }
        for (i, v) in (1..=100).enumerate() {
            a.add(f64::from(v), 1000 + i as Millis);
        }
        a.add(f64::NAN, 5000);
        a.add(f64::INFINITY, 5000);
        assert_eq!(a.value(Agg::Count), Some(100.0));
        assert_eq!(a.value(Agg::Sum), Some(5050.0));
        assert_eq!(a.value(Agg::Avg), Some(50.5));
        assert_eq!(a.value(Agg::Min), Some(1.0));
        assert_eq!(a.value(Agg::Max), Some(100.0));
        assert_eq!(a.value(Agg::Last), Some(100.0));
        assert_eq!(a.last_ts, 1099);
        let near = |agg: Agg, exact: f64| {
            let v = a.value(agg).unwrap();
            assert!((v - exact).abs() <= 0.01 * (1.0 + 1e-9) * exact, "{agg}: {v} vs {exact}");
        };
        // Rank ⌊q·99⌋ of 1..=100.
        near(Agg::P50, 50.0);
        near(Agg::P90, 90.0);
        near(Agg::P95, 95.0);
        near(Agg::P99, 99.0);
        near(Agg::Percentile(99.9), 99.0);
        // An older sample does not become the last; one at the same time does.
        a.add(-5.0, 10);
        assert_eq!(a.value(Agg::Last), Some(100.0));
        a.add(7.0, 1099);
        assert_eq!(a.value(Agg::Last), Some(7.0));
        assert_eq!(a.value(Agg::Min), Some(-5.0));
    }

    #[test]
    fn an_overflowing_sum_is_stored_and_reads_as_none() {
        let mut a = Aggregate::new();
        a.add(f64::MAX, 1);
        a.add(f64::MAX, 2);
        assert_eq!(a.sum, f64::INFINITY);
        assert_eq!(a.value(Agg::Sum), None);
        assert_eq!(a.value(Agg::Avg), None);
        assert_eq!(a.value(Agg::Max), Some(f64::MAX));
        let p50 = a.value(Agg::P50).unwrap();
        assert!((f64::MAX * 0.99..=f64::MAX).contains(&p50), "{p50}");
        let json = serde_json::to_string(&a).unwrap();
        assert!(json.contains(r#""sum":"+Inf""#), "{json}");
        assert_eq!(serde_json::from_str::<Aggregate>(&json).unwrap(), a);
    }

    #[test]
    fn aggregates_and_sketches_round_trip_through_json() {
        let mut a = Aggregate::new();
        for (i, v) in [0.25, -3.0, 0.0, 1e9, 42.0, 42.0].into_iter().enumerate() {
            a.add(v, i as Millis);
        }
        let json = serde_json::to_string(&a).unwrap();
        assert_eq!(serde_json::from_str::<Aggregate>(&json).unwrap(), a);
        let sk = serde_json::to_value(&a.sketch).unwrap();
        assert_eq!(sk["alpha"], 0.01);
        assert_eq!(sk["zero"], 1);
        assert_eq!(sk["neg"].as_array().unwrap().len(), 1);
        assert_eq!(sk["pos"].as_array().unwrap().len(), 3, "42 twice is one bin: {sk}");
        assert_eq!(sk["min"], -3.0);
        let empty = serde_json::to_string(&Sketch::default()).unwrap();
        assert_eq!(empty, r#"{"alpha":0.01,"max_bins":2048}"#);
        assert_eq!(serde_json::from_str::<Sketch>(&empty).unwrap(), Sketch::default());
    }

    #[test]
    fn inconsistent_stored_sketches_are_refused() {
        for bad in [
            r#"{"alpha":0.0,"max_bins":2048}"#,
            r#"{"alpha":0.01,"max_bins":1}"#,
            r#"{"alpha":0.01,"max_bins":2048,"pos":[[1,1]]}"#,
            r#"{"alpha":0.01,"max_bins":2048,"pos":[[2,1],[1,1]],"min":1,"max":2}"#,
            r#"{"alpha":0.01,"max_bins":2048,"pos":[[1,1],[1,1]],"min":1,"max":2}"#,
            r#"{"alpha":0.01,"max_bins":2048,"pos":[[1,0]],"min":1,"max":1}"#,
            r#"{"alpha":0.01,"max_bins":2048,"min":1,"max":1}"#,
            r#"{"alpha":0.01,"max_bins":2048,"zero":1,"min":2,"max":1}"#,
            r#"{"alpha":0.01,"max_bins":8,"pos":[[1,1],[2,1],[3,1],[4,1],[5,1],[6,1],[7,1],[8,1],[9,1]],"min":1,"max":2}"#,
            r#"{"alpha":0.01,"max_bins":2048,"bins":[]}"#,
        ] {
            assert!(serde_json::from_str::<Sketch>(bad).is_err(), "{bad}");
        }
        assert_eq!(Sketch::new(0.6, 2048), Err(SketchError::Alpha(0.6)));
        assert_eq!(Sketch::new(0.01, 70_000), Err(SketchError::MaxBins(70_000)));
        let mut a = Sketch::default();
        assert_eq!(a.merge(&Sketch::new(0.02, 2048).unwrap()), Err(SketchError::Incompatible(0.01, 0.02)));
        let mut agg = Aggregate::new();
        agg.add(1.0, 1);
        let before = agg.clone();
        assert!(agg.merge(&Aggregate::with_accuracy(0.05, 64).unwrap()).is_err());
        assert_eq!(agg, before);
    }

    #[test]
    fn the_sketch_handles_signs_zero_and_extremes() {
        let mut s = Sketch::default();
        assert_eq!(s.quantile(0.5), None);
        for v in [-10.0, -1.0, 0.0, -0.0, 5e-324, 1.0, 10.0] {
            s.add(v);
        }
        s.add(f64::NAN);
        assert_eq!(s.count(), 7);
        assert_eq!(s.quantile(0.0), Some(-10.0));
        assert_eq!(s.quantile(1.0), Some(10.0));
        assert_eq!(s.quantile(0.5), Some(0.0), "the subnormal counts as zero");
        assert!((s.quantile(0.2).unwrap() + 1.0).abs() <= 0.01 * (1.0 + 1e-9));
        assert_eq!(s.quantile(-0.1), None);
        assert_eq!(s.quantile(1.1), None);
        assert_eq!(s.quantile(f64::NAN), None);
        // The extremes of f64: estimates stay finite (clamped into [min, max]) and within α.
        let mut big = Sketch::default();
        for v in [f64::MAX, f64::MAX, f64::MIN_POSITIVE, -f64::MAX] {
            big.add(v);
        }
        let near = |q: f64, want: f64| {
            let got = big.quantile(q).unwrap();
            assert!(
                got.is_finite() && (got - want).abs() <= 0.01 * (1.0 + 1e-9) * want.abs(),
                "q={q}: {got} vs {want}"
            );
        };
        near(0.1, -f64::MAX);
        near(0.5, f64::MIN_POSITIVE);
        near(0.9, f64::MAX);
    }

    #[test]
    fn collapsing_bounds_bins_and_keeps_high_quantiles() {
        let mut s = Sketch::new(0.01, 64).unwrap();
        let values: Vec<f64> = (0..2000).map(|i| 1.01f64.powi(i)).collect();
        for &v in &values {
            s.add(v);
        }
        assert!(s.bins() <= 64, "{}", s.bins());
        assert_eq!(s.count(), 2000);
        for q in [0.99, 0.995, 0.999] {
            let exact = values[(q * 1999.0_f64).floor() as usize];
            let got = s.quantile(q).unwrap();
            assert!((got - exact).abs() <= 0.01 * exact * (1.0 + 1e-9), "q={q}: {got} vs {exact}");
        }
        // The collapsed low values read high, never below the minimum.
        assert!(s.quantile(0.01).unwrap() >= 1.0);
        // Merging keeps the smaller bound.
        let mut wide = Sketch::default();
        wide.merge(&s).unwrap();
        assert_eq!(wide.max_bins(), 64);
        assert_eq!(wide, s);
    }

    #[test]
    fn buckets_align_to_the_epoch() {
        assert_eq!(bucket_start(12_345, 10_000), 10_000);
        assert_eq!(bucket_start(10_000, 10_000), 10_000);
        assert_eq!(bucket_start(-1, 10_000), -10_000);
        let r = DEFAULT_RESOLUTIONS[1];
        assert_eq!(r.bucket_start(NOW + 59_999 - NOW % 60_000), NOW - NOW % 60_000);
        assert_eq!(r.retained_from(NOW), bucket_start(NOW - 7 * 86_400_000, 60_000));
        let ten = DEFAULT_RESOLUTIONS[0];
        // (40 000, 100 000]: the first millisecond, 40 001, is in the window at 40 000.
        assert_eq!(ten.covering(100_000, 60_000), (40_000, 100_000));
        assert_eq!(ten.covering(105_000, 60_000), (40_000, 100_000));
        assert_eq!(ten.covering(109_999, 60_000), (50_000, 100_000));
        assert_eq!(
            DEFAULT_RESOLUTIONS.map(|r| (r.width_ms / 1000, r.retention_ms / 3_600_000)),
            [(10, 6), (60, 168), (3600, 2160)]
        );
    }

    #[test]
    fn reads_pick_a_resolution_that_keeps_the_span() {
        let pick = |span_ms| pick_resolution(&DEFAULT_RESOLUTIONS, span_ms, MAX_WINDOWS_PER_READ).unwrap().width_ms;
        assert_eq!(pick(5 * 60_000), 10_000);
        assert_eq!(pick(3_600_000), 10_000);
        assert_eq!(pick(6 * 3_600_000), 60_000);
        assert_eq!(pick(86_400_000), 3_600_000);
        assert_eq!(pick(7 * 86_400_000), 3_600_000);
        assert_eq!(pick(365 * 86_400_000), 3_600_000, "the longest kept, past every retention");
        assert_eq!(pick_resolution(&[], 1, 1), None);
    }

    fn value() -> impl Strategy<Value = f64> {
        prop_oneof![
            4 => 1e-3..1e6f64,
            2 => -1e4..1e4f64,
            1 => Just(0.0),
            1 => (-300i32..300).prop_map(|e| 10f64.powi(e / 10)),
        ]
    }

    /// The exact value of the sketch's rank, by sorting.
    fn exact(sorted: &[f64], q: f64) -> f64 {
        sorted[(q * (sorted.len() - 1) as f64).floor() as usize]
    }

    fn within(got: f64, want: f64, alpha: f64) -> bool {
        (got - want).abs() <= alpha * want.abs() * (1.0 + 1e-9)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        #[test]
        fn quantiles_are_within_alpha(mut values in proptest::collection::vec(value(), 1..400),
                                      alpha in prop_oneof![Just(0.01), Just(0.001), Just(0.05)],
                                      qs in proptest::collection::vec(0.0..=1.0f64, 1..8)) {
            let mut s = Sketch::new(alpha, DEFAULT_MAX_BINS).unwrap();
            values.iter().for_each(|&v| s.add(v));
            values.sort_by(f64::total_cmp);
            for q in qs.into_iter().chain([0.0, 0.5, 0.9, 0.95, 0.99, 1.0]) {
                let (got, want) = (s.quantile(q).unwrap(), exact(&values, q));
                prop_assert!(within(got, want, alpha), "q={} got {} want {}", q, got, want);
            }
        }

        #[test]
        fn merged_sketches_equal_one_sketch(values in proptest::collection::vec(value(), 0..300),
                                            cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..4)) {
            let mut cuts: Vec<usize> = cuts.iter().map(|c| c.index(values.len() + 1)).collect();
            cuts.extend([0, values.len()]);
            cuts.sort_unstable();
            let mut whole = Sketch::default();
            values.iter().for_each(|&v| whole.add(v));
            let mut merged = Sketch::default();
            for w in cuts.windows(2).rev() {
                let mut part = Sketch::default();
                values[w[0]..w[1]].iter().for_each(|&v| part.add(v));
                merged.merge(&part).unwrap();
            }
            prop_assert_eq!(&merged, &whole);
            if !values.is_empty() {
                let mut sorted = values.clone();
                sorted.sort_by(f64::total_cmp);
                for q in [0.0, 0.25, 0.5, 0.9, 0.99, 1.0] {
                    prop_assert!(within(merged.quantile(q).unwrap(), exact(&sorted, q), 0.01));
                }
            }
            let back: Sketch = serde_json::from_str(&serde_json::to_string(&merged).unwrap()).unwrap();
            prop_assert_eq!(back, merged);
        }

        #[test]
        fn collapsed_merges_keep_count_and_extremes(values in proptest::collection::vec(value(), 1..300),
                                                              cut in any::<prop::sample::Index>()) {
            // Few bins: collapsing happens; the count and the exact extremes survive it.
            let cut = cut.index(values.len() + 1);
            let (mut a, mut b) = (Sketch::new(0.01, 8).unwrap(), Sketch::new(0.01, 8).unwrap());
            values[..cut].iter().for_each(|&v| a.add(v));
            values[cut..].iter().for_each(|&v| b.add(v));
            a.merge(&b).unwrap();
            prop_assert!(a.bins() <= 16);
            prop_assert_eq!(a.count(), values.len() as u64);
            let mut sorted = values.clone();
            sorted.sort_by(f64::total_cmp);
            prop_assert_eq!(a.quantile(1.0), Some(sorted[sorted.len() - 1]));
            prop_assert_eq!(a.quantile(0.0), Some(sorted[0]));
        }

        #[test]
        fn aggregate_merge_equals_the_concatenation(a in proptest::collection::vec((value(), 0i64..50), 0..100),
                                                    b in proptest::collection::vec((value(), 0i64..50), 0..100)) {
            let fold = |vs: &[(f64, i64)]| {
                let mut g = Aggregate::new();
                vs.iter().for_each(|&(v, t)| g.add(v, t));
                g
            };
            let mut merged = fold(&a);
            merged.merge(&fold(&b)).unwrap();
            let all: Vec<(f64, i64)> = a.iter().chain(&b).copied().collect();
            let whole = fold(&all);
            prop_assert_eq!(merged.count, whole.count);
            prop_assert!((merged.sum - whole.sum).abs() <= 1e-9 * all.iter().map(|p| p.0.abs()).sum::<f64>().max(1.0));
            for agg in [Agg::Min, Agg::Max, Agg::Last, Agg::Count] {
                prop_assert_eq!(merged.value(agg), whole.value(agg), "{}", agg);
            }
            prop_assert_eq!(merged.last_ts, whole.last_ts);
            prop_assert_eq!(&merged.sketch, &whole.sketch);
        }

        #[test]
        fn parsed_aggs_round_trip(p in 0.0..=100.0f64) {
            let agg: Agg = format!("p{p}").parse().unwrap();
            prop_assert_eq!(agg.to_string().parse::<Agg>().unwrap(), agg);
            let q = agg.quantile().unwrap();
            prop_assert!((q - p / 100.0).abs() < 1e-12);
        }
    }
}

/// A token bucket: `rate` tokens a second up to `burst`, for a device's
/// samples. Pure: the caller passes `now` and keeps the bucket.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TokenBucket {
    tokens: f64,
    at: Millis,
}

impl TokenBucket {
    /// A full bucket.
    pub fn full(burst: f64, now: Millis) -> TokenBucket {
        TokenBucket { tokens: burst, at: now }
    }

    /// Takes `n` tokens, or says how long until there are enough (ms); a
    /// refused take leaves the bucket as it was. `n` above `burst` is never
    /// granted: the wait returned is the time to fill the whole bucket.
    pub fn take(&mut self, n: f64, rate: f64, burst: f64, now: Millis) -> Result<(), Millis> {
        let elapsed = (now - self.at).max(0) as f64 / 1000.0;
        let tokens = (self.tokens + elapsed * rate).min(burst);
        if n <= tokens {
            self.tokens = tokens - n;
            self.at = now.max(self.at);
            return Ok(());
        }
        let missing = n.min(burst) - tokens;
        Err(((missing.max(0.0) / rate) * 1000.0).ceil().max(1.0) as Millis)
    }
}

#[cfg(test)]
mod bucket_tests {
    use super::TokenBucket;

    #[test]
    fn a_bucket_grants_its_burst_then_its_rate() {
        let mut b = TokenBucket::full(100.0, 0);
        assert_eq!(b.take(60.0, 10.0, 100.0, 0), Ok(()));
        assert_eq!(b.take(60.0, 10.0, 100.0, 0), Err(2_000), "20 short at 10/s");
        assert_eq!(b.take(60.0, 10.0, 100.0, 1_000), Err(1_000), "a refusal takes nothing");
        assert_eq!(b.take(60.0, 10.0, 100.0, 2_000), Ok(()));
        // Refilled up to the burst only.
        assert_eq!(b.take(100.0, 10.0, 100.0, 1_000_000), Ok(()));
        assert_eq!(b.take(1.0, 10.0, 100.0, 1_000_000), Err(100));
        // More than the burst: never; the wait is a full bucket's.
        let mut b = TokenBucket::full(100.0, 0);
        assert!(b.take(101.0, 10.0, 100.0, 0).is_err());
        // A clock that steps back grants nothing extra.
        let mut b = TokenBucket::full(10.0, 5_000);
        assert_eq!(b.take(10.0, 1.0, 10.0, 5_000), Ok(()));
        assert_eq!(b.take(1.0, 1.0, 10.0, 0), Err(1_000));
    }
}
