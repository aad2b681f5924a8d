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
use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};

thread_local! {
    static ENGINE_THREAD: Cell<bool> = const { Cell::new(false) };
}

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

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
    ENGINE_THREAD.try_with(Cell::get).unwrap_or(false)
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
        // SAFETY: the header is inside the block; the tag slot is 8-byte aligned because the
        // header is a multiple of 16 and the block is at least 16-aligned.
        unsafe {
            let user = base.add(header(layout));
            (user.sub(8) as *mut u64).write(u64::from(engine));
            if engine {
                let now = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
                PEAK.fetch_max(now, Ordering::Relaxed);
            }
            user
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        let Some(outer) = outer(layout) else { return };
        // SAFETY: `ptr` came from `alloc` with this layout, so its header precedes it.
        unsafe {
            if (ptr.sub(8) as *const u64).read() == 1 {
                LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
            }
            System.dealloc(ptr.sub(header(layout)), outer);
        }
    }
}
