"""Connecting to Ray: the cluster named by the config or RAY_ADDRESS, or a new local Ray.

Used by the job, the index build and the service, so that all three join the same cluster the same way.
"""

from __future__ import annotations

import os
import sys

from embedding.config import Config, RayConfig


def ray_address(cfg: RayConfig) -> str | None:
    """The cluster to join: RAY_ADDRESS (set by `ray job submit`) wins over `ray.address`; None is local."""
    address = os.environ.get("RAY_ADDRESS") or cfg.address
    return None if not address or address == "local" else address


def connect_ray(cfg: RayConfig) -> None:
    """Join the cluster named by the config or RAY_ADDRESS, or start a local Ray (once per process)."""
    address = ray_address(cfg)
    if not address and "ray" not in sys.modules:
        # A local Ray of our own keeps Ray's token authentication, said explicitly so that Ray does not warn
        # about choosing it (a user can do nothing about that warning). Ray reads this when it is imported:
        # set later, the driver and the Ray it starts would disagree and the start would fail.
        os.environ.setdefault("RAY_AUTH_MODE", "token")
    import ray

    if ray.is_initialized():
        return
    if address:
        ray.init(address=address, log_to_driver=True)
        return
    memory = cfg.object_store_memory_mb
    ray.init(
        address="local",  # a new local Ray, never a cluster that `ray start` left on this machine
        num_cpus=cfg.num_cpus,
        num_gpus=cfg.num_gpus,
        object_store_memory=memory * 1024 * 1024 if memory else None,
        include_dashboard=False,
    )


def gpus_per_actor(cfg: Config) -> float:
    """GPUs per encoder actor: the config's, else 1 when the cluster has GPUs (and inference may use them)."""
    import ray

    if cfg.inference.num_gpus_per_actor is not None:
        return cfg.inference.num_gpus_per_actor
    if cfg.inference.device == "cpu":
        return 0.0
    return 1.0 if ray.cluster_resources().get("GPU", 0) > 0 else 0.0


def leave_ray() -> None:
    """Stop the local Ray this process started (a run's last phase); a cluster it joined is only left."""
    if "ray" in sys.modules:
        import ray

        if ray.is_initialized():
            ray.shutdown()
