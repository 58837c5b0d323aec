//! The process's allocator, and handing memory back once a burst is over.
use std::cell::Cell;
use std::time::{Duration, Instant};

/// mimalloc hands freed pages back to the system after a short delay, so a
/// connection that moved bulk data and went idle stops costing memory; glibc
/// keeps them in its arenas.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// A thread collects at most this often.
const COLLECT_EVERY: Duration = Duration::from_millis(100);

thread_local! {
    static LAST_COLLECT: Cell<Option<Instant>> = const { Cell::new(None) };
}

/// Runs as a thread (a runtime worker, a signing thread) runs out of work.
/// mimalloc returns the pages a thread allocated only while that thread
/// keeps allocating, so a thread that falls quiet after a burst of traffic
/// would hold the burst's memory until it wakes; here it hands it back.
pub fn thread_idles() {
    let now = Instant::now();
    if LAST_COLLECT.get().is_some_and(|last| now.duration_since(last) < COLLECT_EVERY) {
        return;
    }
    LAST_COLLECT.set(Some(now));
    // SAFETY: mi_collect takes no arguments to check; it frees this thread's
    // empty pages and purges what mimalloc holds unused.
    #[allow(unsafe_code)]
    unsafe {
        libmimalloc_sys::mi_collect(true)
    };
}
