"""What shard workers share: where the store is, and how shards run (in-process or on Ray).

`StoreConfig` is all a shard needs to find the database, the blobs and the job states, and
it pickles, so a Ray task on any machine of the cluster rebuilds its own connections.

`run_on_ray` executes shard tasks as Ray tasks (`--engine ray`) and `Progress` is the one
progress bar (items, throughput, time left) a job shows; `workers.loop.run_shards` picks
between Ray and this process.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import func, select

from precompute.errors import MicroscopeError
from workers.state import state_url_for

ENGINES = ("local", "ray")
PROJECT_ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class StoreConfig:
    database_url: str
    blob_url: str
    state_url: str = ""

    @property
    def states(self) -> str:
        return self.state_url or state_url_for(self.blob_url)

    @classmethod
    def from_settings(cls, settings: Any) -> StoreConfig:
        return cls(settings.database_url, settings.blob_url)


def sessions_for(store: StoreConfig):
    from store.session import make_engine, make_sessionmaker

    engine = make_engine(store.database_url)
    return engine, make_sessionmaker(engine)


class Progress:
    """A tqdm bar (or nothing) with the operations the runners need."""

    def __init__(self, total: int, initial: int, desc: str, unit: str, enabled: bool) -> None:
        self.bar = None
        self.total, self.initial = total, initial
        self.skipped = 0
        if enabled:
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=initial, desc=desc, unit=unit, dynamic_ncols=True, smoothing=0.1)

    def advance(self, count: int, skipped: int = 0) -> None:
        self.skipped += skipped
        if self.bar is not None:
            self.bar.update(count)
            if skipped:
                self.bar.set_postfix(skipped=self.skipped, refresh=False)

    def set(self, done: int) -> None:
        if self.bar is not None and done != self.bar.n:
            self.bar.n = done
            self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


# -- Ray ------------------------------------------------------------------------------------------
def ray_address(explicit: str | None = None) -> str | None:
    return explicit or os.environ.get("MICROSCOPE_RAY_ADDRESS") or os.environ.get("RAY_ADDRESS") or None


def start_ray(address: str | None, num_cpus: int | None = None) -> bool:
    """Connect to a Ray cluster at `address`, or start a local Ray instance. Returns True when
    this call started Ray (and so should shut it down)."""
    try:
        import ray
    except ImportError:
        raise MicroscopeError("--engine ray needs the ray package: pip install 'ray[default]'") from None
    if ray.is_initialized():
        return False
    # Tasks import this project's packages: make sure workers find them even when the project
    # runs from a source checkout rather than an installed wheel.
    path = os.pathsep.join(p for p in (str(PROJECT_ROOT), os.environ.get("PYTHONPATH", "")) if p)
    kwargs: dict[str, Any] = {
        "include_dashboard": False,
        "log_to_driver": False,
        "logging_level": "ERROR",
        "runtime_env": {"env_vars": {"PYTHONPATH": path}},
    }
    # Ray gives a starting node a fixed 30 s to register; on a starved machine (a busy box, a
    # niced process) that can run out, and a second try finds warm caches.
    attempts = max(1, int(os.environ.get("MICROSCOPE_RAY_START_ATTEMPTS", "3")))
    for attempt in range(1, attempts + 1):
        try:
            if address:
                ray.init(address=address, **kwargs)
            else:
                ray.init(num_cpus=num_cpus or os.cpu_count() or 1, **kwargs)
            return True
        except Exception as error:  # report why Ray could not start, in one line
            ray.shutdown()
            if attempt == attempts:
                raise MicroscopeError(
                    f"could not start Ray ({address or 'local'}) in {attempts} attempts: {str(error).splitlines()[0]}"
                ) from None
    return True


def run_on_ray(
    function: Callable[..., Any],
    tasks: Sequence[Any],
    address: str | None,
    poll: Callable[[], None],
    num_cpus_per_task: float = 1,
    num_gpus_per_task: float = 0,
) -> list[Any]:
    """Run `function(task)` for every task as Ray tasks; `poll()` runs about twice a second
    while they work (progress). Task errors re-raise here, user errors as themselves."""
    import ray

    started = start_ray(address)
    try:
        remote = ray.remote(num_cpus=num_cpus_per_task, num_gpus=num_gpus_per_task, max_retries=0)(function)
        refs = [remote.remote(task) for task in tasks]
        pending = list(refs)
        while pending:
            _, pending = ray.wait(pending, num_returns=len(pending), timeout=0.5)
            poll()
        try:
            return ray.get(refs)
        except ray.exceptions.RayTaskError as error:
            cause = getattr(error, "cause", None)
            if isinstance(cause, MicroscopeError):
                raise cause from None
            raise
    finally:
        if started:
            ray.shutdown()


def done_items(sessions, job_ids: Sequence[int]) -> int:
    from store.models import Job

    if not job_ids:
        return 0
    with sessions() as session:
        return int(session.execute(select(func.coalesce(func.sum(Job.done_items), 0)).where(Job.id.in_(list(job_ids)))).scalar_one())


def set_threads(threads: int) -> None:
    import torch

    if threads and torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
