//! Memory a node freed goes back to the system.
//!
//! mimalloc (the global allocator, see `main.rs`) keeps freed segments for a short delay
//! before it returns them, and only returns them when the process next allocates or frees in
//! earnest. An idle node would keep what a burst used: a peer that sent 96 MiB of a frame and
//! left kept the controller's RSS 94 MiB higher for good (`bin/volley/tests/links.rs`). A
//! collection once a second returns what has waited its delay, whatever the load.

use std::time::Duration;

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
