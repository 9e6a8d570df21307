//! # tt-tensor
//!
//! The foundation of tinytorch-rs (course modules 01–09): an n-dimensional f32 [`Tensor`] with
//! reverse-mode autograd, the layers built on it ([`nn`]), [`loss`] functions, [`optim`]izers,
//! and [`data`] loading including the real UCI handwritten digits.
//!
//! Design points the performance modules (14–19) rely on:
//! - **Inference without bookkeeping.** Inside [`no_grad`] no graph node or closure is built, and
//!   the [`kernels`] module exposes the plain-array building blocks (GEMM, im2col, softmax, layer
//!   norm) so optimized kernels can replace reference ones layer by layer.
//! - **Open layers.** Layers are plain structs with public weight tensors that can be read and
//!   replaced; a [`nn::Sequential`] holds `Box<dyn Module>` layers that can be swapped.
//! - **One profiling hook.** Every op reports name, input shapes, FLOPs and bytes through
//!   [`hook`]; with no observer installed this costs one atomic load per op.
//!
//! ```
//! use tt_tensor::{Tensor, loss};
//! let w = Tensor::param(ndarray::arr1(&[2.0f32]).into_dyn());
//! let x = Tensor::from_vec(vec![3.0], &[1]).unwrap();
//! let y = x.mul(&w).unwrap();           // y = 6
//! let l = loss::mse(&y, &Tensor::from_vec(vec![4.0], &[1]).unwrap()).unwrap(); // (6-4)² = 4
//! l.backward().unwrap();
//! assert_eq!(w.grad().unwrap()[[0]], 12.0); // d/dw (3w-4)² = 2·(3w-4)·3
//! ```

pub mod data;
pub mod error;
pub mod hook;
pub mod hugepages;
pub mod kernels;
pub mod loss;
pub mod nn;
mod ops;
pub mod optim;
pub mod projection;
pub mod serialize;
mod tensor;
pub mod testing;

pub use error::{Result, TensorError};
pub use nn::Module;
pub use ops::broadcast_shape;
pub use projection::Projection;
pub use tensor::{
    is_grad_enabled, no_grad, randn_array, uniform_array, Array, BackwardFn, DataRef, Materialize, NoGradGuard, Tensor,
};
