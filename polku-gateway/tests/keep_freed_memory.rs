//! `polku_gateway::keep_freed_memory`: freed request memory is reused, not
//! handed back to the kernel and faulted in again.
//!
//! A test binary of its own: the test runs itself as a child process, and a
//! child forked while another test holds a lock file open would hold that
//! lock until it execs.
#![cfg(all(target_os = "linux", target_env = "gnu"))]

use polku_gateway::keep_freed_memory;

/// Minor page faults of this process so far (/proc/self/stat, field 10).
fn minor_faults() -> u64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    let after_name = &stat[stat.rfind(')').unwrap() + 2..];
    after_name.split(' ').nth(7).unwrap().parse().unwrap()
}

/// Run in a child process (see below): a request's pattern, 200 times.
/// A request body of 200 KiB is mapped and freed (which is what moves
/// glibc's own thresholds to about 200 KiB and 400 KiB), then 1,000 small
/// blocks of 600 bytes (an event's share, 600 KiB in all) are filled
/// and freed. Prints the page faults taken, to stderr.
#[test]
fn malloc_probe() {
    let Ok(mode) = std::env::var("POLKU_MALLOC_PROBE") else {
        return;
    };
    if mode == "keep" {
        keep_freed_memory();
    }
    let before = minor_faults();
    for _ in 0..200 {
        let mut body = Vec::with_capacity(200 * 1024);
        body.resize(200 * 1024, 1u8);
        drop(std::hint::black_box(body));
        let events: Vec<Vec<u8>> = (0..1000).map(|_| vec![1u8; 600]).collect();
        drop(std::hint::black_box(events));
    }
    eprintln!("faults={}", minor_faults() - before);
}

fn probe_faults(mode: &str) -> u64 {
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "malloc_probe", "--nocapture"])
        .env("POLKU_MALLOC_PROBE", mode)
        .env_remove("MALLOC_MMAP_THRESHOLD_")
        .env_remove("MALLOC_TRIM_THRESHOLD_")
        .env_remove("GLIBC_TUNABLES")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stderr);
    let line = text.lines().find_map(|l| l.strip_prefix("faults="));
    line.unwrap_or_else(|| panic!("no probe output: {text}"))
        .parse()
        .unwrap()
}

#[test]
fn freed_request_memory_is_reused_instead_of_faulted_in_again() {
    // 600 KiB is 150 pages: given back and faulted in again each round,
    // 200 rounds fault about 30,000 times; kept, about 150.
    let plain = probe_faults("plain");
    let kept = probe_faults("keep");
    assert!(plain > 10_000, "glibc's default faulted only {plain} times");
    assert!(kept < 2_000, "kept memory still faulted {kept} times");
}
