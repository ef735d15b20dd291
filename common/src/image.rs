//! What every stage knows of an image: its shape, and the per-channel
//! normalisation that maps its bytes to the network's inputs.

/// Shape of one image.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct ImageShape {
    pub channels: usize,
    pub height: usize,
    pub width: usize,
}

impl ImageShape {
    pub const GRAY_28: ImageShape = ImageShape { channels: 1, height: 28, width: 28 };
    pub const RGB_32: ImageShape = ImageShape { channels: 3, height: 32, width: 32 };

    pub fn len(&self) -> usize {
        self.channels * self.height * self.width
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl ImageShape {
    /// Parses `CxHxW` (C >= 1, H and W >= 8: the simple model pools twice
    /// and the complex one three times).
    pub fn parse(text: &str) -> Result<ImageShape, String> {
        let parts: Vec<usize> = text
            .split('x')
            .map(|p| p.trim().parse::<usize>())
            .collect::<Result<_, _>>()
            .map_err(|_| format!("`{text}` is not a shape; write CxHxW, e.g. \"1x28x28\" or \"3x32x32\""))?;
        match parts[..] {
            [channels, height, width] if channels >= 1 && height >= 8 && width >= 8 => Ok(ImageShape { channels, height, width }),
            _ => Err(format!("`{text}`: need CxHxW with C >= 1 and H, W >= 8")),
        }
    }
}

impl std::fmt::Display for ImageShape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}x{}x{}", self.channels, self.height, self.width)
    }
}

/// Per-channel normalisation `(x/255 - mean) / std`.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Normalization {
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
}

impl Normalization {
    /// The normalised value range `[(0-mean)/std, (1-mean)/std]` of each
    /// channel: the bounds of LRP's z^B rule.
    pub fn bounds(&self) -> Vec<(f32, f32)> {
        self.mean.iter().zip(&self.std).map(|(m, s)| ((0.0 - m) / s, (1.0 - m) / s)).collect()
    }
}
