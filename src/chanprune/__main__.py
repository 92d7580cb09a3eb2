"""``python -m chanprune ...``, and so ``torchrun --nproc_per_node N -m chanprune ...`` (docs/distributed.md)."""
from chanprune.cli import main

main()
