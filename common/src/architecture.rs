//! The networks the tool trains, as data: each preset is a list of layers
//! with the names of the reference PyTorch modules (docs/DESIGN.md,
//! "Checkpoints"). The engine builds its network from this list; the config
//! checks layer names against it (a Grad-CAM layer, say) without linking
//! the engine.

use serde::{Deserialize, Serialize};

/// Which of the paper's two architectures.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ModelKind {
    /// Two 5x5 convolutions (16, 32 channels), each followed by ReLU and a
    /// 2x2 max-pool, then one dense layer.
    Simple,
    /// Six 3x3 'same' convolutions (32, 32, 64, 64, 128, 128) with 2x2
    /// max-pools after the 2nd, 4th and 6th, then dense 1024 + ReLU, dense.
    Complex,
}

/// One layer of an architecture.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LayerSpec {
    /// A square convolution with stride 1 and 'same' padding (kernel / 2).
    Conv {
        name: String,
        channels: usize,
        kernel: usize,
    },
    Relu,
    /// 2x2 max-pool, stride 2.
    MaxPool,
    Flatten,
    Dense {
        name: String,
        outputs: usize,
    },
}

impl LayerSpec {
    /// The module name of a layer with parameters.
    pub fn name(&self) -> Option<&str> {
        match self {
            LayerSpec::Conv { name, .. } | LayerSpec::Dense { name, .. } => Some(name),
            _ => None,
        }
    }
}

/// What a preset is built of, before the data set fixes the number of
/// classes.
enum Part {
    Conv(usize, usize),
    Relu,
    Pool,
    Flatten,
    Dense(&'static str, Option<usize>),
}

impl ModelKind {
    pub const ALL: [ModelKind; 2] = [ModelKind::Simple, ModelKind::Complex];

    pub fn name(&self) -> &'static str {
        match self {
            ModelKind::Simple => "simple",
            ModelKind::Complex => "complex",
        }
    }

    pub fn parse(name: &str) -> Option<ModelKind> {
        ModelKind::ALL.into_iter().find(|k| k.name() == name)
    }

    fn parts(&self) -> Vec<Part> {
        use Part::*;
        match self {
            ModelKind::Simple => vec![Conv(16, 5), Relu, Pool, Conv(32, 5), Relu, Pool, Flatten, Dense("fc1", None)],
            ModelKind::Complex => vec![
                Conv(32, 3),
                Relu,
                Conv(32, 3),
                Relu,
                Pool,
                Conv(64, 3),
                Relu,
                Conv(64, 3),
                Relu,
                Pool,
                Conv(128, 3),
                Relu,
                Conv(128, 3),
                Relu,
                Pool,
                Flatten,
                Dense("fc1", Some(1024)),
                Relu,
                Dense("fc2", None),
            ],
        }
    }

    /// The layers for `classes` output classes. A convolution is named
    /// after its position in the feature layers (`features_conv.3`: the
    /// fourth layer), as in the reference module's `nn.Sequential`.
    pub fn layers(&self, classes: usize) -> Vec<LayerSpec> {
        self.parts()
            .into_iter()
            .enumerate()
            .map(|(index, part)| match part {
                Part::Conv(channels, kernel) => LayerSpec::Conv { name: format!("features_conv.{index}"), channels, kernel },
                Part::Relu => LayerSpec::Relu,
                Part::Pool => LayerSpec::MaxPool,
                Part::Flatten => LayerSpec::Flatten,
                Part::Dense(name, outputs) => LayerSpec::Dense { name: name.to_string(), outputs: outputs.unwrap_or(classes) },
            })
            .collect()
    }

    /// The names of the convolutions, in order.
    pub fn conv_names(&self) -> Vec<String> {
        self.layers(1)
            .into_iter()
            .filter_map(|l| match l {
                LayerSpec::Conv { name, .. } => Some(name),
                _ => None,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_name_their_layers_as_the_reference_modules() {
        assert_eq!(ModelKind::Simple.conv_names(), ["features_conv.0", "features_conv.3"]);
        assert_eq!(
            ModelKind::Complex.conv_names(),
            ["features_conv.0", "features_conv.2", "features_conv.5", "features_conv.7", "features_conv.10", "features_conv.12"]
        );
        let layers = ModelKind::Complex.layers(7);
        assert_eq!(layers.last(), Some(&LayerSpec::Dense { name: "fc2".into(), outputs: 7 }));
        assert_eq!(ModelKind::parse("simple"), Some(ModelKind::Simple));
        assert_eq!(ModelKind::parse("huge"), None);
    }
}
