//! The observation point calibration needs: the input of every linear layer.

use candle_core::{Result, Tensor};
use whittle_runtime::MatrixKind;

/// A distinct linear-layer input of a block. Matrices that read the same activations share
/// one site: q, k and v read [`InputSite::Qkv`]; gate and up read [`InputSite::GateUp`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum InputSite {
    /// The attention norm's output, read by q, k and v.
    Qkv,
    /// The attention heads' output, read by o.
    O,
    /// The MLP norm's output, read by gate and up.
    GateUp,
    /// The gated MLP activation, read by down.
    Down,
}

impl InputSite {
    /// Every site, in data-flow order.
    pub const ALL: [InputSite; 4] = [Self::Qkv, Self::O, Self::GateUp, Self::Down];

    /// Position in [`InputSite::ALL`], for per-site arrays.
    pub const fn index(self) -> usize {
        match self {
            Self::Qkv => 0,
            Self::O => 1,
            Self::GateUp => 2,
            Self::Down => 3,
        }
    }

    /// The site a matrix reads.
    pub const fn of(kind: MatrixKind) -> Self {
        match kind {
            MatrixKind::Q | MatrixKind::K | MatrixKind::V => Self::Qkv,
            MatrixKind::O => Self::O,
            MatrixKind::Gate | MatrixKind::Up => Self::GateUp,
            MatrixKind::Down => Self::Down,
        }
    }
}

/// Receives the input rows `(n_tokens, d_in)` of every linear site during a forward pass,
/// padding rows already removed.
pub trait Observer {
    /// Called once per block and site, in data-flow order.
    fn observe(&mut self, layer_idx: usize, site: InputSite, rows: &Tensor) -> Result<()>;
}
