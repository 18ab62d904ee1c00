"""GPU placement for captioning on Ray: separate actor pools for the audio-language model, the label LLM and
CLAP, fed by CPU "unit writer" actors that decode clips, route requests and write shards.

    unit writers (CPU)  ──requests──▶  ALM pool   (whole GPUs; a placement group per actor when tensor-parallel)
          │                          ▶  LLM pool   (whole GPUs, few: ~5 % of AudioSet clips have strong labels)
          └──────waves + texts──────▶  CLAP pool  (a fraction of a GPU each)

Why: vLLM does not support two `LLM` engines in one process (vllm#9198, #14376), and one actor per GPU
holding ALM + LLM + CLAP leaves the LLM idle on most GPUs. The pools are sized from the cluster
(`plan_pools`), their actor options are computed here (`actor_options`) and tested without vLLM.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from shards.faults import ActorPool

from .config import CaptionConfig, PoolConfig


@dataclass(frozen=True)
class PoolPlan:
    """Actors per pool and what each asks of Ray."""

    writers: int
    alm: int
    llm: int
    clap: int
    writer_cpus: float
    alm_gpus: float
    llm_gpus: float
    clap_gpus: float
    alm_tp: int = 1
    llm_tp: int = 1

    def gpus(self) -> float:
        return self.alm * self.alm_gpus + self.llm * self.llm_gpus + self.clap * self.clap_gpus


def _tp(engine) -> int:
    return int(engine.vllm.get("tensor_parallel_size", 1)) if engine is not None and engine.kind == "vllm" else 1


def _count(pool: PoolConfig, auto: int) -> int:
    return auto if pool.actors == "auto" else int(pool.actors)


def plan_pools(cfg: CaptionConfig, cluster_gpus: float) -> PoolPlan:
    """Pool sizes for a cluster with `cluster_gpus` GPUs (0: a CPU machine, one actor per pool).

    "auto" on GPUs: the label LLM gets ~3 % of the GPUs (at least one when labels are enabled), CLAP one
    GPU per 16 (each GPU shared by 1 / clap.num_gpus actors), the ALM every remaining whole GPU, and there
    are as many unit writers as GPUs (`ray.workers: auto`)."""
    r = cfg.ray
    has_llm = cfg.labels.uses_llm
    alm_tp, llm_tp = _tp(cfg.alm), _tp(cfg.labels.engine if has_llm else None)
    if cluster_gpus <= 0:
        plan = PoolPlan(writers=2 if r.workers == "auto" else int(r.workers), alm=_count(r.alm, 1) if cfg.alm else 0,
                        llm=_count(r.llm, 1) if has_llm else 0, clap=_count(r.clap, 1), writer_cpus=r.num_cpus,
                        alm_gpus=0.0, llm_gpus=0.0, clap_gpus=0.0)
    else:
        alm_gpus = r.alm.num_gpus or float(alm_tp)
        llm_gpus = r.llm.num_gpus or float(llm_tp)
        clap_gpus = r.clap.num_gpus or 0.25
        gpus = int(cluster_gpus)
        llm = _count(r.llm, max(1, round(0.03 * gpus)) if has_llm else 0)
        clap = _count(r.clap, max(1, math.ceil(gpus / 16)) * max(1, round(1 / clap_gpus)))
        free = gpus - llm * llm_gpus - math.ceil(clap * clap_gpus)
        alm = _count(r.alm, max(0, int(free // alm_gpus)) if cfg.alm else 0)
        writers = gpus if r.workers == "auto" else int(r.workers)
        plan = PoolPlan(writers=writers, alm=alm, llm=llm, clap=clap, writer_cpus=r.num_cpus, alm_gpus=alm_gpus,
                        llm_gpus=llm_gpus, clap_gpus=clap_gpus, alm_tp=alm_tp, llm_tp=llm_tp)
        if plan.gpus() > cluster_gpus + 1e-9:
            raise ValueError(f"the pools need {plan.gpus():g} GPUs (alm {alm} x {alm_gpus:g}, llm {llm} x {llm_gpus:g}, "
                             f"clap {clap} x {clap_gpus:g}) but the cluster has {cluster_gpus:g}; lower ray.alm/llm/clap.actors")
        if cfg.alm and alm < 1:
            raise ValueError(f"no GPU left for the ALM pool on a {cluster_gpus:g}-GPU cluster; set ray.llm.actors and "
                             "ray.clap.actors lower")
    return plan


def actor_options(role: str, plan: PoolPlan, cfg: CaptionConfig) -> dict:
    """Ray options for one actor of a pool. A tensor-parallel vLLM engine gets a placement group of one
    GPU bundle per rank on one node (STRICT_PACK): vLLM starts its workers inside the actor's group."""
    pool = {"alm": cfg.ray.alm, "llm": cfg.ray.llm, "clap": cfg.ray.clap}[role]
    gpus = {"alm": plan.alm_gpus, "llm": plan.llm_gpus, "clap": plan.clap_gpus}[role]
    tp = {"alm": plan.alm_tp, "llm": plan.llm_tp, "clap": 1}[role]
    # an engine that dies (OOM, a lost node) is restarted by Ray where the cluster has room (max_restarts); its
    # callers retry elsewhere (shards.faults.ActorPool), so Ray does not retry the call itself
    options = {"num_cpus": pool.num_cpus, "max_restarts": cfg.ray.max_restarts, "max_task_retries": 0}
    if tp > 1:
        from ray.util.placement_group import placement_group
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        group = placement_group([{"GPU": 1.0, "CPU": 1.0}] * tp, strategy="STRICT_PACK")
        options["scheduling_strategy"] = PlacementGroupSchedulingStrategy(
            placement_group=group, placement_group_capture_child_tasks=True, placement_group_bundle_index=0)
        # the group's bundles hold the GPUs and CPUs that vLLM's rank workers take; the actor itself asks for
        # nothing more (more CPUs than a bundle has would never schedule), as in vLLM's own Ray examples
        options["num_gpus"] = options["num_cpus"] = 0
    else:
        options["num_gpus"] = gpus
    return options


class EngineActor:
    """A resident engine (ALM or label LLM) in its own process: `make_engine` once, then batches."""

    def __init__(self, engine_cfg: dict):
        from .engines import EngineConfig, make_engine

        self.engine = make_engine(EngineConfig.model_validate(engine_cfg))

    def info(self) -> dict:
        return {"name": self.engine.name, "sample_rate": self.engine.sample_rate}

    def generate(self, requests):
        return self.engine.generate(requests)


class ClapActor:
    def __init__(self, clap_cfg: dict):
        from .clap import ClapConfig, ClapScorer

        self.scorer = ClapScorer(ClapConfig.model_validate(clap_cfg))

    def info(self) -> dict:
        return {"sample_rate": self.scorer.sample_rate}

    def score_many(self, jobs):
        return self.scorer.score_many(jobs)


class RemoteEngine(ActorPool):
    """An engine pool seen as one engine (`generate`, `name`, `sample_rate`), for CaptionWorker: requests go to
    the least-loaded healthy actor, with a deadline; hung or restarting actors come back after a probe, dead ones
    leave the routing (shards.faults)."""

    def __init__(self, handles: list, timeout: float | None, start_timeout: float | None = None, offset: int = 0,
                 name: str = "engine"):
        super().__init__(handles, timeout, offset, name, patience=start_timeout)
        info = self.call("info", timeout=start_timeout)  # any live actor: the first may be the dead one
        self.name, self.sample_rate = info["name"], info["sample_rate"]

    def generate(self, requests):
        return self.call("generate", requests, stage="generate")


class RemoteClap(ActorPool):
    def __init__(self, handles: list, timeout: float | None, start_timeout: float | None = None, offset: int = 0):
        super().__init__(handles, timeout, offset, "clap", patience=start_timeout)
        self.sample_rate = self.call("info", timeout=start_timeout)["sample_rate"]

    def score_many(self, jobs):
        return self.call("score_many", jobs, stage="clap")


def start_pools(cfg: CaptionConfig, plan: PoolPlan) -> tuple[list, list, list]:
    """Start the engine and CLAP actors of the plan; returns their handles (ALM, LLM, CLAP)."""
    import ray

    def pool(role: str, cls, count: int, spec: dict) -> list:
        remote = ray.remote(cls)
        return [remote.options(**actor_options(role, plan, cfg)).remote(spec) for _ in range(count)]

    alm = pool("alm", EngineActor, plan.alm, cfg.alm.model_dump(mode="json")) if cfg.alm else []
    llm = pool("llm", EngineActor, plan.llm, cfg.labels.engine.model_dump(mode="json")) \
        if cfg.labels.uses_llm else []
    clap = pool("clap", ClapActor, plan.clap, cfg.clap.model_dump(mode="json"))
    return alm, llm, clap


class UnitWriter:
    """A CPU actor that writes whole units with a CaptionWorker whose engines are the pools."""

    def __init__(self, cfg: dict, alm: list, llm: list, clap: list, offset: int = 0):
        from .config import CaptionConfig, call_deadline
        from .worker import CaptionWorker

        c = CaptionConfig.model_validate(cfg)
        timeout, start = call_deadline(c.ray, c.batch_clips), c.ray.start_timeout
        self.worker = CaptionWorker(
            cfg, alm=RemoteEngine(alm, timeout, start, offset, "alm") if alm else None,
            llm=RemoteEngine(llm, timeout, start, offset, "llm") if llm else None,
            clap=RemoteClap(clap, timeout, start, offset))

    def process_unit(self, index: int, items, directory: str, extra_stats: dict | None = None) -> dict:
        """The unit's result, with what its pools' actors went through meanwhile (`faults`: actors that turned
        suspect, restarting or dead, and came back), which the job's summary adds up."""
        result = self.worker.process_unit(index, items, directory, extra_stats)
        faults: dict[str, int] = {}
        for pool in (self.worker.alm, self.worker.llm, self.worker.clap):
            for state, n in (pool.counts if pool is not None else {}).items():
                faults[f"actors_{state}"] = faults.get(f"actors_{state}", 0) + n
            if pool is not None:
                pool.counts.clear()
        return {**result, "faults": faults}
