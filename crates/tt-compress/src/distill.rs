//! Knowledge distillation's loss (Hinton, Vinyals & Dean 2015;
//! `../shared/reference/semantics.md` §4):
//!
//! ```text
//! L = α·T²·KL(p_teacher(T) ‖ p_student(T)) + (1 − α)·CE(y, p_student(1)),   p(T) = softmax(z/T)
//! ```
//!
//! The `T²` keeps the soft targets' gradients on the scale of the hard ones as `T` changes (the
//! soft term's gradient shrinks as 1/T²). The teacher is a constant: no gradient reaches it.
//! Built from tt-tensor's differentiable ops (`kl_div_with_temperature`, `cross_entropy`), so
//! its gradient is autograd's, checked by finite differences in the tests.

use tt_tensor::loss::{cross_entropy, kl_div_with_temperature};
use tt_tensor::Tensor;

use crate::error::{CompressError, Result};

/// Distillation settings, valid by construction ([`Distillation::new`]): the fields are private
/// so that a NaN temperature or an α outside `[0, 1]` cannot be set after the check.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Distillation {
    /// Temperature `T > 0` of the soft targets.
    temperature: f32,
    /// Weight `α ∈ [0, 1]` of the soft term (`1 − α` on the hard labels).
    alpha: f32,
}

impl Distillation {
    /// # Errors
    /// `T` not positive and finite, or `α` outside `[0, 1]`.
    pub fn new(temperature: f32, alpha: f32) -> Result<Distillation> {
        if !(temperature > 0.0 && temperature.is_finite() && (1.0 / temperature).is_finite()) {
            return Err(CompressError::arg(
                "Distillation::new",
                format!("temperature {temperature} must be positive and finite"),
            ));
        }
        if !(0.0..=1.0).contains(&alpha) {
            return Err(CompressError::arg("Distillation::new", format!("alpha {alpha} must be in [0, 1]")));
        }
        Ok(Distillation { temperature, alpha })
    }

    /// `T`.
    pub fn temperature(&self) -> f32 {
        self.temperature
    }

    /// `α`.
    pub fn alpha(&self) -> f32 {
        self.alpha
    }

    /// `L` for student logits `[rows, classes]`, teacher logits of the same shape and hard
    /// labels (one per row); averaged over rows like both terms.
    ///
    /// # Errors
    /// Shapes that differ, labels that do not fit, empty or non-2-D logits.
    pub fn loss(&self, student: &Tensor, teacher: &Tensor, labels: &[usize]) -> Result<Tensor> {
        let t = self.temperature;
        let soft = kl_div_with_temperature(student, teacher, t)?.mul_scalar(self.alpha * t * t);
        let hard = cross_entropy(student, labels)?.mul_scalar(1.0 - self.alpha);
        Ok(soft.add(&hard)?)
    }
}
