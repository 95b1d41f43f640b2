"""How an Outfitter command gets its Ray: `RAY_ADDRESS`'s cluster, else a local instance.

`ensure_ray` is the one `ray.init` of the commands (train, tune, the Ray Data embedding, the
demo; `outfitter serve` passes its `--address` through it too). A local instance is one node
that nothing else manages, so it starts with `LOCAL_ENV`: Ray Train's `PreemptionWatcher`, an
actor process per training run (per Tune trial) that polls the cluster for nodes being drained
(spot preemption, autoscaler scale-down), is left out: a single local node is never drained. On
a cluster (`RAY_ADDRESS`, `--address`) nothing is changed and Ray's defaults hold.
"""

from __future__ import annotations

import os

LOCAL_ENV = {"RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0"}


def ensure_ray(address: str | None = None, **init_kwargs) -> None:
    """Connect to `address` (else `RAY_ADDRESS`), or start a local instance; a no-op when this
    process is connected already. No dashboard and no worker logs on the driver unless asked."""
    import ray

    if ray.is_initialized():
        return
    if (address or os.environ.get("RAY_ADDRESS") or "local") == "local":
        for key, value in LOCAL_ENV.items():  # read by Ray's processes as the instance starts
            os.environ.setdefault(key, value)
    init_kwargs.setdefault("include_dashboard", False)
    init_kwargs.setdefault("log_to_driver", False)
    ray.init(address=address, **init_kwargs)
