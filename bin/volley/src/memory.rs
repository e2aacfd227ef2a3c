//! Memory a node freed goes back to the system.
//!
//! mimalloc (the global allocator, see `main.rs`) keeps freed segments for a short delay
//! before it returns them, and only returns them when the process next allocates or frees in
//! earnest. An idle node would keep what a burst used: a peer that sent 96 MiB of a frame and
//! left kept the controller's RSS 94 MiB higher for good (`bin/volley/tests/links.rs`). A
//! collection once a second returns what has waited its delay, whatever the load.

use std::time::Duration;

/// Turns transparent huge pages off for this process (and the processes it starts) unless
/// mimalloc's own `MIMALLOC_ALLOW_THP` is set (`1` keeps them, `0` has mimalloc turn them off
/// itself): memory is then faulted in 4 KiB pages, not zeroed 2 MiB at a time.
///
/// mimalloc asks for huge pages on its arenas. Every first touch of a 2 MiB region then zeroes
/// all of it, and a buffer freed and purged (10 ms later) pays that again when next used. In a
/// single-notification ingest that zeroing was 7% of all CPU, with stalls that doubled the p99
/// latency; without huge pages a million-token request is accepted 30–50% sooner and every
/// role's peak RSS is lower (docs/performance.md, ADR 009).
pub fn prefer_small_pages() {
    if std::env::var_os("MIMALLOC_ALLOW_THP").is_some() {
        return;
    }
    #[cfg(target_os = "linux")]
    if let Err(error) = rustix::thread::disable_transparent_huge_pages(true) {
        // Only a kernel without the prctl (before 3.15) refuses; nothing depends on it.
        eprintln!("volley: could not turn transparent huge pages off: {error}");
    }
}

/// How often freed memory is handed back.
const COLLECT_EVERY: Duration = Duration::from_secs(1);

/// Starts the task that returns freed memory, on the current Tokio runtime. It collects this
/// thread's heap and purges, process-wide, the freed segments whose delay has passed (large
/// buffers such as frames end up there whichever thread freed them); one per process is
/// enough.
pub fn return_freed_memory() {
    tokio::spawn(async {
        let mut tick = tokio::time::interval(COLLECT_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            collect();
        }
    });
}

/// The project's one `unsafe` block (docs/adr/006-unsafe-for-memory-return.md).
#[allow(unsafe_code)]
fn collect() {
    // SAFETY: mi_collect takes no pointer, touches only the allocator's own state, and may be
    // called from any thread at any time; `false` asks for a normal (not forced) collection.
    unsafe { libmimalloc_sys::mi_collect(false) };
}
