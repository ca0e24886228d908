"""The seed 003 workload in Python, for `cargo bench --bench compare`: the baseline of the
`weather_hours`, `weather_hours_cold` and `weather_hours_full_cold` rows.

Default mode: multiprocessing.Pool(workers) whose initializer attaches a
multiprocessing.shared_memory array once per worker, default chunksize, numpy. Prints one JSON
line: {"map_ns": [...], "cold_ns": [...]} (one sample per repetition), or {"skipped": "..."}.

`full-cold` mode: the input is already in memory as a plain numpy array, a module global that
fork()ed workers inherit (Python's fastest way to share a read-only array); each sample is
Pool start + one map + the pool's teardown (terminate and join). Prints {"full_cold_ns": [...]}.

Usage: python3 weather_hours.py ROWS WORKERS REPS [full-cold]
"""
import json
import sys
import time

try:
    import numpy as np
except ImportError:
    print(json.dumps({"skipped": "numpy is not installed"}))
    sys.exit(0)

import multiprocessing
from multiprocessing import Pool, shared_memory

HOURS = 8760
COLUMNS = 16
_data = None
_shm = None


def attach(name, rows):
    global _data, _shm
    _shm = shared_memory.SharedMemory(name=name)
    _data = np.ndarray((rows, COLUMNS), dtype=np.float64, buffer=_shm.buf)


def summarise(hour):
    rows = _data.shape[0]
    first, last = hour * rows // HOURS, (hour + 1) * rows // HOURS
    block = _data[first:last]
    return float(block.sum(axis=1).mean()), float(block.max())


def fill(rows):
    shm = shared_memory.SharedMemory(create=True, size=rows * COLUMNS * 8)
    data = np.ndarray((rows, COLUMNS), dtype=np.float64, buffer=shm.buf)
    i = np.arange(rows * COLUMNS, dtype=np.int64)
    data.reshape(-1)[:] = ((i * 7919) % 1000) / 10.0 - 20.0
    return shm, data


def cold(rows, workers):
    start = time.perf_counter_ns()
    shm, data = fill(rows)
    with Pool(workers, initializer=attach, initargs=(shm.name, rows)) as pool:
        results = pool.map(summarise, range(HOURS))
    elapsed = time.perf_counter_ns() - start
    del data
    shm.close()
    shm.unlink()
    assert len(results) == HOURS
    return elapsed


def warm(rows, workers, reps):
    shm, data = fill(rows)
    samples = []
    with Pool(workers, initializer=attach, initargs=(shm.name, rows)) as pool:
        pool.map(summarise, range(HOURS))  # workers started and attached
        for _ in range(reps):
            start = time.perf_counter_ns()
            results = pool.map(summarise, range(HOURS))
            samples.append(time.perf_counter_ns() - start)
            assert len(results) == HOURS
    del data
    shm.close()
    shm.unlink()
    return samples


def full_cold(rows, workers, reps):
    global _data
    i = np.arange(rows * COLUMNS, dtype=np.int64)
    _data = (((i * 7919) % 1000) / 10.0 - 20.0).reshape(rows, COLUMNS)
    del i
    fork = multiprocessing.get_context("fork")
    samples = []
    for _ in range(reps):
        start = time.perf_counter_ns()
        with fork.Pool(workers) as pool:
            results = pool.map(summarise, range(HOURS))
        samples.append(time.perf_counter_ns() - start)
        assert len(results) == HOURS
    _data = None
    return samples


if __name__ == "__main__":
    rows, workers, reps = (int(a) for a in sys.argv[1:4])
    if sys.argv[4:5] == ["full-cold"]:
        print(json.dumps({"full_cold_ns": full_cold(rows, workers, reps)}))
        sys.exit(0)
    map_ns = warm(rows, workers, reps)
    cold_ns = [cold(rows, workers) for _ in range(max(1, reps // 3))]
    print(json.dumps({"map_ns": map_ns, "cold_ns": cold_ns}))
