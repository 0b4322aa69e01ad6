"""Check the degradation demo's claim from the logged numbers (not from the picture).

For every seed in SWEEP_DIR: plain-56 ends with a higher training error than plain-20, and
ResNet-56 with a lower training error than plain-56. The final training error is the last
`train/error` point in each run's TensorBoard log. Exit code 1 if any seed breaks the claim.

    python scripts/check_demo.py runs/sweeps/demo
"""

from __future__ import annotations

import sys
from collections import defaultdict

from resexp.runs import require_runs


def main(sweep_dir: str) -> int:
    final: dict[int, dict[str, float]] = defaultdict(dict)
    for run in require_runs(sweep_dir):
        steps, errors = run.series["train/error"]
        final[run.seed][run.config.model.name] = errors[-1]
    failures = 0
    for seed, errors in sorted(final.items()):
        p20, p56, r56 = errors.get("plain20"), errors.get("plain56"), errors.get("resnet56")
        if None in (p20, p56, r56):
            print(f"seed {seed}: missing runs ({sorted(errors)})")
            failures += 1
            continue
        ok = p56 > p20 and r56 < p56
        failures += not ok
        print(f"seed {seed}: final training error plain-20 {p20:.2f}%, plain-56 {p56:.2f}%, "
              f"ResNet-20 {errors.get('resnet20', float('nan')):.2f}%, ResNet-56 {r56:.2f}% -> "
              f"{'degradation shown' if ok else 'CLAIM NOT MET'}")
    return 1 if failures else 0


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    sys.exit(main(sys.argv[1]))
