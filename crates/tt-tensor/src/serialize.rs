//! State dicts in safetensors format, atomic file writes, and checkpoint units.
//!
//! A **checkpoint unit** is a directory whose files (weights, config, tokenizer…) are published
//! together: each file is written under a content-addressed name (`model.<sha>.safetensors`),
//! then `manifest.json` — naming every file with its SHA-256 and size — replaces the previous one
//! with a single atomic rename. An interruption at any point leaves the previous manifest and the
//! files it names untouched, so the previous checkpoint stays loadable; loading verifies every
//! checksum, so a flipped bit or an edited file is an error rather than a different model.

use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

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

/// Writes `bytes` to `path` atomically: a sibling temp file (`.<name>.<pid>.tmp`) is written and
/// synced, then renamed over the target, so readers see either the old file or the whole new one.
/// Temp files of the same target left by killed writers (processes that no longer run) are
/// removed after the rename; no other file is touched.
pub fn atomic_write(path: &Path, bytes: &[u8]) -> Result<()> {
    if let Some(dir) = path.parent() {
        if !dir.as_os_str().is_empty() {
            std::fs::create_dir_all(dir).map_err(|e| TensorError::File {
                path: dir.display().to_string(),
                reason: format!("cannot create the directory: {e}"),
            })?;
        }
    }
    let file_name = path
        .file_name()
        .ok_or_else(|| TensorError::File { path: path.display().to_string(), reason: "not a file path".into() })?;
    let tmp = path.with_file_name(temp_name(&file_name.to_string_lossy()));
    let result = (|| -> std::io::Result<()> {
        // A stale temp file of ours, or a link planted at its name, is unlinked (never followed or
        // written through); `create_new` then refuses anything that appears there meanwhile, so
        // the bytes only ever go into a file this call created.
        match std::fs::remove_file(&tmp) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        let mut f = std::fs::OpenOptions::new().write(true).create_new(true).open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    match &result {
        Err(_) => {
            let _ = std::fs::remove_file(&tmp);
        }
        // Temp files of this same target from writers killed mid-write are ours to remove.
        Ok(()) => remove_dead_temp_files(path.parent().unwrap_or(Path::new(".")), &[&file_name.to_string_lossy()]),
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
            let data = t.data();
            let data = data.as_standard_layout();
            let floats = data.as_slice().expect("standard layout");
            let mut bytes = Vec::with_capacity(4 * floats.len());
            for v in floats {
                bytes.extend_from_slice(&v.to_le_bytes());
            }
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
/// A missing, truncated or corrupt file, a non-F32 tensor or a non-finite value is an error
/// naming the path and the problem.
///
/// Only a regular file is read (a FIFO or a device is an error, not a wait or an endless read).
pub fn load_safetensors(path: &Path) -> Result<(StateDict, Metadata)> {
    let bytes = read_regular(path, None, true)
        .map_err(|reason| TensorError::File { path: path.display().to_string(), reason })?;
    parse_safetensors(&bytes, &path.display().to_string())
}

/// Names and shapes of the tensors in safetensors `bytes`, from the header alone (nothing is
/// copied): what a loader checks against its config before allocating a model.
///
/// # Errors
/// A corrupt or truncated header (`label` names the file in the message).
pub fn safetensors_shapes(bytes: &[u8], label: &str) -> Result<Vec<(String, Vec<usize>)>> {
    let file_err = |reason: String| TensorError::File { path: label.to_string(), reason };
    let st = SafeTensors::deserialize(bytes).map_err(|e| file_err(format!("corrupt or truncated safetensors: {e}")))?;
    let mut v: Vec<(String, Vec<usize>)> = st.tensors().into_iter().map(|(n, t)| (n, t.shape().to_vec())).collect();
    v.sort();
    Ok(v)
}

/// [`load_safetensors`] from bytes in memory; `label` names them in errors.
///
/// # Errors
/// As [`load_safetensors`].
pub fn parse_safetensors(bytes: &[u8], label: &str) -> Result<(StateDict, Metadata)> {
    let file_err = |reason: String| TensorError::File { path: label.to_string(), reason };
    let (_, meta) =
        SafeTensors::read_metadata(bytes).map_err(|e| file_err(format!("corrupt or truncated safetensors: {e}")))?;
    let st = SafeTensors::deserialize(bytes).map_err(|e| file_err(format!("corrupt or truncated safetensors: {e}")))?;
    let mut out = Vec::new();
    for (name, view) in st.tensors() {
        if view.dtype() != Dtype::F32 {
            return Err(file_err(format!("tensor {name} has dtype {:?}, expected F32", view.dtype())));
        }
        let vals: Vec<f32> =
            view.data().chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
        if let Some(i) = vals.iter().position(|v| !v.is_finite()) {
            return Err(file_err(format!("tensor {name} holds a non-finite value ({}) at flat index {i}", vals[i])));
        }
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

/// File name of a checkpoint unit's manifest.
pub const MANIFEST: &str = "manifest.json";
const FORMAT: &str = "tinytorch-rs checkpoint unit 1";
/// The parts a save is about to write, recorded before it writes them and removed once the
/// manifest is published: what lets the next save remove the parts of a save killed in between.
const PENDING: &str = "manifest.pending.json";
/// The file saves lock (exclusively) and loads lock (shared), so that saves to one unit, from any
/// process, run one at a time and a load never reads a generation a save is removing. Released
/// when the process dies, so a killed save leaves no stale lock.
const LOCK: &str = "manifest.lock";
/// A manifest larger than this is not ours (ours are a few hundred bytes).
const MAX_MANIFEST_BYTES: u64 = 1 << 20;

#[derive(Debug, Serialize, Deserialize)]
struct Manifest {
    format: String,
    files: BTreeMap<String, ManifestEntry>,
    /// Files of earlier generations that this save found still on disk and meant to remove: a
    /// save killed after publishing leaves them behind, and this record is what lets the next
    /// save prove it wrote them. Absent in manifests written before it existed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    superseded: Vec<SupersededPart>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct ManifestEntry {
    /// The content-addressed file that holds this part.
    file: String,
    sha256: String,
    bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct SupersededPart {
    part: String,
    #[serde(flatten)]
    entry: ManifestEntry,
}

/// Lower-case hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// `model.safetensors` + hash → `model.<hash16>.safetensors`.
fn stored_name(name: &str, sha: &str) -> String {
    let short = sha.get(..16).unwrap_or(sha);
    match name.rsplit_once('.') {
        Some((stem, ext)) => format!("{stem}.{short}.{ext}"),
        None => format!("{name}.{short}"),
    }
}

/// A part or file name that stays inside the unit's directory.
fn is_plain_name(name: &str) -> bool {
    !name.is_empty() && !name.contains(['/', '\\', '\0']) && name != "." && name != ".."
}

/// The sibling temp file [`atomic_write`] writes `file` through: `.<file>.<pid>-<n>.tmp`, `n`
/// counting this process's writes, so two threads writing one path never share a temp file.
fn temp_name(file: &str) -> String {
    static WRITES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = WRITES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!(".{file}.{}-{n}.tmp", std::process::id())
}

/// Locks the unit in `dir` (see [`LOCK`]); the lock is released when the returned file closes.
/// The lock file is opened like a part (no link followed, no blocking open) and must be a
/// regular file: a FIFO or a link planted at its name is an error, not a wait or a file created
/// elsewhere. `Ok(None)` when a load finds no lock file.
fn lock_unit(dir: &Path, exclusive: bool) -> Result<Option<std::fs::File>> {
    let path = dir.join(LOCK);
    let err = |e: std::io::Error| unit_err(&path, format!("cannot lock the checkpoint: {e}"));
    let mut options = std::fs::OpenOptions::new();
    options.read(true);
    if exclusive {
        options.write(true).create(true).truncate(false);
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK);
    }
    let f = match options.open(&path) {
        Ok(f) => f,
        Err(e) if !exclusive && e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(err(e)),
    };
    if !f.metadata().map_err(err)?.is_file() {
        return Err(unit_err(&path, "not a regular file: cannot lock the checkpoint with it"));
    }
    if exclusive { f.lock() } else { f.lock_shared() }.map_err(err)?;
    Ok(Some(f))
}

fn unit_err(dir: &Path, reason: impl Into<String>) -> TensorError {
    TensorError::File { path: dir.display().to_string(), reason: reason.into() }
}

/// Creates `dir` for a checkpoint unit (and its parents) or checks that it is a directory, so a
/// caller can fail on an unusable path before the work whose result it will save.
///
/// # Errors
/// `dir` exists and is not a directory, or cannot be created; the error names the path.
pub fn prepare_unit_dir(dir: &Path) -> Result<()> {
    match std::fs::metadata(dir) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err(unit_err(dir, "exists and is not a directory: cannot hold a checkpoint")),
        Err(_) => std::fs::create_dir_all(dir).map_err(|e| unit_err(dir, format!("cannot create the directory: {e}"))),
    }
}

/// Saves `parts` (logical name → bytes) as one checkpoint unit in `dir` (see the module docs).
///
/// After publishing, it removes only files it can prove an earlier save wrote: those the
/// previous manifest named (or recorded as superseded) or a save killed before publishing had
/// announced (`manifest.pending.json`, written before the parts), that the new manifest does not
/// name, each still a regular file of the recorded size under its content-addressed name; and
/// temp files of those names left by a killed save. Nothing else in `dir` is touched.
///
/// Saves to one unit run one at a time, across processes (`manifest.lock`); a load waits for a
/// save in progress.
///
/// # Errors
/// An invalid part name (a plain file name, not starting with `.`, other than the manifest's,
/// the pending record's and the lock's), a `dir` that
/// is not a directory, or any I/O failure; the previous checkpoint in `dir`, if any, is then
/// still intact.
pub fn save_unit(dir: &Path, parts: &[(&str, &[u8])]) -> Result<()> {
    save_unit_impl(dir, parts, usize::MAX)
}

/// For tests of interrupted saves: writes only the first `parts_written` parts, then fails as a
/// crash would, before the manifest is published.
#[doc(hidden)]
pub fn save_unit_interrupted(dir: &Path, parts: &[(&str, &[u8])], parts_written: usize) -> Result<()> {
    save_unit_impl(dir, parts, parts_written)
}

fn save_unit_impl(dir: &Path, parts: &[(&str, &[u8])], stop_after: usize) -> Result<()> {
    for (i, (name, _)) in parts.iter().enumerate() {
        let plain = is_plain_name(name) && ![MANIFEST, PENDING, LOCK].contains(name) && !name.starts_with('.');
        if !plain || parts[..i].iter().any(|(n, _)| n == name) {
            return Err(unit_err(dir, format!("part name {name:?} is not a plain, unique file name")));
        }
    }
    prepare_unit_dir(dir)?;
    // One save at a time per unit (other processes included): two interleaved saves would each
    // remove parts the other's manifest names. Held until this function returns.
    let _lock = lock_unit(dir, true)?;
    // What earlier saves wrote, read before anything changes: the published generation and the
    // parts a save killed before publishing had announced. These are the only files this save
    // may remove; a record that cannot be read proves nothing, so nothing of it is removed.
    let earlier: Vec<SupersededPart> = [MANIFEST, PENDING]
        .iter()
        .filter_map(|name| read_manifest(dir, name).ok())
        .flat_map(|m| {
            let files = m.files.into_iter().map(|(part, entry)| SupersededPart { part, entry });
            files.chain(m.superseded).collect::<Vec<_>>()
        })
        .collect();
    let files: BTreeMap<String, ManifestEntry> = parts
        .iter()
        .map(|(name, bytes)| {
            let sha = sha256_hex(bytes);
            (name.to_string(), ManifestEntry { file: stored_name(name, &sha), sha256: sha, bytes: bytes.len() as u64 })
        })
        .collect();
    let live: Vec<&str> = files.values().map(|e| e.file.as_str()).collect();
    let mut superseded: Vec<SupersededPart> = Vec::new();
    for s in earlier {
        if !live.contains(&s.entry.file.as_str()) && !superseded.contains(&s) && written_by_us(dir, &s) {
            superseded.push(s);
        }
    }
    // Announce the parts before writing them, with what they supersede (an earlier killed save's
    // parts included), so a save killed before publishing leaves a record that proves the next
    // save may remove all of them.
    let pending = Manifest { format: FORMAT.into(), files: files.clone(), superseded: superseded.clone() };
    atomic_write(&dir.join(PENDING), &serde_json::to_vec_pretty(&pending).map_err(|e| unit_err(dir, e.to_string()))?)?;
    for (i, (name, bytes)) in parts.iter().enumerate() {
        if i == stop_after {
            return Err(unit_err(dir, format!("save interrupted after {i} of {} parts", parts.len())));
        }
        atomic_write(&dir.join(&files[*name].file), bytes)?;
    }
    if stop_after < usize::MAX && stop_after >= parts.len() {
        return Err(unit_err(dir, "save interrupted before the manifest was published"));
    }
    let manifest = Manifest { format: FORMAT.into(), files, superseded };
    let json = serde_json::to_vec_pretty(&manifest).map_err(|e| unit_err(dir, e.to_string()))?;
    atomic_write(&dir.join(MANIFEST), &json)?;
    // Published. The superseded files are garbage now; failing to remove one is harmless (the
    // manifest records it, and the next save tries again).
    for s in &manifest.superseded {
        let _ = std::fs::remove_file(dir.join(&s.entry.file));
    }
    let _ = std::fs::remove_file(dir.join(PENDING));
    let named: Vec<&str> =
        manifest.files.values().chain(manifest.superseded.iter().map(|s| &s.entry)).map(|e| e.file.as_str()).collect();
    remove_dead_temp_files(dir, &named);
    Ok(())
}

/// Whether `s` is a file a save of ours wrote: its name is the content-addressed name of its part
/// and checksum, and it is a regular file (not a link) of the recorded size and checksum.
fn written_by_us(dir: &Path, s: &SupersededPart) -> bool {
    let path = dir.join(&s.entry.file);
    is_plain_name(&s.entry.file)
        && s.entry.file == stored_name(&s.part, &s.entry.sha256)
        && std::fs::symlink_metadata(&path).is_ok_and(|m| m.is_file() && m.len() == s.entry.bytes)
        // A planted manifest can name any file with a matching size and name: only the content's
        // own checksum proves it is the part the record describes.
        && read_regular(&path, Some(s.entry.bytes), false).is_ok_and(|b| sha256_hex(&b) == s.entry.sha256)
}

/// Removes the temp files that [`atomic_write`] of one of `files` (names in `dir`) left when its
/// process was killed: exactly those names, from a process that no longer runs. Only Linux can
/// tell whether a process runs (`/proc`); elsewhere they are left alone.
fn remove_dead_temp_files(dir: &Path, files: &[&str]) {
    if !Path::new("/proc/self").exists() {
        return;
    }
    let Ok(listing) = std::fs::read_dir(if dir.as_os_str().is_empty() { Path::new(".") } else { dir }) else {
        return;
    };
    for e in listing.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        let Some(rest) = name.strip_prefix('.').and_then(|r| r.strip_suffix(".tmp")) else { continue };
        let Some((file, pid)) = rest.rsplit_once('.') else { continue };
        // Only the names `atomic_write` makes: `<pid>-<n>` (or a bare `<pid>`, as earlier versions
        // named them), each in plain decimal (no sign, no leading zero).
        let decimal =
            |d: &str| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()) && (d == "0" || !d.starts_with('0'));
        let pid = match pid.split_once('-') {
            Some((pid, n)) if decimal(n) => pid,
            Some(_) => continue,
            None => pid,
        };
        let dead =
            decimal(pid) && pid != "0" && pid.parse::<u32>().is_ok_and(|p| !Path::new(&format!("/proc/{p}")).exists());
        if dead && files.contains(&file) && e.file_type().is_ok_and(|t| t.is_file()) {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// Whether `dir` holds a published checkpoint unit (a manifest).
pub fn unit_exists(dir: &Path) -> bool {
    dir.join(MANIFEST).is_file()
}

/// Reads the manifest (or the pending record) `name` of the unit in `dir`.
fn read_manifest(dir: &Path, name: &str) -> Result<Manifest> {
    let mpath = dir.join(name);
    let bytes = read_part(dir, &mpath, MAX_MANIFEST_BYTES)?;
    let manifest: Manifest =
        serde_json::from_slice(&bytes).map_err(|e| unit_err(&mpath, format!("corrupt manifest: {e}")))?;
    if manifest.format != FORMAT {
        return Err(unit_err(&mpath, format!("unknown format {:?} (expected {FORMAT:?})", manifest.format)));
    }
    Ok(manifest)
}

/// Reads the parts `names` of the checkpoint unit in `dir`, verifying each file's size and
/// SHA-256 against the manifest before returning its bytes (in the order of `names`).
///
/// Every file read must be a regular file in `dir` (a symlink only to one in `dir`): a FIFO, a
/// device or a link out of the unit is refused without reading it, and no read goes past the
/// size the manifest declares, so a hostile unit can neither block the loader nor exhaust memory.
///
/// # Errors
/// A missing or corrupt manifest, a part the manifest does not name, a manifest entry that is not
/// a plain file name in `dir`, a missing file or one that is not a regular file, or a size or
/// checksum mismatch; each names the file.
pub fn load_unit(dir: &Path, names: &[&str]) -> Result<Vec<Vec<u8>>> {
    // Shared with other loads, exclusive of a save: the manifest and its parts are read as one
    // generation. A unit no save of this version wrote has no lock file, and needs none.
    let _lock = lock_unit(dir, false)?;
    let manifest = read_manifest(dir, MANIFEST)?;
    names
        .iter()
        .map(|name| {
            let (e, path) = part_entry(dir, &manifest, name)?;
            let bytes = read_part(dir, &path, e.bytes)?;
            check_size(&path, bytes.len() as u64, e)?;
            check_sha(&path, &sha256_hex(&bytes), e)?;
            Ok(bytes)
        })
        .collect()
}

/// The manifest's entry for part `name` and the path of its file, which must be a plain name in
/// `dir`.
fn part_entry<'m>(dir: &Path, manifest: &'m Manifest, name: &str) -> Result<(&'m ManifestEntry, PathBuf)> {
    let mpath = dir.join(MANIFEST);
    let e = manifest
        .files
        .get(name)
        .ok_or_else(|| unit_err(&mpath, format!("names no part {name:?} (it has {:?})", manifest.files.keys())))?;
    if !is_plain_name(&e.file) {
        return Err(unit_err(&mpath, format!("part {name:?} points outside the checkpoint: {:?}", e.file)));
    }
    Ok((e, dir.join(&e.file)))
}

fn check_size(path: &Path, len: u64, e: &ManifestEntry) -> Result<()> {
    if len != e.bytes {
        return Err(unit_err(path, format!("truncated: {len} bytes, the manifest says {}", e.bytes)));
    }
    Ok(())
}

fn check_sha(path: &Path, sha: &str, e: &ManifestEntry) -> Result<()> {
    if sha != e.sha256 {
        return Err(unit_err(
            path,
            format!("checksum mismatch: SHA-256 {sha}, the manifest says {} (corrupted or edited)", e.sha256),
        ));
    }
    Ok(())
}

/// One part of a checkpoint unit, verified and open for reading piece by piece: what a loader
/// uses to read a file larger than it wants to hold (see [`open_unit_part`]). It holds the
/// unit's shared lock while it lives, so no save of ours replaces the generation it reads.
#[derive(Debug)]
pub struct UnitPart {
    file: std::fs::File,
    len: u64,
    path: PathBuf,
    _lock: Option<std::fs::File>,
}

/// Bytes hashed per read while verifying a part: the memory a verification holds.
const HASH_CHUNK: usize = 1 << 20;

/// Opens the part `name` of the checkpoint unit in `dir` with the checks of [`load_unit`] — the
/// manifest names it, its file is a plain name in `dir`, a regular file (a symlink only to one in
/// `dir`), of the manifest's size and SHA-256 — without reading it into memory: the checksum is
/// computed over the open file in 1 MiB chunks, and [`UnitPart::read_at`] then reads from that
/// same open file.
///
/// The bytes are verified as they were when opened: a published part is never rewritten by a
/// save of ours (its name is its checksum), and the lock keeps our saves from removing it, but
/// another program writing into the file afterwards is not detected by this check.
///
/// # Errors
/// As [`load_unit`].
pub fn open_unit_part(dir: &Path, name: &str) -> Result<UnitPart> {
    let lock = lock_unit(dir, false)?;
    let manifest = read_manifest(dir, MANIFEST)?;
    let (e, path) = part_entry(dir, &manifest, name)?;
    let (mut file, len) = open_part(dir, &path, e.bytes)?;
    check_size(&path, len, e)?;
    let io = |err: std::io::Error| unit_err(&path, format!("read failed: {err}"));
    let mut hasher = Sha256::new();
    let mut chunk = vec![0u8; HASH_CHUNK];
    let mut hashed = 0u64;
    // One byte past the size: a file that grew since its size was read is caught by the count.
    let mut reader = (&mut file).take(len.saturating_add(1));
    loop {
        let n = reader.read(&mut chunk).map_err(io)?;
        if n == 0 {
            break;
        }
        hasher.update(&chunk[..n]);
        hashed += n as u64;
    }
    check_size(&path, hashed, e)?;
    let sha: String = hasher.finalize().iter().map(|b| format!("{b:02x}")).collect();
    check_sha(&path, &sha, e)?;
    Ok(UnitPart { file, len, path, _lock: lock })
}

impl UnitPart {
    /// The verified size in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the part holds no bytes.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The file this part is stored in (for messages).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `len` bytes from `offset`.
    ///
    /// # Errors
    /// A range that goes past the verified size (or whose end overflows), or a failed read (the
    /// file shrank since it was verified: changed by another program).
    pub fn read_at(&self, offset: u64, len: usize) -> Result<Vec<u8>> {
        let end = u64::try_from(len).ok().and_then(|l| offset.checked_add(l));
        if end.is_none_or(|end| end > self.len) {
            return Err(unit_err(
                &self.path,
                format!("a read of {len} bytes at offset {offset} goes past the part's {} bytes", self.len),
            ));
        }
        let mut out = vec![0u8; len];
        read_exact_at(&self.file, &mut out, offset)
            .map_err(|e| unit_err(&self.path, format!("read of {len} bytes at offset {offset} failed: {e}")))?;
        Ok(out)
    }
}

#[cfg(unix)]
fn read_exact_at(file: &std::fs::File, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
    std::os::unix::fs::FileExt::read_exact_at(file, buf, offset)
}

#[cfg(not(unix))]
fn read_exact_at(mut file: &std::fs::File, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
    use std::io::Seek;
    file.seek(std::io::SeekFrom::Start(offset))?;
    file.read_exact(buf)
}

/// Reads the file `path` of the unit in `dir`: at most `limit` bytes, and only if it is a regular
/// file (a symlink is followed only to a regular file in `dir` itself).
fn read_part(dir: &Path, path: &Path, limit: u64) -> Result<Vec<u8>> {
    let (file, len) = open_part(dir, path, limit)?;
    read_open(file, len, limit).map_err(|reason| unit_err(path, reason))
}

/// Opens the file `path` of the unit in `dir` as [`read_part`] reads it; returns it with its size
/// (at most `limit`).
fn open_part(dir: &Path, path: &Path, limit: u64) -> Result<(std::fs::File, u64)> {
    let err = |reason: String| unit_err(path, reason);
    let link = std::fs::symlink_metadata(path).map_err(|e| err(io_reason(&e)))?;
    let target = if link.file_type().is_symlink() {
        let target = std::fs::canonicalize(path).map_err(|e| err(io_reason(&e)))?;
        let home = std::fs::canonicalize(dir).map_err(|e| err(io_reason(&e)))?;
        if target.parent() != Some(home.as_path()) {
            return Err(err(format!("a symlink out of the checkpoint unit (to {})", target.display())));
        }
        target
    } else {
        path.to_path_buf()
    };
    open_regular(&target, Some(limit), false).map_err(err)
}

fn io_reason(e: &std::io::Error) -> String {
    if e.kind() == std::io::ErrorKind::NotFound {
        "missing (file not found)".into()
    } else {
        e.to_string()
    }
}

/// Reads `path` if it is a regular file, at most `limit` bytes (default: its size when opened).
/// The open never blocks (a FIFO is refused, not waited on) and the size is checked on the open
/// file's metadata before anything is read, so a device, an endless or a huge file is never read
/// into memory. With `follow` false, a final symlink is refused.
fn read_regular(path: &Path, limit: Option<u64>, follow: bool) -> std::result::Result<Vec<u8>, String> {
    let (file, len) = open_regular(path, limit, follow)?;
    read_open(file, len, limit.unwrap_or(len))
}

/// Opens `path` as [`read_regular`] reads it: a regular file of at most `limit` bytes (default:
/// any size); returns it with its size.
fn open_regular(path: &Path, limit: Option<u64>, follow: bool) -> std::result::Result<(std::fs::File, u64), String> {
    let f = open_nonblocking(path, follow).map_err(|e| io_reason(&e))?;
    let meta = f.metadata().map_err(|e| e.to_string())?;
    if !meta.is_file() {
        return Err(format!("not a regular file ({:?})", meta.file_type()));
    }
    if let Some(limit) = limit.filter(|&l| meta.len() > l) {
        return Err(format!("{} bytes, more than the {limit} expected", meta.len()));
    }
    Ok((f, meta.len()))
}

/// Reads the open file `f` of `len` bytes (its size when opened), refusing more than `limit`.
fn read_open(f: std::fs::File, len: u64, limit: u64) -> std::result::Result<Vec<u8>, String> {
    // The size is the file's own claim (a sparse file can claim a terabyte): reserve fallibly.
    let mut bytes = Vec::new();
    let want = usize::try_from(len).map_err(|_| format!("{len} bytes do not fit in memory"))?;
    bytes.try_reserve_exact(want).map_err(|_| format!("{len} bytes do not fit in memory"))?;
    f.take(limit.saturating_add(1)).read_to_end(&mut bytes).map_err(|e| e.to_string())?;
    if bytes.len() as u64 > limit {
        return Err(format!("grew past the {limit} bytes expected while being read"));
    }
    Ok(bytes)
}

/// Opens `path` for reading without blocking (opening a FIFO for reading otherwise waits for a
/// writer forever), following a final symlink only if `follow`.
#[cfg(unix)]
fn open_nonblocking(path: &Path, follow: bool) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    let flags = libc::O_NONBLOCK | if follow { 0 } else { libc::O_NOFOLLOW };
    std::fs::OpenOptions::new().read(true).custom_flags(flags).open(path)
}

#[cfg(not(unix))]
fn open_nonblocking(path: &Path, follow: bool) -> std::io::Result<std::fs::File> {
    if !follow && std::fs::symlink_metadata(path)?.file_type().is_symlink() {
        return Err(std::io::Error::other("a symlink"));
    }
    std::fs::File::open(path)
}
