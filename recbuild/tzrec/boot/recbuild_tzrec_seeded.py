"""Runs in the *tzrec* interpreter: ``-m recbuild_tzrec_seeded SEED MODULE ARGS...`` seeds every
random generator tzrec's training draws from, then runs ``-m MODULE ARGS`` as tzrec's own entry point.

tzrec 0.9.6 has no seed setting: model initialisation (torch), the DataLoader workers' seeds (drawn
from torch's generator), the shuffle buffer (``random`` in each worker) and numpy all start from the
operating system's entropy. Seeded here, and with torch's deterministic algorithms on CPU, a training
run rewrites the same checkpoint bytes (docs/tzrec.md, "Determinism"). Standard library and the
tzrec environment's own packages only: recbuild is not installed there.
"""

import random
import runpy
import sys


def main(argv):
    if len(argv) < 3:
        sys.stderr.write("usage: python -m recbuild_tzrec_seeded SEED MODULE [ARGS...]\n")
        return 2
    seed, module = int(argv[1]), argv[2]
    # torchrun's workers get their rank in RANK: each seeds alike, as tzrec's ranks start alike
    random.seed(seed)
    import numpy
    import torch

    numpy.random.seed(seed)
    torch.manual_seed(seed)
    if not torch.cuda.is_available():
        # GPU kernels without a deterministic variant would raise: there, seeding is all we do
        torch.use_deterministic_algorithms(True)
    sys.argv = [module] + argv[3:]
    runpy.run_module(module, run_name="__main__", alter_sys=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
