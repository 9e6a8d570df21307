//! The one place where every tensor op reports itself to a profiler.
//!
//! Each op opens an [`OpScope`] around its kernel. With no observer installed (the normal case),
//! opening a scope is one relaxed atomic load and a branch; shapes and FLOPs are not even computed,
//! because they are passed as a closure. With an observer installed on the current thread, the scope
//! times the kernel and hands an [`OpEvent`] to it on drop.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Whether an event is an op's forward computation or its gradient computation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Phase {
    Forward,
    Backward,
}

/// What an op reports: its name, input shapes, work done and wall time.
#[derive(Debug, Clone)]
pub struct OpEvent {
    pub name: &'static str,
    pub phase: Phase,
    pub input_shapes: Vec<Vec<usize>>,
    /// Floating-point operations, counting a multiply-accumulate as 2.
    pub flops: u64,
    /// Bytes read plus bytes written by the kernel (f32 = 4 bytes), assuming no cache reuse.
    pub bytes: u64,
    pub start: Instant,
    pub duration: Duration,
    /// Dotted path of the layer the op ran in (`"blocks.2"`, `"0"`), empty outside any layer.
    pub layer: String,
}

/// Receives op events. Installed per thread with [`set_observer`].
pub trait OpObserver {
    fn on_op(&self, event: OpEvent);
}

/// Number of threads with an observer installed: lets the disabled path skip the thread-local.
static ACTIVE: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    static OBSERVER: RefCell<Option<Rc<dyn OpObserver>>> = const { RefCell::new(None) };
    static LAYERS: RefCell<Vec<String>> = const { RefCell::new(Vec::new()) };
}

/// Runs `f` with `name` pushed on this thread's layer path, so ops inside are attributed to it.
/// Containers (Sequential, the GPT) call this around each child. Free when nothing observes.
pub fn layer_scope<R>(name: impl FnOnce() -> String, f: impl FnOnce() -> R) -> R {
    if ACTIVE.load(Ordering::Relaxed) == 0 {
        return f();
    }
    LAYERS.with(|l| l.borrow_mut().push(name()));
    let out = f();
    LAYERS.with(|l| l.borrow_mut().pop());
    out
}

/// Installs (Some) or removes (None) this thread's observer; returns the previous one.
pub fn set_observer(obs: Option<Rc<dyn OpObserver>>) -> Option<Rc<dyn OpObserver>> {
    OBSERVER.with(|o| {
        let prev = o.replace(obs);
        match (&prev, o.borrow().is_some()) {
            (None, true) => {
                ACTIVE.fetch_add(1, Ordering::Relaxed);
            }
            (Some(_), false) => {
                ACTIVE.fetch_sub(1, Ordering::Relaxed);
            }
            _ => {}
        }
        prev
    })
}

/// Static description of an op call, produced lazily only when someone is listening.
pub struct OpInfo {
    pub input_shapes: Vec<Vec<usize>>,
    pub flops: u64,
    pub bytes: u64,
}

/// Times one op; reports on drop if an observer is installed.
pub struct OpScope {
    active: Option<(&'static str, Phase, OpInfo, Instant)>,
}

impl OpScope {
    /// Opens a scope around an op's forward kernel.
    #[inline]
    pub fn begin(name: &'static str, info: impl FnOnce() -> OpInfo) -> OpScope {
        Self::begin_phase(name, Phase::Forward, info)
    }

    /// Opens a scope around an op's kernel in the given phase.
    #[inline]
    pub fn begin_phase(name: &'static str, phase: Phase, info: impl FnOnce() -> OpInfo) -> OpScope {
        if ACTIVE.load(Ordering::Relaxed) == 0 {
            return OpScope { active: None };
        }
        let has = OBSERVER.with(|o| o.borrow().is_some());
        if !has {
            return OpScope { active: None };
        }
        OpScope { active: Some((name, phase, info(), Instant::now())) }
    }
}

impl Drop for OpScope {
    fn drop(&mut self) {
        if let Some((name, phase, info, start)) = self.active.take() {
            let duration = start.elapsed();
            let obs = OBSERVER.with(|o| o.borrow().clone());
            if let Some(obs) = obs {
                let layer = LAYERS.with(|l| l.borrow().join("."));
                obs.on_op(OpEvent {
                    name,
                    phase,
                    layer,
                    input_shapes: info.input_shapes,
                    flops: info.flops,
                    bytes: info.bytes,
                    start,
                    duration,
                });
            }
        }
    }
}
