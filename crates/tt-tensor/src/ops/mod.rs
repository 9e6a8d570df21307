//! Differentiable tensor ops, grouped by kind. Each op: checks shapes (returning `Err` naming
//! both), runs its kernel inside an [`OpScope`](crate::hook::OpScope), and attaches a backward
//! closure only when a graph is being recorded.

mod activation;
mod elementwise;
mod matmul;
mod nn;
mod reduce;
mod shape;

pub use elementwise::broadcast_shape;

use crate::hook::OpInfo;

/// Profiler info for an elementwise op producing `n` outputs from inputs of the given shapes.
pub(crate) fn elementwise_info(shapes: &[&[usize]], out_len: usize, flops_per_elem: u64) -> OpInfo {
    let in_bytes: usize = shapes.iter().map(|s| s.iter().product::<usize>() * 4).sum();
    OpInfo {
        input_shapes: shapes.iter().map(|s| s.to_vec()).collect(),
        flops: flops_per_elem * out_len as u64,
        bytes: (in_bytes + out_len * 4) as u64,
    }
}
