//! Processes on this machine: whether the kiln that owns a container or folder still runs.

/// Whether process `pid` runs on this machine (a process we may not signal still runs).
pub fn process_alive(pid: i32) -> bool {
    use nix::errno::Errno;
    match nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None) {
        Ok(()) | Err(Errno::EPERM) => true,
        Err(_) => false,
    }
}
