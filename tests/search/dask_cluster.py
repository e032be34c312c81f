"""A Dask LocalCluster for the tests, in its own process until SIGTERM: ``.ci/run`` starts one.

    python -m tests.search.dask_cluster --workers 4 --address-file /tmp/dask-address

It writes the scheduler's address to the file once the workers are up. One thread per worker
process, BLAS and Numba pinned to one thread, as ``cellsearch run --dask local:N`` makes it.
"""

from __future__ import annotations

import argparse
import logging
import signal
import threading
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--address-file", required=True)
    args = parser.parse_args()

    from distributed import Client, LocalCluster

    from cellsearch.search.distributed import setup_worker_environment

    setup_worker_environment()  # inherited by the spawned workers
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    cluster = LocalCluster(
        n_workers=args.workers,
        threads_per_worker=1,
        processes=True,
        host="127.0.0.1",
        dashboard_address=None,
        silence_logs=logging.ERROR,
    )
    with Client(cluster) as client:
        client.wait_for_workers(args.workers, timeout=120)
    tmp = Path(args.address_file + ".tmp")
    tmp.write_text(cluster.scheduler_address)
    tmp.rename(args.address_file)
    while not stop.wait(1.0):
        pass
    cluster.close()


if __name__ == "__main__":
    main()
