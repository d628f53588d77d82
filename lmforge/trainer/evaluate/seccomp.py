"""The seccomp filter every sandboxed program runs under, compiled with libseccomp.

Why a filter of our own: the pod that runs model-written code cannot keep the runtime's default
seccomp profile (it forbids the user namespace bubblewrap needs), and bubblewrap's own way to stop
the program from creating further user namespaces (`--disable-userns`) writes
`/proc/sys/user/max_user_namespaces`, which every container runtime mounts read-only. So the
sandbox passes bubblewrap this filter (`--seccomp FD`), applied just before the program's
interpreter starts. It refuses, with EPERM:

* new user namespaces (`clone`/`unshare` with CLONE_NEWUSER; `clone3`, whose flags a filter cannot
  read, gets ENOSYS so libc falls back to `clone`) and joining namespaces (`setns`);
* what the runtime's default profile also keeps from containers: mounts, `pivot_root`, `chroot`,
  kernel keyrings, `bpf`, `perf_event_open`, `userfaultfd`, `ptrace` and reading or writing other
  processes' memory, kernel modules, `kexec`, `reboot`, swap, accounting, `open_by_handle_at`,
  `io_uring`, personality changes and the clock.

Syscalls of any other architecture (32-bit `int 0x80`) kill the process (libseccomp's default for a
foreign architecture). Why libseccomp through ctypes rather than a Python binding: it is already on
every Debian system (apt depends on it), whereas the bindings would be one more package in every
image for five functions. The filter is exported as classic BPF, the form bubblewrap loads.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import functools
import os

CLONE_NEWUSER = 0x10000000
SCMP_ACT_ALLOW = 0x7FFF0000
SCMP_CMP_MASKED_EQ = 7


def _errno(code: int) -> int:
    return 0x00050000 | (code & 0xFFFF)


DENIED = (
    "setns",
    "mount",
    "umount2",
    "pivot_root",
    "chroot",
    "move_mount",
    "open_tree",
    "fsopen",
    "fsmount",
    "fsconfig",
    "fspick",
    "mount_setattr",
    "keyctl",
    "add_key",
    "request_key",
    "bpf",
    "perf_event_open",
    "userfaultfd",
    "ptrace",
    "process_vm_readv",
    "process_vm_writev",
    "kcmp",
    "init_module",
    "finit_module",
    "delete_module",
    "kexec_load",
    "kexec_file_load",
    "reboot",
    "swapon",
    "swapoff",
    "acct",
    "open_by_handle_at",
    "name_to_handle_at",
    "io_uring_setup",
    "io_uring_enter",
    "io_uring_register",
    "personality",
    "settimeofday",
    "clock_settime",
    "clock_adjtime",
    "adjtimex",
    "quotactl",
    "syslog",
    "lookup_dcookie",
    "vhangup",
    "iopl",
    "ioperm",
)
"""Syscalls refused outright (EPERM); names this kernel's libseccomp does not know are skipped."""


class SeccompUnavailable(RuntimeError):
    """libseccomp is missing or refused the filter: the sandbox must then refuse to run programs."""


class _ArgCmp(ctypes.Structure):
    _fields_ = [
        ("arg", ctypes.c_uint),
        ("op", ctypes.c_int),
        ("datum_a", ctypes.c_uint64),
        ("datum_b", ctypes.c_uint64),
    ]


@functools.lru_cache(maxsize=1)
def _lib() -> ctypes.CDLL:
    name = ctypes.util.find_library("seccomp") or "libseccomp.so.2"
    try:
        lib = ctypes.CDLL(name, use_errno=True)
    except OSError as exc:
        raise SeccompUnavailable(f"cannot load libseccomp ({exc})") from None
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = [ctypes.c_uint32]
    lib.seccomp_release.argtypes = [ctypes.c_void_p]
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_rule_add_array.argtypes = [
        ctypes.c_void_p,
        ctypes.c_uint32,
        ctypes.c_int,
        ctypes.c_uint,
        ctypes.POINTER(_ArgCmp),
    ]
    lib.seccomp_export_bpf.argtypes = [ctypes.c_void_p, ctypes.c_int]
    return lib


def _rule(lib: ctypes.CDLL, ctx: int, action: int, name: str, *cmps: _ArgCmp) -> None:
    nr = lib.seccomp_syscall_resolve_name(name.encode())
    if nr < 0:  # not a syscall of this architecture (or unknown to this libseccomp)
        return
    array = (_ArgCmp * len(cmps))(*cmps) if cmps else None
    rc = lib.seccomp_rule_add_array(ctx, action, nr, len(cmps), array)
    if rc < 0:
        raise SeccompUnavailable(f"libseccomp refused the rule for {name}: {os.strerror(-rc)}")


@functools.lru_cache(maxsize=1)
def program() -> bytes:
    """The filter as classic BPF (what `bwrap --seccomp FD` reads); `SeccompUnavailable` if it cannot
    be built."""
    lib = _lib()
    ctx = lib.seccomp_init(SCMP_ACT_ALLOW)
    if not ctx:
        raise SeccompUnavailable("seccomp_init failed")
    try:
        new_user = _ArgCmp(0, SCMP_CMP_MASKED_EQ, CLONE_NEWUSER, CLONE_NEWUSER)
        _rule(lib, ctx, _errno(errno.EPERM), "unshare", new_user)
        _rule(lib, ctx, _errno(errno.EPERM), "clone", new_user)  # flags are clone's first argument on x86-64/arm64
        _rule(lib, ctx, _errno(errno.ENOSYS), "clone3")
        for name in DENIED:
            _rule(lib, ctx, _errno(errno.EPERM), name)
        fd = os.memfd_create("lmforge-seccomp")
        try:
            rc = lib.seccomp_export_bpf(ctx, fd)
            if rc < 0:
                raise SeccompUnavailable(f"cannot export the filter: {os.strerror(-rc)}")
            os.lseek(fd, 0, os.SEEK_SET)
            chunks = []
            while chunk := os.read(fd, 1 << 16):
                chunks.append(chunk)
            return b"".join(chunks)
        finally:
            os.close(fd)
    finally:
        lib.seccomp_release(ctx)
