"""Memory of the current process, for the anchor scripts (each runs in its own child process,
some in other virtual environments: this module needs nothing but the standard library)."""


def status_mb(field: str) -> float:
    """A /proc/self/status memory field in MB (VmRSS: now; VmHWM: this process's peak). Unlike
    getrusage's ru_maxrss, VmHWM does not inherit the parent's peak across fork + exec."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def reset_peak() -> None:
    """Reset VmHWM, so that the next peak is reached by what follows (Linux clear_refs)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
