//! The tokio runtime the gateway binaries run on.

use crate::{Config, Scheduler};
use tokio::runtime::{Builder, Runtime};

/// Builds the runtime that `config` asks for: `POLKU_SCHEDULER` picks the
/// scheduler, `POLKU_WORKER_THREADS` the work-stealing scheduler's workers
/// (by default one per CPU this process may use, which respects `taskset`
/// and cgroup CPU limits).
///
/// The two schedulers trade latency for throughput; BENCHMARKS.md has the
/// figures:
/// - work-stealing (the default) runs a task right after the task that woke
///   it, so an emitter takes events the moment they are handed over;
/// - single-thread runs tasks in the order they were woken, so replies of
///   many small calls leave in one write: 0-25% more unary calls per second
///   on one CPU (60% before the work-stealing scheduler's connections put
///   a reply off for the replies about to follow), but a longer
///   ingest-to-emit tail for big batches.
///
/// ```no_run
/// let config = polku_gateway::Config::from_env()?;
/// polku_gateway::runtime(&config)?.block_on(async {
///     // start the gateway here
/// });
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// It also keeps glibc's malloc from handing memory back to the kernel after
/// every large request (see [`keep_freed_memory`]).
pub fn runtime(config: &Config) -> std::io::Result<Runtime> {
    keep_freed_memory();
    let mut builder = match config.runtime.scheduler {
        Scheduler::SingleThread => Builder::new_current_thread(),
        Scheduler::WorkStealing => {
            let mut b = Builder::new_multi_thread();
            if let Some(n) = config.runtime.worker_threads {
                b.worker_threads(n);
            }
            b
        }
    };
    builder.enable_all().thread_name("polku").build()
}

/// The size of the block [`keep_freed_memory`] maps and frees.
const MALLOC_KEEP_BYTES: usize = 1 << 20;

/// Raises glibc malloc's thresholds for a gateway's allocation pattern: call
/// it once, early. `runtime` calls it.
///
/// By default glibc maps each allocation above 128 KiB on its own and hands
/// free memory above 256 KiB at the top of its heap back to the kernel. A
/// request of 1,000 events allocates a few hundred KiB (its bytes, its
/// events, their payloads) that are freed once it is delivered, so requests
/// kept mapping or growing fresh pages and faulting them in, and giving them
/// back: about a third of the gateway's time on unary calls of 1,000 events,
/// one call at a time (BENCHMARKS.md, "Against the OpenTelemetry Collector").
///
/// glibc raises both thresholds itself when a mapped block is freed (to the
/// block's size, and twice that for trimming; mallopt(3)): this maps and frees
/// one block of 1 MiB, so allocations up to 1 MiB come from the heap and up to
/// 2 MiB of free memory per arena stays for the next request. There is no
/// `unsafe` in it, and an operator's own settings win: with
/// `MALLOC_MMAP_THRESHOLD_` (or another fixed threshold) set, glibc does not
/// adjust. Other allocators treat it as one allocation.
pub fn keep_freed_memory() {
    let block: Vec<u8> = Vec::with_capacity(MALLOC_KEEP_BYTES);
    // Keep the compiler from eliding the allocation and its free.
    drop(std::hint::black_box(block));
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::runtime::RuntimeFlavor;

    fn config(scheduler: Scheduler, threads: Option<usize>) -> Config {
        let mut c = Config::default();
        c.runtime.scheduler = scheduler;
        c.runtime.worker_threads = threads;
        c
    }

    #[test]
    fn single_thread_is_tokios_current_thread_scheduler_with_io_and_timers() {
        let rt = runtime(&config(Scheduler::SingleThread, None)).unwrap();
        assert_eq!(rt.handle().runtime_flavor(), RuntimeFlavor::CurrentThread);
        rt.block_on(async {
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
            tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        });
    }

    #[test]
    fn work_stealing_has_the_workers_asked_for_or_one_per_cpu() {
        let rt = runtime(&config(Scheduler::WorkStealing, Some(3))).unwrap();
        assert_eq!(rt.handle().runtime_flavor(), RuntimeFlavor::MultiThread);
        assert_eq!(rt.metrics().num_workers(), 3);
        let rt = runtime(&config(Scheduler::WorkStealing, None)).unwrap();
        let cpus = std::thread::available_parallelism().unwrap().get();
        assert_eq!(rt.metrics().num_workers(), cpus);
    }
}
