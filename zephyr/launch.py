"""Stages as processes: the command line of each stage of `zephyr run`, and running it with a log file, signals
passed on, and no process left behind.

Why a process per stage: under DeepSpeed or several GPUs a training stage must be started by `accelerate
launch`, and accelerate's state, CUDA memory and distributed groups must not carry over from one stage to the
next. Training stages take launch settings (per pipeline, per stage, or `zephyr run --launch CFG`); AIF, eval
and the embedded-default build run as one plain process each.
"""

from __future__ import annotations

import atexit
import ctypes
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from zephyr.recipe import RecipeError
from zephyr.stages import training_stages

TRAINING = tuple(training_stages())
WATCH_ENV = "ZEPHYR_WATCH_PARENT"  # set for every process a pipeline starts (and so for their ranks)
REPO_CONFIGS = Path(__file__).resolve().parents[1] / "accelerate_configs"


def accelerate_config_path(name: str) -> Path:
    """A config file path, or the name of one in accelerate_configs/ (`zero3` -> accelerate_configs/zero3.yaml)."""
    for candidate in (Path(name), Path("accelerate_configs") / name, Path("accelerate_configs") / f"{name}.yaml",
                      REPO_CONFIGS / name, REPO_CONFIGS / f"{name}.yaml"):
        if candidate.is_file():
            return candidate
    shipped = sorted(p.stem for p in REPO_CONFIGS.glob("*.yaml"))
    raise FileNotFoundError(f"accelerate config {name!r} not found (shipped: {shipped})")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class LaunchSettings:
    """How a training stage is launched. Every field is optional; none means one plain process."""

    accelerate_config: str | None = None  # a file, or a name in accelerate_configs/ (zero3, multi_gpu, ...)
    num_processes: int | None = None  # processes in all (default: the accelerate config's)
    num_machines: int | None = None
    machine_rank: int | None = None
    main_process_ip: str | None = None
    main_process_port: int | None = None

    @classmethod
    def parse(cls, value: Any, source: str) -> LaunchSettings | None:
        if value is None:
            return None
        if isinstance(value, str):
            return cls(accelerate_config=value)
        if not isinstance(value, dict):
            raise RecipeError(f"{source}: launch: expected a mapping such as {{accelerate_config: zero3, "
                              f"num_processes: 8}} or the name of an accelerate config, got {value!r}")
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(value) - set(known))
        if unknown:
            raise RecipeError(f"{source}: launch: unknown keys {unknown} (expected {sorted(known)})")
        for key in ("num_processes", "num_machines", "machine_rank", "main_process_port"):
            if value.get(key) is not None and (not isinstance(value[key], int) or value[key] < 0):
                raise RecipeError(f"{source}: launch.{key}: expected a non-negative integer, got {value[key]!r}")
        return cls(**value)

    def merged(self, override: LaunchSettings | None) -> LaunchSettings:
        """These settings with every field `override` sets replaced."""
        if override is None:
            return self
        return LaunchSettings(**{f.name: getattr(override, f.name) if getattr(override, f.name) is not None
                                 else getattr(self, f.name) for f in fields(self)})

    def config_values(self) -> dict[str, Any]:
        """The accelerate config file's own settings (empty when there is none)."""
        import yaml


        if not self.accelerate_config:
            return {}
        return yaml.safe_load(accelerate_config_path(self.accelerate_config).read_text()) or {}

    def processes(self) -> int:
        """Processes in all, as accelerate will start them."""
        if not self.accelerate_config:
            return self.num_processes or 1
        return self.num_processes or int(self.config_values().get("num_processes", 1))

    def is_multiprocess(self) -> bool:
        return bool(self.accelerate_config) or (self.num_processes or 1) > 1


def stage_command(name: str, args: list[str], launch: LaunchSettings | None) -> list[str]:
    """The exact command that runs stage `name` with `args` (a recipe and overrides, or tiny-model flags)."""
    stage = ["-m", "zephyr.cli", name, *args]
    if name not in TRAINING or launch is None or not launch.is_multiprocess():
        return [sys.executable, *stage]

    cmd = [sys.executable, "-m", "accelerate.commands.launch"]
    if launch.accelerate_config:
        cmd += ["--config_file", str(accelerate_config_path(launch.accelerate_config))]
    elif (launch.num_processes or 1) > 1:
        cmd += ["--multi_gpu"]  # several processes: the multi-process launcher (gloo on CPU, NCCL on GPU)
    for key in ("num_processes", "num_machines", "machine_rank", "main_process_ip", "main_process_port"):
        if getattr(launch, key) is not None:
            cmd += [f"--{key}", str(getattr(launch, key))]
    machines = launch.num_machines or int(launch.config_values().get("num_machines", 1))
    if machines == 1 and launch.main_process_port is None and "main_process_port" not in launch.config_values():
        cmd += ["--main_process_port", str(free_port())]  # two jobs on one machine must not share 29500
    return cmd + stage


@dataclass
class Slurm:
    """A pipeline running inside a Slurm allocation (`sbatch scripts/launch_slurm.sh run PIPELINE`): training
    stages span every node, AIF is split across them (`--shard i/n`, then merged), eval runs on this node."""

    nodes: int
    gpus_per_node: int
    master_addr: str
    master_port: int

    @classmethod
    def from_env(cls) -> Slurm | None:
        if not os.environ.get("ZEPHYR_SLURM_NODES"):
            return None
        return cls(int(os.environ["ZEPHYR_SLURM_NODES"]), int(os.environ.get("ZEPHYR_GPUS_PER_NODE", "8")),
                   os.environ.get("ZEPHYR_MASTER_ADDR", "127.0.0.1"), int(os.environ.get("ZEPHYR_MASTER_PORT", "29500")))

    def on_every_node(self, script: str, args: list[str]) -> list[str]:
        """srun: `script` (bash, with $SLURM_PROCID, the node rank) once per node with `args` as "$@"."""
        return ["srun", "--kill-on-bad-exit=1", f"--nodes={self.nodes}", "--ntasks-per-node=1", "bash", "-c",
                script, "zephyr", *args]


def stage_commands(name: str, args: list[str], launch: LaunchSettings | None, slurm: Slurm | None) -> list[list[str]]:
    """The commands that run a stage, in order: one, except AIF across nodes (the shards, then their merge)."""
    if slurm is None or name not in (*TRAINING, "aif"):
        return [stage_command(name, args, launch)]
    if name == "aif":
        plain = [sys.executable, "-m", "zephyr.cli", "aif", *args]
        shards = slurm.on_every_node('exec "$@" --shard "$SLURM_PROCID/$SLURM_NNODES"', plain)
        return [shards, [*plain, "--rebinarize"]]

    config = accelerate_config_path((launch.accelerate_config if launch else None) or "multi_gpu")
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config),
                "--num_machines", str(slurm.nodes), "--num_processes", str(slurm.nodes * slurm.gpus_per_node),
                "--main_process_ip", slurm.master_addr, "--main_process_port", str(slurm.master_port),
                "--rdzv_backend", "c10d", "--max_restarts", "0"]
    stage = ["-m", "zephyr.cli", name, *args]
    # "$1" says how many of the arguments are the launcher's: the node rank goes between it and the stage
    script = 'n=$1; shift; exec "${@:1:$n}" --machine_rank "$SLURM_PROCID" "${@:$((n+1))}"'
    return [slurm.on_every_node(script, [str(len(launcher)), *launcher, *stage])]


def visible_gpus() -> list[str]:
    """The GPUs this machine lets us use, as CUDA_VISIBLE_DEVICES entries (none on a CPU machine)."""
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return [d.strip() for d in listed.split(",") if d.strip() not in ("", "-1")]
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [str(i) for i, line in enumerate(line for line in out.splitlines() if line.startswith("GPU "))]


@dataclass
class Parallel:
    """Processes that run side by side (one per GPU), each with its own environment additions."""

    commands: list[list[str]]
    envs: list[dict[str, str]]


def shard_workers(command: str, args: list[str], workers: int, devices: list[str],
                  gpus_per_worker: int = 1) -> list[Parallel | list[str]]:
    """AIF or eval on one machine with several GPUs: one worker per GPU, each on its own share of the prompts or
    questions (`--shard i/n`, stores of its own), side by side; then one merge (AIF: `--rebinarize` builds the
    dataset; eval: the plain run reads every shard's records and reports)."""
    plain = [sys.executable, "-m", "zephyr.cli", command, *args]
    groups = [devices[i * gpus_per_worker:(i + 1) * gpus_per_worker] for i in range(workers)]
    envs = [{"CUDA_VISIBLE_DEVICES": ",".join(g)} if g else {} for g in groups]
    merge = [*plain, "--rebinarize"] if command == "aif" else plain
    return [Parallel([[*plain, "--shard", f"{i}/{workers}"] for i in range(workers)], envs), merge]


def die_with_parent() -> None:
    """In a child, before exec: the kernel sends it SIGKILL when the pipeline process dies, even by kill -9."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() == 1:  # the parent died before prctl took effect
        os._exit(1)


def watch_parent() -> None:
    """In a process started by a pipeline (a stage, or a rank under its launcher): exit when the parent is gone.

    `die_with_parent` covers the launcher; its ranks are started by torch's elastic agent, not by us, so each
    rank polls its own parent: when the launcher is killed, the ranks follow within a second instead of
    training on as orphans."""
    if not os.environ.get(WATCH_ENV):
        return
    parent = os.getppid()

    def poll() -> None:
        while True:
            time.sleep(1.0)
            if os.getppid() != parent:
                os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=poll, name="zephyr-watch-parent", daemon=True).start()


@dataclass
class Ending:
    code: int = 1  # an uncaught exception's: Python prints its traceback before the exit handlers run


def exit_without_teardown() -> Ending:
    """End this process with `Ending.code` once Python's shutdown has joined its threads and run the exit handlers
    registered after this call (the libraries': wandb's, the hub's uploads...), before the interpreter tears itself
    down. Called first thing by a whole `zephyr` process.

    Why, in a rank of a multi-process launch: a gloo worker thread of torch can still be releasing a finished
    collective (the last barrier, holding the ZeRO all-gathers before it) whose tensors hold Python objects. If the
    interpreter is being torn down, that thread's request for the GIL ends it inside a C++ destructor, and the rank
    aborts ("terminate called without an active exception", SIGABRT) after the stage saved everything; the launcher
    then fails the stage. Seen under DeepSpeed ZeRO on CPU, about once in ten launches on a loaded machine; the core
    dump shows that thread. torch does not guard it (pytorch/pytorch#179291 was closed unmerged).
    Everywhere: the teardown (freeing every module of torch, transformers and TRL one by one) is about 1 CPU-s of
    every command, and nothing zephyr writes waits for it: files are closed where they are written, and the
    libraries' dashboards and uploads finish in their exit handlers or threads, which still run."""
    ending = Ending()

    def end() -> None:  # registered first, so it runs last (exit handlers run in reverse order)
        logging.shutdown()  # the one handler registered before this one (by `import logging`)
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):  # a closed pipe (`zephyr ... | head`), a closed stream
                pass
        ctypes.CDLL(None).fflush(None)  # what C and C++ code printed, which _exit would not flush
        os._exit(ending.code)

    atexit.register(end)
    return ending


@dataclass
class StageRun:
    code: int
    signal: int | None  # the stop signal the pipeline received and passed on, if any


def shutdown_timeout_env() -> dict[str, str]:
    """How long `accelerate launch` lets its ranks save after a signal before it kills them: torch's default is 30
    s, zephyr's 600, as saving a large model can take minutes (a value set by the user wins)."""
    return {"TORCH_ELASTIC_SHUTDOWN_TIMEOUT": os.environ.get("TORCH_ELASTIC_SHUTDOWN_TIMEOUT", "600")}


def run_logged(cmd: list[str] | Parallel, log: Path, env: dict[str, str] | None = None) -> StageRun:
    """Run `cmd` (or several side by side), appending everything it prints to `log` while echoing it to this
    terminal; side-by-side workers' lines are prefixed with `[worker i]`.

    SIGTERM and SIGINT sent to this process are passed to the stage (which saves a checkpoint and exits 143 or
    130; a launcher passes them on to its ranks) instead of ending this process first. The stage runs in a
    session of its own, so a Ctrl-C in the terminal reaches it once, through here."""
    group = cmd if isinstance(cmd, Parallel) else Parallel([cmd], [{}])
    log.parent.mkdir(parents=True, exist_ok=True)
    base = {**os.environ, **(env or {}), WATCH_ENV: "1", "PYTHONUNBUFFERED": "1", **shutdown_timeout_env()}
    received: list[int] = []
    lock = threading.Lock()
    with open(log, "ab") as sink:
        for command in group.commands:
            sink.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(command)}\n".encode())
        sink.flush()
        procs = [subprocess.Popen(command, env={**base, **env}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  start_new_session=True, preexec_fn=die_with_parent)
                 for command, env in zip(group.commands, group.envs, strict=True)]

        def forward(signum: int, frame: Any) -> None:
            received.append(signum)
            for proc in procs:
                proc.send_signal(signum)

        def copy(proc: subprocess.Popen, prefix: bytes) -> None:
            out = getattr(sys.stdout, "buffer", None)
            # progress bars rewrite their line with \r: one process's bytes pass as they come, several by lines
            chunks = iter(lambda: proc.stdout.read1(1 << 16), b"") if not prefix else iter(proc.stdout.readline, b"")
            for chunk in chunks:
                with lock:
                    sink.write(prefix + chunk)
                    sink.flush()
                    if out is not None:
                        out.write(prefix + chunk)
                        out.flush()

        previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            many = len(procs) > 1
            threads = [threading.Thread(target=copy, args=(p, f"[worker {i}] ".encode() if many else b""))
                       for i, p in enumerate(procs)]
            for t in threads:
                t.start()
            codes = [p.wait() for p in procs]
            for t in threads:
                t.join()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
    return StageRun(next((c for c in codes if c != 0), 0), received[0] if received else None)
