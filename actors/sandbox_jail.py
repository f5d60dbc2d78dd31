"""Kernel confinement for sandbox workers: namespaces, a read-only root, another uid, rlimits.

Runs inside the worker process (``actors/sandbox_worker.py``), which Python starts with ``-I -S``,
so this module uses the standard library and ``ctypes`` only. Linux only.

``enter_jail`` is called once per worker, as root:

- ``unshare(CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWPID | CLONE_NEWIPC)``: a private mount table,
  a network namespace holding only a loopback device that is down (every connect fails,
  127.0.0.1 included), a PID namespace for the processes that run code (they cannot name, signal
  or ptrace anything outside it, and all of them die with the worker), and an IPC namespace whose
  System V limits are zero (no shared memory segment can outlive a call or dodge RLIMIT_AS).
- a new root on a size-capped tmpfs holding read-only, nosuid, nodev bind mounts of the system
  library dirs and the Python installation only (no /proc, no /etc, no home or repository dirs),
  ``/dev/null``, ``/dev/zero``, ``/dev/urandom`` and ``/scratch`` (the per-call scratch dirs);
  the worker then ``chroot``\\ s into it.

``confine_child`` is called in each forked child before the code runs: rlimits (CPU seconds,
address space, file size, open files, no core dumps, RLIMIT_NPROC = 1), then a switch to an
unprivileged uid/gid with no supplementary groups, which clears every capability, then
``PR_SET_NO_NEW_PRIVS`` and a parent-death SIGKILL. RLIMIT_NPROC does not bind uid 0 (the kernel
exempts root), which is why the uid switch is what makes it stop a fork bomb, from Python and
from ``ctypes`` alike.

When a mechanism is not available (not root, no CAP_SYS_ADMIN as in a default Docker container)
``enter_jail`` raises ``JailError`` under ``strict``; otherwise it skips it and reports which
mechanisms are active, so the caller can log what is missing. Not a defence against kernel
exploits: there is no seccomp filter, and the code shares the kernel with the host.
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
MECHANISMS = ("user", "nproc", "network", "filesystem", "pid", "ipc")
# Per IPC namespace: no System V shared memory, queues or semaphores (they outlive a process,
# escape RLIMIT_AS and would let one call leave state for the next).
IPC_LIMITS = {"shmmax": "0", "shmall": "0", "shmmni": "0", "msgmni": "0", "sem": "0 0 0 0"}

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


def enter_jail(binds: list[str], scratch_mb: int, strict: bool) -> dict[str, bool]:
    """Confine this process as far as possible; return which mechanisms are active.

    Afterwards the caller must fork once (``CLONE_NEWPID`` applies to children) and run code only
    in children that call ``confine_child``. Raises ``JailError`` under ``strict`` when any
    mechanism is missing.
    """
    active = dict.fromkeys(MECHANISMS, False)
    # As root, confine_child switches to an unprivileged uid; any uid but 0 is bound by
    # RLIMIT_NPROC, so the process limit holds either way.
    active["user"] = os.geteuid() == 0
    active["nproc"] = True
    try:
        _check(_libc.unshare(CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWPID | CLONE_NEWIPC), "unshare")
        active["network"] = active["pid"] = True
        for name, value in IPC_LIMITS.items():
            with open(f"/proc/sys/kernel/{name}", "w") as f:
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
