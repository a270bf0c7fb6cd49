import subprocess
import sys

from tests.conftest import PROJECT_ROOT

# Resident memory (MiB) after a 256 MiB block is written and freed, with or without the setting.
AFTER_A_LARGE_BLOCK_IS_FREED = """
import sys

import numpy as np

from core.allocator import keep_freed_memory

def resident_mib():
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * 4096 / 2**20

kept = keep_freed_memory() if sys.argv[1] == "keep" else None
before = resident_mib()
block = np.ones(256 * 2**20, dtype=np.uint8)
del block
print(kept, resident_mib() - before)
"""


def resident_growth(mode: str) -> tuple[str, float]:
    done = subprocess.run([sys.executable, "-c", AFTER_A_LARGE_BLOCK_IS_FREED, mode], cwd=PROJECT_ROOT,
                          capture_output=True, text=True, check=True)
    kept, growth = done.stdout.split()
    return kept, float(growth)


def test_it_keeps_a_freed_block_for_reuse():
    kept, growth = resident_growth("keep")
    assert kept == "True"
    assert growth > 200


def test_without_it_a_freed_block_goes_back_to_the_system():
    kept, growth = resident_growth("default")
    assert kept == "None"
    assert growth < 50

