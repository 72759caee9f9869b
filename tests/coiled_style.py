"""A script written for Coiled's Python API, run here with one change: the import.

``tests/test_coiled_style.py`` runs it end to end on the local backend, as a user's script
would run (its own process, no Jupyter server): every name below is Coiled's.
"""

import os

import dask

import coiled_lab as coiled  # was: import coiled

cluster = coiled.Cluster(
    name="coiled-style",
    n_workers=[2, 3],  # adaptive between 2 and 3 workers
    worker_options={"nthreads": 2, "memory_limit": "1 GiB"},
    worker_class="distributed.Nanny",
    scheduler_options={"idle_timeout": "10 minutes"},
    compute_purchase_option="on-demand",
    use_best_zone=True,
    tags={"project": "coiled-style"},
    environ={"MY_SETTING": "on"},
    no_client_timeout="5 minutes",
    wait_for_workers=1,
    shutdown_on_close=False,
)
client = cluster.get_client()
client.wait_for_workers(2, timeout=120)


@dask.delayed
def square(x):
    return x * x


assert dask.compute(sum(square(i) for i in range(10)))[0] == 285
assert client.submit(os.getenv, "MY_SETTING").result() == "on"
assert {w["nthreads"] for w in client.scheduler_info()["workers"].values()} == {2}

types = coiled.list_instance_types(cores=[1, 4096])
assert types, types.source
assert "coiled-style" in [c["name"] for c in coiled.list_clusters()]
assert isinstance(coiled.get_notifications("coiled-style"), list)
assert "Scheduler" in coiled.cluster_logs("coiled-style")

client.close()
cluster.close()  # shutdown_on_close=False: the cluster goes on running...
assert coiled.delete_cluster("coiled-style")["status"] == "stopped"  # ...until deleted
print("coiled-style script: done")
