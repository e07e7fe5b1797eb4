//! The one linear layer of the model, dense or low-rank, so that a pruned model runs through
//! the same forward pass as the dense one.

use candle_core::{Result, Tensor};

/// `y = W x`, with `W` either stored whole or as the product `B · A` of two thin factors.
#[derive(Clone, Debug)]
pub enum Linear {
    /// `weight` is `(d_out, d_in)`.
    Dense { weight: Tensor },
    /// `a` is `(rank, d_in)`, `b` is `(d_out, rank)`: `y = B (A x)`.
    LowRank { a: Tensor, b: Tensor },
}

impl Linear {
    /// A dense layer with no parameters, `(rows, cols)` with one of them zero: a matrix of a
    /// skipped sub-block.
    pub fn empty(shape: (usize, usize), device: &candle_core::Device) -> Result<Self> {
        Ok(Self::Dense {
            weight: Tensor::zeros(shape, candle_core::DType::F32, device)?,
        })
    }

    /// The layer on `device` (its tensors shared, not copied, when already there).
    pub fn to_device(&self, device: &candle_core::Device) -> Result<Self> {
        Ok(match self {
            Self::Dense { weight } => Self::Dense {
                weight: weight.to_device(device)?,
            },
            Self::LowRank { a, b } => Self::LowRank {
                a: a.to_device(device)?,
                b: b.to_device(device)?,
            },
        })
    }

    /// Applies the layer to rows: `x` is `(n, d_in)`, the result `(n, d_out)`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Self::Dense { weight } => x.matmul(&weight.t()?),
            Self::LowRank { a, b } => x.matmul(&a.t()?)?.matmul(&b.t()?),
        }
    }

    /// `(d_out, d_in)`.
    pub fn shape(&self) -> Result<(usize, usize)> {
        match self {
            Self::Dense { weight } => weight.dims2(),
            Self::LowRank { a, b } => Ok((b.dim(0)?, a.dim(1)?)),
        }
    }

    /// The rank of the factors, or `None` for a dense layer.
    pub fn rank(&self) -> Option<usize> {
        match self {
            Self::Dense { .. } => None,
            Self::LowRank { a, .. } => a.dim(0).ok(),
        }
    }

    /// Number of stored parameters.
    pub fn n_params(&self) -> usize {
        match self {
            Self::Dense { weight } => weight.elem_count(),
            Self::LowRank { a, b } => a.elem_count() + b.elem_count(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, IndexOp};

    #[test]
    fn low_rank_equals_the_product_of_its_factors() -> Result<()> {
        let device = Device::Cpu;
        let a = Tensor::randn(0f32, 1.0, (3, 10), &device)?;
        let b = Tensor::randn(0f32, 1.0, (7, 3), &device)?;
        let x = Tensor::randn(0f32, 1.0, (5, 10), &device)?;
        let dense = Linear::Dense {
            weight: b.matmul(&a)?,
        };
        let low_rank = Linear::LowRank { a, b };
        let diff = (dense.forward(&x)? - low_rank.forward(&x)?)?
            .abs()?
            .max_all()?
            .to_scalar::<f32>()?;
        assert!(diff < 1e-4, "{diff}");
        assert_eq!(low_rank.shape()?, (7, 10));
        assert_eq!(low_rank.rank(), Some(3));
        assert_eq!(low_rank.n_params(), 51);
        assert_eq!(dense.n_params(), 70);
        assert_eq!(dense.forward(&x.i(0..1)?)?.dims(), &[1, 7]);
        Ok(())
    }
}
