"""CPU seconds of the pids in $BENCH_CPU_PIDS, for the bench/queue drivers.

BENCH_CPU_PIDS holds groups of pids, "1 2 3,4,5": cpu() gives each group's
CPU seconds so far (user + system, reaped children too: RQ's work horses)."""
import os

HZ = os.sysconf("SC_CLK_TCK")


def cpu():
    out = []
    for group in filter(None, os.environ.get("BENCH_CPU_PIDS", "").split(",")):
        t = 0
        for pid in group.split():
            try:
                with open("/proc/%s/stat" % pid) as f:
                    rest = f.read().rpartition(") ")[2].split()
            except OSError:
                continue
            t += sum(int(v) for v in rest[11:15])
        out.append(t / HZ)
    return out


def since(c0):
    return " ".join("%.2f" % (b - a) for a, b in zip(c0, cpu()))
