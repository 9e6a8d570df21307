use ndarray::Axis;

use super::elementwise_info;
use crate::error::{Result, TensorError};
use crate::hook::OpScope;
use crate::tensor::{checked_numel, Array, Tensor};

/// NumPy broadcasting: align trailing dims; each pair must be equal or one of them 1.
///
/// # Errors
/// Dims that do not broadcast, or a result whose size overflows (empty inputs such as
/// `[2⁴⁰, 1, 0]` and `[1, 2⁴⁰, 0]` can ask for one).
pub fn broadcast_shape(op: &'static str, a: &[usize], b: &[usize]) -> Result<Vec<usize>> {
    let n = a.len().max(b.len());
    let mut out = vec![0; n];
    for i in 0..n {
        let da = if i + a.len() >= n { a[i + a.len() - n] } else { 1 };
        let db = if i + b.len() >= n { b[i + b.len() - n] } else { 1 };
        out[i] = match (da, db) {
            (x, y) if x == y => x,
            (1, y) => y,
            (x, 1) => x,
            _ => return Err(TensorError::shape(op, a, b)),
        };
    }
    checked_numel(op, &out)?;
    Ok(out)
}

/// Sums a broadcast gradient back down to `shape` (the adjoint of broadcasting).
pub(crate) fn sum_to_shape(g: &Array, shape: &[usize]) -> Array {
    if g.shape() == shape {
        return g.clone();
    }
    let mut r = g.clone();
    while r.ndim() > shape.len() {
        r = r.sum_axis(Axis(0));
    }
    for (i, &s) in shape.iter().enumerate() {
        if s == 1 && r.shape()[i] != 1 {
            r = r.sum_axis(Axis(i)).insert_axis(Axis(i));
        }
    }
    r
}

fn binary_out(
    op: &'static str,
    a: &Tensor,
    b: &Tensor,
    f: impl Fn(&Array, &Array) -> Array,
) -> Result<(Array, Vec<usize>, Vec<usize>)> {
    let (sa, sb) = (a.shape(), b.shape());
    let out_shape = broadcast_shape(op, &sa, &sb)?;
    let _scope = OpScope::begin(op, || elementwise_info(&[&sa, &sb], out_shape.iter().product(), 1));
    let out = f(&a.data(), &b.data());
    Ok((out, sa, sb))
}

impl Tensor {
    /// Elementwise `self + other` with broadcasting.
    pub fn add(&self, other: &Tensor) -> Result<Tensor> {
        let (out, sa, sb) = binary_out("add", self, other, |x, y| x + y)?;
        Ok(Tensor::from_op(out, &[self, other], "add", || {
            let (ra, rb) = (self.requires_grad(), other.requires_grad());
            Box::new(move |g| vec![ra.then(|| sum_to_shape(g, &sa)), rb.then(|| sum_to_shape(g, &sb))])
        }))
    }

    /// Elementwise `self - other` with broadcasting.
    pub fn sub(&self, other: &Tensor) -> Result<Tensor> {
        let (out, sa, sb) = binary_out("sub", self, other, |x, y| x - y)?;
        Ok(Tensor::from_op(out, &[self, other], "sub", || {
            let (ra, rb) = (self.requires_grad(), other.requires_grad());
            Box::new(move |g| vec![ra.then(|| sum_to_shape(g, &sa)), rb.then(|| -sum_to_shape(g, &sb))])
        }))
    }

    /// Elementwise `self * other` with broadcasting.
    pub fn mul(&self, other: &Tensor) -> Result<Tensor> {
        let (out, sa, sb) = binary_out("mul", self, other, |x, y| x * y)?;
        Ok(Tensor::from_op(out, &[self, other], "mul", || {
            let (a, b) = (self.clone(), other.clone());
            Box::new(move |g| {
                let ga = a.requires_grad().then(|| sum_to_shape(&(g * &*b.data()), &sa));
                let gb = b.requires_grad().then(|| sum_to_shape(&(g * &*a.data()), &sb));
                vec![ga, gb]
            })
        }))
    }

    /// Elementwise `self / other` with broadcasting.
    pub fn div(&self, other: &Tensor) -> Result<Tensor> {
        let (out, sa, sb) = binary_out("div", self, other, |x, y| x / y)?;
        Ok(Tensor::from_op(out, &[self, other], "div", || {
            let (a, b) = (self.clone(), other.clone());
            Box::new(move |g| {
                let bd = b.data();
                let ga = a.requires_grad().then(|| sum_to_shape(&(g / &*bd), &sa));
                let gb = b.requires_grad().then(|| {
                    let t = g * &*a.data();
                    let t = &t / &bd.mapv(|v| -v * v);
                    sum_to_shape(&t, &sb)
                });
                vec![ga, gb]
            })
        }))
    }

    /// Applies `f` elementwise; `df(x)` is its derivative at the input value.
    pub(crate) fn unary(
        &self,
        op: &'static str,
        flops: u64,
        f: impl Fn(f32) -> f32,
        df: impl Fn(f32) -> f32 + Send + Sync + 'static,
    ) -> Tensor {
        let out = {
            let d = self.data();
            let _scope = OpScope::begin(op, || elementwise_info(&[d.shape()], d.len(), flops));
            d.mapv(f)
        };
        Tensor::from_op(out, &[self], op, || {
            let x = self.clone();
            Box::new(move |g| {
                let xd = x.data();
                let mut gx = g.clone();
                gx.zip_mut_with(&xd, |gv, &xv| *gv *= df(xv));
                vec![Some(gx)]
            })
        })
    }

    pub fn neg(&self) -> Tensor {
        self.unary("neg", 1, |x| -x, |_| -1.0)
    }
    pub fn exp(&self) -> Tensor {
        self.unary("exp", 1, f32::exp, f32::exp)
    }
    /// Natural log (of non-positive inputs gives -inf/NaN, like IEEE).
    pub fn log(&self) -> Tensor {
        self.unary("log", 1, f32::ln, |x| 1.0 / x)
    }
    pub fn sqrt(&self) -> Tensor {
        self.unary("sqrt", 1, f32::sqrt, |x| 0.5 / x.sqrt())
    }
    /// `self^p` for a constant exponent.
    pub fn pow(&self, p: f32) -> Tensor {
        self.unary("pow", 1, move |x| x.powf(p), move |x| p * x.powf(p - 1.0))
    }
    pub fn add_scalar(&self, s: f32) -> Tensor {
        self.unary("add_scalar", 1, move |x| x + s, |_| 1.0)
    }
    pub fn mul_scalar(&self, s: f32) -> Tensor {
        self.unary("mul_scalar", 1, move |x| x * s, move |_| s)
    }

    /// Multiplies by a constant array of the same shape (no gradient flows into the mask).
    pub fn mul_const(&self, mask: &Array) -> Result<Tensor> {
        let shape = self.shape();
        if mask.shape() != shape.as_slice() {
            return Err(TensorError::shape("mul_const", &shape, mask.shape()));
        }
        let out = {
            let _scope = OpScope::begin("mul_const", || elementwise_info(&[&shape, &shape], mask.len(), 1));
            &*self.data() * mask
        };
        Ok(Tensor::from_op(out, &[self], "mul_const", || {
            let m = mask.clone();
            Box::new(move |g| vec![Some(g * &m)])
        }))
    }
}

impl Tensor {
    /// Inverted dropout with a mask drawn from a ChaCha8 generator seeded by `seed`: each element
    /// is zeroed with probability `p` and the rest scaled by 1/(1−p). The same seed gives the same
    /// mask, so callers on several threads stay reproducible by deriving seeds, not sharing a
    /// generator. `p = 0` returns the input unchanged.
    pub fn dropout(&self, p: f32, seed: u64) -> Result<Tensor> {
        use rand::{Rng, SeedableRng};
        if !(0.0..1.0).contains(&p) {
            return Err(TensorError::arg("dropout", format!("p = {p} must be in [0, 1)")));
        }
        if p == 0.0 {
            return Ok(self.clone());
        }
        let keep = 1.0 - p;
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let mask = crate::tensor::Array::from_shape_simple_fn(ndarray::IxDyn(&self.shape()), || {
            if rng.random::<f32>() < keep {
                1.0 / keep
            } else {
                0.0
            }
        });
        self.mul_const(&mask)
    }
}

macro_rules! std_binop {
    ($trait:ident, $method:ident, $fallible:ident) => {
        impl std::ops::$trait<&Tensor> for &Tensor {
            type Output = Tensor;
            /// Operator convenience; the checked form is the named method (`Tensor::add`, ...).
            ///
            /// # Panics
            /// If the shapes do not broadcast.
            fn $method(self, rhs: &Tensor) -> Tensor {
                Tensor::$fallible(self, rhs).unwrap_or_else(|e| panic!("{e}"))
            }
        }
    };
}
std_binop!(Add, add, add);
std_binop!(Sub, sub, sub);
std_binop!(Mul, mul, mul);
std_binop!(Div, div, div);

impl std::ops::Neg for &Tensor {
    type Output = Tensor;
    fn neg(self) -> Tensor {
        Tensor::neg(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::IxDyn;

    #[test]
    fn broadcast_rules() {
        assert_eq!(broadcast_shape("t", &[3, 1], &[4]).unwrap(), vec![3, 4]);
        assert_eq!(broadcast_shape("t", &[2, 3, 4], &[3, 1]).unwrap(), vec![2, 3, 4]);
        assert!(broadcast_shape("t", &[3], &[4]).is_err());
    }

    #[test]
    fn sum_to_shape_reduces_broadcast_axes() {
        let g = Array::ones(IxDyn(&[2, 3, 4]));
        let r = sum_to_shape(&g, &[3, 1]);
        assert_eq!(r.shape(), &[3, 1]);
        assert!(r.iter().all(|&v| v == 8.0));
    }
}
