"""Peak memory and CPU time per process kind over a command's process tree, sampled from /proc.

A Ray worker's kind comes from its proctitle (``ray::MapWorker(MapBatches(ClipEncoder))``, ``ray::IDLE``,
…), read from ``/proc/PID/cmdline`` at each sample, since a reused worker changes title with its task.
With ``gpu=True`` each sample also asks ``nvidia-smi`` for the GPU's utilisation and every process's GPU
memory. Used by ``extract_bench.py``, ``real_size.py`` and ``gpu_bench.py``.
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
from collections import Counter, defaultdict
from typing import Any

# Substring of a Ray proctitle -> kind, first match wins.
_RAY_KINDS = (
    ("EncoderChain", "encoders (one pool)"),
    ("ClipEncoder", "encoder clip"),
    ("HubertEncoder", "encoder hubert"),
    ("RobertaEncoder", "encoder roberta"),
    ("decode_batch", "decode task"),
    ("write_shard", "write task"),
    ("TrainWorker", "fold worker"),
    # What drives a fold: its Ray task (train_fold), or, before 2026-12-03, its Tune trial (ImplicitFunc).
    ("train_fold", "fold driver"),
    ("ImplicitFunc", "fold driver"),
    ("TrainController", "train controller"),
    ("PlacementGroupCleaner", "train helpers"),
    ("DatasetManager", "train helpers"),
    ("SyncActor", "train helpers"),
    ("PreemptionWatcher", "train helpers"),
    ("_QueueActor", "report queue"),
    ("IDLE", "idle worker"),
)
_TICKS = os.sysconf("SC_CLK_TCK")


def process_tree(root: int) -> list[int]:
    """``root`` and its descendants, from /proc (Linux; no psutil dependency)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                # The command name may contain spaces; the parent pid follows its closing parenthesis.
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    tree, stack = [], [root]
    while stack:
        pid = stack.pop()
        tree.append(pid)
        stack.extend(children.get(pid, []))
    return tree


def rss_bytes(pid: int) -> int:
    return resident_bytes(pid)[0]


def resident_bytes(pid: int) -> tuple[int, int]:
    """Resident and resident-shared bytes of ``pid`` (0, 0 when it is gone). Resident less shared is what
    the process itself holds, without the libraries it maps and the Ray object store's pages it reads in
    place (which RSS counts in every reader)."""
    try:
        with open(f"/proc/{pid}/statm") as f:
            fields = f.read().split()
        page = os.sysconf("SC_PAGE_SIZE")
        return int(fields[1]) * page, int(fields[2]) * page
    except (OSError, IndexError, ValueError):
        return 0, 0


def classify(pid: int, root: int) -> str:
    """The kind of process ``pid`` in the tree of driver ``root``."""
    if pid == root:
        return "driver"
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmdline = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return "gone"
    if "ecmf_ray.extract.decoder_process" in cmdline:
        return "decoder child"
    if cmdline.startswith("ray::"):
        title = cmdline.split()[0]
        # Anything else is Ray's own actors and tasks (stats, autoscaling coordinator, agents, metadata).
        return next((kind for key, kind in _RAY_KINDS if key in title), "ray internal")
    return "ray system"  # gcs_server, raylet, dashboard, log monitor, …


def _cpu_seconds(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / _TICKS  # utime + stime
    except (OSError, IndexError, ValueError):
        return 0.0


def _nvidia_smi(query: str, kind: str) -> list[list[str]]:
    done = subprocess.run(
        ["nvidia-smi", f"--query-{kind}={query}", "--format=csv,noheader,nounits"],
        capture_output=True,
        text=True,
        timeout=10,
    )
    return [[c.strip() for c in line.split(",")] for line in done.stdout.splitlines() if line.strip()]


class ProcessSampler:
    """Samples the tree under ``root`` every ``interval_s`` in a thread, until :meth:`stop`."""

    def __init__(self, root: int, interval_s: float = 0.5, gpu: bool = False):
        self.root = root
        self.interval_s = interval_s
        self.gpu = gpu
        self.peak_process_mb: dict[str, float] = defaultdict(float)  # largest single process of a kind
        self.peak_private_mb: dict[str, float] = defaultdict(float)  # the same, less shared pages
        self.peak_kind_mb: dict[str, float] = defaultdict(float)  # largest sum over a kind at one sample
        self.peak_tree_mb = 0.0
        self.cpu_s: dict[str, float] = defaultdict(float)
        self.first_kind: dict[int, str] = {}  # every process seen, by the kind it had when first seen
        self.peak_gpu_mb: dict[str, float] = defaultdict(float)
        self.gpu_util: list[float] = []
        self._last_cpu: dict[int, float] = {}
        self._before: set[int] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> ProcessSampler:
        # CPU already spent (this process's own earlier work) is not the sampled run's.
        self._last_cpu = {pid: _cpu_seconds(pid) for pid in process_tree(self.root)}
        self._before = set(self._last_cpu)
        self._thread.start()
        return self

    def stop(self) -> dict[str, Any]:
        self._stop.set()
        self._thread.join()
        return self.figures()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self.interval_s)

    def _sample(self) -> None:
        kinds: dict[int, str] = {}
        sums: dict[str, float] = defaultdict(float)
        for pid in process_tree(self.root):
            kind = kinds[pid] = classify(pid, self.root)
            self.first_kind.setdefault(pid, kind)
            resident, shared = resident_bytes(pid)
            rss = resident / 2**20
            sums[kind] += rss
            self.peak_process_mb[kind] = max(self.peak_process_mb[kind], rss)
            self.peak_private_mb[kind] = max(self.peak_private_mb[kind], (resident - shared) / 2**20)
            cpu = _cpu_seconds(pid)
            # CPU time goes to the kind the process has now (a reused worker changes kinds).
            self.cpu_s[kind] += max(0.0, cpu - self._last_cpu.get(pid, 0.0))
            self._last_cpu[pid] = cpu
        for kind, total in sums.items():
            self.peak_kind_mb[kind] = max(self.peak_kind_mb[kind], total)
        self.peak_tree_mb = max(self.peak_tree_mb, sum(sums.values()))
        if self.gpu:
            self.gpu_util += [float(row[0]) for row in _nvidia_smi("utilization.gpu", "gpu")]
            for pid, used in _nvidia_smi("pid,used_memory", "compute-apps"):
                kind = kinds.get(int(pid), "outside the tree")
                self.peak_gpu_mb[kind] = max(self.peak_gpu_mb[kind], float(used))

    def figures(self) -> dict[str, Any]:
        encoders = {k: v for k, v in self.cpu_s.items() if k.startswith("encoder ")}
        busy = sum(encoders.values()) or 1.0
        figures: dict[str, Any] = {
            "peak_tree_mb": round(self.peak_tree_mb),
            "peak_process_mb": {k: round(v) for k, v in sorted(self.peak_process_mb.items())},
            "peak_private_mb": {k: round(v) for k, v in sorted(self.peak_private_mb.items())},
            "peak_kind_mb": {k: round(v) for k, v in sorted(self.peak_kind_mb.items())},
            "cpu_s": {k: round(v, 1) for k, v in sorted(self.cpu_s.items())},
            # Processes that started during the run (a worker started and killed again shows up here).
            "processes": dict(
                sorted(Counter(k for p, k in self.first_kind.items() if p not in self._before).items())
            ),
            "encoder_cpu_share": {k: round(v / busy, 3) for k, v in sorted(encoders.items())},
        }
        if self.gpu:
            figures["peak_gpu_mb"] = {k: round(v) for k, v in sorted(self.peak_gpu_mb.items())}
            figures["gpu_util_mean"] = round(sum(self.gpu_util) / max(1, len(self.gpu_util)), 1)
            figures["gpu_busy_share"] = round(
                sum(u > 0 for u in self.gpu_util) / max(1, len(self.gpu_util)), 3
            )
        return figures


def run_sampled(cmd: list[str], env: dict[str, str], gpu: bool = False) -> dict[str, Any]:
    """Run ``cmd`` to completion under a :class:`ProcessSampler`; its figures plus ``seconds``."""
    start = time.perf_counter()
    child = subprocess.Popen(cmd, env=env)
    sampler = ProcessSampler(child.pid, gpu=gpu).start()
    code = child.wait()
    figures = sampler.stop()
    if code != 0:
        raise subprocess.CalledProcessError(code, cmd)
    return {"seconds": round(time.perf_counter() - start, 1), **figures}
