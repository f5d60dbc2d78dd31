"""Kernel confinement for sandbox workers: namespaces, a read-only root, a syscall filter, another
uid, rlimits.

Runs inside the worker process (``actors/sandbox_worker.py``), which Python starts with ``-I -S``,
so this module uses the standard library, ``ctypes`` and ``pyseccomp`` (a ctypes binding of the
system's libseccomp) only. Linux only.

``enter_jail`` is called once per worker, as root:

- ``unshare(CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWPID | CLONE_NEWIPC)``: a private mount table,
  a network namespace holding only a loopback device that is down (every connect fails,
  127.0.0.1 included), a PID namespace for the processes that run code (they cannot name, signal
  or ptrace anything outside it, and all of them die with the worker), and an IPC namespace whose
  System V limits and POSIX message queue limit are zero (no shared memory segment or queue can
  outlive a call or dodge RLIMIT_AS).
- a new root on a size-capped tmpfs holding read-only, nosuid, nodev bind mounts of the system
  library dirs and the Python installation only (no /proc, no /etc, no home or repository dirs),
  ``/dev/null``, ``/dev/zero``, ``/dev/urandom`` and ``/scratch`` (the per-call scratch dirs);
  the worker then ``chroot``\\ s into it.

The seccomp filter (``build_filter``, ``load_filter``) is loaded once per worker, after the jail
is built and before the first child is forked: children inherit it and cannot remove it. It is
a *deny-list*: every syscall is allowed except whole classes that reach kernel state outside the
worker's namespaces or widen the kernel's attack surface, which fail with EPERM:

- per-uid keyrings (``add_key``, ``request_key``, ``keyctl``: not namespaced, they outlive the
  pool), POSIX message queues (``mq_*``), ``memfd_create``/``memfd_secret`` (pages outside
  RLIMIT_AS and the scratch tmpfs's cap);
- sockets of any family but AF_UNIX, AF_INET, AF_INET6 (AF_VSOCK's port space is the host's;
  netlink, packet, AF_ALG are kernel surface), for ``socket`` and ``socketpair``;
- changing namespaces or mounts (``unshare``, ``setns``, ``clone`` with a CLONE_NEW* flag,
  ``mount`` and the new mount API, ``pivot_root``, ``chroot``); ``clone3`` fails with ENOSYS,
  so that libc falls back to ``clone``, whose flags the filter can read;
- reading or driving other processes (``ptrace``, ``process_vm_readv``/``writev``, ``kcmp``,
  ``pidfd_getfd``), and the kernel's exploit surface (``bpf``, ``userfaultfd``,
  ``perf_event_open``, ``io_uring_*``, whose operations bypass seccomp, module and kexec
  loading, ``open_by_handle_at``, ``iopl``/``ioperm``, …).

Why a deny-list rather than an allow-list: the children run CPython, numpy's and sympy's C code
and whatever ``ctypes`` calls; the syscalls these need vary with the library version, libc and
code path, and an allow-list missing one breaks legitimate programs with errors that look like
their own bugs. Everything the deny-list leaves open already happens inside the jail (own mount
table and read-only root, empty network, own PID and IPC namespaces, unprivileged uid, rlimits),
so the filter only has to close the kernel facilities those namespaces do not cover. Syscalls of
another ABI (i386 ``int 0x80``) kill the process: libseccomp's filter refuses foreign
architectures.

``confine_child`` is called in each forked child before the code runs: rlimits (CPU seconds,
address space, file size, open files, no core dumps, RLIMIT_NPROC = 1), then a switch to an
unprivileged uid/gid with no supplementary groups, which clears every capability, then
``PR_SET_NO_NEW_PRIVS`` and a parent-death SIGKILL. RLIMIT_NPROC does not bind uid 0 (the kernel
exempts root), which is why the uid switch is what makes it stop a fork bomb, from Python and
from ``ctypes`` alike.

When a mechanism is not available (not root, no CAP_SYS_ADMIN as in a default Docker container)
``enter_jail`` raises ``JailError`` under ``strict``; otherwise it skips it and reports which
mechanisms are active, so the caller can log what is missing. Not a defence against kernel
exploits: the code shares the kernel with the host, and the deny-list leaves its common
syscalls reachable.
"""

from __future__ import annotations

import ctypes
import os
import resource
import signal

CLONE_NEWNS, CLONE_NEWNET, CLONE_NEWPID = 0x00020000, 0x40000000, 0x20000000
CLONE_NEWIPC = 0x08000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_BIND, MS_REC, MS_PRIVATE, MS_REMOUNT = 4096, 16384, 1 << 18, 32
MOUNT_ATTR_RDONLY, MOUNT_ATTR_NOSUID, MOUNT_ATTR_NODEV = 1, 2, 4
AT_FDCWD, AT_RECURSIVE, SYS_MOUNT_SETATTR = -100, 0x8000, 442
PR_SET_PDEATHSIG, PR_SET_NO_NEW_PRIVS = 1, 38
ROOT = "/tmp"  # mount point of the new root's tmpfs (shadows /tmp in the worker's namespace only)
SYSTEM_DIRS = ("/usr", "/lib", "/lib64", "/lib32", "/libx32", "/bin")
DEVICES = ("/dev/null", "/dev/zero", "/dev/urandom")
MECHANISMS = ("user", "nproc", "network", "filesystem", "pid", "ipc", "seccomp")
# Per IPC namespace: no System V shared memory, queues or semaphores (they outlive a process,
# escape RLIMIT_AS and would let one call leave state for the next).
IPC_LIMITS = {
    "kernel/shmmax": "0",
    "kernel/shmall": "0",
    "kernel/shmmni": "0",
    "kernel/msgmni": "0",
    "kernel/sem": "0 0 0 0",
    "fs/mqueue/queues_max": "0",  # POSIX queues (root is exempt; the children are not root)
}
# The seccomp deny-list (module doc): syscalls that fail with EPERM whatever their arguments.
DENIED_SYSCALLS = (
    "add_key request_key keyctl "
    "mq_open mq_unlink mq_timedsend mq_timedreceive mq_notify mq_getsetattr "
    "memfd_create memfd_secret "
    "unshare setns mount umount2 pivot_root chroot fsopen fsconfig fsmount fspick move_mount "
    "open_tree mount_setattr "
    "ptrace process_vm_readv process_vm_writev kcmp pidfd_getfd "
    "bpf userfaultfd perf_event_open io_uring_setup io_uring_enter io_uring_register "
    "init_module finit_module delete_module kexec_load kexec_file_load reboot swapon swapoff "
    "acct quotactl quotactl_fd syslog open_by_handle_at name_to_handle_at lookup_dcookie "
    "iopl ioperm vhangup settimeofday clock_settime adjtimex clock_adjtime sethostname "
    "setdomainname fanotify_init uselib nfsservctl personality"
).split()
SOCKET_FAMILIES = (1, 2, 10)  # AF_UNIX, AF_INET, AF_INET6: every other family is refused
CLONE_NAMESPACES = (0x00020000, 0x02000000, 0x04000000, 0x08000000, 0x10000000, 0x20000000, 0x40000000)

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_void_p]
_libc.syscall.restype = ctypes.c_long


class JailError(OSError):
    """A confinement mechanism that strict isolation needs could not be set up."""


class _MountAttr(ctypes.Structure):
    _fields_ = [
        ("attr_set", ctypes.c_uint64),
        ("attr_clr", ctypes.c_uint64),
        ("propagation", ctypes.c_uint64),
        ("userns_fd", ctypes.c_uint64),
    ]


def _check(ret: int, what: str) -> None:
    if ret != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _mount(src: str | None, target: str, fstype: str | None, flags: int, data: str | None = None):
    def enc(s: str | None) -> bytes | None:
        return None if s is None else s.encode()

    _check(_libc.mount(enc(src), enc(target), enc(fstype), flags, enc(data)), f"mount {target}")


def _read_only(target: str) -> None:
    """Make a bind mount and every mount below it read-only, nosuid, nodev."""
    attr = _MountAttr(MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV, 0, 0, 0)
    ret = _libc.syscall(
        SYS_MOUNT_SETATTR, AT_FDCWD, target.encode(), AT_RECURSIVE, ctypes.byref(attr), ctypes.sizeof(attr)
    )
    if ret != 0 and ctypes.get_errno() == 38:  # ENOSYS: kernel < 5.12, top mount only
        _mount(None, target, None, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV)
    elif ret != 0:
        _check(-1, f"mount_setattr {target}")


def _build_root(binds: list[str], scratch_mb: int) -> None:
    """Fill a fresh tmpfs at ROOT with read-only views of ``binds`` and the devices."""
    # Open the sources first: the tmpfs about to be mounted may shadow some (a venv in /tmp).
    sources = {p: os.open(p, os.O_PATH) for p in binds if os.path.exists(p)}
    _mount("tmpfs", ROOT, "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, f"size={scratch_mb}m,nr_inodes=65536,mode=755")
    bound: list[str] = []
    for path in sorted(sources, key=len):
        target = ROOT + path
        if any(path == b or path.startswith(b.rstrip("/") + "/") for b in bound):
            continue  # already visible through a parent bind
        if os.path.islink(path):  # /lib -> usr/lib on merged-/usr systems: keep the link
            os.makedirs(os.path.dirname(target), exist_ok=True)
            if not os.path.lexists(target):
                os.symlink(os.readlink(path), target)
            continue
        os.makedirs(target, exist_ok=True)
        _mount(f"/proc/self/fd/{sources[path]}", target, None, MS_BIND | MS_REC)
        _read_only(target)
        bound.append(path)
    for fd in sources.values():
        os.close(fd)
    os.makedirs(ROOT + "/dev", exist_ok=True)
    for dev in DEVICES:
        open(ROOT + dev, "w").close()
        _mount(dev, ROOT + dev, None, MS_BIND)
    os.mkdir(ROOT + "/scratch", 0o711)


def enter_jail(binds: list[str], scratch_mb: int, strict: bool, seccomp: bool) -> dict[str, bool]:
    """Confine this process as far as possible; return which mechanisms are active.

    Afterwards the caller must fork once (``CLONE_NEWPID`` applies to children), load the filter
    it built (``seccomp``: ``build_filter`` gave one) and run code only in children that call
    ``confine_child``. Raises ``JailError`` under ``strict`` when any mechanism is missing.
    """
    active = dict.fromkeys(MECHANISMS, False)
    active["seccomp"] = seccomp
    # As root, confine_child switches to an unprivileged uid; any uid but 0 is bound by
    # RLIMIT_NPROC, so the process limit holds either way.
    active["user"] = os.geteuid() == 0
    active["nproc"] = True
    try:
        _check(_libc.unshare(CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWPID | CLONE_NEWIPC), "unshare")
        active["network"] = active["pid"] = True
        for name, value in IPC_LIMITS.items():
            with open(f"/proc/sys/{name}", "w") as f:
                f.write(value)
        active["ipc"] = True
        _mount(None, "/", None, MS_REC | MS_PRIVATE)  # nothing below propagates to the host
        _build_root(binds, scratch_mb)
        os.chroot(ROOT)
        os.chdir("/")
        active["filesystem"] = True
    except OSError as e:
        if strict:
            raise JailError(
                e.errno,
                f"sandbox isolation unavailable ({e.strerror}); run the "
                "actor as root with CAP_SYS_ADMIN, or set sandbox.isolation = "
                "'weak' to run with fewer guarantees",
            ) from None
    missing = [m for m, ok in active.items() if not ok]
    if strict and missing:
        raise JailError(1, f"sandbox isolation incomplete, missing: {', '.join(missing)}")
    return active


def build_filter(strict: bool):
    """The seccomp deny-list (module doc), built but not loaded; None where libseccomp is missing
    (raises JailError under ``strict``). Built before the chroot: libseccomp is found then."""
    try:
        import pyseccomp as sc
    except (ImportError, RuntimeError) as e:  # RuntimeError: pyseccomp found no libseccomp
        if strict:
            raise JailError(1, f"sandbox isolation unavailable (no seccomp: {e})") from None
        return None
    f = sc.SyscallFilter(sc.ALLOW)
    eperm = sc.ERRNO(1)
    for name in DENIED_SYSCALLS:
        try:
            f.add_rule(eperm, name)
        except (OSError, RuntimeError, ValueError):  # unknown to this libseccomp or kernel
            pass
    f.add_rule(sc.ERRNO(38), "clone3")  # ENOSYS: libc falls back to clone(), filtered below
    for flag in CLONE_NAMESPACES:
        f.add_rule(eperm, "clone", sc.Arg(0, sc.MASKED_EQ, flag, flag))
    allowed = set(SOCKET_FAMILIES)
    for call in ("socket", "socketpair"):
        f.add_rule(eperm, call, sc.Arg(0, sc.GT, max(allowed)))  # also any high bit set
        for family in range(max(allowed)):
            if family not in allowed:
                f.add_rule(eperm, call, sc.Arg(0, sc.EQ, family))
    return f


def load_filter(f) -> None:
    """Install a filter from ``build_filter`` in this process and every child it forks."""
    f.load()


def die_with_parent() -> None:
    """SIGKILL this process when its parent exits (the kernel clears this on a uid change)."""
    _check(_libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0), "prctl(PDEATHSIG)")


def confine_child(uid: int | None, cpu_s: int, as_bytes: int, file_bytes: int) -> None:
    """Limits for one forked child, then drop to ``uid`` (None: stay, not root) for good."""
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_s, cpu_s + 1))  # SIGXCPU, then SIGKILL
    resource.setrlimit(resource.RLIMIT_AS, (as_bytes, as_bytes))
    resource.setrlimit(resource.RLIMIT_FSIZE, (file_bytes, file_bytes))
    resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_NPROC, (1, 1))  # counts this process: no fork, no thread
    if uid is not None:
        os.setgroups([])
        os.setresgid(uid, uid, uid)
        os.setresuid(uid, uid, uid)  # clears all capabilities
    _check(_libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl(NO_NEW_PRIVS)")
    die_with_parent()
