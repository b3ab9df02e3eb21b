//! The pipeline's OS processes: each consumer, listener and sweeper is the same binary run as
//! a subcommand (`consume`, `capture`), spawned, signalled (SIGKILL, SIGSTOP, SIGCONT,
//! SIGTERM), restarted and reaped here. Every signal counted in a report is one `kill(2)`
//! that returned success on a live process, never a plan.
//!
//! A std `Mutex`, not a tokio one, guards the table: nothing awaits while it is held (a
//! child being waited for is taken out of the table first).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::process::{Child, Command};

use super::spec::{Role, Topology};

/// How one incarnation of a process ended, when it was not the harness's doing.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Exit {
    pub role: Role,
    pub index: usize,
    pub pid: u32,
    /// Exit code, or the signal that ended it.
    pub status: String,
    /// It died of SIGABRT while armed with an `abort` fault point: an injected crash.
    pub injected: bool,
}

struct Slot {
    role: Role,
    index: usize,
    incarnation: u32,
    child: Option<Child>,
    pid: Option<u32>,
    /// The harness stopped or killed it on purpose: its exit is not a failure.
    expected_down: bool,
    /// `EXPIRY_STREAM_FAULTS` for its next incarnations (consumers only).
    faults: String,
    /// When an unexpected exit was seen: restart after this long.
    restart_after: Duration,
}

/// Everything needed to start processes, and the table of those running.
pub struct Procs {
    pub exe: PathBuf,
    pub ns: String,
    pub topology: Topology,
    pub log_dir: PathBuf,
    /// URL per role (each role reaches Redis through its own proxy).
    pub urls: BTreeMap<Role, String>,
    /// Extra environment for consumer processes (e.g. the test-only `EXPIRY_STREAM_UNSAFE`).
    pub consumer_env: Vec<(String, String)>,
    slots: Vec<Slot>,
    pub exits: Vec<Exit>,
    pub spawned: u64,
}

pub type Shared = Arc<Mutex<Procs>>;

fn signal_name(sig: i32) -> &'static str {
    match sig {
        libc::SIGKILL => "SIGKILL",
        libc::SIGABRT => "SIGABRT",
        libc::SIGTERM => "SIGTERM",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGINT => "SIGINT",
        _ => "signal",
    }
}

/// Sends `sig` to `pid`; true when delivered to a live process.
pub fn send(pid: u32, sig: i32) -> bool {
    // SAFETY: kill(2) with a pid we spawned and have not reaped (reaping happens only in this
    // module, after which the pid is forgotten), so it cannot hit an unrelated process.
    unsafe { libc::kill(pid as libc::pid_t, sig) == 0 }
}

impl Procs {
    pub fn new(
        exe: PathBuf,
        ns: &str,
        topology: &Topology,
        log_dir: PathBuf,
        urls: BTreeMap<Role, String>,
        consumer_env: Vec<(String, String)>,
    ) -> Procs {
        let mut slots = vec![];
        for (role, n) in [
            (Role::Consumer, topology.consumer_processes),
            (Role::Listener, topology.listeners),
            (Role::Sweeper, topology.sweepers),
        ] {
            for index in 0..n {
                slots.push(Slot {
                    role,
                    index,
                    incarnation: 0,
                    child: None,
                    pid: None,
                    expected_down: true,
                    faults: topology.fault_points.clone(),
                    restart_after: Duration::from_millis(200),
                });
            }
        }
        Procs {
            exe,
            ns: ns.to_string(),
            topology: topology.clone(),
            log_dir,
            urls,
            consumer_env,
            slots,
            exits: vec![],
            spawned: 0,
        }
    }

    fn slot(&mut self, role: Role, index: usize) -> &mut Slot {
        self.slots.iter_mut().find(|s| s.role == role && s.index == index).expect("no such process")
    }

    pub fn count(&self, role: Role) -> usize {
        self.slots.iter().filter(|s| s.role == role).count()
    }

    pub fn pid(&self, role: Role, index: usize) -> Option<u32> {
        self.slots.iter().find(|s| s.role == role && s.index == index).and_then(|s| s.pid)
    }

    /// Pids of every live consumer process.
    pub fn pids(&self, role: Role) -> Vec<u32> {
        self.slots.iter().filter(|s| s.role == role).filter_map(|s| s.pid).collect()
    }

    /// Starts (or restarts) a process; a no-op when it is already running (two faults of a mix
    /// may both want it back). Fails only if the binary cannot be run.
    pub fn spawn(&mut self, role: Role, index: usize) -> std::io::Result<u32> {
        if let Some(pid) = self.pid(role, index) {
            return Ok(pid);
        }
        let exe = self.exe.clone();
        let url = self.urls[&role].clone();
        let ns = self.ns.clone();
        let t = self.topology.clone();
        let log_dir = self.log_dir.clone();
        let env = self.consumer_env.clone();
        let slot = self.slot(role, index);
        slot.incarnation += 1;
        let mut cmd = Command::new(&exe);
        match role {
            Role::Consumer => {
                cmd.arg("consume")
                    .args(["--consumers", &t.consumers_per_process.to_string()])
                    .args(["--workers", &t.workers.to_string()])
                    .args(["--work-ms", &t.work_ms.to_string()])
                    .args(["--batch", &t.batch.to_string()])
                    .args(["--claim-idle-ms", &t.claim_idle_ms.to_string()])
                    .args(["--max-deliveries", &t.max_deliveries.to_string()])
                    .args(["--ledger-retention-ms", &t.ledger_retention_ms.to_string()])
                    .args(["--ledger-bucket-ms", &t.ledger_bucket_ms.to_string()])
                    .args(["--name", &format!("c{index}")]);
                cmd.env("EXPIRY_STREAM_FAULTS", &slot.faults);
                for (k, v) in &env {
                    cmd.env(k, v);
                }
            }
            Role::Listener => {
                cmd.args(["capture", "--listeners", "1", "--sweepers", "0"]);
                cmd.env_remove("EXPIRY_STREAM_FAULTS");
            }
            Role::Sweeper => {
                cmd.args(["capture", "--listeners", "0", "--sweepers", "1"]);
                cmd.env_remove("EXPIRY_STREAM_FAULTS");
            }
        }
        cmd.args(["--redis-url", &url, "--ns", &ns]);
        let log = log_dir.join(format!("{}-{index}.{}.log", role.name(), slot.incarnation));
        let out = std::fs::File::create(&log)?;
        cmd.stdout(Stdio::from(out.try_clone()?)).stderr(Stdio::from(out)).stdin(Stdio::null());
        // Never leave a pipeline process behind if the runner itself dies.
        cmd.kill_on_drop(true);
        let child = cmd.spawn()?;
        let pid = child.id().unwrap_or(0);
        slot.child = Some(child);
        slot.pid = Some(pid);
        slot.expected_down = false;
        self.spawned += 1;
        Ok(pid)
    }

    /// SIGKILL; the process stays down until [`Procs::spawn`]. Returns the pid if a live
    /// process received it.
    pub fn kill9(&mut self, role: Role, index: usize) -> Option<u32> {
        let slot = self.slot(role, index);
        let pid = slot.pid?;
        slot.expected_down = true;
        let delivered = send(pid, libc::SIGKILL);
        if let Some(mut c) = slot.child.take() {
            // Reaped in the background; the pid is forgotten now.
            tokio::spawn(async move {
                let _ = c.wait().await;
            });
        }
        slot.pid = None;
        delivered.then_some(pid)
    }

    /// SIGSTOP or SIGCONT to a live process; true when delivered.
    pub fn signal(&mut self, role: Role, index: usize, sig: i32) -> bool {
        let slot = self.slot(role, index);
        match slot.pid {
            Some(pid) => send(pid, sig),
            None => false,
        }
    }

    /// Sets the fault points armed in a consumer's next incarnations.
    pub fn set_faults(&mut self, index: usize, spec: &str) {
        self.slot(Role::Consumer, index).faults = spec.to_string();
    }

    pub fn set_restart_after(&mut self, role: Role, index: usize, d: Duration) {
        self.slot(role, index).restart_after = d;
    }

    /// Reaps processes that exited on their own, records why, and restarts them after their
    /// slot's delay. Returns the slots to restart and when.
    pub fn reap(&mut self) -> Vec<(Role, usize, Instant)> {
        let mut restart = vec![];
        let mut exits = vec![];
        for slot in &mut self.slots {
            let Some(child) = slot.child.as_mut() else { continue };
            let Ok(Some(status)) = child.try_wait() else { continue };
            let pid = slot.pid.unwrap_or(0);
            slot.child = None;
            slot.pid = None;
            if slot.expected_down {
                continue;
            }
            use std::os::unix::process::ExitStatusExt;
            let (desc, aborted) = match (status.code(), status.signal()) {
                (Some(c), _) => (format!("exit code {c}"), false),
                (None, Some(s)) => (format!("killed by {} ({s})", signal_name(s)), s == libc::SIGABRT),
                _ => ("unknown".to_string(), false),
            };
            let injected = aborted && slot.role == Role::Consumer && slot.faults.contains("abort");
            exits.push(Exit { role: slot.role, index: slot.index, pid, status: desc, injected });
            slot.expected_down = true;
            restart.push((slot.role, slot.index, Instant::now() + slot.restart_after));
        }
        self.exits.extend(exits);
        restart
    }

    /// Takes a live child out of the table for a graceful stop.
    fn take(&mut self, role: Role, index: usize) -> Option<(u32, Child)> {
        let slot = self.slot(role, index);
        slot.expected_down = true;
        let pid = slot.pid.take()?;
        slot.child.take().map(|c| (pid, c))
    }

    /// The (role, index) of every slot.
    pub fn all(&self) -> Vec<(Role, usize)> {
        self.slots.iter().map(|s| (s.role, s.index)).collect()
    }
}

/// Stops a process gracefully: SIGCONT (in case it is stopped), SIGTERM, then waits up to
/// `grace` before SIGKILL. Returns true when it exited on its own after SIGTERM.
pub async fn stop(procs: &Shared, role: Role, index: usize, grace: Duration) -> bool {
    let taken = procs.lock().unwrap().take(role, index);
    let Some((pid, mut child)) = taken else { return true };
    send(pid, libc::SIGCONT);
    send(pid, libc::SIGTERM);
    match tokio::time::timeout(grace, child.wait()).await {
        Ok(_) => true,
        Err(_) => {
            eprintln!("scenario: {} {index} (pid {pid}) did not stop within {grace:?}: SIGKILL", role.name());
            let _ = child.start_kill();
            let _ = child.wait().await;
            false
        }
    }
}

/// Starts a process while Redis is up, and holds the gate (for reading) a moment longer, until
/// it has had time to connect: a Redis restart never catches a process starting (`consume`
/// and `capture` exit when their first connection fails; a supervisor would restart them, and
/// this one would count an unexpected exit).
pub async fn start(procs: &Shared, gate: &tokio::sync::RwLock<()>, role: Role, index: usize) -> std::io::Result<u32> {
    let _up = gate.read().await;
    let pid = procs.lock().unwrap().spawn(role, index)?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    Ok(pid)
}
