//! Memory settings of every binary, applied first thing in [`super::cli::main`].
//!
//! mimalloc asks the kernel for transparent huge pages on its arenas (`madvise(..,
//! MADV_HUGEPAGE)`), so on a kernel with THP in `madvise` or `always` mode every region it
//! touches counts 2 MiB of resident memory. An idle fetcher then held 33 MB, 22 MB of it
//! huge pages, and a busy one went past the 64 MB a worker may use. A worker's heap is
//! small and short-lived: small pages keep its resident set to what it uses
//! (BENCHMARKS.md, "Worker memory").

/// `TRIBUTARY_HUGE_PAGES=1` keeps the kernel's transparent huge pages (fewer TLB misses
/// for a larger resident set).
pub const HUGE_PAGES_ENV: &str = "TRIBUTARY_HUGE_PAGES";

/// Turns transparent huge pages off for this process (Linux `PR_SET_THP_DISABLE`; kept
/// across `execve`, inherited by children) unless [`HUGE_PAGES_ENV`] is `1`. Elsewhere, or
/// if the kernel refuses, nothing changes.
pub fn small_pages() {
    if std::env::var(HUGE_PAGES_ENV).is_ok_and(|v| v == "1") {
        return;
    }
    #[cfg(target_os = "linux")]
    if let Err(e) = rustix::thread::disable_transparent_huge_pages(true) {
        tracing::debug!("cannot turn transparent huge pages off: {e}");
    }
}

#[cfg(test)]
mod tests {
    #[cfg(target_os = "linux")]
    #[test]
    fn huge_pages_end_up_off() {
        super::small_pages();
        assert!(rustix::thread::transparent_huge_pages_are_disabled().unwrap());
    }
}
