"""Test setup: the repo root on sys.path (so ``engine`` imports without installing) and few threads.

Under pytest-xdist the cores are shared among the workers, so each worker (and every command it runs in a
subprocess) gets its share of threads rather than all of them: oversubscribed cores slow every worker.
"""

import os
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
THREADS = max(1, min(2, (os.cpu_count() or 1) // WORKERS))
os.environ["OMP_NUM_THREADS"] = str(THREADS)
torch.set_num_threads(THREADS)
