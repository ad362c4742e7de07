//! Peak memory of processes over a run: a thread that reads `/proc` every 50 ms for the
//! long-running ones, a closer watch (every 2 ms, with a series) for short-lived ones, and a
//! watch of a whole process tree (a peer script and the workers it starts).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::procfs::{memory_kb, process_tree, pss_kb};

/// How often the sampler reads `/proc`.
const SAMPLE_EVERY: Duration = Duration::from_millis(50);

/// Per-pid peak memory of long-running processes.
#[derive(Default, Clone, Copy)]
pub struct Peak {
    rss_kb: u64,
    hwm_kb: u64,
}

impl Peak {
    pub fn peak_kb(self) -> u64 {
        self.rss_kb.max(self.hwm_kb)
    }
}

type Peaks = Arc<Mutex<HashMap<u32, Peak>>>;

/// Samples the memory of every watched pid in a thread until dropped.
pub struct Sampler {
    peaks: Peaks,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Folds one reading of `pid`'s memory into its peak.
fn sample_into(peaks: &Peaks, pid: u32) {
    if let Some((rss, hwm)) = memory_kb(pid)
        && let Some(p) = lock(peaks).get_mut(&pid)
    {
        p.rss_kb = p.rss_kb.max(rss);
        p.hwm_kb = p.hwm_kb.max(hwm);
    }
}

impl Sampler {
    pub fn start() -> Sampler {
        let peaks: Peaks = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let peaks = peaks.clone();
            let stop = stop.clone();
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let pids: Vec<u32> = lock(&peaks).keys().copied().collect();
                    for pid in pids {
                        sample_into(&peaks, pid);
                    }
                    std::thread::sleep(SAMPLE_EVERY);
                }
            })
        };
        Sampler {
            peaks,
            stop,
            thread: Some(thread),
        }
    }

    pub fn watch(&self, pid: u32) {
        lock(&self.peaks).entry(pid).or_default();
        self.sample_now(pid);
    }

    /// Reads one pid's memory now (e.g. just before it is stopped).
    pub fn sample_now(&self, pid: u32) {
        sample_into(&self.peaks, pid);
    }

    pub fn peak(&self, pid: u32) -> Peak {
        lock(&self.peaks).get(&pid).copied().unwrap_or_default()
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A short-lived child's memory: (peak kB, RSS series), read every 2 ms, since a producer
/// may live for less than the sampler's period.
pub type CloseWatch = std::thread::JoinHandle<(Option<u64>, Vec<(f64, u64)>)>;

/// Watches `pid` until it has exited (its `/proc` entry has no memory any more).
pub fn watch_closely(pid: u32, started: Instant) -> CloseWatch {
    std::thread::spawn(move || {
        let mut peak: Option<u64> = None;
        let mut series = Vec::new();
        let mut last_point: Option<Instant> = None;
        while let Some((rss, hwm)) = memory_kb(pid) {
            peak = Some(peak.unwrap_or(0).max(rss).max(hwm));
            if last_point.is_none_or(|t| t.elapsed() >= Duration::from_millis(100)) {
                series.push((started.elapsed().as_secs_f64(), rss));
                last_point = Some(Instant::now());
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        (peak, series)
    })
}

pub fn join_watch(watch: CloseWatch) -> (Option<u64>, Vec<(f64, u64)>) {
    watch.join().unwrap_or((None, Vec::new()))
}

/// A process tree's peak memory in kB, once its root has exited.
pub type TreeWatch = std::thread::JoinHandle<Option<u64>>;

/// How often [`watch_tree`] walks the tree.
const TREE_EVERY: Duration = SAMPLE_EVERY;

/// Watches `pid` and its descendants until `pid` has exited: `pid`'s peak RSS (VmHWM, as
/// [`watch_closely`]) plus the peak of its descendants' summed PSS (worker pools fork, and a
/// page they share would count once per process in a sum of RSS).
pub fn watch_tree(pid: u32) -> TreeWatch {
    std::thread::spawn(move || {
        let mut root: Option<u64> = None;
        let mut descendants = 0;
        while let Some((rss, hwm)) = memory_kb(pid) {
            root = Some(root.unwrap_or(0).max(rss).max(hwm));
            let tree = process_tree(pid);
            let sum: u64 = tree.iter().skip(1).filter_map(|&p| pss_kb(p)).sum();
            descendants = descendants.max(sum);
            std::thread::sleep(TREE_EVERY);
        }
        root.map(|r| r + descendants)
    })
}

pub fn join_tree_watch(watch: TreeWatch) -> Option<u64> {
    watch.join().unwrap_or(None)
}
