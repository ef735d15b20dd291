//! The networks the tool trains, as data (docs/DESIGN.md, "Models as
//! data"): a model is a list of layers, the built-in `simple` and `complex`
//! among them. Every layer gets the name of its module in the PyTorch
//! module the tool prints ([`Architecture::torch_module`]), so checkpoints
//! load into it. Shapes are checked here, without the engine, so the config
//! refuses a model that does not fit its data before anything runs.

use serde::{Deserialize, Serialize};

use crate::image::ImageShape;

/// The built-in architectures of the paper.
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

    /// The preset's layers, its last dense layer with `classes` outputs.
    pub fn layer_kinds(&self, classes: usize) -> Vec<LayerKind> {
        use LayerKind::*;
        let conv = |channels, kernel| Conv { channels, kernel, padding: kernel / 2, stride: 1 };
        match self {
            ModelKind::Simple => {
                vec![conv(16, 5), Relu, MaxPool, conv(32, 5), Relu, MaxPool, Flatten, Dense { outputs: classes }]
            }
            ModelKind::Complex => vec![
                conv(32, 3),
                Relu,
                conv(32, 3),
                Relu,
                MaxPool,
                conv(64, 3),
                Relu,
                conv(64, 3),
                Relu,
                MaxPool,
                conv(128, 3),
                Relu,
                conv(128, 3),
                Relu,
                MaxPool,
                Flatten,
                Dense { outputs: 1024 },
                Relu,
                Dense { outputs: classes },
            ],
        }
    }

    /// The preset for `classes` output classes.
    pub fn architecture(&self, classes: usize) -> Architecture {
        Architecture::new(self.name(), self.layer_kinds(classes))
    }
}

/// What one layer computes, as a config writes it: `{ conv = 32, kernel =
/// 3, padding = 1, stride = 1 }`, `"relu"`, `"max_pool"`, `"avg_pool"`
/// (both 2x2, stride 2), `"flatten"`, `{ dense = 10 }`, `{ dropout = 0.5 }`
/// (training only).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum LayerKind {
    Conv { channels: usize, kernel: usize, padding: usize, stride: usize },
    Relu,
    MaxPool,
    AvgPool,
    Flatten,
    Dense { outputs: usize },
    Dropout { rate: f32 },
}

/// The layer names a config writes as strings.
const NAMED_LAYERS: [(&str, LayerKind); 4] = [
    ("relu", LayerKind::Relu),
    ("max_pool", LayerKind::MaxPool),
    ("avg_pool", LayerKind::AvgPool),
    ("flatten", LayerKind::Flatten),
];

/// Strides the kernels compute.
pub const CONV_STRIDES: [usize; 2] = [1, 2];

impl LayerKind {
    /// How a config and a message name the layer's kind.
    pub fn kind_name(&self) -> &'static str {
        match self {
            LayerKind::Conv { .. } => "conv",
            LayerKind::Relu => "relu",
            LayerKind::MaxPool => "max_pool",
            LayerKind::AvgPool => "avg_pool",
            LayerKind::Flatten => "flatten",
            LayerKind::Dense { .. } => "dense",
            LayerKind::Dropout { .. } => "dropout",
        }
    }

    /// The layer's settings in range, whatever its input.
    fn check(&self) -> Result<(), String> {
        match *self {
            LayerKind::Conv { channels, kernel, padding, stride } => {
                if channels == 0 || kernel == 0 {
                    return Err("`conv` (channels) and `kernel` must be at least 1".into());
                }
                if padding >= kernel {
                    return Err(format!("`padding` must be below the kernel size ({kernel}), got {padding}"));
                }
                if !CONV_STRIDES.contains(&stride) {
                    return Err(format!("`stride` must be 1 or 2, got {stride}"));
                }
                Ok(())
            }
            LayerKind::Dense { outputs: 0 } => Err("`dense` (outputs) must be at least 1".into()),
            LayerKind::Dropout { rate } if !(0.0..1.0).contains(&rate) => {
                Err(format!("`dropout` (the rate) must be in [0, 1), got {rate}"))
            }
            _ => Ok(()),
        }
    }
}

impl Serialize for LayerKind {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let entries: Vec<(&str, f64)> = match *self {
            LayerKind::Conv { channels, kernel, padding, stride } => {
                vec![("conv", channels as f64), ("kernel", kernel as f64), ("padding", padding as f64), ("stride", stride as f64)]
            }
            LayerKind::Dense { outputs } => vec![("dense", outputs as f64)],
            LayerKind::Dropout { rate } => vec![("dropout", rate as f64)],
            named => return s.serialize_str(named.kind_name()),
        };
        let mut map = s.serialize_map(Some(entries.len()))?;
        for (key, value) in entries {
            map.serialize_entry(key, &value)?;
        }
        map.end()
    }
}

impl<'de> Deserialize<'de> for LayerKind {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = LayerKind;

            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a layer: \"relu\", \"max_pool\", \"avg_pool\", \"flatten\", { conv = N, kernel = K, padding = P, stride = S }, { dense = N } or { dropout = P }")
            }

            fn visit_str<E: serde::de::Error>(self, name: &str) -> Result<LayerKind, E> {
                NAMED_LAYERS.iter().find(|(n, _)| *n == name).map(|(_, kind)| *kind).ok_or_else(|| {
                    E::custom(format!(
                        "unknown layer `{name}`; a layer is \"relu\", \"max_pool\", \"avg_pool\", \"flatten\" or a table {{ conv = .. }}, {{ dense = .. }}, {{ dropout = .. }}"
                    ))
                })
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<LayerKind, A::Error> {
                let mut entries = std::collections::BTreeMap::<String, f64>::new();
                while let Some((key, value)) = map.next_entry::<String, f64>()? {
                    entries.insert(key, value);
                }
                layer_from_table(&entries).map_err(serde::de::Error::custom)
            }
        }
        d.deserialize_any(Visitor)
    }
}

/// A layer written as a table: the key naming its kind and that kind's
/// settings, each a whole number where it counts something.
fn layer_from_table(entries: &std::collections::BTreeMap<String, f64>) -> Result<LayerKind, String> {
    let kinds: Vec<&str> = ["conv", "dense", "dropout"].into_iter().filter(|k| entries.contains_key(*k)).collect();
    let [kind] = kinds[..] else {
        return Err(format!(
            "a layer table names one kind (`conv`, `dense` or `dropout`), got {}",
            if kinds.is_empty() { "none".to_string() } else { kinds.join(" and ") }
        ));
    };
    let allowed: &[&str] = match kind {
        "conv" => &["conv", "kernel", "padding", "stride"],
        _ => &[kind],
    };
    if let Some(unknown) = entries.keys().find(|k| !allowed.contains(&k.as_str())) {
        return Err(format!("`{unknown}` is not a setting of a {kind} layer; it takes {}", allowed.join(", ")));
    }
    let count = |key: &str, default: Option<usize>| -> Result<usize, String> {
        match (entries.get(key), default) {
            (Some(&v), _) if v >= 0.0 && v.fract() == 0.0 && v < 1e9 => Ok(v as usize),
            (Some(v), _) => Err(format!("`{key}` must be a whole number >= 0, got {v}")),
            (None, Some(default)) => Ok(default),
            (None, None) => Err(format!("a {kind} layer needs `{key}`")),
        }
    };
    let layer = match kind {
        "conv" => LayerKind::Conv {
            channels: count("conv", None)?,
            kernel: count("kernel", None)?,
            padding: count("padding", Some(0))?,
            stride: count("stride", Some(1))?,
        },
        "dense" => LayerKind::Dense { outputs: count("dense", None)? },
        _ => LayerKind::Dropout { rate: entries["dropout"] as f32 },
    };
    layer.check()?;
    Ok(layer)
}

/// A layer of an architecture with the name of its PyTorch module.
#[derive(Clone, Debug, PartialEq)]
pub struct LayerSpec {
    pub kind: LayerKind,
    /// Layers before the flatten are `features_conv.<index>` (an
    /// `nn.Sequential`); dense layers after it `fc1`, `fc2`, ...; the
    /// ReLUs and dropouts after it have none.
    pub name: Option<String>,
}

/// Shape of an activation of one image: a stack of planes or a flat vector.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ActivationShape {
    Planes { channels: usize, height: usize, width: usize },
    Flat(usize),
}

impl ActivationShape {
    pub fn of_image(input: ImageShape) -> Self {
        ActivationShape::Planes { channels: input.channels, height: input.height, width: input.width }
    }

    pub fn len(&self) -> usize {
        match *self {
            ActivationShape::Planes { channels, height, width } => channels * height * width,
            ActivationShape::Flat(n) => n,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl std::fmt::Display for ActivationShape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ActivationShape::Planes { channels, height, width } => write!(f, "{channels}x{height}x{width}"),
            ActivationShape::Flat(n) => write!(f, "{n} values"),
        }
    }
}

/// A layer that cannot take what the layer before gives it.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error("model `{model}`, layer {index} (`{kind}`): {message}")]
pub struct ShapeError {
    pub model: String,
    pub index: usize,
    pub kind: &'static str,
    pub message: String,
}

/// A model: its name and its layers.
#[derive(Clone, Debug, PartialEq)]
pub struct Architecture {
    pub name: String,
    pub layers: Vec<LayerSpec>,
}

impl Architecture {
    /// The model `name` of these layers, each named as its PyTorch module.
    pub fn new(name: &str, kinds: Vec<LayerKind>) -> Self {
        let mut flattened = false;
        let mut dense = 0;
        let layers = kinds
            .into_iter()
            .enumerate()
            .map(|(index, kind)| {
                let name = match kind {
                    LayerKind::Flatten => {
                        flattened = true;
                        None
                    }
                    LayerKind::Dense { .. } => {
                        dense += 1;
                        Some(format!("fc{dense}"))
                    }
                    _ if !flattened => Some(format!("features_conv.{index}")),
                    _ => None,
                };
                LayerSpec { kind, name }
            })
            .collect();
        Architecture { name: name.to_string(), layers }
    }

    /// The number of logits: the outputs of the last layer, a dense one
    /// for every checked architecture.
    pub fn classes(&self) -> usize {
        self.layers
            .iter()
            .rev()
            .find_map(|l| match l.kind {
                LayerKind::Dense { outputs } => Some(outputs),
                _ => None,
            })
            .unwrap_or(0)
    }

    /// The shape of each layer's output for one image of `input`; the
    /// first layer that cannot take its input is an error naming it, what
    /// it gets and what it needs. The model must end in a dense layer (its
    /// logits) after exactly one flatten.
    pub fn shapes(&self, input: ImageShape) -> Result<Vec<ActivationShape>, ShapeError> {
        let mut shape = ActivationShape::of_image(input);
        let mut shapes = Vec::with_capacity(self.layers.len());
        for (index, layer) in self.layers.iter().enumerate() {
            let fail = |message: String| ShapeError { model: self.name.clone(), index, kind: layer.kind.kind_name(), message };
            layer.kind.check().map_err(fail)?;
            shape = match (layer.kind, shape) {
                (
                    LayerKind::Conv { channels, kernel, padding, stride },
                    ActivationShape::Planes { channels: c, height, width },
                ) => {
                    let (padded_h, padded_w) = (height + 2 * padding, width + 2 * padding);
                    if padded_h < kernel || padded_w < kernel {
                        return Err(fail(format!(
                            "gets {c}x{height}x{width}, padded {padded_h}x{padded_w}: smaller than its {kernel}x{kernel} kernel"
                        )));
                    }
                    let out = |side: usize| (side - kernel) / stride + 1;
                    ActivationShape::Planes { channels, height: out(padded_h), width: out(padded_w) }
                }
                (LayerKind::MaxPool | LayerKind::AvgPool, ActivationShape::Planes { channels, height, width }) => {
                    if height < 2 || width < 2 {
                        return Err(fail(format!("gets {channels}x{height}x{width}: a 2x2 pool needs planes of at least 2x2")));
                    }
                    ActivationShape::Planes { channels, height: height / 2, width: width / 2 }
                }
                (LayerKind::Conv { .. } | LayerKind::MaxPool | LayerKind::AvgPool, flat @ ActivationShape::Flat(_)) => {
                    return Err(fail(format!("gets {flat} after the flatten; it needs a stack of planes (CxHxW)")));
                }
                (LayerKind::Flatten, planes @ ActivationShape::Planes { .. }) => ActivationShape::Flat(planes.len()),
                (LayerKind::Flatten, ActivationShape::Flat(_)) => {
                    return Err(fail("a second flatten: the activations are flat already".into()))
                }
                (LayerKind::Dense { outputs }, ActivationShape::Flat(_)) => ActivationShape::Flat(outputs),
                (LayerKind::Dense { .. }, planes) => {
                    return Err(fail(format!("gets {planes}; it needs a flat input: put \"flatten\" before it")))
                }
                (LayerKind::Relu | LayerKind::Dropout { .. }, same) => same,
            };
            shapes.push(shape);
        }
        match self.layers.last() {
            Some(LayerSpec { kind: LayerKind::Dense { .. }, .. }) => Ok(shapes),
            last => Err(ShapeError {
                model: self.name.clone(),
                index: self.layers.len().saturating_sub(1),
                kind: last.map_or("none", |l| l.kind.kind_name()),
                message: "a model ends in a dense layer with one output per class (its logits)".into(),
            }),
        }
    }

    /// The names of the layers Grad-CAM can read: the convolutions and the
    /// ReLUs before the flatten.
    pub fn gradcam_layers(&self) -> Vec<&str> {
        self.layers
            .iter()
            .filter(|l| matches!(l.kind, LayerKind::Conv { .. } | LayerKind::Relu))
            .filter_map(|l| l.name.as_deref())
            .filter(|n| n.starts_with(FEATURES))
            .collect()
    }

    /// Python code defining one `torch.nn.Module` subclass (constructible
    /// without arguments) whose `state_dict` has the names and shapes of
    /// this model's checkpoints on `input` images and whose forward pass
    /// computes the same logits.
    pub fn torch_module(&self, input: ImageShape) -> Result<String, ShapeError> {
        let shapes = self.shapes(input)?;
        let class_name: String = self
            .name
            .split(['-', '_'])
            .map(|part| {
                let mut chars = part.chars();
                chars.next().map(|c| c.to_ascii_uppercase().to_string() + chars.as_str()).unwrap_or_default()
            })
            .collect();
        let class_name =
            if class_name.starts_with(|c: char| c.is_ascii_alphabetic()) { class_name } else { format!("Model{class_name}") };
        let mut features = Vec::new();
        let mut head_init = Vec::new();
        let mut head_forward = Vec::new();
        let mut before = ActivationShape::of_image(input);
        for (layer, &after) in self.layers.iter().zip(&shapes) {
            let in_channels = match before {
                ActivationShape::Planes { channels, .. } => channels,
                ActivationShape::Flat(n) => n,
            };
            let module = match layer.kind {
                LayerKind::Conv { channels, kernel, padding, stride } => {
                    format!("nn.Conv2d({in_channels}, {channels}, kernel_size={kernel}, stride={stride}, padding={padding})")
                }
                LayerKind::Relu => "nn.ReLU()".into(),
                LayerKind::MaxPool => "nn.MaxPool2d(2)".into(),
                LayerKind::AvgPool => "nn.AvgPool2d(2)".into(),
                LayerKind::Dropout { rate } => format!("nn.Dropout(p={rate})"),
                LayerKind::Dense { outputs } => format!("nn.Linear({}, {outputs})", before.len()),
                LayerKind::Flatten => String::new(),
            };
            match (&layer.name, layer.kind) {
                (_, LayerKind::Flatten) => head_forward.push("x = torch.flatten(x, 1)".to_string()),
                (Some(name), _) if name.starts_with(FEATURES) => features.push(module),
                (Some(name), _) => {
                    head_init.push(format!("self.{name} = {module}"));
                    head_forward.push(format!("x = self.{name}(x)"));
                }
                (None, LayerKind::Relu) => head_forward.push("x = torch.relu(x)".into()),
                (None, LayerKind::Dropout { rate }) => {
                    head_forward.push(format!("x = nn.functional.dropout(x, p={rate}, training=self.training)"))
                }
                (None, other) => unreachable!("every {} layer has a name", other.kind_name()),
            }
            before = after;
        }
        let mut code = String::new();
        code.push_str(&format!(
            "# The `{}` model on {input} images, as the tool trains it; checkpoints load with\n\
             # model.load_state_dict(safetensors.torch.load_file(path), strict=True).\n\
             import torch\nfrom torch import nn\n\n\nclass {class_name}(nn.Module):\n    def __init__(self):\n        super().__init__()\n",
            self.name
        ));
        code.push_str("        self.features_conv = nn.Sequential(\n");
        for module in &features {
            code.push_str(&format!("            {module},\n"));
        }
        code.push_str("        )\n");
        for line in &head_init {
            code.push_str(&format!("        {line}\n"));
        }
        code.push_str("\n    def forward(self, x):\n        x = self.features_conv(x)\n");
        for line in &head_forward {
            code.push_str(&format!("        {line}\n"));
        }
        code.push_str("        return x\n");
        Ok(code)
    }
}

/// The prefix of the names of the layers before the flatten.
const FEATURES: &str = "features_conv.";

#[cfg(test)]
mod tests {
    use super::*;

    fn names(a: &Architecture, kind: &str) -> Vec<String> {
        a.layers.iter().filter(|l| l.kind.kind_name() == kind).filter_map(|l| l.name.clone()).collect()
    }

    #[test]
    fn presets_name_their_layers_as_the_reference_modules() {
        let simple = ModelKind::Simple.architecture(10);
        assert_eq!(names(&simple, "conv"), ["features_conv.0", "features_conv.3"]);
        let complex = ModelKind::Complex.architecture(7);
        assert_eq!(
            names(&complex, "conv"),
            ["features_conv.0", "features_conv.2", "features_conv.5", "features_conv.7", "features_conv.10", "features_conv.12"]
        );
        assert_eq!(names(&complex, "dense"), ["fc1", "fc2"]);
        assert_eq!(complex.classes(), 7);
        assert!(complex.gradcam_layers().contains(&"features_conv.13"), "ReLUs before the flatten are Grad-CAM layers");
        assert!(!complex.gradcam_layers().contains(&"features_conv.4"), "a max-pool is not");
        assert_eq!(ModelKind::parse("simple"), Some(ModelKind::Simple));
        assert_eq!(ModelKind::parse("huge"), None);
        let shapes = complex.shapes(ImageShape::RGB_32).unwrap();
        assert_eq!(shapes[14], ActivationShape::Planes { channels: 128, height: 4, width: 4 });
        assert_eq!(shapes.last(), Some(&ActivationShape::Flat(7)));
    }

    #[test]
    fn layers_parse_from_the_config_form_and_serialise_back() {
        #[derive(Deserialize, Serialize)]
        struct Model {
            layers: Vec<LayerKind>,
        }
        let text = r#"layers = [{ conv = 8, kernel = 5, padding = 2, stride = 2 }, "relu", "avg_pool", { dropout = 0.25 }, "flatten", { dense = 10 }]"#;
        let model: Model = toml::from_str(text).unwrap();
        assert_eq!(
            model.layers,
            [
                LayerKind::Conv { channels: 8, kernel: 5, padding: 2, stride: 2 },
                LayerKind::Relu,
                LayerKind::AvgPool,
                LayerKind::Dropout { rate: 0.25 },
                LayerKind::Flatten,
                LayerKind::Dense { outputs: 10 },
            ]
        );
        let json = serde_json::to_string(&model.layers).unwrap();
        assert_eq!(
            json,
            r#"[{"conv":8.0,"kernel":5.0,"padding":2.0,"stride":2.0},"relu","avg_pool",{"dropout":0.25},"flatten",{"dense":10.0}]"#
        );
        let defaults: Model = toml::from_str("layers = [{ conv = 4, kernel = 3 }]").unwrap();
        assert_eq!(defaults.layers, [LayerKind::Conv { channels: 4, kernel: 3, padding: 0, stride: 1 }]);
        for (bad, message) in [
            (r#"layers = ["softmax"]"#, "unknown layer `softmax`"),
            ("layers = [{ conv = 4 }]", "needs `kernel`"),
            ("layers = [{ conv = 4, kernel = 3, stride = 3 }]", "`stride` must be 1 or 2"),
            ("layers = [{ conv = 4, kernel = 3, padding = 3 }]", "`padding` must be below the kernel size"),
            ("layers = [{ conv = 4, kernel = 3, size = 3 }]", "`size` is not a setting of a conv layer"),
            ("layers = [{ conv = 4.5, kernel = 3 }]", "whole number"),
            ("layers = [{ dense = 4, conv = 3 }]", "names one kind"),
            ("layers = [{ dropout = 1.0 }]", "in [0, 1)"),
        ] {
            let err = toml::from_str::<Model>(bad).err().unwrap_or_else(|| panic!("{bad} parsed")).to_string();
            assert!(err.contains(message), "{bad}: {err}");
        }
    }

    #[test]
    fn shapes_are_checked_with_the_model_the_layer_and_both_shapes() {
        use LayerKind::*;
        let conv = |channels, kernel, padding, stride| Conv { channels, kernel, padding, stride };
        let vgg = Architecture::new(
            "vgg",
            vec![
                conv(8, 3, 1, 1),
                Relu,
                conv(8, 5, 2, 2),
                Relu,
                AvgPool,
                Flatten,
                Dense { outputs: 16 },
                Relu,
                Dense { outputs: 10 },
            ],
        );
        let shapes = vgg.shapes(ImageShape::RGB_32).unwrap();
        // 32 -> conv 3x3 pad 1: 32 -> 5x5 pad 2 stride 2: floor(31 / 2) + 1 = 16 -> pool: 8.
        assert_eq!(shapes[2], ActivationShape::Planes { channels: 8, height: 16, width: 16 });
        assert_eq!(shapes[5], ActivationShape::Flat(8 * 8 * 8));
        assert_eq!(vgg.classes(), 10);
        assert_eq!(names(&vgg, "relu"), ["features_conv.1", "features_conv.3"], "the ReLU after fc1 has no name");

        for (layers, message) in [
            (vec![conv(4, 3, 0, 1), Dense { outputs: 10 }], "layer 1 (`dense`): gets 4x6x6; it needs a flat input"),
            (vec![Flatten, MaxPool, Dense { outputs: 10 }], "layer 1 (`max_pool`): gets 64 values after the flatten"),
            (vec![conv(4, 9, 0, 1), Flatten, Dense { outputs: 10 }], "gets 1x8x8, padded 8x8: smaller than its 9x9 kernel"),
            (vec![MaxPool, MaxPool, MaxPool, MaxPool, Flatten, Dense { outputs: 10 }], "layer 3 (`max_pool`): gets 1x1x1"),
            (vec![Flatten, Dense { outputs: 10 }, Relu], "layer 2 (`relu`): a model ends in a dense layer"),
            (vec![Flatten, Flatten, Dense { outputs: 10 }], "a second flatten"),
        ] {
            let err = Architecture::new("m", layers).shapes(ImageShape { channels: 1, height: 8, width: 8 }).unwrap_err();
            let text = err.to_string();
            assert!(text.starts_with("model `m`, ") && text.contains(message), "{text}");
        }
    }

    #[test]
    fn the_torch_module_lists_every_parameter_layer_under_its_name() {
        let code = ModelKind::Complex.architecture(10).torch_module(ImageShape::GRAY_28).unwrap();
        assert!(code.contains("class Complex(nn.Module):"), "{code}");
        assert!(code.contains("nn.Conv2d(1, 32, kernel_size=3, stride=1, padding=1),"), "{code}");
        assert!(code.contains("self.fc1 = nn.Linear(1152, 1024)"), "{code}");
        assert!(code.contains("x = torch.relu(x)\n        x = self.fc2(x)"), "{code}");
        // Position in the Sequential = the index in the name.
        let sequential: Vec<&str> = code
            .lines()
            .skip_while(|l| !l.contains("nn.Sequential("))
            .skip(1)
            .take_while(|l| !l.trim().starts_with(')'))
            .collect();
        assert_eq!(sequential.len(), 15);
        assert!(sequential[12].contains("nn.Conv2d(128, 128"), "features_conv.12: {}", sequential[12]);
        let custom = Architecture::new(
            "small-vgg",
            vec![LayerKind::Flatten, LayerKind::Dropout { rate: 0.5 }, LayerKind::Dense { outputs: 3 }],
        );
        let code = custom.torch_module(ImageShape::GRAY_28).unwrap();
        assert!(code.contains("class SmallVgg(nn.Module):"), "{code}");
        assert!(code.contains("nn.functional.dropout(x, p=0.5, training=self.training)"), "{code}");
        assert!(code.contains("self.fc1 = nn.Linear(784, 3)"), "{code}");
    }
}
