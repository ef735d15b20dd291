//! The measures of an attribution map by name: the summary tables' measure
//! columns, the config's `[summaries] measures` and the analysis all use
//! this one list (docs/DESIGN.md, "Tables"). How a measure is computed
//! lives in the summarizer.

use serde::{Deserialize, Serialize};

/// A summary measure of one map; its serde name is its column name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Measure {
    /// L2 norm of the map: `sqrt(sum x^2)`.
    Frobenius,
    /// L1 norm: `sum |x|`.
    L1,
    /// Shannon entropy (nats) of the positive part `max(x, 0)` normalised to sum 1.
    EntropyPos,
    /// Shannon entropy (nats) of the negative part's magnitudes `max(-x, 0)` normalised to sum 1.
    EntropyNeg,
    /// Shannon entropy (nats) of `|x|` normalised to sum 1.
    EntropyAbs,
    /// `EntropyPos / ln(pixels)`, in [0, 1].
    EntropyPosNormalized,
    /// `EntropyNeg / ln(pixels)`, in [0, 1].
    EntropyNegNormalized,
    /// `EntropyAbs / ln(pixels)`, in [0, 1].
    EntropyAbsNormalized,
    /// Fraction of pixels > 0.
    PosFrac,
    /// Fraction of pixels < 0.
    NegFrac,
    /// L2 norm of the positive part.
    PosNorm,
    /// L2 norm of the negative part.
    NegNorm,
    /// Hurley & Rickard's Gini index (sparseness) of `|x|`.
    Gini,
    /// `Frobenius / |logit|` of the explained logit: LRP relevance starts
    /// from that logit, so a norm grows with it; null when the logit is 0.
    FrobeniusPerLogit,
    /// `L1 / |logit|`, likewise.
    L1PerLogit,
    /// Pixels with `|x| > 1e-5 · max |x|` (Quantus's `EffectiveComplexity`
    /// on the map normalised by its largest magnitude); null for an
    /// all-zero map.
    EffectiveComplexity,
    /// Spearman's rho between the map and the same image's map at the
    /// previous checkpoint of the run; null at the first.
    RankSimPrev,
    /// Spearman's rho with the same image's map at the run's last
    /// checkpoint (1 there).
    RankSimFinal,
    /// Spearman's rho with the same image's map at step 0, the untrained
    /// model (a randomisation baseline in the spirit of Adebayo et al.'s
    /// parameter-randomisation test); null when the run has no step 0.
    RankSimInit,
}

/// How a measure is computed: from one map alone, or by comparing the map
/// with the same image's map at another checkpoint of the run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MeasureKind {
    OneMap,
    /// Against the map at the previous, the final or the first (step 0)
    /// checkpoint.
    Stability(Partner),
}

/// The checkpoint a stability measure compares with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Partner {
    Previous,
    Final,
    Initial,
}

impl Measure {
    /// Every measure, in the default column order.
    pub const ALL: [Measure; 19] = [
        Measure::Frobenius,
        Measure::L1,
        Measure::EntropyPos,
        Measure::EntropyNeg,
        Measure::EntropyAbs,
        Measure::EntropyPosNormalized,
        Measure::EntropyNegNormalized,
        Measure::EntropyAbsNormalized,
        Measure::PosFrac,
        Measure::NegFrac,
        Measure::PosNorm,
        Measure::NegNorm,
        Measure::Gini,
        Measure::FrobeniusPerLogit,
        Measure::L1PerLogit,
        Measure::EffectiveComplexity,
        Measure::RankSimPrev,
        Measure::RankSimFinal,
        Measure::RankSimInit,
    ];

    /// The paper's "norm".
    pub const NORM: Measure = Measure::Frobenius;
    /// The paper's "entropy".
    pub const ENTROPY: Measure = Measure::EntropyAbs;

    /// The column name.
    pub fn name(&self) -> &'static str {
        match self {
            Measure::Frobenius => "frobenius",
            Measure::L1 => "l1",
            Measure::EntropyPos => "entropy_pos",
            Measure::EntropyNeg => "entropy_neg",
            Measure::EntropyAbs => "entropy_abs",
            Measure::EntropyPosNormalized => "entropy_pos_normalized",
            Measure::EntropyNegNormalized => "entropy_neg_normalized",
            Measure::EntropyAbsNormalized => "entropy_abs_normalized",
            Measure::PosFrac => "pos_frac",
            Measure::NegFrac => "neg_frac",
            Measure::PosNorm => "pos_norm",
            Measure::NegNorm => "neg_norm",
            Measure::Gini => "gini",
            Measure::FrobeniusPerLogit => "frobenius_per_logit",
            Measure::L1PerLogit => "l1_per_logit",
            Measure::EffectiveComplexity => "effective_complexity",
            Measure::RankSimPrev => "rank_sim_prev",
            Measure::RankSimFinal => "rank_sim_final",
            Measure::RankSimInit => "rank_sim_init",
        }
    }

    pub fn kind(&self) -> MeasureKind {
        match self {
            Measure::RankSimPrev => MeasureKind::Stability(Partner::Previous),
            Measure::RankSimFinal => MeasureKind::Stability(Partner::Final),
            Measure::RankSimInit => MeasureKind::Stability(Partner::Initial),
            _ => MeasureKind::OneMap,
        }
    }

    pub fn parse(name: &str) -> Option<Measure> {
        Measure::ALL.into_iter().find(|m| m.name() == name)
    }

    /// The names of all measures, for messages.
    pub fn known() -> String {
        Measure::ALL.iter().map(|m| m.name()).collect::<Vec<_>>().join(", ")
    }
}

impl std::fmt::Display for Measure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serde_names_are_the_column_names() {
        for m in Measure::ALL {
            assert_eq!(serde_json::to_string(&m).unwrap(), format!("\"{}\"", m.name()));
            assert_eq!(Measure::parse(m.name()), Some(m));
        }
    }
}
