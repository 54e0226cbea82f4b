//! The memory allocator of modeld's long-running binaries (the daemon and the
//! simulator): mimalloc, set to keep the memory it frees for reuse.
//!
//! Both allocate and free the same sizes over and over: the daemon an answer of about
//! a MiB per piece on many threads, the simulator hundreds of millions of small sets
//! and requests. The C library's allocator, and mimalloc with its default of handing
//! freed memory back to the kernel 10 ms later, made the kernel zero the same pages
//! again and again. Measured (`docs/benchmarks.md`, `docs/simulations/README.md`):
//! the daemons of the lab's burst used 3 % less CPU than with glibc and 5 % less than
//! with freed memory handed back after a second; a simulator run took about a tenth
//! less time with mimalloc than with glibc, and keeping freed memory took its 1000-host
//! burst from 48.4-48.8 s to 44.2-45.7 s (zeroing handed-back pages had been 5 % of a
//! run in a profile). Peak memory is unchanged: what is kept is reused, and both binaries
//! bound what they hold, so what stays mapped is their high-water mark.
//!
//! Each binary declares the allocator and calls [`keep_freed_memory`] first thing:
//!
//! ```
//! #[global_allocator]
//! static ALLOCATOR: modeld_alloc::MiMalloc = modeld_alloc::MiMalloc;
//!
//! fn main() {
//!     modeld_alloc::keep_freed_memory();
//! }
//! ```

pub use mimalloc::MiMalloc;

/// `mi_option_purge_delay` in mimalloc's `mimalloc.h` (the same place in its v2 and
/// v3): milliseconds freed memory stays mapped before it goes back to the kernel; -1
/// keeps it.
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Keeps freed memory mapped for reuse, unless `MIMALLOC_PURGE_DELAY` in the
/// environment says otherwise. Call it first thing in `main`, before any other
/// thread exists.
pub fn keep_freed_memory() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: `mi_option_set` stores an option's value; it is called at the start
        // of `main`, before other threads exist; -1 is a documented value.
        unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
    }
}
