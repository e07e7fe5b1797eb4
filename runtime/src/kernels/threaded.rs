//! Multi-threaded execution (`std` only): any [`Kernels`] spread over a persistent pool.
//!
//! A decode step makes a couple of hundred products of 20–500 µs each, so threads are started
//! once and wait between calls, spinning briefly and then parking. Every product splits the
//! weight rows, so each thread reads (and, in prefill, converts and packs) only its own share
//! of the weights. Each part writes its rows of `out`, handed to it through a
//! `Mutex<Option<…>>` slot (no `unsafe`): directly in decode, through a per-thread scratch in
//! prefill, where a part's rows are not contiguous in `out`. A low-rank layer in decode is one
//! job of two phases: the parts of `A` first, then, once all of `low` is written, the parts of
//! `B`.

use std::cell::RefCell;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::JoinHandle;

use super::{
    AttentionHead, F32Matrix, Kernels, PartJob, Q4Matrix, Q8Matrix, SharedProduct, Weight,
};

/// Busy-wait iterations (a few tens of µs) before a waiting thread parks or yields: enough to
/// bridge the gap between two products of one decode step, short enough not to steal a core
/// from other work on a busy machine.
const SPIN_ITERATIONS: u32 = 1 << 11;

/// Rows below which a split is not worth the handoff.
const MIN_ROWS_PER_THREAD: usize = 16;

/// Rows of the widest register tile of any architecture (the driver's `NR_MAX`): prefill parts
/// are multiples of it, so no tile is split between two threads.
const ROW_ALIGN: usize = 32;

/// Phases a job may have (a low-rank layer has two).
const MAX_PHASES: usize = 2;

/// `inner` on `threads` threads: the calling thread and `threads − 1` pool workers.
pub struct Threaded<K> {
    inner: K,
    pool: Pool,
}

impl<K: core::fmt::Debug> core::fmt::Debug for Threaded<K> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Threaded")
            .field("inner", &self.inner)
            .field("threads", &self.pool.threads)
            .finish()
    }
}

impl<K: Kernels + Sync> Threaded<K> {
    /// Starts `threads − 1` workers (`threads` is clamped to at least 1).
    pub fn new(inner: K, threads: usize) -> Self {
        Self {
            inner,
            pool: Pool::new(threads.max(1)),
        }
    }
}

impl<K> Threaded<K> {
    /// The single-threaded implementation underneath.
    pub fn inner(&self) -> &K {
        &self.inner
    }

    /// Rows per part when `rows` rows are split over the pool, or `None` when one thread
    /// should do it all. Prefill parts are whole register tiles ([`ROW_ALIGN`] rows).
    fn rows_per_part(&self, rows: usize, tokens: usize) -> Option<usize> {
        let threads = self.pool.threads;
        if threads < 2 || rows < 2 * MIN_ROWS_PER_THREAD {
            return None;
        }
        let chunk = rows.div_ceil(threads).max(MIN_ROWS_PER_THREAD);
        Some(if tokens > 1 {
            chunk.next_multiple_of(ROW_ALIGN)
        } else {
            chunk
        })
    }
}

/// Whether a product's buffers cover the whole of it (otherwise the inner kernel computes the
/// common prefix on one thread).
fn covers(w: Weight<'_>, x: &[f32], tokens: usize, out: &[f32]) -> bool {
    w.rows() > 0
        && w.cols() > 0
        && tokens > 0
        && x.len() >= tokens * w.cols()
        && out.len() >= tokens * w.rows()
        && w.is_whole()
}

/// One part's rows of `out`: one piece per token.
type Pieces<'a> = Vec<&'a mut [f32]>;

/// Cuts `out` (`tokens × rows`) into one slot per part: part `p` gets rows
/// `p · chunk .. (p + 1) · chunk` of every token; parts past the rows get `None`.
fn row_slots(out: &mut [f32], rows: usize, chunk: usize, parts: usize) -> Slots<'_> {
    let chunk = chunk.max(1);
    let mut pieces: Vec<Pieces<'_>> = (0..parts.max(rows.div_ceil(chunk)))
        .map(|_| Vec::new())
        .collect();
    for token_row in out.chunks_mut(rows.max(1)) {
        for (part, piece) in pieces.iter_mut().zip(token_row.chunks_mut(chunk)) {
            part.push(piece);
        }
    }
    pieces
        .into_iter()
        .map(|p| Mutex::new(Some(p).filter(|p| !p.is_empty())))
        .collect()
}

thread_local! {
    /// A prefill part's output before it is scattered into `out`; a part's scratch in
    /// [`Kernels::for_each_part`].
    static SCRATCH: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Runs `f` on this thread's [`SCRATCH`], zeroed to `len` values (a fresh buffer if it is
/// already borrowed further up the stack).
fn with_scratch<R>(len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    SCRATCH.with(|scratch| {
        let mut local = Vec::new();
        let mut borrowed = scratch.try_borrow_mut();
        let buffer = borrowed.as_deref_mut().unwrap_or(&mut local);
        buffer.clear();
        buffer.resize(len, 0.0);
        f(buffer)
    })
}

impl<K: Kernels + Sync> Threaded<K> {
    /// Part `index` of a row-split product: rows `index · chunk ..` of `w`, every token.
    fn part(
        &self,
        w: Weight<'_>,
        x: &[f32],
        tokens: usize,
        chunk: usize,
        slots: &[Mutex<Option<Pieces<'_>>>],
        index: usize,
    ) {
        let Some(mut pieces) = slots.get(index).and_then(|s| lock(s).take()) else {
            return;
        };
        let n = pieces.first().map_or(0, |p| p.len());
        let sub = w.row_range(index * chunk, n);
        if let [only] = pieces.as_mut_slice() {
            self.inner.gemm(sub, x, tokens.min(1), only);
            return;
        }
        with_scratch(tokens * n, |buffer| {
            self.inner.gemm(sub, x, tokens, buffer);
            for (piece, row) in pieces.iter_mut().zip(buffer.chunks_exact(n.max(1))) {
                piece.copy_from_slice(row);
            }
        });
    }

    fn product(&self, w: Weight<'_>, x: &[f32], tokens: usize, out: &mut [f32]) {
        let Some(chunk) = self
            .rows_per_part(w.rows(), tokens)
            .filter(|_| covers(w, x, tokens, out))
        else {
            self.inner.gemm(w, x, tokens, out);
            return;
        };
        let x = x.get(..tokens * w.cols()).unwrap_or_default();
        let out = out.get_mut(..tokens * w.rows()).unwrap_or_default();
        let slots = row_slots(out, w.rows(), chunk, self.threads());
        self.pool
            .run(1, &|_, index| self.part(w, x, tokens, chunk, &slots, index));
    }
}

impl<K: Kernels + Sync> Kernels for Threaded<K> {
    fn name(&self) -> &'static str {
        "threaded"
    }

    fn for_each_part(&self, items: usize, out: &mut [f32], scratch: &mut [f32], job: &PartJob<'_>) {
        let per_item = out.len() / items.max(1);
        if self.threads() < 2 || items < 2 || per_item == 0 {
            job(0..items, out, scratch);
            return;
        }
        let chunk = items.div_ceil(self.threads());
        let scratch_len = scratch.len();
        let out = out.get_mut(..items * per_item).unwrap_or_default();
        let slots = row_slots(out, items * per_item, chunk * per_item, self.threads());
        // The caller's scratch goes to whichever part comes first; the others use their
        // thread's own.
        let callers = Mutex::new(Some(scratch));
        self.pool.run(1, &|_, index| {
            let Some(mut pieces) = slots.get(index).and_then(|s| lock(s).take()) else {
                return;
            };
            let Some(piece) = pieces.first_mut() else {
                return;
            };
            let start = index * chunk;
            let range = start..start + piece.len() / per_item;
            let caller_scratch = lock(&callers).take();
            if let Some(scratch) = caller_scratch {
                job(range, piece, scratch);
                return;
            }
            with_scratch(scratch_len, |buffer| job(range, piece, buffer));
        });
    }

    fn attend(
        &self,
        head: &AttentionHead<'_>,
        scores: &mut [f32],
        out: &mut [f32],
        lse: &mut [f32],
    ) {
        self.inner.attend(head, scores, out, lse);
    }

    /// Threads that share each product, the caller's included.
    fn threads(&self) -> usize {
        self.pool.threads
    }

    fn swiglu(&self, gate: &mut [f32], up: &[f32]) {
        self.inner.swiglu(gate, up);
    }

    fn rounds_activations(&self, tokens: usize) -> bool {
        self.inner.rounds_activations(tokens)
    }

    fn gemm_f32(&self, w: F32Matrix<'_>, x: &[f32], tokens: usize, out: &mut [f32]) {
        self.product(Weight::F32(w), x, tokens, out);
    }

    fn gemm_q8(&self, w: Q8Matrix<'_>, x: &[f32], tokens: usize, out: &mut [f32]) {
        self.product(Weight::Q8(w), x, tokens, out);
    }

    fn gemm_q4(&self, w: Q4Matrix<'_>, x: &[f32], tokens: usize, out: &mut [f32]) {
        self.product(Weight::Q4(w), x, tokens, out);
    }

    fn gemm(&self, w: Weight<'_>, x: &[f32], tokens: usize, out: &mut [f32]) {
        self.product(w, x, tokens, out);
    }

    fn gemm_low_rank(
        &self,
        a: Weight<'_>,
        b: Weight<'_>,
        x: &[f32],
        tokens: usize,
        low: &mut [f32],
        out: &mut [f32],
    ) {
        if tokens == 1 {
            let mut product = [SharedProduct {
                first: a,
                second: Some(b),
                low,
                out,
            }];
            self.gemm_shared(&mut product, x);
            return;
        }
        self.product(a, x, tokens, low);
        self.product(b, low, tokens, out);
    }

    fn gemm_shared(&self, products: &mut [SharedProduct<'_, '_>], x: &[f32]) {
        let fits = |p: &SharedProduct<'_, '_>| match p.second {
            None => covers(p.first, x, 1, p.out),
            Some(second) => {
                second.cols() == p.first.rows()
                    && covers(p.first, x, 1, p.low)
                    && covers(second, p.low, 1, p.out)
            }
        };
        if self.pool.threads < 2 || !products.iter().all(fits) {
            for p in products {
                match p.second {
                    None => self.product(p.first, x, 1, p.out),
                    Some(second) => {
                        self.product(p.first, x, 1, p.low);
                        self.product(second, p.low, 1, p.out);
                    }
                }
            }
            return;
        }
        let threads = self.pool.threads;
        // Rows per part of `w`: all on the first part where a split does not pay.
        let chunk = |w: Weight<'_>| self.rows_per_part(w.rows(), 1).unwrap_or(w.rows().max(1));
        let plans: Vec<Plan<'_, '_>> = products
            .iter_mut()
            .map(|p| {
                let SharedProduct {
                    first,
                    second,
                    low,
                    out,
                } = p;
                // The first product writes `out`, or a low-rank layer's `low`, which `B` reads.
                let (first_out, second) = match *second {
                    None => (&mut **out, None),
                    Some(second) => (&mut **low, Some((second, &mut **out))),
                };
                let first_rows = first.rows();
                let first_out = first_out.get_mut(..first_rows).unwrap_or_default();
                let second = second.map(|(second, out)| {
                    let rows = second.rows();
                    let out = out.get_mut(..rows).unwrap_or_default();
                    (
                        second,
                        chunk(second),
                        row_slots(out, rows, chunk(second), threads),
                    )
                });
                Plan {
                    first: *first,
                    first_chunk: chunk(*first),
                    first_slots: row_slots(first_out, first_rows, chunk(*first), threads),
                    second,
                }
            })
            .collect();
        let phases = if plans.iter().any(|p| p.second.is_some()) {
            2
        } else {
            1
        };
        self.pool.run(phases, &|phase, index| {
            for plan in &plans {
                if phase == 0 {
                    // Phase 0 writes through the slot and leaves the piece in it: a low-rank
                    // product's second phase reads all of `low` from the slots.
                    let mut slot = plan.first_slots.get(index).map(lock);
                    if let Some([piece]) = slot.as_deref_mut().and_then(Option::as_deref_mut) {
                        let rows = plan.first.row_range(index * plan.first_chunk, piece.len());
                        self.inner.gemm(rows, x, 1, piece);
                    }
                    continue;
                }
                let Some((second, chunk, out_slots)) = &plan.second else {
                    continue;
                };
                // Every part of `B` reads all of `low`: copied from the slots into this
                // thread's scratch (decode parts write `out` directly, using no scratch).
                with_scratch(plan.first.rows(), |gathered| {
                    let mut at = 0;
                    for slot in &plan.first_slots {
                        if let Some([piece]) = lock(slot).as_deref() {
                            if let Some(dst) = gathered.get_mut(at..at + piece.len()) {
                                dst.copy_from_slice(piece);
                            }
                            at += piece.len();
                        }
                    }
                    self.part(*second, gathered, 1, *chunk, out_slots, index);
                });
            }
        });
    }
}

/// One product of a [`Kernels::gemm_shared`] job: the first matrix's rows per part and its
/// parts' outputs (`out`, or a low-rank layer's `low`), and a low-rank layer's `B` with its
/// rows per part and its parts' outputs.
struct Plan<'w, 'o> {
    first: Weight<'w>,
    first_chunk: usize,
    first_slots: Slots<'o>,
    second: Option<(Weight<'w>, usize, Slots<'o>)>,
}

/// One slot per part: its rows of an output.
type Slots<'a> = Vec<Mutex<Option<Pieces<'a>>>>;

/// A job as the workers see it: called once per part of every phase with `(phase, part)`.
type Job = &'static (dyn Fn(usize, usize) + Sync);

/// Pool state. Every phase of a job is cut into one part per thread; whoever is running claims
/// the next part, so when a worker is descheduled (a busy machine) the caller does its part too
/// instead of waiting for it. A phase starts once every part of the previous one has finished;
/// a claimed part is always being run by the thread that claimed it, so the wait ends.
struct Shared {
    /// Bumped (under `parked`) for every job and for shutdown.
    epoch: AtomicUsize,
    /// The current job; a worker may only start using it while holding this lock.
    job: Mutex<Option<Job>>,
    /// Phases in the current job (at most [`MAX_PHASES`]), parts per phase.
    phases: AtomicUsize,
    parts: AtomicUsize,
    /// Per phase: next unclaimed part, parts finished.
    next: [AtomicUsize; MAX_PHASES],
    finished: [AtomicUsize; MAX_PHASES],
    /// Workers holding a copy of the current job.
    active: AtomicUsize,
    shutdown: AtomicBool,
    /// Workers waiting on `wake`.
    parked: Mutex<usize>,
    wake: Condvar,
    /// A part panicked on a worker.
    panicked: AtomicBool,
}

impl Shared {
    /// Runs parts of every phase until none is left to claim, waiting between phases.
    fn work(&self, job: Job) {
        let parts = self.parts.load(Ordering::Acquire);
        let phases = self.phases.load(Ordering::Acquire).min(MAX_PHASES);
        for (phase, (next, finished)) in self.next.iter().zip(&self.finished).enumerate() {
            if phase >= phases {
                return;
            }
            if phase > 0 {
                wait_until(|| {
                    self.finished
                        .get(phase - 1)
                        .is_none_or(|f| f.load(Ordering::Acquire) >= parts)
                });
            }
            loop {
                let part = next.fetch_add(1, Ordering::AcqRel);
                if part >= parts {
                    break;
                }
                let run = std::panic::AssertUnwindSafe(|| job(phase, part));
                if std::panic::catch_unwind(run).is_err() {
                    self.panicked.store(true, Ordering::Release);
                }
                finished.fetch_add(1, Ordering::AcqRel);
            }
        }
    }

    /// Whether the last phase of the current job has finished.
    fn done(&self) -> bool {
        let parts = self.parts.load(Ordering::Acquire);
        let last = self.phases.load(Ordering::Acquire).clamp(1, MAX_PHASES) - 1;
        self.finished
            .get(last)
            .is_none_or(|f| f.load(Ordering::Acquire) >= parts)
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Spins, then yields, until `done`.
fn wait_until(done: impl Fn() -> bool) {
    let mut spins = 0u32;
    while !done() {
        if spins < SPIN_ITERATIONS {
            spins += 1;
            core::hint::spin_loop();
        } else {
            std::thread::yield_now();
        }
    }
}

struct Pool {
    threads: usize,
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
    /// One job at a time, even when `Threaded` is shared between threads.
    caller: Mutex<()>,
}

impl Pool {
    fn new(threads: usize) -> Self {
        let shared = Arc::new(Shared {
            epoch: AtomicUsize::new(0),
            job: Mutex::new(None),
            phases: AtomicUsize::new(0),
            parts: AtomicUsize::new(0),
            next: [const { AtomicUsize::new(0) }; MAX_PHASES],
            finished: [const { AtomicUsize::new(0) }; MAX_PHASES],
            active: AtomicUsize::new(0),
            shutdown: AtomicBool::new(false),
            parked: Mutex::new(0),
            wake: Condvar::new(),
            panicked: AtomicBool::new(false),
        });
        let workers = (1..threads)
            .filter_map(|index| {
                let shared = Arc::clone(&shared);
                std::thread::Builder::new()
                    .name(format!("whittle-kernel-{index}"))
                    .spawn(move || worker(&shared))
                    .ok()
            })
            .collect::<Vec<_>>();
        Self {
            threads: workers.len() + 1,
            shared,
            workers,
            caller: Mutex::new(()),
        }
    }

    /// Calls `job(phase, part)` once for every `phase < phases` (at most [`MAX_PHASES`]) and
    /// `part < self.threads`, here and on the workers, every part of a phase after every part
    /// of the one before, and returns once every call returned and no worker holds `job` any
    /// more.
    fn run(&self, phases: usize, job: &(dyn Fn(usize, usize) + Sync)) {
        let phases = phases.clamp(1, MAX_PHASES);
        if self.workers.is_empty() {
            for phase in 0..phases {
                job(phase, 0);
            }
            return;
        }
        let _caller = lock(&self.caller);
        let shared = &*self.shared;
        // SAFETY: workers copy the job only under `shared.job`'s lock while it is `Some`, and
        // count themselves in `active` before releasing that lock. This function clears the
        // job under the lock and then waits for `active` to reach zero before it returns, and
        // it cannot unwind in between (parts run under `catch_unwind`). So no copy of the
        // reference outlives the borrow, despite the `'static` in its type.
        #[allow(unsafe_code)]
        let erased: Job =
            unsafe { core::mem::transmute::<&(dyn Fn(usize, usize) + Sync), Job>(job) };
        {
            let mut slot = lock(&shared.job);
            for (next, finished) in shared.next.iter().zip(&shared.finished) {
                next.store(0, Ordering::Release);
                finished.store(0, Ordering::Release);
            }
            shared.parts.store(self.threads, Ordering::Release);
            shared.phases.store(phases, Ordering::Release);
            *slot = Some(erased);
        }
        {
            let parked = lock(&shared.parked);
            shared.epoch.fetch_add(1, Ordering::AcqRel);
            if *parked > 0 {
                shared.wake.notify_all();
            }
        }
        shared.work(erased);
        wait_until(|| shared.done());
        *lock(&shared.job) = None;
        wait_until(|| shared.active.load(Ordering::Acquire) == 0);
        if shared.panicked.swap(false, Ordering::AcqRel) {
            std::panic::resume_unwind(Box::new("a kernel part panicked"));
        }
    }
}

fn worker(shared: &Shared) {
    let mut seen = 0usize;
    loop {
        let mut spins = 0u32;
        loop {
            let epoch = shared.epoch.load(Ordering::Acquire);
            if epoch != seen {
                seen = epoch;
                break;
            }
            if spins < SPIN_ITERATIONS {
                spins += 1;
                core::hint::spin_loop();
                continue;
            }
            let mut parked = lock(&shared.parked);
            *parked += 1;
            while shared.epoch.load(Ordering::Acquire) == seen {
                parked = shared
                    .wake
                    .wait(parked)
                    .unwrap_or_else(PoisonError::into_inner);
            }
            *parked -= 1;
        }
        if shared.shutdown.load(Ordering::Acquire) {
            return;
        }
        let job = {
            let slot = lock(&shared.job);
            let job = *slot;
            if job.is_some() {
                shared.active.fetch_add(1, Ordering::AcqRel);
            }
            job
        };
        if let Some(job) = job {
            shared.work(job);
            shared.active.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.shared.shutdown.store(true, Ordering::Release);
        {
            let _parked = lock(&self.shared.parked);
            self.shared.epoch.fetch_add(1, Ordering::AcqRel);
            self.shared.wake.notify_all();
        }
        for handle in self.workers.drain(..) {
            let _ = handle.join();
        }
    }
}
