//! LRP rules for linear layers (conv and dense), as data.
//!
//! Every rule of the family redistributes a layer's output relevance `R_j`
//! onto its inputs in proportion to modified contributions `z_ij`:
//!
//! ```text
//! R_i = Σ_j  z_ij / stab(Σ_i z_ij + b'_j) · R_j
//! ```
//!
//! and every `z_ij` the rules use is a sum of *terms* `± x'_i · w'_ij`, where
//! `x'` is a modified input (the input, its positive or negative part, or a
//! bound of the input range) and `w'` a modified weight (the weight, its
//! positive or negative part, or a gamma-boosted weight). Writing a rule as
//! such terms lets one generic routine run all of them with two kernel calls
//! per term: `Σ_i x'_i w'_ij` is the layer's forward pass on `x'` with
//! weights `w'`, and `Σ_j w'_ij s_j` is its backward-to-input pass on
//! `s = R / stab(z)`. Alpha-beta is two such redistributions (the positive
//! and the negative contributions), weighted `α` and `-β`; Zennit's
//! generalised gamma is two redistributions too, each taking the outputs
//! of one sign.
//!
//! The stabiliser follows Zennit: `stab(z) = z + ε·sign(z)` with
//! `sign(0) = +1`, so a denominator is never zero while ε > 0.

use std::borrow::Cow;

use common::config::RuleSpec;
use rayon::prelude::*;

use crate::error::ExplainError;
use crate::linear::LinearLayer;

/// The stabiliser of LRP-0: small enough to change nothing but zero
/// denominators.
pub const LRP0_STABILISER: f32 = 1e-9;

/// Stabiliser of the gamma, z-plus, alpha-beta and z^B rules (Zennit's default).
pub const RULE_STABILISER: f32 = 1e-6;

/// Element-wise work on slices at least this long runs on rayon.
const PARALLEL_MIN_LEN: usize = 1 << 14;

/// An LRP rule for one linear layer, with its parameters.
#[derive(Clone, Debug, PartialEq)]
pub enum Rule {
    /// LRP-0: `z_ij = x_i w_ij`, bias kept, stabiliser 1e-9. On a ReLU
    /// network with winner-take-all pooling this is gradient × input.
    Zero,
    /// LRP-ε: like LRP-0 with stabiliser `epsilon`, which absorbs relevance of
    /// weak, noisy activations.
    Epsilon { epsilon: f32 },
    /// LRP-γ, generalised as Zennit's `Gamma` for inputs of either sign:
    /// where the layer's output is positive, `z_ij = x_i⁺ (w_ij + γ w_ij⁺) +
    /// x_i⁻ (w_ij + γ w_ij⁻)` with bias `b + γ b⁺`; where it is negative,
    /// `z_ij = x_i⁺ (w_ij + γ w_ij⁻) + x_i⁻ (w_ij + γ w_ij⁺)` with bias `b + γ
    /// b⁻`; where it is zero, no relevance. On non-negative inputs and
    /// positive outputs this is the original `x_i (w_ij + γ w_ij⁺)`: it
    /// favours contributions of the output's sign, which gives less noisy
    /// maps for hidden convolutions.
    Gamma { gamma: f32 },
    /// z⁺: `z_ij = x_i⁺ w_ij⁺ + x_i⁻ w_ij⁻` (only contributions that push the
    /// output up), with the bias's positive part `b⁺` in the denominator as
    /// in Zennit (it absorbs its share); conservative without biases
    /// wherever an output has any positive contribution.
    ZPlus,
    /// LRP-αβ: `α` times the z⁺ redistribution minus `β` times the
    /// redistribution of the negative contributions `x_i⁺ w_ij⁻ + x_i⁻ w_ij⁺`,
    /// whose denominator takes `b⁻` (Zennit's). `α = 1, β = 0` is z⁺.
    AlphaBeta { alpha: f32, beta: f32 },
    /// z^B for the first layer: `z_ij = x_i w_ij - l_i w_ij⁺ - h_i w_ij⁻` with
    /// `l, h` the input's value range per channel (the normalised pixel range),
    /// bias ignored (as in Zennit, where the three bias terms cancel).
    ZBox { bounds: Vec<(f32, f32)> },
    /// Flat: `z_ij = 1` for every input in output `j`'s receptive field
    /// (zero padding is outside it), bias ignored: an equal share of `R_j`
    /// to each, whatever the input and the weights (Zennit's `Flat`).
    Flat,
    /// w²: `z_ij = w_ij²`, bias `b_j²` (Zennit's `WSquare`, which squares
    /// every parameter): shares by squared weight, whatever the input.
    WSquare,
}

impl Rule {
    /// The rule a config entry describes; `bounds` (per input channel) are
    /// used by z^B only.
    pub fn from_spec(spec: &RuleSpec, bounds: &[(f32, f32)]) -> Result<Rule, ExplainError> {
        spec.check().map_err(|message| ExplainError::BadRuleParameter { rule: spec.name(), message })?;
        Ok(match *spec {
            RuleSpec::Zero => Rule::Zero,
            RuleSpec::Epsilon { epsilon } => Rule::Epsilon { epsilon },
            RuleSpec::Gamma { gamma } => Rule::Gamma { gamma },
            RuleSpec::ZPlus => Rule::ZPlus,
            RuleSpec::AlphaBeta { alpha, beta } => Rule::AlphaBeta { alpha, beta },
            RuleSpec::ZBox => {
                if let Some((l, h)) = bounds.iter().find(|(l, h)| !(l.is_finite() && h.is_finite() && l <= h)) {
                    return Err(ExplainError::BadRuleParameter {
                        rule: "z-box",
                        message: format!("bounds ({l}, {h}) are not a finite range low <= high"),
                    });
                }
                Rule::ZBox { bounds: bounds.to_vec() }
            }
            RuleSpec::Flat => Rule::Flat,
            RuleSpec::WSquare => Rule::WSquare,
        })
    }

    pub fn name(&self) -> &'static str {
        match self {
            Rule::Zero => "zero",
            Rule::Epsilon { .. } => "epsilon",
            Rule::Gamma { .. } => "gamma",
            Rule::ZPlus => "z-plus",
            Rule::AlphaBeta { .. } => "alpha-beta",
            Rule::ZBox { .. } => "z-box",
            Rule::Flat => "flat",
            Rule::WSquare => "w-square",
        }
    }

    /// The rule as weighted redistributions of modified contributions.
    fn redistributions(&self) -> Vec<Redistribution> {
        use InputPart as X;
        use WeightPart as W;
        let positive = [Term::plus(X::Positive, W::Positive), Term::plus(X::Negative, W::Negative)];
        let negative = [Term::plus(X::Positive, W::Negative), Term::plus(X::Negative, W::Positive)];
        let single = |weight, bias, stabiliser| Redistribution {
            coefficient: 1.0,
            terms: vec![Term::plus(X::Whole, weight)],
            bias,
            stabiliser,
            outputs: OutputSign::Any,
        };
        let whole = |terms: Vec<Term>, bias| Redistribution {
            coefficient: 1.0,
            terms,
            bias,
            stabiliser: RULE_STABILISER,
            outputs: OutputSign::Any,
        };
        match *self {
            Rule::Zero => vec![single(W::Whole, BiasPart::Whole, LRP0_STABILISER)],
            Rule::Epsilon { epsilon } => vec![single(W::Whole, BiasPart::Whole, epsilon)],
            Rule::Gamma { gamma } => {
                let (up, down) = (W::GammaBoosted(gamma), W::GammaBoostedNegative(gamma));
                [
                    (
                        OutputSign::Positive,
                        [Term::plus(X::Positive, up), Term::plus(X::Negative, down)],
                        BiasPart::GammaBoosted(gamma),
                    ),
                    (
                        OutputSign::Negative,
                        [Term::plus(X::Positive, down), Term::plus(X::Negative, up)],
                        BiasPart::GammaBoostedNegative(gamma),
                    ),
                ]
                .into_iter()
                .map(|(outputs, terms, bias)| Redistribution { outputs, ..whole(terms.to_vec(), bias) })
                .collect()
            }
            Rule::ZPlus => vec![whole(positive.to_vec(), BiasPart::Positive)],
            Rule::AlphaBeta { alpha, beta } => [(alpha, positive, BiasPart::Positive), (-beta, negative, BiasPart::Negative)]
                .into_iter()
                .filter(|(coefficient, _, _)| *coefficient != 0.0)
                .map(|(coefficient, terms, bias)| Redistribution { coefficient, ..whole(terms.to_vec(), bias) })
                .collect(),
            Rule::ZBox { .. } => vec![whole(
                vec![
                    Term::plus(X::Whole, W::Whole),
                    Term { input: X::LowBound, weight: W::Positive, sign: -1.0 },
                    Term { input: X::HighBound, weight: W::Negative, sign: -1.0 },
                ],
                BiasPart::Zero,
            )],
            Rule::Flat => vec![whole(vec![Term::plus(X::Ones, W::Ones)], BiasPart::Zero)],
            Rule::WSquare => vec![whole(vec![Term::plus(X::Ones, W::Squared)], BiasPart::Squared)],
        }
    }

    /// Redistributes `relevance` (the layer's output relevance, N·out) onto
    /// the layer's `input` (N·in). `output` is the layer's own output on
    /// `input` (from the forward trace); rules that use the plain
    /// contributions reuse it instead of recomputing it. `range` says what
    /// the network's structure guarantees of the input's values (an input
    /// after a ReLU is never negative), which spares a pass over it.
    pub fn relevance(
        &self,
        layer: LinearLayer,
        input: &[f32],
        range: InputRange,
        output: &[f32],
        relevance: &[f32],
    ) -> Result<Vec<f32>, ExplainError> {
        let (in_len, out_len) = (layer.input_len(), layer.output_len());
        let batch = input.len() / in_len.max(1);
        if input.len() != batch * in_len || output.len() != batch * out_len || relevance.len() != batch * out_len {
            return Err(ExplainError::Shape(format!(
                "LRP through a layer of {in_len} -> {out_len} floats got input {}, output {}, relevance {} floats",
                input.len(),
                output.len(),
                relevance.len()
            )));
        }
        let shared = SharedImages {
            bounds: match self {
                Rule::ZBox { bounds } => Some(bound_images(bounds, in_len)?),
                _ => None,
            },
            ones: matches!(self, Rule::Flat | Rule::WSquare).then(|| vec![1.0; in_len]),
            // Only the rules with sign parts read them (a pass over the input).
            signs: match (self, range) {
                (_, InputRange::NonNegative) => InputSigns { positive: true, negative: false },
                (Rule::Gamma { .. } | Rule::ZPlus | Rule::AlphaBeta { .. }, InputRange::Any) => InputSigns::of(input),
                (_, InputRange::Any) => InputSigns { positive: true, negative: true },
            },
        };
        let mut result: Option<Vec<f32>> = None;
        // Whether outputs of the sign the next redistribution takes carry
        // relevance, as the one before found (the generalised gamma's
        // negative outputs, which carry none before a ReLU).
        let mut next_sign_carries = true;
        for redistribution in self.redistributions() {
            if redistribution.outputs != OutputSign::Any && !next_sign_carries {
                continue;
            }
            let (part, opposite_carries) = redistribution.apply(layer, input, output, relevance, &shared);
            next_sign_carries = opposite_carries;
            match &mut result {
                None => {
                    let mut part = part;
                    if redistribution.coefficient != 1.0 {
                        scale(&mut part, redistribution.coefficient);
                    }
                    result = Some(part);
                }
                Some(total) => add_scaled(total, &part, redistribution.coefficient),
            }
        }
        Ok(result.unwrap_or_else(|| vec![0.0; input.len()]))
    }
}

/// What is known of a layer's input values before looking at them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InputRange {
    /// Any sign.
    Any,
    /// Never negative: the output of a ReLU, or of pools, flattens and
    /// dropouts after one.
    NonNegative,
}

/// Which input a term pushes through the layer.
#[derive(Clone, Copy, Debug, PartialEq)]
enum InputPart {
    Whole,
    Positive,
    Negative,
    /// The lower bound of the input range (z^B), the same for every image.
    LowBound,
    /// The upper bound of the input range (z^B), the same for every image.
    HighBound,
    /// All ones (flat, w²), the same for every image.
    Ones,
}

/// Which weights a term pushes through the layer.
#[derive(Clone, Copy, Debug, PartialEq)]
enum WeightPart {
    Whole,
    Positive,
    Negative,
    /// `w + γ w⁺`.
    GammaBoosted(f32),
    /// `w + γ w⁻` (the generalised gamma).
    GammaBoostedNegative(f32),
    /// All ones (flat).
    Ones,
    /// `w²` (w²).
    Squared,
}

/// Which bias joins the denominator.
#[derive(Clone, Copy, Debug, PartialEq)]
enum BiasPart {
    Whole,
    /// `b + γ b⁺`.
    GammaBoosted(f32),
    /// `b + γ b⁻` (the generalised gamma, where outputs are negative).
    GammaBoostedNegative(f32),
    /// `b²` (w²).
    Squared,
    /// `b⁺` (z⁺ and the positive part of alpha-beta, as in Zennit).
    Positive,
    /// `b⁻` (the negative part of alpha-beta, as in Zennit).
    Negative,
    Zero,
}

/// One `sign · x' · w'` part of the contributions.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Term {
    input: InputPart,
    weight: WeightPart,
    sign: f32,
}

impl Term {
    fn plus(input: InputPart, weight: WeightPart) -> Self {
        Term { input, weight, sign: 1.0 }
    }
}

/// `coefficient · R_i` with `R_i = Σ_j z_ij / stab(Σ_i z_ij + b'_j) · R_j`,
/// `z_ij` the sum of the terms, over the outputs `j` of the sign
/// `outputs` (the layer's own output, from the trace).
#[derive(Clone, Debug, PartialEq)]
struct Redistribution {
    coefficient: f32,
    terms: Vec<Term>,
    bias: BiasPart,
    stabiliser: f32,
    outputs: OutputSign,
}

/// Which outputs of a layer a redistribution takes relevance from.
#[derive(Clone, Copy, Debug, PartialEq)]
enum OutputSign {
    Any,
    /// Outputs > 0.
    Positive,
    /// Outputs < 0.
    Negative,
}

impl OutputSign {
    /// The outputs the other redistribution of a sign-split rule takes.
    fn opposite(&self) -> Option<OutputSign> {
        match self {
            OutputSign::Any => None,
            OutputSign::Positive => Some(OutputSign::Negative),
            OutputSign::Negative => Some(OutputSign::Positive),
        }
    }
}

/// The modified inputs that are the same for every image (z^B's bounds and
/// the ones of flat and w², where the rule uses them), and the signs of the
/// input's values.
struct SharedImages {
    bounds: Option<BoundImages>,
    ones: Option<Vec<f32>>,
    signs: InputSigns,
}

/// Whether an input has values above and below zero: the positive part of
/// a post-ReLU activation is the activation itself, and its negative part
/// zero, so neither needs a copy.
#[derive(Clone, Copy, Debug, PartialEq)]
struct InputSigns {
    positive: bool,
    negative: bool,
}

impl InputSigns {
    fn of(input: &[f32]) -> Self {
        // Per chunk a min and max (a loop the compiler vectorises).
        let (low, high) = input
            .par_chunks(PARALLEL_MIN_LEN)
            .map(|chunk| chunk.iter().fold((0.0f32, 0.0f32), |(low, high), &v| (low.min(v), high.max(v))))
            .reduce(|| (0.0, 0.0), |a, b| (a.0.min(b.0), a.1.max(b.1)));
        InputSigns { positive: high > 0.0, negative: low < 0.0 }
    }
}

/// The z^B bound images of one input (`low`, `high`), per channel constant.
struct BoundImages {
    low: Vec<f32>,
    high: Vec<f32>,
}

fn bound_images(bounds: &[(f32, f32)], in_len: usize) -> Result<BoundImages, ExplainError> {
    if bounds.is_empty() || in_len % bounds.len() != 0 {
        return Err(ExplainError::Shape(format!(
            "z-box has bounds for {} channel(s), which do not divide an input of {in_len} floats",
            bounds.len()
        )));
    }
    let plane = in_len / bounds.len();
    let expand = |pick: fn(&(f32, f32)) -> f32| bounds.iter().flat_map(|b| std::iter::repeat(pick(b)).take(plane)).collect();
    Ok(BoundImages { low: expand(|b| b.0), high: expand(|b| b.1) })
}

/// A modified input: one per image, or one image shared by the whole batch.
enum ModifiedInput<'a> {
    PerImage(Cow<'a, [f32]>),
    Shared(&'a [f32]),
}

impl Redistribution {
    /// Plain contributions (`x · w + b`) equal the layer's traced output.
    fn is_plain(&self) -> bool {
        self.bias == BiasPart::Whole
            && self.terms == [Term::plus(InputPart::Whole, WeightPart::Whole)]
            && self.outputs == OutputSign::Any
    }

    /// The redistribution's part of the input relevance, and whether any
    /// output of the opposite sign carries relevance (false for
    /// `OutputSign::Any`), found on the way.
    fn apply(
        &self,
        layer: LinearLayer,
        input: &[f32],
        output: &[f32],
        relevance: &[f32],
        shared: &SharedImages,
    ) -> (Vec<f32>, bool) {
        let in_len = layer.input_len();
        let batch = input.len() / in_len;
        let opposite = self.outputs.opposite();

        // Modified inputs and weights of the terms; terms whose input is all
        // zero (the negative part of post-ReLU activations) contribute nothing.
        let terms: Vec<(ModifiedInput, Cow<[f32]>, f32)> = self
            .terms
            .iter()
            .filter_map(|term| {
                let x = modified_input(term.input, input, shared)?;
                Some((x, modified_weight(term.weight, layer.weight()), term.sign))
            })
            .collect();

        // Denominators z_j = Σ_i z_ij + b'_j, then s = R / stab(z).
        let stabiliser = self.stabiliser;
        let quotient = |r: f32, z: f32| {
            let denominator = z + if z >= 0.0 { stabiliser } else { -stabiliser };
            if r == 0.0 || denominator == 0.0 {
                0.0
            } else {
                r / denominator
            }
        };
        let mut opposite_carries = false;
        let s: Vec<f32> = if self.is_plain() {
            zip_map(relevance, output, quotient)
        } else {
            let mut bias = modified_bias(self.bias, layer.bias());
            let mut z: Option<Vec<f32>> = None;
            for (x, w, sign) in &terms {
                match (&mut z, x) {
                    // The first term starts the sum; the kernel adds the bias for free.
                    (None, ModifiedInput::PerImage(x)) if *sign == 1.0 => z = Some(layer.forward(x, w, bias.take().as_deref())),
                    (None, _) => {
                        let mut contribution = forward_term(layer, x, w, batch);
                        scale(&mut contribution, *sign);
                        z = Some(contribution);
                    }
                    (Some(z), _) => add_scaled(z, &forward_term(layer, x, w, batch), *sign),
                }
            }
            let mut z = z.unwrap_or_else(|| vec![0.0f32; relevance.len()]);
            if let Some(bias) = bias {
                let out_len = layer.output_len();
                let per_output = out_len / bias.len().max(1);
                z.par_chunks_mut(out_len).for_each(|image| {
                    for (chunk, b) in image.chunks_mut(per_output).zip(bias.iter()) {
                        chunk.iter_mut().for_each(|v| *v += b);
                    }
                });
            }
            match (self.outputs, opposite) {
                (OutputSign::Any, _) | (_, None) => z
                    .par_iter_mut()
                    .with_min_len(PARALLEL_MIN_LEN)
                    .zip(relevance.par_iter())
                    .for_each(|(z, &r)| *z = quotient(r, *z)),
                // Outputs of the other sign pass nothing here; whether any
                // of them carries relevance is noted on the way.
                // (Branch-free, so that the loop vectorises: `o * sign` is
                // positive on this redistribution's outputs, negative on the
                // other's.)
                (this, Some(_)) => {
                    let sign = if this == OutputSign::Positive { 1.0f32 } else { -1.0 };
                    opposite_carries = z
                        .par_chunks_mut(PARALLEL_MIN_LEN)
                        .zip(relevance.par_chunks(PARALLEL_MIN_LEN))
                        .zip(output.par_chunks(PARALLEL_MIN_LEN))
                        .map(|((z, r), o)| {
                            let mut carries = false;
                            for ((z, &r), &o) in z.iter_mut().zip(r).zip(o) {
                                let signed = o * sign;
                                carries |= (r != 0.0) & (signed < 0.0);
                                let denominator = *z + if *z >= 0.0 { stabiliser } else { -stabiliser };
                                let kept = (signed > 0.0) & (r != 0.0) & (denominator != 0.0);
                                *z = if kept { r / denominator } else { 0.0 };
                            }
                            carries
                        })
                        .reduce(|| false, |a, b| a | b)
                }
            }
            z
        };

        // R_i = Σ_terms sign · x'_i · (w'ᵀ s)_i, with the w'ᵀ s of all terms
        // from one stacked backward pass.
        let mut result = vec![0.0f32; input.len()];
        if terms.is_empty() {
            return (result, opposite_carries);
        }
        let weights: Vec<&[f32]> = terms.iter().map(|(_, w, _)| &**w).collect();
        let gradients = layer.backward_input_stacked(&s, &weights);
        result.par_chunks_mut(in_len).zip(gradients.par_chunks(terms.len() * in_len)).enumerate().for_each(|(n, (r, g))| {
            for ((x, _, sign), g) in terms.iter().zip(g.chunks_exact(in_len)) {
                let x = match x {
                    ModifiedInput::PerImage(x) => &x[n * in_len..(n + 1) * in_len],
                    ModifiedInput::Shared(image) => image,
                };
                for ((r, &g), &x) in r.iter_mut().zip(g).zip(x) {
                    *r += sign * x * g;
                }
            }
        });
        (result, opposite_carries)
    }
}

/// One term's contributions summed over the inputs, for the whole batch.
fn forward_term(layer: LinearLayer, x: &ModifiedInput, weight: &[f32], batch: usize) -> Vec<f32> {
    match x {
        ModifiedInput::PerImage(x) => layer.forward(x, weight, None),
        // The same for every image: compute once, then repeat.
        ModifiedInput::Shared(image) => layer.forward(image, weight, None).repeat(batch),
    }
}

fn modified_input<'a>(part: InputPart, input: &'a [f32], shared: &'a SharedImages) -> Option<ModifiedInput<'a>> {
    // The part is all zero (None), the input itself, or a copy.
    let sign_part = |present: bool, other_sign: bool, keep: fn(f32) -> f32| -> Option<ModifiedInput<'a>> {
        match (present, other_sign) {
            (false, _) => None,
            (true, false) => Some(ModifiedInput::PerImage(Cow::Borrowed(input))),
            (true, true) => Some(ModifiedInput::PerImage(Cow::Owned(
                input.par_iter().with_min_len(PARALLEL_MIN_LEN).map(|&v| keep(v)).collect(),
            ))),
        }
    };
    let signs = shared.signs;
    match part {
        InputPart::Whole => Some(ModifiedInput::PerImage(Cow::Borrowed(input))),
        InputPart::Positive => sign_part(signs.positive, signs.negative, |v| v.max(0.0)),
        InputPart::Negative => sign_part(signs.negative, signs.positive, |v| v.min(0.0)),
        InputPart::LowBound => shared.bounds.as_ref().map(|b| ModifiedInput::Shared(&b.low)),
        InputPart::HighBound => shared.bounds.as_ref().map(|b| ModifiedInput::Shared(&b.high)),
        InputPart::Ones => shared.ones.as_deref().map(ModifiedInput::Shared),
    }
}

fn modified_weight(part: WeightPart, weight: &[f32]) -> Cow<'_, [f32]> {
    match part {
        WeightPart::Whole => Cow::Borrowed(weight),
        WeightPart::Positive => Cow::Owned(weight.iter().map(|&w| w.max(0.0)).collect()),
        WeightPart::Negative => Cow::Owned(weight.iter().map(|&w| w.min(0.0)).collect()),
        WeightPart::GammaBoosted(gamma) => Cow::Owned(weight.iter().map(|&w| w + gamma * w.max(0.0)).collect()),
        WeightPart::GammaBoostedNegative(gamma) => Cow::Owned(weight.iter().map(|&w| w + gamma * w.min(0.0)).collect()),
        WeightPart::Ones => Cow::Owned(vec![1.0; weight.len()]),
        WeightPart::Squared => Cow::Owned(weight.iter().map(|&w| w * w).collect()),
    }
}

fn modified_bias(part: BiasPart, bias: &[f32]) -> Option<Vec<f32>> {
    match part {
        BiasPart::Whole => Some(bias.to_vec()),
        BiasPart::GammaBoosted(gamma) => Some(bias.iter().map(|&b| b + gamma * b.max(0.0)).collect()),
        BiasPart::GammaBoostedNegative(gamma) => Some(bias.iter().map(|&b| b + gamma * b.min(0.0)).collect()),
        BiasPart::Squared => Some(bias.iter().map(|&b| b * b).collect()),
        BiasPart::Positive => Some(bias.iter().map(|&b| b.max(0.0)).collect()),
        BiasPart::Negative => Some(bias.iter().map(|&b| b.min(0.0)).collect()),
        BiasPart::Zero => None,
    }
}

fn zip_map(a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> f32 + Sync) -> Vec<f32> {
    a.par_iter().with_min_len(PARALLEL_MIN_LEN).zip(b.par_iter()).map(|(&a, &b)| f(a, b)).collect()
}

/// `total += factor · part`.
fn add_scaled(total: &mut [f32], part: &[f32], factor: f32) {
    total.par_iter_mut().with_min_len(PARALLEL_MIN_LEN).zip(part.par_iter()).for_each(|(t, &p)| *t += factor * p);
}

fn scale(values: &mut [f32], factor: f32) {
    values.par_iter_mut().with_min_len(PARALLEL_MIN_LEN).for_each(|v| *v *= factor);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::{assert_close, random};
    use engine::kernels::ConvGeometry;
    use engine::{Conv2d, Dense};

    fn dense(weight: Vec<f32>, bias: Vec<f32>) -> Dense {
        let outputs = bias.len();
        Dense { name: "fc".into(), inputs: weight.len() / outputs, outputs, weight: weight.into(), bias }
    }

    fn through(rule: &Rule, layer: LinearLayer, input: &[f32], relevance: &[f32]) -> Vec<f32> {
        let output = layer.forward(input, layer.weight(), Some(layer.bias()));
        rule.relevance(layer, input, InputRange::Any, &output, relevance).unwrap()
    }

    /// x = [1, -2, 3], w = [2, -1, 0.5]: the positive contributions are
    /// x⁺w⁺ = 2 (i0), x⁻w⁻ = 2 (i1), x⁺w⁺ = 1.5 (i2), total 5.5; relevance
    /// 11 splits as [4, 4, 3]. A bias joins the denominator with its
    /// positive part only (Zennit's z⁺): b = 0.5 gives 6, so 12 splits as
    /// [4, 4, 3] and the bias keeps 1; b = -0.7 changes nothing.
    #[test]
    fn z_plus_by_hand() {
        let x = [1.0, -2.0, 3.0];
        for bias in [0.0, -0.7] {
            let layer = dense(vec![2.0, -1.0, 0.5], vec![bias]);
            let r = through(&Rule::ZPlus, LinearLayer::Dense(&layer), &x, &[11.0]);
            assert_close(&r, &[4.0, 4.0, 3.0], 1e-5, "z-plus");
        }
        let layer = dense(vec![2.0, -1.0, 0.5], vec![0.5]);
        let r = through(&Rule::ZPlus, LinearLayer::Dense(&layer), &x, &[12.0]);
        assert_close(&r, &[4.0, 4.0, 3.0], 1e-5, "z-plus with a positive bias");
    }

    /// Alpha-beta's negative part takes the bias's negative part: x = [1, 2],
    /// w = [1, -1], b = -1, R = 6. Positive: z = 1 (b⁺ = 0), P = [6, 0];
    /// negative: z = -2 - 1 = -3, N = [0, 6 · -2 / -3] = [0, 4]; α = 2,
    /// β = 1: 2P - N = [12, -4].
    #[test]
    fn alpha_beta_puts_each_bias_part_in_its_denominator() {
        let layer = dense(vec![1.0, -1.0], vec![-1.0]);
        let r = through(&Rule::AlphaBeta { alpha: 2.0, beta: 1.0 }, LinearLayer::Dense(&layer), &[1.0, 2.0], &[6.0]);
        assert_close(&r, &[12.0, -4.0], 1e-5, "alpha-beta with a negative bias");
    }

    /// x = [1, 2, 3], w = [2, -1, 0.5], R = 7: positive contributions
    /// [2, 0, 1.5] give P = [4, 0, 3]; the negative one (-2 at i1) gives
    /// N = [0, 7, 0]; α=2, β=1: 2P - N = [8, -7, 6], which sums to R.
    #[test]
    fn alpha_beta_by_hand_and_alpha_one_beta_zero_is_z_plus() {
        let layer = dense(vec![2.0, -1.0, 0.5], vec![0.0]);
        let linear = LinearLayer::Dense(&layer);
        let r = through(&Rule::AlphaBeta { alpha: 2.0, beta: 1.0 }, linear, &[1.0, 2.0, 3.0], &[7.0]);
        assert_close(&r, &[8.0, -7.0, 6.0], 1e-5, "alpha-beta");

        let geometry = ConvGeometry { in_channels: 2, out_channels: 3, kernel: 3, padding: 1, height: 5, width: 4, stride: 1 };
        let conv = Conv2d {
            name: "c".into(),
            geometry,
            weight: random(geometry.weight_len(), 1, -1.0, 1.0),
            // No bias: z⁺ and alpha-beta conserve only where no bias
            // absorbs a share.
            bias: vec![0.0; 3],
        };
        let linear = LinearLayer::Conv(&conv);
        let x = random(3 * geometry.in_len(), 3, -1.0, 1.0);
        let relevance = random(3 * geometry.out_len(), 4, 0.0, 1.0);
        let z_plus = through(&Rule::ZPlus, linear, &x, &relevance);
        let alpha_one = through(&Rule::AlphaBeta { alpha: 1.0, beta: 0.0 }, linear, &x, &relevance);
        assert_eq!(z_plus, alpha_one);
        // Non-negative relevance on non-negative inputs stays non-negative and is conserved.
        let x_pos: Vec<f32> = x.iter().map(|v| v.abs()).collect();
        let r = through(&Rule::ZPlus, linear, &x_pos, &relevance);
        assert!(r.iter().all(|&v| v >= 0.0));
        let total: f32 = relevance.iter().sum();
        assert!((r.iter().sum::<f32>() - total).abs() < 1e-3 * total, "z-plus conserves");
        let r = through(&Rule::AlphaBeta { alpha: 2.0, beta: 1.0 }, linear, &x, &relevance);
        assert!((r.iter().sum::<f32>() - total).abs() < 1e-3 * total, "alpha-beta with α-β=1 conserves");
    }

    #[test]
    fn gamma_boosts_positive_weights_and_bias() {
        // w = [1, -1], b = 1, x = [2, 1]: γ = 0.5 gives w' = [1.5, -1], b' = 1.5,
        // z = 3 - 1 + 1.5 = 3.5; R = 7 splits as [3 / 3.5, -1 / 3.5] · 7.
        let layer = dense(vec![1.0, -1.0], vec![1.0]);
        let r = through(&Rule::Gamma { gamma: 0.5 }, LinearLayer::Dense(&layer), &[2.0, 1.0], &[7.0]);
        assert_close(&r, &[6.0, -2.0], 1e-5, "gamma");
    }

    /// Flat by hand: two outputs of a dense layer share their relevance
    /// equally among the three inputs, whatever the inputs, weights and
    /// bias. On a conv with zero padding an output's share goes to the
    /// inputs of its receptive field that exist: a corner output of a 3x3
    /// kernel on one channel reaches 4 inputs.
    #[test]
    fn flat_shares_equally_over_the_receptive_field() {
        let layer = dense(vec![2.0, -1.0, 0.5, 0.0, 3.0, -4.0], vec![0.7, -0.2]);
        let r = through(&Rule::Flat, LinearLayer::Dense(&layer), &[1.0, -2.0, 3.0], &[6.0, 3.0]);
        assert_close(&r, &[3.0, 3.0, 3.0], 1e-5, "flat on a dense layer");

        let geometry = ConvGeometry { in_channels: 1, out_channels: 1, kernel: 3, padding: 1, height: 3, width: 3, stride: 1 };
        let conv = Conv2d { name: "c".into(), geometry, weight: random(9, 5, -1.0, 1.0), bias: vec![0.3] };
        let mut relevance = vec![0.0f32; 9];
        relevance[0] = 8.0; // the top-left output: inputs (0,0), (0,1), (1,0), (1,1)
        let x = random(9, 6, -1.0, 1.0);
        let r = through(&Rule::Flat, LinearLayer::Conv(&conv), &x, &relevance);
        assert_close(&r, &[2.0, 2.0, 0.0, 2.0, 2.0, 0.0, 0.0, 0.0, 0.0], 1e-5, "flat on a padded conv");
    }

    /// w² by hand: weights [2, -1, 1] and bias 1 give squares [4, 1, 1] and
    /// 1, denominator 7; relevance 14 splits as [8, 2, 2] (the bias's share,
    /// 2, is absorbed), whatever the input.
    #[test]
    fn w_square_shares_by_squared_weight_with_the_squared_bias() {
        let layer = dense(vec![2.0, -1.0, 1.0], vec![1.0]);
        for x in [[1.0, 2.0, 3.0], [-5.0, 0.0, 0.25]] {
            let r = through(&Rule::WSquare, LinearLayer::Dense(&layer), &x, &[14.0]);
            assert_close(&r, &[8.0, 2.0, 2.0], 1e-5, "w-square");
        }
        // Without a bias it conserves.
        let layer = dense(vec![2.0, -1.0, 1.0], vec![0.0]);
        let r = through(&Rule::WSquare, LinearLayer::Dense(&layer), &[1.0, 2.0, 3.0], &[12.0]);
        assert_close(&r, &[8.0, 2.0, 2.0], 1e-5, "w-square without bias");
    }

    #[test]
    fn parameters_out_of_range_are_errors() {
        assert!(Rule::from_spec(&RuleSpec::Gamma { gamma: -1.0 }, &[]).unwrap_err().to_string().contains("gamma"));
        assert!(Rule::from_spec(&RuleSpec::Epsilon { epsilon: f32::NAN }, &[]).is_err());
        assert!(Rule::from_spec(&RuleSpec::ZBox, &[(1.0, -1.0)]).unwrap_err().to_string().contains("z-box"));
        assert_eq!(Rule::from_spec(&RuleSpec::ZBox, &[(-1.0, 1.0)]).unwrap(), Rule::ZBox { bounds: vec![(-1.0, 1.0)] });
    }

    #[test]
    fn mismatched_sizes_are_errors_not_panics() {
        let layer = dense(vec![1.0, -1.0], vec![1.0]);
        let err =
            Rule::Zero.relevance(LinearLayer::Dense(&layer), &[1.0, 2.0], InputRange::Any, &[1.0], &[1.0, 2.0]).unwrap_err();
        assert!(matches!(err, ExplainError::Shape(_)));
    }
}
