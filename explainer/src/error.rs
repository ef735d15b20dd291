//! What can go wrong while explaining, in words that name the setting or the
//! input at fault. Bad settings and bad inputs are errors, never panics.

/// An explanation could not be set up or computed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ExplainError {
    /// A rule parameter outside its range (`gamma < 0`, ...).
    #[error("rule `{rule}`: {message}")]
    BadRuleParameter { rule: &'static str, message: String },

    /// A composite's rules are out of range or misplaced (z^B past the
    /// first layer); `position` is `first`, `conv` or `dense`.
    #[error("composite `{position}`: {message}")]
    BadComposite { position: &'static str, message: String },

    /// The z^B bounds do not match the input's channels.
    #[error("z-box has bounds for {bounds} channel(s) but the input has {channels}")]
    BoundsChannels { bounds: usize, channels: usize },

    /// Grad-CAM was asked for a layer the model does not have.
    #[error("Grad-CAM layer `{name}` is not a conv or ReLU layer before the flatten of this model; those are: {known}")]
    UnknownLayer { name: String, known: String },

    /// The model has no layer a method needs (no conv layer for Grad-CAM, no
    /// parametric layer for LRP).
    #[error("the model has no {0}")]
    MissingLayer(&'static str),

    /// A label cannot be explained because the model has fewer classes.
    #[error("image {image}: label {label} is not a class of a model with {classes} classes")]
    LabelOutOfRange { image: usize, label: usize, classes: usize },

    /// Inputs of inconsistent sizes (a trace of another model, labels of
    /// another batch, ...).
    #[error("{0}")]
    Shape(String),
}
