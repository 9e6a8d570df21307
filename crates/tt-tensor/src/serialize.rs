//! State dicts in safetensors format, and atomic file writes.

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;

use ndarray::IxDyn;
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};

use crate::error::{Result, TensorError};
use crate::nn::Module;
use crate::tensor::{Array, Tensor};

/// Named arrays in a stable order, as stored in a checkpoint.
pub type StateDict = Vec<(String, Array)>;
/// String key/value metadata stored in a safetensors header.
pub type Metadata = HashMap<String, String>;

/// Writes `bytes` to `path` atomically: a sibling temp file is written and synced, then renamed
/// over the target, so readers see either the old file or the whole new one.
pub fn atomic_write(path: &Path, bytes: &[u8]) -> Result<()> {
    if let Some(dir) = path.parent() {
        if !dir.as_os_str().is_empty() {
            std::fs::create_dir_all(dir)?;
        }
    }
    let file_name = path
        .file_name()
        .ok_or_else(|| TensorError::File { path: path.display().to_string(), reason: "not a file path".into() })?;
    let tmp = path.with_file_name(format!(".{}.{}.tmp", file_name.to_string_lossy(), std::process::id()));
    let result = (|| -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(|e| TensorError::File { path: path.display().to_string(), reason: format!("write failed: {e}") })
}

/// Serializes named tensors (f32, little-endian) with string metadata into safetensors bytes.
pub fn to_safetensors_bytes(
    tensors: &[(String, Tensor)],
    metadata: Option<HashMap<String, String>>,
) -> Result<Vec<u8>> {
    let raw: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
        .iter()
        .map(|(n, t)| {
            let bytes = t.data().iter().flat_map(|v| v.to_le_bytes()).collect();
            (n.clone(), t.shape(), bytes)
        })
        .collect();
    let views: Vec<(String, TensorView<'_>)> = raw
        .iter()
        .map(|(n, s, b)| Ok((n.clone(), TensorView::new(Dtype::F32, s.clone(), b).map_err(st_err("serialize"))?)))
        .collect::<Result<_>>()?;
    safetensors::serialize(views, metadata).map_err(st_err("serialize"))
}

fn st_err(what: &'static str) -> impl Fn(safetensors::SafeTensorError) -> TensorError {
    move |e| TensorError::File { path: what.into(), reason: e.to_string() }
}

/// Saves named tensors to a safetensors file, atomically.
pub fn save_safetensors(
    path: &Path,
    tensors: &[(String, Tensor)],
    metadata: Option<HashMap<String, String>>,
) -> Result<()> {
    atomic_write(path, &to_safetensors_bytes(tensors, metadata)?)
}

/// Loads every f32 tensor of a safetensors file, in file order, plus its metadata.
/// A missing, truncated or corrupt file is an error naming the path and the problem.
pub fn load_safetensors(path: &Path) -> Result<(StateDict, Metadata)> {
    let bytes = std::fs::read(path).map_err(|e| TensorError::File {
        path: path.display().to_string(),
        reason: if e.kind() == std::io::ErrorKind::NotFound { "file not found".into() } else { e.to_string() },
    })?;
    let file_err = |reason: String| TensorError::File { path: path.display().to_string(), reason };
    let (_, meta) =
        SafeTensors::read_metadata(&bytes).map_err(|e| file_err(format!("corrupt or truncated safetensors: {e}")))?;
    let st =
        SafeTensors::deserialize(&bytes).map_err(|e| file_err(format!("corrupt or truncated safetensors: {e}")))?;
    let mut out = Vec::new();
    for (name, view) in st.tensors() {
        if view.dtype() != Dtype::F32 {
            return Err(file_err(format!("tensor {name} has dtype {:?}, expected F32", view.dtype())));
        }
        let vals: Vec<f32> =
            view.data().chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
        let arr =
            Array::from_shape_vec(IxDyn(view.shape()), vals).map_err(|e| file_err(format!("tensor {name}: {e}")))?;
        out.push((name, arr));
    }
    Ok((out, meta.metadata().clone().unwrap_or_default()))
}

/// Copies a state dict into a module's parameters. Every parameter must be present with the
/// same shape and no extra keys may remain; otherwise nothing is changed and the error lists
/// the missing, unexpected and mismatched names.
pub fn load_state_dict(module: &dyn Module, state: StateDict) -> Result<()> {
    let params = module.named_parameters();
    let mut map: HashMap<String, Array> = state.into_iter().collect();
    let mut problems = Vec::new();
    let mut assignments = Vec::new();
    for (name, p) in &params {
        match map.remove(name) {
            None => problems.push(format!("missing {name}")),
            Some(arr) if arr.shape() != p.shape().as_slice() => {
                problems.push(format!("{name}: checkpoint shape {:?} vs model {:?}", arr.shape(), p.shape()))
            }
            Some(arr) => assignments.push((p.clone(), arr)),
        }
    }
    let mut unexpected: Vec<_> = map.keys().cloned().collect();
    unexpected.sort();
    problems.extend(unexpected.into_iter().map(|k| format!("unexpected {k}")));
    if !problems.is_empty() {
        return Err(TensorError::StateDict(problems.join("; ")));
    }
    for (p, arr) in assignments {
        p.set_data(arr)?;
    }
    Ok(())
}

/// Saves a module's parameters to `path` (safetensors, atomic).
pub fn save_module(module: &dyn Module, path: &Path, metadata: Option<HashMap<String, String>>) -> Result<()> {
    save_safetensors(path, &module.named_parameters(), metadata)
}

/// Loads a safetensors file into a module's parameters (see [`load_state_dict`]).
pub fn load_module(module: &dyn Module, path: &Path) -> Result<HashMap<String, String>> {
    let (state, meta) = load_safetensors(path)?;
    load_state_dict(module, state)
        .map_err(|e| TensorError::File { path: path.display().to_string(), reason: e.to_string() })?;
    Ok(meta)
}
