//! The engine's own heap, measured inside a process that also runs the emulators.
//!
//! The bench runs the emulators on one tokio runtime and the engine (clients, store, webhook
//! receiver, passes) on another whose threads are marked as the engine's. Every allocation
//! carries a small header saying which side made it, so a free on any thread is taken off the
//! right side's count. What is reported is the engine side's live bytes and their peak: the
//! heap an engine process would hold, without the allocator's own slack (RSS is a little more).
//!
//! A global allocator cannot be written without `unsafe`; this module is the one place in the
//! workspace allowed it (`.ci/run` checks that), and it only forwards to the system allocator.

#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::backtrace::Backtrace;
use std::cell::Cell;
use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

thread_local! {
    static ENGINE_THREAD: Cell<bool> = const { Cell::new(false) };
    /// Set while the sampler itself runs on this thread: what it allocates is not the engine's
    /// and is never sampled (no recursion into the sample table).
    static IN_SAMPLER: Cell<bool> = const { Cell::new(false) };
    /// Engine bytes this thread may still allocate before its next sample.
    static UNTIL_SAMPLE: Cell<usize> = const { Cell::new(0) };
}

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

/// Bytes between two samples of the engine's allocations (0: sampling off).
static SAMPLE_EVERY: AtomicUsize = AtomicUsize::new(0);

/// The sampled engine blocks still live: address -> (size, where it was allocated).
static SAMPLES: Mutex<Option<HashMap<usize, (usize, Backtrace)>>> = Mutex::new(None);

/// Tag bits in a block's header.
const TAG_ENGINE: u64 = 1;
const TAG_SAMPLED: u64 = 2;

/// Marks the calling thread as the engine's (call it from the engine runtime's
/// `on_thread_start`, and on the thread that drives it).
pub(crate) fn mark_engine_thread() {
    ENGINE_THREAD.with(|t| t.set(true));
}

/// Live bytes the engine side holds now.
pub(crate) fn live() -> usize {
    LIVE.load(Ordering::Relaxed)
}

/// The most the engine side held at once since the last [`reset_peak`].
pub(crate) fn peak() -> usize {
    PEAK.load(Ordering::Relaxed)
}

/// Starts a new peak from what is live now.
pub(crate) fn reset_peak() {
    PEAK.store(live(), Ordering::Relaxed);
}

/// The counting allocator (the system allocator underneath).
pub(crate) struct EngineHeap;

/// Room in front of every block for the tag: at least 16 bytes and the block's alignment, so
/// the pointer handed out keeps its alignment.
fn header(layout: Layout) -> usize {
    layout.align().max(16)
}

fn outer(layout: Layout) -> Option<Layout> {
    Layout::from_size_align(layout.size().checked_add(header(layout))?, header(layout)).ok()
}

fn on_engine_thread() -> bool {
    ENGINE_THREAD.try_with(Cell::get).unwrap_or(false) && !in_sampler()
}

fn in_sampler() -> bool {
    IN_SAMPLER.try_with(Cell::get).unwrap_or(true)
}

/// Turns on sampling of the engine's allocations: about one block per `every` bytes keeps the
/// call stack that allocated it, for [`dump`] (`COSELL_BENCH_HEAPPROF=<bytes>`).
pub(crate) fn sample_every(every: usize) {
    SAMPLE_EVERY.store(every, Ordering::Relaxed);
}

fn samples() -> std::sync::MutexGuard<'static, Option<HashMap<usize, (usize, Backtrace)>>> {
    SAMPLES.lock().unwrap_or_else(|p| p.into_inner())
}

/// Whether an engine allocation of `size` bytes is sampled: a countdown of bytes per thread,
/// so a block is taken with a chance proportional to its size (every block of `every` or more).
fn take_sample(size: usize) -> bool {
    let every = SAMPLE_EVERY.load(Ordering::Relaxed);
    if every == 0 {
        return false;
    }
    UNTIL_SAMPLE
        .try_with(|until| {
            let left = until.get();
            if size >= left {
                until.set(every - (size - left) % every);
                true
            } else {
                until.set(left - size);
                false
            }
        })
        .unwrap_or(false)
}

/// Runs `f` as the sampler: its own allocations uncounted and unsampled.
fn as_sampler<R>(f: impl FnOnce() -> R) -> Option<R> {
    if in_sampler() {
        return None;
    }
    IN_SAMPLER.with(|s| s.set(true));
    let r = f();
    IN_SAMPLER.with(|s| s.set(false));
    Some(r)
}

fn record(ptr: usize, size: usize) {
    as_sampler(|| {
        let trace = Backtrace::force_capture();
        samples()
            .get_or_insert_with(HashMap::new)
            .insert(ptr, (size, trace));
    });
}

fn forget(ptr: usize) {
    as_sampler(|| {
        let gone = samples().as_mut().and_then(|m| m.remove(&ptr));
        drop(gone);
    });
}

/// Frames of the allocator, the standard library's collections and the sampler: skipped
/// when naming where a block was allocated.
fn plumbing(frame: &str) -> bool {
    const PREFIXES: [&str; 12] = [
        "std::",
        "core::",
        "alloc::",
        "hashbrown::",
        "<alloc::",
        "<core::",
        "<std::",
        "<hashbrown::",
        "__rust",
        "bench::heap",
        "<bench::heap",
        "_rust",
    ];
    PREFIXES.iter().any(|p| frame.starts_with(p)) || frame.contains("backtrace")
}

fn workspace(frame: &str) -> bool {
    ["cosell", "dataverse_client", "partner_center_client"]
        .iter()
        .any(|c| frame.trim_start_matches('<').starts_with(c))
}

/// The function names of a captured stack, innermost first, without their hashes.
fn frames(trace: &Backtrace) -> Vec<String> {
    let text = trace.to_string();
    text.lines()
        .map(str::trim)
        .filter(|l| !l.starts_with("at "))
        .filter_map(|l| l.split_once(": ").map(|(_, f)| f))
        .map(|f| match f.rfind("::h") {
            Some(i) if f.len() - i == 19 => f[..i].to_string(),
            _ => f.to_string(),
        })
        .collect()
}

fn mb(bytes: usize) -> String {
    format!("{:.2} MB", bytes as f64 / 1_048_576.0)
}

/// Per key: estimated bytes, samples, largest sampled block.
type Tally = HashMap<String, (usize, usize, usize)>;

fn print_top(title: &str, by: Tally, total: usize, top: usize) {
    let mut rows: Vec<(String, (usize, usize, usize))> = by.into_iter().collect();
    rows.sort_by_key(|r| std::cmp::Reverse(r.1.0));
    eprintln!("  heap by {title}:");
    for (key, (bytes, n, largest)) in rows.into_iter().take(top) {
        eprintln!(
            "    {:>9} {:>5.1} % {n:>5} samples (largest {largest} B)  {key}",
            mb(bytes),
            100.0 * bytes as f64 / total.max(1) as f64
        );
    }
}

/// With sampling on: prints an estimate of the engine's live heap by where it was allocated
/// (the innermost frame out of the standard library, the innermost frame of the workspace,
/// and whole stacks).
pub(crate) fn dump(label: &str) {
    let every = SAMPLE_EVERY.load(Ordering::Relaxed);
    if every == 0 {
        return;
    }
    as_sampler(|| {
        let guard = samples();
        let Some(map) = guard.as_ref() else { return };
        let mut by_site: Tally = HashMap::new();
        let mut by_ours: Tally = HashMap::new();
        let mut by_stack: Tally = HashMap::new();
        let mut total = 0;
        for (size, trace) in map.values() {
            // A block smaller than the interval stands for an interval's worth of bytes.
            let weight = (*size).max(every);
            total += weight;
            let names = frames(trace);
            let useful: Vec<&String> = names.iter().filter(|f| !plumbing(f)).collect();
            let site = useful.first().map_or("?".to_string(), |f| f.to_string());
            let ours = useful
                .iter()
                .find(|f| workspace(f))
                .map_or("(no workspace frame)".to_string(), |f| f.to_string());
            let stack = useful
                .iter()
                .take(14)
                .map(|f| f.as_str())
                .collect::<Vec<_>>()
                .join("\n        <- ");
            for (by, key) in [
                (&mut by_site, site),
                (&mut by_ours, ours),
                (&mut by_stack, stack),
            ] {
                let e = by.entry(key).or_default();
                e.0 += weight;
                e.1 += 1;
                e.2 = e.2.max(*size);
            }
        }
        eprintln!(
            "heap samples at {label}: {} live, about {} (counted live {})",
            map.len(),
            mb(total),
            mb(live())
        );
        print_top("allocating function", by_site, total, 25);
        print_top("workspace function", by_ours, total, 25);
        print_top("stack", by_stack, total, 12);
    });
}

// SAFETY: every block is a `System` block of the `outer` layout; the tag lives in the header's
// last 8 bytes, inside that block, and is written before the pointer is handed out.
unsafe impl GlobalAlloc for EngineHeap {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let Some(outer) = outer(layout) else {
            return std::ptr::null_mut();
        };
        // SAFETY: `outer` has a non-zero size (it includes the header).
        let base = unsafe { System.alloc(outer) };
        if base.is_null() {
            return base;
        }
        let engine = on_engine_thread();
        let sampled = engine && take_sample(layout.size());
        let tag = if engine { TAG_ENGINE } else { 0 } | if sampled { TAG_SAMPLED } else { 0 };
        // SAFETY: the header is inside the block; the tag slot is 8-byte aligned because the
        // header is a multiple of 16 and the block is at least 16-aligned.
        let user = unsafe {
            let user = base.add(header(layout));
            (user.sub(8) as *mut u64).write(tag);
            user
        };
        if engine {
            let now = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            PEAK.fetch_max(now, Ordering::Relaxed);
        }
        if sampled {
            record(user as usize, layout.size());
        }
        user
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        let Some(outer) = outer(layout) else { return };
        // SAFETY: `ptr` came from `alloc` with this layout, so its header precedes it.
        let tag = unsafe { (ptr.sub(8) as *const u64).read() };
        if tag & TAG_ENGINE != 0 {
            LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        }
        if tag & TAG_SAMPLED != 0 {
            forget(ptr as usize);
        }
        // SAFETY: as above, the block starts `header` bytes before `ptr`.
        unsafe { System.dealloc(ptr.sub(header(layout)), outer) }
    }
}
