//! Multi-threaded execution (`std` only): any [`Kernels`] spread over a persistent pool.
//!
//! A decode step makes a couple of hundred products of 20–500 µs each, so threads are started
//! once and wait between calls, spinning briefly and then parking. Decode (one token) splits
//! the weight rows, prefill splits the tokens: either way every part writes one contiguous
//! piece of `out`, handed to it through a `Mutex<Option<&mut [f32]>>` slot (no `unsafe`).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::JoinHandle;

use super::{F32Matrix, Kernels, Q8Matrix};

/// Busy-wait iterations (a few tens of µs) before a waiting thread parks or yields: enough to
/// bridge the gap between two products of one decode step, short enough not to steal a core
/// from other work on a busy machine.
const SPIN_ITERATIONS: u32 = 1 << 11;

/// Rows below which a split is not worth the handoff.
const MIN_ROWS_PER_THREAD: usize = 16;

/// `inner` on `threads` threads: the calling thread and `threads − 1` pool workers.
pub struct Threaded<K> {
    inner: K,
    pool: Pool,
}

impl<K: core::fmt::Debug> core::fmt::Debug for Threaded<K> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Threaded")
            .field("inner", &self.inner)
            .field("threads", &self.threads())
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
    /// Threads that share each product, the caller's included.
    pub fn threads(&self) -> usize {
        self.pool.threads
    }

    /// The single-threaded implementation underneath.
    pub fn inner(&self) -> &K {
        &self.inner
    }
}

/// How one product is divided: per thread, a range of rows (decode) or of tokens (prefill).
#[derive(Clone, Copy)]
enum Split {
    Rows,
    Tokens,
}

fn split_of(rows: usize, tokens: usize, threads: usize) -> Option<(Split, usize)> {
    if threads < 2 {
        None
    } else if tokens == 1 && rows >= 2 * MIN_ROWS_PER_THREAD {
        Some((Split::Rows, rows.div_ceil(threads).max(MIN_ROWS_PER_THREAD)))
    } else if tokens >= 2 {
        Some((Split::Tokens, tokens.div_ceil(threads)))
    } else {
        None
    }
}

/// Cuts `out` into one slot per thread: `chunk` items each, the last one shorter.
fn slots(out: &mut [f32], chunk: usize, threads: usize) -> Vec<Mutex<Option<&mut [f32]>>> {
    let mut slots: Vec<_> = out
        .chunks_mut(chunk.max(1))
        .map(|c| Mutex::new(Some(c)))
        .collect();
    slots.resize_with(threads.max(slots.len()), || Mutex::new(None));
    slots
}

fn take<'a>(slots: &[Mutex<Option<&'a mut [f32]>>], index: usize) -> Option<&'a mut [f32]> {
    lock(slots.get(index)?).take()
}

impl<K: Kernels + Sync> Kernels for Threaded<K> {
    fn name(&self) -> &'static str {
        "threaded"
    }

    fn gemm_f32(&self, w: F32Matrix<'_>, x: &[f32], tokens: usize, out: &mut [f32]) {
        let usable =
            w.rows > 0 && w.cols > 0 && x.len() >= tokens * w.cols && out.len() >= tokens * w.rows;
        let whole = w.data.len() >= w.rows * w.cols;
        let Some((split, chunk)) =
            split_of(w.rows, tokens, self.threads()).filter(|_| usable && whole)
        else {
            self.inner.gemm_f32(w, x, tokens, out);
            return;
        };
        let out = out.get_mut(..tokens * w.rows).unwrap_or_default();
        match split {
            Split::Rows => {
                let slots = slots(out, chunk, self.threads());
                self.pool.run(&|index| {
                    let Some(part) = take(&slots, index) else {
                        return;
                    };
                    let start = index * chunk;
                    let rows = part.len();
                    let data = w
                        .data
                        .get(start * w.cols..(start + rows) * w.cols)
                        .unwrap_or_default();
                    let sub = F32Matrix {
                        rows,
                        cols: w.cols,
                        data,
                    };
                    self.inner.gemm_f32(sub, x, 1, part);
                });
            }
            Split::Tokens => {
                let slots = slots(out, chunk * w.rows, self.threads());
                self.pool.run(&|index| {
                    let Some(part) = take(&slots, index) else {
                        return;
                    };
                    let t0 = index * chunk;
                    let n = part.len() / w.rows.max(1);
                    let xs = x.get(t0 * w.cols..(t0 + n) * w.cols).unwrap_or_default();
                    self.inner.gemm_f32(w, xs, n, part);
                });
            }
        }
    }

    fn gemm_q8(&self, w: Q8Matrix<'_>, x: &[f32], tokens: usize, out: &mut [f32]) {
        let usable =
            w.rows > 0 && w.cols > 0 && x.len() >= tokens * w.cols && out.len() >= tokens * w.rows;
        let per_row = w.blocks_per_row();
        let whole = w.data.len() >= w.rows * w.cols && w.scales.len() >= w.rows * per_row;
        let Some((split, chunk)) =
            split_of(w.rows, tokens, self.threads()).filter(|_| usable && whole)
        else {
            self.inner.gemm_q8(w, x, tokens, out);
            return;
        };
        let out = out.get_mut(..tokens * w.rows).unwrap_or_default();
        match split {
            Split::Rows => {
                let slots = slots(out, chunk, self.threads());
                self.pool.run(&|index| {
                    let Some(part) = take(&slots, index) else {
                        return;
                    };
                    let start = index * chunk;
                    let rows = part.len();
                    let data = w
                        .data
                        .get(start * w.cols..(start + rows) * w.cols)
                        .unwrap_or_default();
                    let scales = w
                        .scales
                        .get(start * per_row..(start + rows) * per_row)
                        .unwrap_or_default();
                    let sub = Q8Matrix {
                        rows,
                        cols: w.cols,
                        data,
                        scales,
                    };
                    self.inner.gemm_q8(sub, x, 1, part);
                });
            }
            Split::Tokens => {
                let slots = slots(out, chunk * w.rows, self.threads());
                self.pool.run(&|index| {
                    let Some(part) = take(&slots, index) else {
                        return;
                    };
                    let t0 = index * chunk;
                    let n = part.len() / w.rows.max(1);
                    let xs = x.get(t0 * w.cols..(t0 + n) * w.cols).unwrap_or_default();
                    self.inner.gemm_q8(w, xs, n, part);
                });
            }
        }
    }
}

/// A job as the workers see it: called once per part with the part's index.
type Job = &'static (dyn Fn(usize) + Sync);

/// Pool state. A job is cut into one part per thread; whoever is running claims the next
/// part, so when a worker is descheduled (a busy machine) the caller does its part too
/// instead of waiting for it.
struct Shared {
    /// Bumped (under `parked`) for every job and for shutdown.
    epoch: AtomicUsize,
    /// The current job; a worker may only start using it while holding this lock.
    job: Mutex<Option<Job>>,
    /// Next unclaimed part, parts in the job, parts finished.
    next: AtomicUsize,
    parts: AtomicUsize,
    finished: AtomicUsize,
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
    /// Runs parts until none is left to claim.
    fn work(&self, job: Job) {
        let parts = self.parts.load(Ordering::Acquire);
        loop {
            let part = self.next.fetch_add(1, Ordering::AcqRel);
            if part >= parts {
                return;
            }
            if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job(part))).is_err() {
                self.panicked.store(true, Ordering::Release);
            }
            self.finished.fetch_add(1, Ordering::AcqRel);
        }
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
            next: AtomicUsize::new(0),
            parts: AtomicUsize::new(0),
            finished: AtomicUsize::new(0),
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

    /// Calls `job(part)` once for every `part < self.threads`, here and on the workers, and
    /// returns once every call returned and no worker holds `job` any more.
    fn run(&self, job: &(dyn Fn(usize) + Sync)) {
        if self.workers.is_empty() {
            job(0);
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
        let erased: Job = unsafe { core::mem::transmute::<&(dyn Fn(usize) + Sync), Job>(job) };
        {
            let mut slot = lock(&shared.job);
            shared.next.store(0, Ordering::Release);
            shared.finished.store(0, Ordering::Release);
            shared.parts.store(self.threads, Ordering::Release);
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
        wait_until(|| shared.finished.load(Ordering::Acquire) >= self.threads);
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
