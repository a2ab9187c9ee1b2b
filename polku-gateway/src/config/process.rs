//! The process: which scheduler runs it, how long shutdown may take, and
//! its logs.

use super::{ConfigError, Env};
use std::time::Duration;

/// Which tokio scheduler runs the gateway (`POLKU_SCHEDULER`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Scheduler {
    /// Work-stealing, one worker per CPU (or `POLKU_WORKER_THREADS`). A task
    /// just woken runs next, so an emitter starts on events the moment they
    /// are handed over: the lowest ingest-to-emit latency.
    #[default]
    WorkStealing,
    /// One thread, tasks in the order they were woken. On one CPU it serves
    /// many small calls faster (replies of several calls leave in one
    /// write), at the cost of a longer ingest-to-emit tail for large
    /// batches. See BENCHMARKS.md.
    SingleThread,
}

/// The scheduler and the shutdown budget.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RuntimeSettings {
    /// `POLKU_SCHEDULER`: `work-stealing` (the default) or `single-thread`,
    /// for [`crate::runtime()`].
    pub scheduler: Scheduler,
    /// `POLKU_WORKER_THREADS`: worker threads of the work-stealing
    /// scheduler. `None` (the default) is one per CPU the process may use.
    pub worker_threads: Option<usize>,
    /// `POLKU_SHUTDOWN_TIMEOUT`: how long shutdown may take to deliver what
    /// was accepted. Default `30s`.
    pub shutdown_timeout: Duration,
}

impl Default for RuntimeSettings {
    fn default() -> Self {
        RuntimeSettings {
            scheduler: Scheduler::WorkStealing,
            worker_threads: None,
            shutdown_timeout: Duration::from_secs(30),
        }
    }
}

impl RuntimeSettings {
    pub(super) fn read(&mut self, env: &Env<'_>) -> Result<(), ConfigError> {
        if let Some(s) = env.choice(
            "POLKU_SCHEDULER",
            &[
                ("work-stealing", Scheduler::WorkStealing),
                ("single-thread", Scheduler::SingleThread),
            ],
            "work-stealing or single-thread",
        )? {
            self.scheduler = s;
        }
        if let Some(n) = env.number(
            "POLKU_WORKER_THREADS",
            1,
            1024,
            "a number of threads from 1 to 1024",
        )? {
            self.worker_threads = Some(n as usize);
        }
        if let Some(d) = env.duration("POLKU_SHUTDOWN_TIMEOUT", false)? {
            self.shutdown_timeout = d;
        }
        Ok(())
    }
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// Log output.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct LogSettings {
    /// `POLKU_LOG_LEVEL`: a tracing filter such as `info` or `polku=debug`. Default `info`.
    pub level: String,
    /// `POLKU_LOG_FORMAT`: `text` or `json`. Default `text`.
    pub format: LogFormat,
}

impl Default for LogSettings {
    fn default() -> Self {
        LogSettings {
            level: "info".to_owned(),
            format: LogFormat::Text,
        }
    }
}

impl LogSettings {
    pub(super) fn read(&mut self, env: &Env<'_>) -> Result<(), ConfigError> {
        if let Some(level) = env.parse(
            "POLKU_LOG_LEVEL",
            "a level (error, warn, info, debug, trace) or a filter such as polku=debug",
            |v| {
                (!v.is_empty() && tracing_subscriber::EnvFilter::try_new(v).is_ok())
                    .then(|| v.to_owned())
            },
        )? {
            self.level = level;
        }
        if let Some(f) = env.choice(
            "POLKU_LOG_FORMAT",
            &[("text", LogFormat::Text), ("json", LogFormat::Json)],
            "text or json",
        )? {
            self.format = f;
        }
        Ok(())
    }
}
