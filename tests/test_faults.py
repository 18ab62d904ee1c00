"""The failure policy (shards/faults.py) under a seeded chaos harness: a fake Ray on a virtual clock injects
crashes, hangs, slow calls, restarts, lost nodes and exhausted pools, and every run is checked against the
invariants: every unit ends exactly once; the units that finish are those of a fault-free run; no
infrastructure error becomes a failed row; no worker idles while units wait; the job ends within the list-
scheduling bound (work / workers + one deadline). Hundreds of seeds in a few seconds."""

from __future__ import annotations

import random
from collections import Counter

import pytest
from ray.exceptions import ActorDiedError, ActorUnavailableError, GetTimeoutError, RayActorError, RayTaskError

from shards import faults


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += max(0.0, seconds)


@pytest.fixture
def clock(monkeypatch):
    c = Clock()
    monkeypatch.setattr(faults, "clock", c)
    monkeypatch.setattr(faults, "sleep", c.sleep)
    return c


# ---- unit dispatch ---------------------------------------------------------------------------------------------
class Ref:
    def __init__(self, worker, unit: int, outcome: str, end: float):
        self.worker, self.unit, self.outcome, self.end = worker, unit, outcome, end


class Worker:
    def __init__(self, ray, k: int):
        self.ray, self.k, self.alive = ray, k, True
        self.process_unit = self  # worker.process_unit.remote(...)

    def remote(self, i, unit, out, extra):
        return self.ray.submit(self, i)


class ChaosRay:
    """Unit workers whose calls, per a seeded schedule, finish, fail on the unit (bad units only), crash, hang,
    run past the deadline, or find their pools dry; at a random time a node is lost (its workers crash)."""

    def __init__(self, seed: int, clock: Clock, bad: set[int], deadline: float, count: int, todo: list[int]):
        self.rng, self.clock, self.bad, self.deadline = random.Random(seed), clock, bad, deadline
        self.count, self.todo = count, set(todo)
        self.node_loss = self.rng.uniform(0, 200) if self.rng.random() < 0.5 else None
        self.calls, self.killed, self.idle_violations = 0, 0, []
        self.finished: set[int] = set()  # units done or given up (as the dispatcher reports them)

    def make_worker(self, k: int) -> Worker:
        return Worker(self, k)

    def submit(self, worker, i: int) -> Ref:
        self.calls += 1
        now, r = self.clock(), self.rng.random()
        if i in self.bad:
            outcome = "bad"
        elif r < 0.08:
            outcome = "crash"
        elif r < 0.16:
            outcome = "hang"
        elif r < 0.22:
            outcome = "dry"
        elif r < 0.26:
            outcome = "slow"
        else:
            outcome = "ok"
        duration = {"slow": self.deadline * 2, "hang": float("inf")}.get(outcome, self.rng.uniform(1, 10))
        return Ref(worker, i, outcome, now + duration)

    def wait(self, refs, num_returns=1, timeout=None):
        pending = len(self.todo - self.finished)
        if len(refs) != min(self.count, pending):  # a worker idles (or is missing) while units wait
            self.idle_violations.append((self.clock(), len(refs), pending))
        if self.node_loss is not None and self.clock() <= self.node_loss:
            for ref in refs:  # the workers on the lost node (even ids) crash at that moment
                if ref.worker.k % 2 == 0 and ref.end > self.node_loss:
                    ref.outcome, ref.end = "crash", self.node_loss
        first = min(refs, key=lambda r: r.end)
        limit = float("inf") if timeout is None else self.clock() + timeout
        assert first.end < float("inf") or timeout is not None, "waiting forever on hung workers"
        if first.end <= limit:
            self.clock.now = max(self.clock.now, first.end)
            return [first], []
        self.clock.now = limit
        return [], refs

    def get(self, ref):
        if ref.outcome == "ok" or ref.outcome == "slow":
            return {"unit": ref.unit, "rows": 1}
        if ref.outcome == "crash":
            raise ActorDiedError()
        if ref.outcome == "dry":
            raise _task_error(faults.PoolExhausted("no alm actor answered"))
        if ref.outcome == "bad":
            raise _task_error(ValueError(f"unit {ref.unit}: a clip the engine refuses"))
        raise AssertionError(f"get on a {ref.outcome} call")

    def kill(self, worker, no_restart=True):
        worker.alive = False
        self.killed += 1


def _task_error(cause: Exception) -> RayTaskError:
    """As Ray raises a task's exception: its traceback as the message, the exception as the cause."""
    tb = f"Traceback (most recent call last):\n  File \"worker.py\"\n{type(cause).__name__}: {cause}"
    return RayTaskError("process_unit", tb, cause)


def _run_dispatch(seed: int, clock: Clock):
    rng = random.Random(seed)
    units = list(range(rng.randint(5, 60)))
    count = rng.randint(1, 8)
    bad = {i for i in units if rng.random() < 0.05}
    deadline = 30.0
    ray = ChaosRay(seed, clock, bad, deadline, count, units)
    done, reported, written = Counter(), Counter(), {}

    def on_done(result):
        done[result["unit"]] += 1
        ray.finished.add(result["unit"])

    def on_failed(i, error):
        written[i] = error
        ray.finished.add(i)

    report = Counter()
    failed = faults.dispatch_units(ray.make_worker, count, [[i] for i in units], units, "out",
                                   {i: {} for i in units}, on_done, 2, on_failed, unit_timeout=deadline,
                                   max_infrastructure=40, ray_api=ray, report=report)
    for i in failed:
        reported[i] += 1
    return units, bad, done, failed, written, ray, report, deadline, count


@pytest.mark.timeout(120)
def test_dispatch_meets_its_invariants_under_seeded_chaos(clock):
    totals = Counter()
    for seed in range(300):
        clock.now = 0.0
        units, bad, done, failed, written, ray, report, deadline, count = _run_dispatch(seed, clock)
        assert all(n == 1 for n in done.values()), seed  # no unit written twice
        assert set(done) | set(failed) == set(units) and not set(done) & set(failed), seed  # every unit ends once
        assert set(done) == set(units) - bad, (seed, sorted(set(units) - bad - set(done)))  # = a fault-free run
        assert set(written) == bad and all("refuses" in e for e in written.values()), seed  # only the input's
        assert not ray.idle_violations, (seed, ray.idle_violations[:3])
        assert clock.now <= ray.calls * deadline / count + deadline, seed  # list scheduling: work/workers + max
        totals.update(report)
    assert totals["requeued"] > 100 and totals["deadlines"] > 50 and totals["replaced"] > 100  # faults happened


def test_a_dry_pool_replaces_its_writer_and_spends_no_retry(clock):
    """PoolExhausted was a clip's failure: on a one-clip chunk a failed row in a shard counted as done, else the
    unit's retries spent in milliseconds while healthy writers waited (185 of 200 units failed in 30 s)."""

    class Dry(ChaosRay):
        def submit(self, worker, i):
            ref = super().submit(worker, i)
            ref.outcome, ref.end = ("dry" if worker.k == 0 else "ok"), self.clock() + 1.0
            return ref

    units = list(range(200))
    ray = Dry(0, clock, set(), 30.0, 4, units)
    done, written = [], []
    failed = faults.dispatch_units(ray.make_worker, 4, [[i] for i in units], units, "out", {i: {} for i in units},
                                   lambda r: done.append(r["unit"]), 2, lambda i, e: written.append(i),
                                   unit_timeout=30.0, ray_api=ray)
    assert sorted(done) == units and not failed and not written


def test_deadlines_are_checked_while_other_units_finish(clock):
    """A hung worker beside others that finish every 2 s was killed only after all of them (t = 409 s, after
    the other 199 units at 402 s): deadlines were checked only when nothing finished for 5 s."""

    class OneHang(ChaosRay):
        def submit(self, worker, i):
            ref = super().submit(worker, i)
            ref.outcome = "hang" if i == 0 and self.calls == 1 else "ok"
            ref.end = float("inf") if ref.outcome == "hang" else self.clock() + 2.0
            return ref

        def kill(self, worker, no_restart=True):
            super().kill(worker, no_restart)
            self.kill_time = self.clock()

    units = list(range(200))
    ray = OneHang(0, clock, set(), 30.0, 4, units)
    when = {}
    faults.dispatch_units(ray.make_worker, 4, [[i] for i in units], units, "out", {i: {} for i in units},
                          lambda r: when.setdefault(r["unit"], clock.now), 2, unit_timeout=30.0, ray_api=ray)
    assert ray.killed == 1 and ray.kill_time == pytest.approx(30.0) and len(when) == 200  # at its deadline


# ---- actor pools -----------------------------------------------------------------------------------------------
class Actor:
    def __init__(self, pool, k: int, restarts: int):
        self.pool, self.k, self.restarts = pool, k, restarts
        self.state, self.back = "up", 0.0  # up | hung | restarting | dead
        self.info = Method(self, "info")
        self.square = Method(self, "square")


class Method:
    def __init__(self, actor, name):
        self.actor, self.name = actor, name

    def remote(self, *args):
        return (self.actor, self.name, args)


class PoolRay:
    """Engine actors that, per a seeded schedule, answer, hang (until killed), die (Ray restarts them while they
    have restarts, taking a while), or die for good; a lost node takes several at once."""

    def __init__(self, seed: int, clock: Clock, n: int, restarts: int):
        self.rng, self.clock = random.Random(seed), clock
        self.actors = [Actor(self, k, restarts) for k in range(n)]

    def _restart(self, a: Actor) -> None:
        if a.restarts > 0:
            a.restarts -= 1
            a.state, a.back = "restarting", self.clock() + self.rng.uniform(1, 20)
        else:
            a.state = "dead"

    def get(self, call, timeout=None):
        a, name, args = call
        if a.state == "restarting" and self.clock() >= a.back:
            a.state = "up"
        if a.state == "dead":
            raise ActorDiedError()
        if a.state == "restarting":
            raise ActorUnavailableError("restarting", None)
        r = self.rng.random()
        if a.state == "up" and name != "info":
            if r < 0.1:
                a.state = "hung"
            elif r < 0.18:
                self._restart(a)
                raise RayActorError()
            elif r < 0.2:  # a lost node: this actor and its neighbour
                for b in (a, self.actors[(a.k + 1) % len(self.actors)]):
                    self._restart(b)
                raise RayActorError()
        if a.state == "hung":
            self.clock.sleep(timeout)
            raise GetTimeoutError()
        self.clock.sleep(self.rng.uniform(0.1, 2.0))
        return {"ok": True} if name == "info" else args[0] ** 2

    def kill(self, handle, no_restart=False):
        self._restart(handle)


@pytest.mark.timeout(120)
def test_pool_calls_meet_their_invariants_under_seeded_chaos(clock):
    """Every call returns its own answer while one actor lives or comes back; PoolExhausted only when every
    actor is dead for good."""
    exhausted = answered = 0
    for seed in range(300):
        clock.now = 0.0
        rng = random.Random(seed)
        ray = PoolRay(seed, clock, n=rng.randint(1, 4), restarts=rng.randint(0, 3))
        pool = faults.ActorPool(ray.actors, timeout=10.0, name="alm", patience=3600.0, ray_api=ray)
        for x in range(40):
            try:
                assert pool.call("square", x) == x * x
                answered += 1
            except faults.PoolExhausted:
                assert all(a.state == "dead" for a in ray.actors), seed
                exhausted += 1
                break
    assert answered > 3000 and exhausted > 10  # both paths ran


def test_a_pool_of_one_actor_survives_a_hang(clock):
    """A timed-out actor was dropped for good although Ray restarts it: a pool of one then had no actor."""

    class OneHang(PoolRay):
        def get(self, call, timeout=None):
            a, name, args = call
            if name == "square" and not getattr(self, "hung_once", False):
                self.hung_once = True
                a.state = "hung"
            if a.state == "hung":
                self.clock.sleep(timeout)
                raise GetTimeoutError()
            if a.state == "restarting" and self.clock() >= a.back:
                a.state = "up"
            if a.state == "restarting":
                raise ActorUnavailableError("restarting", None)
            return {"ok": True} if name == "info" else args[0] ** 2

    ray = OneHang(0, clock, n=1, restarts=1)
    pool = faults.ActorPool(ray.actors, timeout=10.0, name="alm", ray_api=ray)
    assert pool.call("square", 7) == 49 and pool.counts["suspect"] == 1 and pool.counts["back"] == 1


def test_in_process_units_follow_the_same_policy():
    """In this process too, a unit that failed for the machine (a full disk) is left pending with no failed
    rows, and only one that failed on its input is written as failed rows."""
    import errno

    from shards.units import run_units_in_process

    class Worker:
        def process_unit(self, i, unit, out, extra):
            if i == 1:
                raise OSError(errno.ENOSPC, "No space left on device")
            if i == 2:
                raise ValueError("a clip the engine refuses")
            return {"unit": i}

    done, written = [], []
    failed = run_units_in_process(Worker(), [[0], [1], [2]], [0, 1, 2], "out", {i: {} for i in range(3)},
                                  lambda r: done.append(r["unit"]), 1, lambda i, e: written.append(i))
    assert done == [0] and written == [2] and sorted(failed) == [1, 2] and "left pending" in failed[1]
