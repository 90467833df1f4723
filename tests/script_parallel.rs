//! Scripts run in parallel: two CPU-bound script calls arriving together run on two Lua state
//! threads, not one after the other on the same state.
//!
//! The test reads what each of the server's Lua threads (`lua-N`) spent on the CPU while the two
//! calls ran (`/proc/PID/task/TID/stat`). Two calls on one state would put all that time on one
//! thread; spread over two states, each thread does about half. That split does not depend on
//! how busy the machine is, so the test neither fails nor passes because of a noisy neighbour.
//!
//! The same files tell each thread's scheduling policy: state threads run as `SCHED_BATCH`, so
//! that waking one does not preempt the network thread that handed it a call.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::{fixtures, Client, Server};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_busy_scripts_run_on_two_states() {
    let f = fixtures();
    let server = Server::lab(&["--script-states", "2", "--script-time-ms", "600000"]);
    let pool = common::pool(&f.join("protos"));
    let a = Client::connect(server.addr, pool.clone()).await;
    let b = Client::connect(server.addr, pool).await;
    // Calibrate one busy call to a few hundred milliseconds of work.
    let mut limit = 100_000i64;
    loop {
        let started = Instant::now();
        busy(&a, limit).await;
        if started.elapsed() > Duration::from_millis(300) || limit > 4_000_000_000 {
            break;
        }
        limit *= 2;
    }
    let pid = server.pid();
    let before = lua_thread_ticks(pid);
    assert!(
        before.len() >= 2,
        "expected two Lua state threads, found {before:?}"
    );
    tokio::join!(busy(&a, limit), busy(&b, limit));
    let after = lua_thread_ticks(pid);
    let spent: Vec<(String, u64)> = after
        .iter()
        .map(|(name, t)| (name.clone(), t - before.get(name).copied().unwrap_or(0)))
        .collect();
    let total: u64 = spent.iter().map(|(_, t)| t).sum();
    eprintln!("CPU ticks per Lua thread while both calls ran: {spent:?}");
    assert!(
        total >= 10,
        "the calls did too little work to tell: {spent:?}"
    );
    let sharing = spent.iter().filter(|(_, t)| *t * 4 >= total).count();
    assert!(
        sharing >= 2,
        "one Lua thread did the work of both calls, so they ran one after the other: {spent:?}"
    );
}

/// `SCHED_BATCH` in `/proc/PID/task/TID/stat`'s policy field.
#[cfg(target_os = "linux")]
const SCHED_BATCH: u32 = 3;

#[cfg(target_os = "linux")]
#[tokio::test]
async fn state_threads_run_as_batch_and_network_threads_keep_the_process_policy() {
    let f = fixtures();
    let server = Server::lab(&["--script-states", "2"]);
    // A call answered proves the states are up (each sets its policy before serving).
    let client = Client::connect(server.addr, common::pool(&f.join("protos"))).await;
    busy(&client, 10).await;
    let policies = thread_policies(server.pid());
    let states: Vec<_> = policies
        .iter()
        .filter(|(name, _, _)| name.starts_with("lua-") && !name.starts_with("lua-watchdog"))
        .collect();
    assert_eq!(states.len(), 2, "expected two state threads: {policies:?}");
    assert!(
        states.iter().all(|(_, p, _)| *p == SCHED_BATCH),
        "state threads must run as SCHED_BATCH: {policies:?}"
    );
    // Network threads keep the policy the process started with (its main thread's).
    let main = policies
        .iter()
        .find(|(_, _, main)| *main)
        .map(|(_, p, _)| *p);
    let network: Vec<_> = policies
        .iter()
        .filter(|(name, _, _)| name.starts_with("tokio-rt-worker"))
        .collect();
    assert!(
        !network.is_empty(),
        "no network threads found: {policies:?}"
    );
    assert!(
        network.iter().all(|(_, p, _)| Some(*p) == main),
        "network threads keep the process's policy: {policies:?}"
    );
}

/// (thread name, scheduling policy, whether it is the main thread) of each thread of `pid`.
#[cfg(target_os = "linux")]
fn thread_policies(pid: u32) -> Vec<(String, u32, bool)> {
    let mut out = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let dir = task.unwrap().path();
        let (Ok(comm), Ok(stat)) = (
            std::fs::read_to_string(dir.join("comm")),
            std::fs::read_to_string(dir.join("stat")),
        ) else {
            continue;
        };
        // Fields after the parenthesised name start with the 3rd; the policy is the 41st.
        let rest = &stat[stat.rfind(')').unwrap() + 2..];
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let main = dir.file_name().and_then(|n| n.to_str()) == Some(&pid.to_string());
        out.push((comm.trim().to_owned(), fields[38].parse().unwrap(), main));
    }
    out
}

async fn busy(client: &Client, limit: i64) {
    client
        .unary("lab.Lab/Busy", json!({"limit": limit}))
        .await
        .unwrap();
}

/// CPU time (utime + stime, in clock ticks) of each thread named `lua-N` of process `pid`.
fn lua_thread_ticks(pid: u32) -> HashMap<String, u64> {
    let mut ticks = HashMap::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let dir = task.unwrap().path();
        let Ok(comm) = std::fs::read_to_string(dir.join("comm")) else {
            continue;
        };
        let comm = comm.trim();
        if !comm.starts_with("lua-") || comm == "lua-watchdog" {
            continue;
        }
        let Ok(stat) = std::fs::read_to_string(dir.join("stat")) else {
            continue;
        };
        // Fields after the parenthesised name: state is 3rd, utime 14th, stime 15th.
        let rest = &stat[stat.rfind(')').unwrap() + 2..];
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let utime: u64 = fields[11].parse().unwrap();
        let stime: u64 = fields[12].parse().unwrap();
        let key = format!("{comm}/{}", dir.file_name().unwrap().to_string_lossy());
        ticks.insert(key, utime + stime);
    }
    ticks
}
