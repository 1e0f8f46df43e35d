"""Runs on an existing Ray cluster (`genad eval ... --ray ADDRESS`, `genad detect ... --ray
ADDRESS`): the same results, written into the same run folder, as a local run.

    run = runner("127.0.0.1:6379")             # connects now: a wrong address fails first
    for sample, result in run(det, samples, refs=normals, sink=write): ...   # run_detector's twin

What runs where
* A root of categories (`map_tasks`): each category is one task, genad.evaluate_root's
  `run_category` on a worker, which writes that category's run folder itself; the cluster's
  CPUs are shared out among the categories (torch computes on as many threads).
* One category, or `genad detect` (`run_detector_ray`): the driver fits the detector (when
  there are references), writes it as a model file (genad.model_file: JSON and .npy arrays,
  no pickle) into Ray's object store once, and sends chunks of samples as tasks, as the
  detector's capabilities ask (chunk_size, one CPU each; a detector that scores the whole
  batch at once, e.g. zero-shot comparison, is one task on a node's CPUs). A sample travels as its path, not its pixels
  (samples given as arrays travel with them). Each worker loads the model once and keeps it
  for the run's later chunks. At most `max_in_flight` chunks are out at a time (twice the
  cluster's CPUs by default), so the driver holds only their results, however large the set.
  Results come back as they complete and the driver writes them (results.jsonl, maps/), so
  progress, stop, resume, the summary and the report work as in a local run.
* LMM-backed detectors: one named actor per run, on the driver's node, holds the rate limit,
  the budget and the response cache (genad.engines.lmm.provider.share_limits); every client
  in every task goes through it, so the workers together keep one requests-per-minute, never
  spend past one budget, and a question answered once is not paid for again.

Assumptions: every node runs the same genad, Python and Ray (and has the backbone weights the
model names: loading checks them); the paths of the inputs, of a category's run folder and of
the LMM cache are the same on every node (one machine, or a shared filesystem); the driver's
GENAD_* variables and OPENAI_API_KEY are passed to the tasks (they configure LMM servers).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import logging
import os
import re
import socket
import time
import uuid
from collections.abc import Callable, Generator, Iterator, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

from genad.detector import Detector
from genad.errors import GenadError
from genad.run.display import Phase
from genad.run.runner import Reporter, _check, _predict, chunks, fit_detector, hand_on
from genad.types import Result, Sample

log = logging.getLogger(__name__)

INSTALL = "pip install 'genad[ray]'"
#: environment variables passed from the driver to the tasks (LMM server, key, cache, config)
FORWARDED_ENV = re.compile(r"^(GENAD_[A-Z0-9_]+|OPENAI_API_KEY)$")
#: seconds to wait for the head's port before giving up (Ray itself retries for minutes)
CONNECT_TIMEOUT = 10.0
#: how often a wait for results looks at stop() (seconds)
POLL = 0.5


def ray_module() -> ModuleType:
    """Ray, or GenadError with the install line."""
    try:
        import ray
    except ImportError:
        raise GenadError(f"--ray needs Ray, which this install lacks: {INSTALL}") from None
    return ray


# -- the cluster -------------------------------------------------------------------------------
def _host_port(address: str) -> tuple[str, int] | None:
    m = re.fullmatch(r"(?:ray://)?\[?([^\s/\[\]]+?)\]?:(\d{1,5})", address.strip())
    return None if m is None else (m.group(1), int(m.group(2)))


def _listens(host: str, port: int) -> OSError | None:
    try:
        socket.create_connection((host, port), timeout=CONNECT_TIMEOUT).close()
    except OSError as e:
        return e
    return None


def _check_reachable(address: str) -> None:
    """One line, quickly, when nothing listens where Ray would connect (ray.init retries for
    minutes). Ray replaces a loopback host (127.0.0.1, localhost) with this machine's network
    address unless RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0: a head bound to 127.0.0.1 (started
    with that variable) is then out of reach, which is said here."""
    hp = _host_port(address)
    if hp is not None:
        failed = _listens(*hp)
        if failed is not None:
            raise GenadError(
                f"cannot reach the Ray cluster at {address}: {failed.strerror or failed} (is `ray start --head` "
                "running there? give the head's address, e.g. 127.0.0.1:6379, or auto)"
            )
    if address.strip().startswith("ray://"):
        return
    try:  # where ray.init will connect: a private helper of Ray's, so only where it is there
        from ray._private.services import canonicalize_bootstrap_address

        resolved = canonicalize_bootstrap_address(address.strip())
    except Exception:
        return
    target = _host_port(resolved) if resolved else None
    if target is None or (hp is not None and target == hp):
        return
    failed = _listens(*target)
    if failed is not None:
        hint = (
            " (Ray replaces 127.0.0.1 with this machine's address: for a head bound to 127.0.0.1 set "
            "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 here too)"
            if hp is not None and target[0] != hp[0]
            else ""
        )
        raise GenadError(
            f"cannot reach the Ray cluster at {address}: Ray would connect to {resolved}, where nothing answers"
            f" ({failed.strerror or failed}){hint}"
        )


_joined: str | None = None  # the address this process joined


def connect(address: str) -> None:
    """Join the Ray cluster at `address` (as ray.init takes it: host:port, auto, ray://...)
    unless this process already has; GenadError in one line when it cannot, or when this
    process is in another cluster already."""
    global _joined
    ray = ray_module()
    address = (address or "").strip()
    if not address:
        raise GenadError("--ray needs the cluster's address, e.g. --ray 127.0.0.1:6379 or --ray auto")
    if ray.is_initialized():
        if _joined is not None and address not in (_joined, "auto"):
            raise GenadError(f"this process is in the Ray cluster at {_joined} already, not {address}")
        return
    _check_reachable(address)
    try:
        ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False)
    except (ConnectionError, RuntimeError, ValueError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise GenadError(f"cannot join the Ray cluster at {address}: {first}") from None
    _joined = address


def _forwarded_env() -> dict[str, Any] | None:
    env = {k: v for k, v in os.environ.items() if FORWARDED_ENV.match(k)}
    return {"env_vars": env} if env else None


def _node_cpus() -> int:
    """The CPUs of the cluster's largest node (what one task may ask for and still run)."""
    ray = ray_module()
    try:
        return max(1, *(int(n["Resources"].get("CPU", 0)) for n in ray.nodes() if n.get("Alive")))
    except Exception:
        return 1


def _use_cpus() -> None:
    """In a task: torch computes on as many threads as the task has CPUs (Ray sets
    OMP_NUM_THREADS per task, but a worker's torch keeps the thread count it started with)."""
    import sys

    try:
        n = int(ray_module().get_runtime_context().get_assigned_resources().get("CPU", 1))
    except Exception:
        return
    if n > 1 or "torch" in sys.modules:
        import torch

        torch.set_num_threads(max(1, n))


def _in_flight_default() -> int:
    ray = ray_module()
    try:
        cpus = int(ray.cluster_resources().get("CPU", 1))
    except Exception:  # a client that cannot see the resources: a modest number
        cpus = 2
    return max(2, 2 * cpus)


def _lean(s: Sample) -> Sample:
    """The sample as a task gets it: no ground truth (a detector never reads it), absolute
    paths (a worker's current folder is not the driver's); pixels only if it holds them."""
    changes: dict[str, Any] = {"truth": None}
    if s.path is not None:
        changes["path"] = Path(s.path).absolute()
    frames = getattr(s, "frame_paths", None)
    if frames:
        changes["frame_paths"] = [Path(p).absolute() for p in frames]
    return dataclasses.replace(s, **changes)


def _error_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return f"{type(e).__name__}: {text[:300]}" if text else type(e).__name__


def _cause(e: BaseException) -> BaseException:
    """The exception a task raised, from Ray's wrapper of it."""
    cause = getattr(e, "cause", None)
    return cause if isinstance(cause, BaseException) else e


# -- LMM: one rate limit, one budget, one cache --------------------------------------------------
def uses_lmm(det: Detector) -> bool:
    """Whether `det`, or a detector inside it, asks an LMM server (it then shares limits)."""
    seen: set[int] = set()
    todo: list[Any] = [det]
    while todo:
        d = todo.pop()
        if id(d) in seen:
            continue
        seen.add(id(d))
        if type(d).__module__.startswith("genad.engines.lmm") or "budget_usd" in type(d).declared:
            return True
        for v in vars(d).values():
            for inner in v if isinstance(v, (list, tuple)) else [v]:
                if isinstance(inner, Detector):
                    todo.append(inner)
    return False


class SharedLimits:
    """The state every LMM client of a run shares, held by one Ray actor (see the module doc):
    when the next request may start, what was spent and reserved, the response cache."""

    def __init__(self) -> None:
        self._next = 0.0
        self._spent = 0.0
        self._reserved = 0.0
        self._caches: dict[str, Any] = {}

    def wait(self, interval: float) -> float:
        """Seconds the caller waits before its request starts (requests spaced by `interval`)."""
        now = time.monotonic()
        start = max(now, self._next)
        self._next = start + interval
        return start - now

    def reserve(self, estimate: float, budget: float) -> float | None:
        """None when `estimate` is reserved; what was spent so far when it would pass `budget`."""
        if self._spent + self._reserved + estimate > budget:
            return self._spent
        self._reserved += estimate
        return None

    def settle(self, estimate: float, cost: float) -> None:
        self._reserved -= estimate
        self._spent += cost

    def spent(self) -> float:
        return self._spent

    def _cache(self, root: str) -> Any:
        from genad.engines.lmm.cache import ResponseCache

        if root not in self._caches:
            self._caches[root] = ResponseCache(Path(root))
        return self._caches[root]

    def cache_get(self, root: str, key: str) -> dict[str, Any] | None:
        got: dict[str, Any] | None = self._cache(root).get(key)
        return got

    def cache_put(self, root: str, key: str, entry: dict[str, Any]) -> None:
        self._cache(root).put(key, entry)

    def cache_discard(self, root: str, key: str) -> None:
        self._cache(root).discard(key)


class _Rate:
    def __init__(self, actor: Any, per_minute: float | None) -> None:
        self.actor, self.interval = actor, (60.0 / per_minute if per_minute else 0.0)

    def wait(self) -> None:
        if self.interval:
            delay = ray_module().get(self.actor.wait.remote(self.interval))
            if delay > 0:
                time.sleep(delay)


class _Budget:
    def __init__(self, actor: Any, budget_usd: float | None) -> None:
        self.actor, self.budget_usd = actor, budget_usd

    def reserve(self, estimate: float) -> None:
        from genad.engines.lmm.provider import budget_exceeded

        if self.budget_usd is None:
            return
        spent = ray_module().get(self.actor.reserve.remote(estimate, self.budget_usd))
        if spent is not None:
            raise budget_exceeded(self.budget_usd, spent, estimate)

    def settle(self, estimate: float, cost: float) -> None:
        if self.budget_usd is not None:
            ray_module().get(self.actor.settle.remote(estimate, cost))


class _Cache:
    def __init__(self, actor: Any, root: Path) -> None:
        self.actor, self.root = actor, str(root)

    def get(self, key: str) -> dict[str, Any] | None:
        got: dict[str, Any] | None = ray_module().get(self.actor.cache_get.remote(self.root, key))
        return got

    def put(self, key: str, entry: dict[str, Any]) -> None:
        ray_module().get(self.actor.cache_put.remote(self.root, key, entry))

    def discard(self, key: str) -> None:
        ray_module().get(self.actor.cache_discard.remote(self.root, key))


def start_limits() -> tuple[Any, str]:
    """A run's SharedLimits actor (on this node, so that the cache is this machine's) and its name."""
    ray = ray_module()
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    name = f"genad-limits-{uuid.uuid4().hex[:12]}"
    node = ray.get_runtime_context().get_node_id()
    actor = (
        ray.remote(SharedLimits)
        .options(
            name=name,
            num_cpus=0,
            scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=node, soft=True),
        )
        .remote()
    )
    ray.get(actor.spent.remote())  # started (a failure to start shows here, not in a task)
    return actor, name


@contextlib.contextmanager
def shared_limits(name: str | None) -> Iterator[None]:
    """Within the block every LMM client built in this process uses the run's actor `name`."""
    if name is None:
        yield
        return
    from genad.engines.lmm.provider import Limits, share_limits

    actor = ray_module().get_actor(name)

    def limits(config: Any) -> Limits:
        cache = _Cache(actor, config.cache_dir) if config.cache_dir is not None else None
        return Limits(_Rate(actor, config.requests_per_minute), _Budget(actor, config.budget_usd), cache)

    before = share_limits(limits)
    try:
        yield
    finally:
        share_limits(before)


# -- the tasks ---------------------------------------------------------------------------------
#: detectors loaded in this worker process, by (model digest, secrets, limits); the last few kept
_LOADED: dict[str, Detector] = {}
_KEEP = 2


def _loaded(key: str, model: list[Any], secrets: dict[str, Any]) -> Detector:
    det = _LOADED.pop(key, None)
    if det is None:
        from genad.model_file import load_bytes

        det = load_bytes(ray_module().get(model[0]), "the run's model")
        if secrets:
            det.set_params(**secrets)
        while len(_LOADED) >= _KEEP:
            _LOADED.pop(next(iter(_LOADED)))
    _LOADED[key] = det  # most recent last
    return det


def _predict_task(
    model: list[Any], key: str, secrets: dict[str, Any], batch: list[Sample], limits: str | None
) -> list[Result]:
    """One chunk on a worker: the run's detector (loaded once per worker) over `batch`."""
    _use_cpus()
    with shared_limits(limits):
        det = _loaded(key, model, secrets)
        return _predict(det, batch)


def _call_task(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any], limits: str | None) -> Any:
    _use_cpus()
    with shared_limits(limits):
        return fn(*args, **kwargs)


def _secrets(det: Detector) -> dict[str, Any]:
    """The secret options set on `det` (an API key given as an option): a model file never
    holds them, so they travel beside it."""
    declared = type(det).declared
    params = det.get_params()
    return {k: v for k, v in params.items() if k in declared and declared[k].secret and v is not None}


# -- one task per call (a root's categories) ------------------------------------------------------
def map_tasks(
    address: str,
    fn: Callable[..., Any],
    calls: Sequence[tuple[tuple[Any, ...], dict[str, Any]]],
    *,
    lmm: bool = False,
) -> Iterator[tuple[int, Any, str | None]]:
    """`fn(*args, **kwargs)` for each call, each as one Ray task; yields (i, value, None) as
    each finishes, or (i, None, error line) for a task that failed or whose worker died. `fn`
    must be importable on the workers (a module-level genad function). `lmm`: the tasks'
    LMM clients share one rate limit, budget and cache. Stopping (KeyboardInterrupt, or
    closing the iterator) cancels the tasks still running."""
    connect(address)
    ray = ray_module()
    actor, name = start_limits() if lmm else (None, None)
    # the cluster's CPUs shared out: 15 categories on 8 CPUs get 1 each, 2 on 16 get 8 each
    total = int(ray.cluster_resources().get("CPU", 1))
    cpus = max(1, min(_node_cpus(), total // max(1, len(calls))))
    task = ray.remote(_call_task).options(num_cpus=cpus, max_retries=0, runtime_env=_forwarded_env())
    pending = {task.remote(fn, tuple(args), dict(kwargs), name): i for i, (args, kwargs) in enumerate(calls)}
    try:
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=POLL)
            for ref in ready:
                i = pending.pop(ref)
                try:
                    value = ray.get(ref)
                except ray.exceptions.RayError as e:
                    yield i, None, _error_line(_cause(e))
                    continue
                yield i, value, None
    finally:
        for ref in pending:
            with contextlib.suppress(Exception):
                ray.cancel(ref)
        if actor is not None:
            with contextlib.suppress(Exception):
                ray.kill(actor)


# -- chunks of one set ---------------------------------------------------------------------------
def runner(
    address: str, *, max_in_flight: int | None = None
) -> Callable[..., Generator[tuple[Sample, Result], None, None]]:
    """run_detector's twin on the Ray cluster at `address` (joined now, so that a wrong
    address fails before any work): for genad.run.run_into's `runner`, or to call directly."""
    connect(address)
    return functools.partial(run_detector_ray, max_in_flight=max_in_flight)


def run_detector_ray(
    det: Detector,
    samples: Sequence[Sample],
    *,
    todo: Sequence[Sample] | None = None,
    refs: Sequence[Sample] = (),
    sink: Callable[[Sample, Result], Any] | None = None,
    on_progress: Callable[[int, int], None] | None = None,
    on_phase: Callable[[Phase], None] | None = None,
    stop: Callable[[], str | None] | None = None,
    progress_bar: bool = False,
    desc: str = "genad",
    max_in_flight: int | None = None,
) -> Generator[tuple[Sample, Result], None, None]:
    """genad.run.run_detector on the cluster this process has joined (`connect`), with the
    same arguments and results: the fit here, chunks as tasks (see the module doc), (sample,
    result) yielded in the order they complete. A GenadError from a task (a spent budget, a
    failing server) stops the run once the chunks out have come back, their results (and
    the stopping chunk's partial ones) handed on first; a task whose worker died gives an
    error result for each of its samples (a resume scores them again)."""
    ray = ray_module()
    samples = list(samples)
    todo = samples if todo is None else list(todo)
    rep = Reporter(len(samples), len(samples) - len(todo), on_progress, on_phase, progress_bar, desc)
    if not todo:
        rep.progress()
        return
    _check(stop)
    rep.start()
    in_flight: dict[Any, tuple[list[Sample], set[str]]] = {}
    actor = None
    try:
        if refs:
            fit_detector(det, refs, on_phase=rep.phase, stop=stop)
        from genad.model_file import model_bytes

        try:
            blob = model_bytes(det)
        except GenadError as e:
            raise GenadError(f"detector {det.name!r} cannot be sent to the Ray workers: {e}") from e
        secrets = _secrets(det)
        limits: str | None = None
        if uses_lmm(det):
            actor, limits = start_limits()
        digest = hashlib.sha256(blob).hexdigest()
        key = f"{digest}:{hashlib.sha256(repr(sorted(secrets.items())).encode()).hexdigest()[:16]}:{limits}"
        model = [ray.put(blob)]  # in a list: a worker fetches it only when it has not loaded it yet
        del blob
        # chunks: a CPU each, as many at once as the cluster takes; the whole batch: one task, a node's CPUs
        cpus = _node_cpus() if det.capabilities().whole_batch else 1
        task = ray.remote(_predict_task).options(num_cpus=cpus, max_retries=0, runtime_env=_forwarded_env())
        most = max(1, max_in_flight or _in_flight_default())
        rep.phase(Phase("scoring", None, rep.done, rep.total))
        batches = chunks(det, samples, todo)
        stopped: GenadError | None = None
        more = True
        while True:
            while more and stopped is None and len(in_flight) < most:
                nxt = next(batches, None)
                if nxt is None:
                    more = False
                    break
                batch, want = nxt
                in_flight[task.remote(model, key, secrets, [_lean(s) for s in batch], limits)] = (batch, want)
            if not in_flight:
                break
            ready, _ = ray.wait(list(in_flight), num_returns=1, timeout=POLL)
            if not ready:
                if stopped is None:
                    _check(stop)
                continue
            batch, want = in_flight.pop(ready[0])
            results: list[Result] | None = None
            try:
                results = ray.get(ready[0])
            except ray.exceptions.RayError as e:
                cause = _cause(e)
                if isinstance(cause, GenadError):
                    partial = cause.partial_results
                    stopped = stopped or cause
                    results = partial if partial is not None and len(partial) == len(batch) else None
                else:  # the worker died, the task was lost: these samples failed, the run goes on
                    msg = _error_line(cause)
                    results = [Result(s.id, error=f"Ray task failed: {msg}") for s in batch]
            for s, r in zip(batch, results or []):
                r.sample_id = s.id
            yield from hand_on(batch, want, results or [], sink, rep, None if stopped else stop)
        if stopped is not None:
            raise stopped
    finally:
        for ref in in_flight:
            with contextlib.suppress(Exception):
                ray.cancel(ref, force=True)
        if actor is not None:
            with contextlib.suppress(Exception):
                ray.kill(actor)
        rep.stop()


# --------------------------------------------------------------------------- a local head

#: what keeps a head on loopback and offline (set before Ray is imported, for head and driver)
LOOPBACK_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _stop_head(proc: Any) -> None:
    """End a head started by local_head: its `ray start` process first (it stops what it
    started), then its process group (only that one), by force if it lingers."""
    import signal
    import subprocess

    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            pass
    for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 0.0)):
        try:
            os.killpg(proc.pid, sig)  # start_new_session: the group is the head's own
        except ProcessLookupError:
            break
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            try:
                os.killpg(proc.pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.2)
    if proc.poll() is None:
        proc.wait(timeout=5)


@contextlib.contextmanager
def local_head(cpus: int = 2, env: dict[str, str] | None = None, connect_here: bool = True) -> Iterator[str]:
    """A Ray head on 127.0.0.1 with `cpus` CPUs (so that many workers), started as a child
    process (`ray start --head --block`, its own process group, usage statistics off) and
    ended by its pid when the block ends; yields its address. `connect_here`: this process
    joins it too. For tests and benchmarks; LOOPBACK_ENV must be in this process's environment
    before Ray is imported (it is set here for the head)."""
    import shutil
    import subprocess
    import sys
    import tempfile

    temp = Path(tempfile.mkdtemp(prefix="genad-ray-", dir="/tmp"))  # short: Ray's socket paths
    port = _free_port()
    cmd = [
        str(Path(sys.executable).parent / "ray"),
        "start",
        "--head",
        "--block",
        "--port",
        str(port),
        "--num-cpus",
        str(cpus),
        "--disable-usage-stats",
        "--include-dashboard=false",
        "--node-ip-address",
        "127.0.0.1",
        "--dashboard-port",
        str(_free_port()),
        "--dashboard-agent-listen-port",
        str(_free_port()),
        "--temp-dir",
        str(temp),
    ]
    log_file = (temp / "head.log").open("w")
    proc = subprocess.Popen(
        cmd,
        stdout=log_file,
        stderr=subprocess.STDOUT,
        env={**os.environ, **LOOPBACK_ENV, **(env or {})},
        start_new_session=True,
    )
    address = f"127.0.0.1:{port}"
    ray = None
    try:
        deadline = time.monotonic() + 90
        while True:
            if proc.poll() is not None:
                tail = (temp / "head.log").read_text()[-2000:]
                raise GenadError(f"ray start ended ({proc.returncode}): {tail}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise GenadError("the Ray head did not open its port within 90 s") from None
                time.sleep(0.5)
        if connect_here:
            connect(address)
            ray = ray_module()
            while ray.cluster_resources().get("CPU", 0) < cpus and time.monotonic() < deadline:
                time.sleep(0.2)
        yield address
    finally:
        if ray is not None and ray.is_initialized():
            ray.shutdown()
        _stop_head(proc)
        log_file.close()
        shutil.rmtree(temp, ignore_errors=True)
