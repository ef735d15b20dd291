//! LRP composites: which rule each layer gets.
//!
//! As in Zennit, a composite assigns rules by layer kind, with the first
//! layer (the one that sees pixels) treated apart: the pixel range is
//! bounded, which z^B exploits, while hidden activations are not. Max-pool
//! layers either pass relevance to the window's winner (the gradient) or
//! redistribute it like average pooling, in proportion to the window's
//! inputs (the paper's choice).

use common::config::{CompositeRules, CompositeSpec, MaxPoolRule, NamedComposite};
use engine::Layer;

use crate::error::ExplainError;
use crate::linear::LinearLayer;
use crate::rules::Rule;

/// How relevance passes through a 2x2 max-pool.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PoolTreatment {
    /// All of a window's relevance goes to the input that won the max
    /// (the gradient; Zennit's default for max-pools).
    WinnerTakeAll,
    /// The window's relevance is split in proportion to its inputs, as LRP-0
    /// through an average pool would (even split when they sum to zero).
    Average,
}

impl From<MaxPoolRule> for PoolTreatment {
    fn from(rule: MaxPoolRule) -> Self {
        match rule {
            MaxPoolRule::WinnerTakeAll => PoolTreatment::WinnerTakeAll,
            MaxPoolRule::Average => PoolTreatment::Average,
        }
    }
}

/// A resolved composite: a rule for the first linear layer, one for every
/// other convolution, one for every dense layer, and the max-pool treatment.
#[derive(Clone, Debug, PartialEq)]
pub struct Composite {
    pub first: Rule,
    pub conv: Rule,
    pub dense: Rule,
    pub max_pool: PoolTreatment,
}

impl Composite {
    /// The rules of `spec`; `bounds` are the normalised pixel range of each
    /// input channel, used by z^B.
    pub fn resolve(spec: &CompositeSpec, bounds: &[(f32, f32)]) -> Result<Composite, ExplainError> {
        match spec {
            CompositeSpec::Named(name) => Self::named(*name, bounds),
            CompositeSpec::Rules(rules) => Self::from_rules(rules, bounds),
        }
    }

    /// A named composite's rules (see [`NamedComposite::rules`]).
    pub fn named(name: NamedComposite, bounds: &[(f32, f32)]) -> Result<Composite, ExplainError> {
        Self::from_rules(&name.rules(), bounds)
    }

    /// A composite of rules by layer kind, checked as the config checks it
    /// (z^B for the first layer only, parameters in range).
    pub fn from_rules(rules: &CompositeRules, bounds: &[(f32, f32)]) -> Result<Composite, ExplainError> {
        rules.check().map_err(|(position, message)| ExplainError::BadComposite { position, message })?;
        Ok(Composite {
            first: Rule::from_spec(&rules.first, bounds)?,
            conv: Rule::from_spec(&rules.conv, bounds)?,
            dense: Rule::from_spec(&rules.dense, bounds)?,
            max_pool: rules.max_pool.into(),
        })
    }

    /// The rule for a conv or dense layer; `is_first` marks the layer that
    /// sees the input.
    pub fn rule_for(&self, layer: LinearLayer, is_first: bool) -> &Rule {
        match layer {
            _ if is_first => &self.first,
            LinearLayer::Conv(_) => &self.conv,
            LinearLayer::Dense(_) => &self.dense,
        }
    }
}

/// Index of the first conv or dense layer: the one that sees the input.
pub fn first_linear_layer(layers: &[Layer]) -> Option<usize> {
    layers.iter().position(|l| matches!(l, Layer::Conv(_) | Layer::Dense(_)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use common::config::RuleSpec;

    const BOUNDS: &[(f32, f32)] = &[(-1.0, 1.0), (-2.0, 0.5)];

    #[test]
    fn named_composites_resolve_as_design_says() {
        let paper = Composite::resolve(&CompositeSpec::Named(NamedComposite::Paper), BOUNDS).unwrap();
        assert_eq!(
            paper,
            Composite {
                first: Rule::ZBox { bounds: BOUNDS.to_vec() },
                conv: Rule::Gamma { gamma: 0.25 },
                dense: Rule::Zero,
                max_pool: PoolTreatment::Average,
            }
        );
        let egb = Composite::resolve(&CompositeSpec::Named(NamedComposite::EpsilonGammaBox), BOUNDS).unwrap();
        assert_eq!(
            egb,
            Composite {
                first: Rule::ZBox { bounds: BOUNDS.to_vec() },
                conv: Rule::Gamma { gamma: 0.25 },
                dense: Rule::Epsilon { epsilon: 1e-6 },
                max_pool: PoolTreatment::WinnerTakeAll,
            }
        );
        for name in NamedComposite::ALL {
            assert!(Composite::named(name, BOUNDS).is_ok());
        }
    }

    #[test]
    fn user_composites_resolve_and_keep_z_box_first() {
        let rules = CompositeRules {
            first: RuleSpec::ZPlus,
            conv: RuleSpec::AlphaBeta { alpha: 2.0, beta: 1.0 },
            dense: RuleSpec::Epsilon { epsilon: 0.1 },
            max_pool: MaxPoolRule::Average,
        };
        let c = Composite::resolve(&CompositeSpec::Rules(rules.clone()), BOUNDS).unwrap();
        assert_eq!(c.first, Rule::ZPlus);
        assert_eq!(c.conv, Rule::AlphaBeta { alpha: 2.0, beta: 1.0 });
        assert_eq!(c.dense, Rule::Epsilon { epsilon: 0.1 });
        assert_eq!(c.max_pool, PoolTreatment::Average);
        let misplaced = CompositeRules { conv: RuleSpec::ZBox, ..rules };
        let err = Composite::resolve(&CompositeSpec::Rules(misplaced), BOUNDS).unwrap_err().to_string();
        assert!(err.contains("first layer") && err.contains("conv"), "{err}");
    }

    #[test]
    fn the_first_linear_layer_gets_the_first_rule() {
        let model =
            engine::Model::zeros(&common::architecture::ModelKind::Simple.architecture(10), common::image::ImageShape::GRAY_28)
                .unwrap();
        let c = Composite::named(NamedComposite::EpsilonGammaBox, &[(-1.0, 1.0)]).unwrap();
        assert_eq!(first_linear_layer(&model.layers), Some(0));
        let rule = |i: usize| c.rule_for(LinearLayer::of(&model.layers[i]).unwrap(), i == 0).name();
        assert_eq!((rule(0), rule(3), rule(7)), ("z-box", "gamma", "epsilon"));
    }
}
