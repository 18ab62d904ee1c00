"""The failure policy of unit jobs (captioning, edit data), in one place.

Errors are of two kinds (`is_infrastructure`):
- **infrastructure**: the machine failed, not the input (an actor died, hung, ran out of memory; a pool has no
  live actor). It never becomes a clip's `failed` row and never spends a unit's retries: the unit goes back to
  the queue, and after `max_infrastructure` such attempts it is left pending (no shard), for the rerun.
- **the input's**: anything else a unit raised. The unit is retried `retries` times, then written as failed rows.

Actors of a pool (`ActorPool`: engines, CLAP) are in one of four states:
- healthy: in the routing (least-loaded first);
- suspect: it missed a call's deadline and was killed so that Ray restarts it (`max_restarts`);
- restarting: Ray said it is restarting, or it died and may come back;
- dead: Ray says it is gone for good (ActorDiedError).
A suspect or restarting actor comes back into the routing after a probe (its `info` call answers), tried with
exponential backoff (2 s, doubling, at most 60 s). A call waits for a restarting actor for at most `patience`
seconds, then raises `PoolExhausted` (infrastructure).

Unit workers (`dispatch_units`: CPU writers, combined actors) hold one unit each; every unit has a deadline,
checked on every iteration (waiting no longer than until the nearest one). A worker that died, hung (killed at
its deadline) or whose pools ran dry is replaced, only while there is work left for it.

`clock` and `sleep` are module attributes so that the chaos harness (tests/test_faults.py) runs the policy on a
virtual clock against a seeded fake Ray.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, defaultdict, deque

log = logging.getLogger(__name__)
clock, sleep = time.monotonic, time.sleep

# Exception classes (by name, anywhere in the MRO: Ray re-raises a task's error as a subclass of its cause, and
# a RayTaskError's cause is checked too) that mean the machine, not the input, failed.
INFRASTRUCTURE = {"RayActorError", "ActorDiedError", "ActorUnavailableError", "ObjectLostError", "OwnerDiedError",
                  "NodeDiedError", "WorkerCrashedError", "OutOfMemoryError", "RaySystemError", "GetTimeoutError",
                  "PoolExhausted"}
HEALTHY, SUSPECT, RESTARTING, DEAD = "healthy", "suspect", "restarting", "dead"
BACKOFF, BACKOFF_CAP = 2.0, 60.0


class PoolExhausted(RuntimeError):
    """No actor of a pool answered: all dead, or none back within the pool's patience."""


def is_infrastructure(error: BaseException) -> bool:
    if isinstance(error, (OSError, MemoryError)):
        return True
    cause = getattr(error, "cause", None)  # a RayTaskError carries the task's own exception
    return any(c.__name__ in INFRASTRUCTURE for c in type(error).__mro__) or (
        isinstance(cause, BaseException) and cause is not error and is_infrastructure(cause))


class ActorPool:
    """Calls on a pool of actors with the states above. Thread-safe. `timeout`: a call's deadline (None: none);
    `patience`: how long a call waits for a suspect or restarting actor to come back (default 10 min)."""

    def __init__(self, handles: list, timeout: float | None = None, offset: int = 0, name: str = "pool",
                 patience: float | None = None, ray_api=None):
        if not handles:
            raise ValueError(f"an empty actor pool ({name})")
        if ray_api is None:
            import ray as ray_api
        self._ray, self.handles, self.timeout, self.name = ray_api, list(handles), timeout, name
        self.patience = 600.0 if patience is None else patience
        n = len(handles)
        self.state, self.why = [HEALTHY] * n, [""] * n
        self.until, self.failures, self.inflight = [0.0] * n, [0] * n, [0] * n
        self.counts: Counter[str] = Counter()  # suspect / restarting / dead / back: what the summary reports
        self._turn = offset
        self._lock = threading.Lock()
        self.timings: dict[str, float] = defaultdict(float)

    @property
    def dead(self) -> dict[int, str]:
        return {i: self.why[i] for i, s in enumerate(self.state) if s == DEAD}

    def live(self) -> list[int]:
        return [i for i, s in enumerate(self.state) if s == HEALTHY]

    def _set(self, i: int, state: str, why: str) -> None:
        with self._lock:
            if self.state[i] == DEAD:
                return
            if state in (SUSPECT, RESTARTING):
                self.failures[i] += 1
                self.until[i] = clock() + min(BACKOFF_CAP, BACKOFF * 2 ** (self.failures[i] - 1))
            elif state == HEALTHY:
                self.failures[i] = 0
            old, self.state[i], self.why[i] = self.state[i], state, why
            self.counts[state if state != HEALTHY else "back"] += old != state
        if old != state:
            log.warning("%s actor %d: %s -> %s (%s); %d of %d healthy", self.name, i, old, state, why or "answered",
                        len(self.live()), len(self.handles))

    def _pick(self, tried: set[int]) -> tuple[int | None, float]:
        """(a healthy actor not tried yet, least loaded; or a suspect/restarting one due for its probe; or None),
        and the time the next one is due when none is."""
        with self._lock:
            now, n = clock(), len(self.handles)
            healthy = [i for i in self.live() if i not in tried]
            due = [i for i, s in enumerate(self.state) if s in (SUSPECT, RESTARTING) and self.until[i] <= now]
            waiting = [self.until[i] for i, s in enumerate(self.state) if s in (SUSPECT, RESTARTING)]
            self._turn += 1
            if healthy:
                i = min(healthy, key=lambda k: (self.inflight[k], (k - self._turn) % n))
            elif due:
                i = min(due, key=lambda k: self.until[k])
            else:
                return None, min(waiting, default=float("inf"))
            self.inflight[i] += 1
            return i, now

    def _probe(self, i: int, timeout: float | None) -> bool:
        """A suspect or restarting actor's `info` call: healthy again if it answers."""
        from ray.exceptions import ActorDiedError, ActorUnavailableError, GetTimeoutError, RayActorError

        try:
            self._ray.get(self.handles[i].info.remote(), timeout=timeout)
        except GetTimeoutError:
            self._kill(i)
            self._set(i, SUSPECT, "no answer to its probe")
            return False
        except ActorDiedError as e:
            self._set(i, DEAD, _line(e))
            return False
        except (ActorUnavailableError, RayActorError) as e:
            self._set(i, RESTARTING, _line(e))
            return False
        self._set(i, HEALTHY, "")
        return True

    def _kill(self, i: int) -> None:
        try:  # Ray restarts it where it has restarts left
            self._ray.kill(self.handles[i], no_restart=False)
        except Exception:  # noqa: BLE001  (already gone)
            pass

    def call(self, method: str, *args, stage: str | None = None, timeout: float | None = None):
        """`method(*args)` on one healthy actor; on an actor's failure, on another (a suspect or restarting one
        after its probe). The call's own error (a task error that is not the machine's) is raised as it is."""
        from ray.exceptions import ActorDiedError, ActorUnavailableError, GetTimeoutError, RayActorError

        timeout = self.timeout if timeout is None else timeout
        tried: set[int] = set()
        start = clock()
        while True:
            i, due = self._pick(tried)
            if i is None:
                if all(s == DEAD for s in self.state) or due - start > self.patience:
                    raise PoolExhausted(f"no {self.name} actor answered: " + "; ".join(
                        f"{k}: {self.state[k]} ({self.why[k]})" for k in range(len(self.handles))))
                sleep(max(0.0, due - clock()))
                continue
            try:
                if self.state[i] != HEALTHY and not self._probe(i, timeout):
                    continue
                tried.add(i)
                try:
                    result = self._ray.get(getattr(self.handles[i], method).remote(*args), timeout=timeout)
                except GetTimeoutError:
                    self._kill(i)
                    self._set(i, SUSPECT, f"no answer to {method} within {timeout:g} s")
                    continue
                except ActorDiedError as e:
                    self._set(i, DEAD, _line(e))
                    continue
                except (ActorUnavailableError, RayActorError) as e:  # restarting, or dead with restarts left
                    self._set(i, RESTARTING, _line(e))
                    continue
            finally:
                with self._lock:
                    self.inflight[i] -= 1
            self.timings[stage or method] += clock() - start
            return result


def _line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0][:200]


def dispatch_units(make_worker, count: int, units, todo, out, extras, on_done, retries: int, on_failed=None,
                   unit_timeout: float | None = None, max_infrastructure: int = 10, ray_api=None,
                   report: Counter | None = None) -> dict[int, str]:
    """Units over resident Ray actors (any class with process_unit), one unit in flight per actor. Returns the
    units that did not finish: failed after `retries` (also handed to `on_failed(i, error)`, which writes them
    as failed rows) or left pending after `max_infrastructure` infrastructure failures (no shard: a rerun
    does them). `report` counts retries, requeues, replaced workers and deadlines."""
    if ray_api is None:
        import ray as ray_api
    from ray.exceptions import RayActorError, RayTaskError

    ray, report = ray_api, report if report is not None else Counter()
    queue, attempts, infra, failed = deque(todo), Counter(), Counter(), {}
    running: dict = {}  # ref -> (unit, worker, started)
    idle: list = []
    made = 0

    def new_worker():
        nonlocal made
        made += 1
        return make_worker(made - 1)

    def submit(worker) -> None:
        if not queue:
            idle.append(worker)
            return
        i = queue.popleft()
        running[worker.process_unit.remote(i, units[i], str(out), extras[i])] = (i, worker, clock())

    def staff() -> None:  # every queued unit gets a worker: an idle one, else a new one up to `count` in flight
        while queue and idle:
            submit(idle.pop())
        while queue and len(running) < count:
            report["workers"] += 1
            submit(new_worker())

    def unit_failed(i: int, error: str, infrastructure: bool) -> None:
        if infrastructure:
            infra[i] += 1
            if infra[i] > max_infrastructure:
                failed[i] = f"left pending after {infra[i]} infrastructure failures: {error}"
                report["pending"] += 1
                log.error("unit %d: %s", i, failed[i])
                return
            report["requeued"] += 1
            log.warning("unit %d back in the queue (the machine failed, not the unit: %s)", i, error)
            queue.append(i)
            return
        attempts[i] += 1
        if attempts[i] <= retries:
            report["retries"] += 1
            log.warning("unit %d failed (attempt %d of %d), retrying: %s", i, attempts[i], retries + 1, error)
            queue.append(i)
            return
        failed[i] = error
        log.error("unit %d failed %d times, giving up: %s", i, attempts[i], error)
        if on_failed is not None:
            on_failed(i, error)

    staff()
    while running or queue:
        if not running:
            staff()
        wait = None
        if unit_timeout is not None:
            wait = max(0.0, min(started for _, _, started in running.values()) + unit_timeout - clock())
        ready, _ = ray.wait(list(running), num_returns=1, timeout=wait)
        for ref in ready:
            i, worker, _ = running.pop(ref)
            try:
                result = ray.get(ref)
            except RayActorError as e:  # the worker died (OOM, a lost node): replaced while work is left
                report["replaced"] += 1
                unit_failed(i, _line(e), infrastructure=True)
            except RayTaskError as e:
                error = (str(e).strip().splitlines() or [""])[-1]
                if is_infrastructure(e):  # its pools ran dry: a fresh worker probes them again
                    report["replaced"] += 1
                    _kill(ray, worker)
                    unit_failed(i, error, infrastructure=True)
                else:
                    unit_failed(i, error, infrastructure=False)
                    idle.append(worker)
            else:
                report.update(result.get("faults", {}) if isinstance(result, dict) else {})  # its actors' states
                on_done(result)
                idle.append(worker)
        now = clock()
        for ref, (i, worker, started) in list(running.items()):  # every iteration, not only when nothing finished
            if unit_timeout is not None and started + unit_timeout - now <= 1e-6:  # the wait above ended at it
                running.pop(ref)
                report["deadlines"] += 1
                report["replaced"] += 1
                _kill(ray, worker)
                unit_failed(i, f"no result within {unit_timeout:g} s (worker killed)", infrastructure=True)
        staff()
    return failed


def _kill(ray, worker) -> None:
    try:
        ray.kill(worker, no_restart=True)
    except Exception:  # noqa: BLE001  (already gone)
        pass
