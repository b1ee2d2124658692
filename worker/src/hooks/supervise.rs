//! Hook programs die with the worker, even when it is SIGKILLed.
//!
//! Each command hook is started through a supervising step in the forked child, before `exec`:
//! the child (the leader of the run's own process group) forks again; the grandchild goes on
//! to `exec` the program, and the child stays behind as the program's supervisor. The
//! supervisor asks the kernel for SIGTERM when the worker goes (`PR_SET_PDEATHSIG`) and answers
//! it by killing the whole process group with SIGKILL: the program and anything it started in
//! the group. The program itself gets SIGKILL when its supervisor goes. Otherwise the
//! supervisor waits for the program and ends as it ended (the same exit status, or the same
//! signal), so the worker sees the program's own outcome.
//!
//! The parent-death signal fires when the *thread* that forked exits, not the process. Tokio
//! spawns from whichever thread polls the task (and a runtime's threads come and go), so every
//! hook is forked by one dedicated thread that lives as long as the process. A worker that died
//! between the fork and the `prctl` is caught by comparing `getppid` with its pid afterwards.
//!
//! Between `fork` and `exec` only async-signal-safe calls are made (no allocation, no locks):
//! this is the one place of the workspace with `unsafe` code.
#![allow(unsafe_code)]

use std::io;
use std::sync::OnceLock;
use std::sync::mpsc;

use tokio::process::{Child, Command};

/// Hooks yield the CPU to indexing (children inherit it).
pub(super) const HOOK_NICENESS: libc::c_int = 10;

/// Spawns `command` (already in its own process group) under a supervisor that kills its
/// process group when the worker dies, at hook priority (nice 10).
pub(super) async fn spawn_supervised(mut command: Command) -> io::Result<Child> {
    let worker = libc::pid_t::try_from(std::process::id()).expect("a pid fits pid_t");
    // SAFETY: the closure runs in the forked child before exec; `supervise` makes only
    // async-signal-safe system calls and never returns in the supervisor.
    unsafe {
        command.pre_exec(move || supervise(worker));
    }
    let (reply, answer) = tokio::sync::oneshot::channel();
    let gone = || io::Error::other("the hook spawner thread is gone");
    spawner()
        .send(Spawn {
            command,
            runtime: tokio::runtime::Handle::current(),
            reply,
        })
        .map_err(|_| gone())?;
    answer.await.map_err(|_| gone())?
}

/// Kills the process group when dropped (the run ended, failed or timed out).
pub(super) struct ProcessGroup(pub(super) u32);

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        if let Some(pid) = rustix::process::Pid::from_raw(self.0 as i32) {
            // Usually nothing is left (ESRCH): fine.
            let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
        }
    }
}

/// Keeps the worker's own `VMPIPE_*` settings (the database password among them) from a
/// program it starts.
pub(super) fn without_settings(command: &mut Command) {
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("VMPIPE_") {
            command.env_remove(name);
        }
    }
}

struct Spawn {
    command: Command,
    runtime: tokio::runtime::Handle,
    reply: tokio::sync::oneshot::Sender<io::Result<Child>>,
}

/// The thread that forks every hook: it lives as long as the process (its sender is static),
/// so a supervisor's parent-death signal means the worker is gone.
fn spawner() -> &'static mpsc::Sender<Spawn> {
    static SPAWNER: OnceLock<mpsc::Sender<Spawn>> = OnceLock::new();
    SPAWNER.get_or_init(|| {
        let (sender, requests) = mpsc::channel::<Spawn>();
        std::thread::Builder::new()
            .name("vmpipe-hook-spawner".into())
            .spawn(move || {
                for Spawn {
                    mut command,
                    runtime,
                    reply,
                } in requests
                {
                    // The child is registered with the caller's runtime (its reaping, pipes).
                    let _entered = runtime.enter();
                    let _ = reply.send(command.spawn());
                }
            })
            .expect("cannot start the hook spawner thread");
        sender
    })
}

/// In the forked child, before exec. Returns (to exec the program) only in the grandchild.
fn supervise(worker: libc::pid_t) -> io::Result<()> {
    // SAFETY: raw system calls on this process, async-signal-safe, no memory shared.
    unsafe {
        libc::setpriority(libc::PRIO_PROCESS, 0, HOOK_NICENESS);
        let supervisor = libc::getpid();
        let program = libc::fork();
        if program < 0 {
            return Err(io::Error::last_os_error());
        }
        if program == 0 {
            // The program: killed when its supervisor goes.
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong);
            if libc::getppid() != supervisor {
                libc::_exit(127);
            }
            return Ok(());
        }
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = kill_group as *const () as libc::sighandler_t;
        libc::sigemptyset(&mut action.sa_mask);
        libc::sigaction(libc::SIGTERM, &action, std::ptr::null_mut());
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM as libc::c_ulong);
        if libc::getppid() != worker {
            // The worker died before the prctl.
            kill_group(libc::SIGTERM);
        }
        close_all_files();
        let mut status: libc::c_int = 0;
        loop {
            if libc::waitpid(program, &mut status, 0) == program {
                break;
            }
            if io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
                libc::_exit(127);
            }
        }
        if libc::WIFSIGNALED(status) {
            // End the same way, without a second core dump.
            let signal = libc::WTERMSIG(status);
            let no_core = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            libc::setrlimit(libc::RLIMIT_CORE, &no_core);
            libc::signal(signal, libc::SIG_DFL);
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, signal);
            libc::sigprocmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
            libc::kill(supervisor, signal);
            libc::_exit(128 + signal);
        }
        libc::_exit(if libc::WIFEXITED(status) {
            libc::WEXITSTATUS(status)
        } else {
            127
        });
    }
}

/// The worker is gone (or the run is being stopped): the whole group goes, this process too.
extern "C" fn kill_group(_signal: libc::c_int) {
    // SAFETY: kill(2) is async-signal-safe.
    unsafe {
        libc::kill(0, libc::SIGKILL);
    }
}

/// The supervisor holds no file: the worker's pipes then end with the program (and what it
/// started), and the worker's exec-error pipe at the program's exec.
///
/// # Safety
/// Only in the supervisor, which uses no file afterwards.
unsafe fn close_all_files() {
    // SAFETY: closing descriptors this process no longer uses.
    unsafe {
        if libc::syscall(libc::SYS_close_range, 0u32, u32::MAX, 0u32) == 0 {
            return;
        }
        let mut limit: libc::rlimit = std::mem::zeroed();
        let max = if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 {
            limit.rlim_cur.min(1 << 16) as libc::c_int
        } else {
            1024
        };
        for fd in 0..max {
            libc::close(fd);
        }
    }
}
