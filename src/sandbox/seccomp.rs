//! kiln's own seccomp profile, applied to every container instead of the engine's default.
//!
//! It is an allowlist: the system calls of the kernel's tables (x86_64 and the generic table
//! arm64 uses, as of Linux 6.1, plus a few newer ones a recent libc tries) minus those a
//! generator has no use for, which fail with EPERM: tracing and reading other processes
//! (`ptrace`, `process_vm_*`, `kcmp`, `pidfd_getfd`), `bpf`, `perf_event_open`, `userfaultfd`,
//! `io_uring_*`, the key store (`keyctl`, `add_key`, `request_key`), namespaces (`unshare`,
//! `setns`, and `clone` with any `CLONE_NEW*` flag), mounts old and new (`mount`, `fsopen`,
//! `fsmount`, `move_mount`, `open_tree`...), and what belongs to the machine (modules, reboot,
//! kexec, swap, clocks, quotas, `personality`, NUMA placement). `clone3` gets ENOSYS, so libc
//! falls back to `clone`, whose flags can be checked; any call the profile does not know gets
//! ENOSYS too, so a new kernel's calls stay shut until they are looked at.
//!
//! Stricter than the engine's default where a generator has no need: the engine's default
//! allows `io_uring_*`, `clone3` and (with some flags) `personality`, and lets capabilities
//! decide for the rest; this profile decides by itself.

/// The profile, in the engine's JSON format (`docker run --security-opt seccomp=<file>`).
pub const PROFILE: &str = include_str!("seccomp.json");

/// The profile for a container under gVisor: the same, with `clone3` allowed. gVisor (the
/// release Debian ships) answers every refusal of a profile with EPERM whatever its `errnoRet`,
/// and libc falls back from `clone3` to `clone` only on ENOSYS, so no program could be started
/// through `posix_spawn` (make could not run the compiler). Inside gVisor a `clone3` makes
/// namespaces of gVisor's own kernel, never the host's.
pub fn gvisor_profile() -> &'static str {
    static PROFILE_GVISOR: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    PROFILE_GVISOR.get_or_init(|| {
        let mut profile: serde_json::Value =
            serde_json::from_str(PROFILE).expect("the embedded profile is JSON");
        let rules = profile["syscalls"]
            .as_array_mut()
            .expect("the embedded profile has rules");
        rules.retain(|rule| rule["names"] != serde_json::json!(["clone3"]));
        rules.push(serde_json::json!({"names": ["clone3"], "action": "SCMP_ACT_ALLOW"}));
        profile.to_string()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules() -> Vec<serde_json::Value> {
        let profile: serde_json::Value = serde_json::from_str(PROFILE).unwrap();
        assert_eq!(profile["defaultAction"], "SCMP_ACT_ERRNO");
        profile["syscalls"].as_array().unwrap().clone()
    }

    fn names(rule: &serde_json::Value) -> Vec<&str> {
        rule["names"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n.as_str().unwrap())
            .collect()
    }

    #[test]
    fn the_gvisor_profile_differs_only_in_allowing_clone3() {
        let strict: serde_json::Value = serde_json::from_str(PROFILE).unwrap();
        let gvisor: serde_json::Value = serde_json::from_str(gvisor_profile()).unwrap();
        let without = |profile: &serde_json::Value| -> Vec<serde_json::Value> {
            let rules = profile["syscalls"].as_array().unwrap();
            rules
                .iter()
                .filter(|r| r["names"] != serde_json::json!(["clone3"]))
                .cloned()
                .collect()
        };
        assert_eq!(without(&strict), without(&gvisor));
        assert_eq!(strict["defaultErrnoRet"], gvisor["defaultErrnoRet"]);
        let clone3 = |profile: &serde_json::Value| {
            profile["syscalls"]
                .as_array()
                .unwrap()
                .iter()
                .find(|r| r["names"] == serde_json::json!(["clone3"]))
                .unwrap()["action"]
                .clone()
        };
        assert_eq!(clone3(&strict), "SCMP_ACT_ERRNO");
        assert_eq!(clone3(&gvisor), "SCMP_ACT_ALLOW");
    }

    #[test]
    fn the_calls_a_generator_has_no_use_for_are_refused_and_never_allowed() {
        let rules = rules();
        let allowed: Vec<&str> = rules
            .iter()
            .filter(|r| r["action"] == "SCMP_ACT_ALLOW" && r.get("args").is_none())
            .flat_map(names)
            .collect();
        let refused: Vec<&str> = rules
            .iter()
            .filter(|r| r["action"] == "SCMP_ACT_ERRNO" && r["errnoRet"] == 1)
            .flat_map(names)
            .collect();
        for call in [
            "ptrace",
            "bpf",
            "keyctl",
            "userfaultfd",
            "perf_event_open",
            "unshare",
            "setns",
            "mount",
            "fsopen",
            "fsmount",
            "move_mount",
            "open_tree",
            "io_uring_setup",
            "io_uring_enter",
            "io_uring_register",
            "clone",
        ] {
            assert!(refused.contains(&call), "{call} is not refused");
            assert!(!allowed.contains(&call), "{call} is allowed outright");
        }
        for call in [
            "read", "write", "execve", "openat", "futex", "rseq", "statx",
        ] {
            assert!(allowed.contains(&call), "{call} is not allowed");
        }
    }
}
