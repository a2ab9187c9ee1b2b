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
///   many small calls leave in one write: about 60% more unary calls per
///   second on one CPU, but a longer ingest-to-emit tail for big batches.
///
/// ```no_run
/// let config = polku_gateway::Config::from_env()?;
/// polku_gateway::runtime(&config)?.block_on(async {
///     // start the gateway here
/// });
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn runtime(config: &Config) -> std::io::Result<Runtime> {
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
