"""Peak resident memory of a training run on real images: the whole process tree, workers included.

Runs ``python -m supernet.train`` as a child process on an ImageFolder tree and samples the resident
set (VmRSS, /proc) of it and every DataLoader worker it forks, every 0.2 s; reports the peak of
their sum. Evaluation images are held as uint8 and built once in the main process, so workers carry
only the file list. Target (DEVELOPERS.md): a 10,000-image CIFAR run stays under 4 GB.

    python benchmarks/bench_memory.py --data-root /tmp/data/c10_train10k --test-root /tmp/data/c10_test2k \\
        --max-steps 40 --workers 2 -- model=small
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

TARGET_GB = 4.0


def tree_rss(root: int) -> int:
    """Resident bytes of ``root`` and all its descendants (Linux /proc)."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/status") as status:
                fields = dict(line.split(":", 1) for line in status if ":" in line)
        except OSError:
            continue
        pid, parent = int(entry), int(fields.get("PPid", "0").strip())
        children.setdefault(parent, []).append(pid)
        rss[pid] = int(fields.get("VmRSS", "0 kB").split()[0]) * 1024
    total, stack = 0, [root]
    while stack:
        pid = stack.pop()
        total += rss.get(pid, 0)
        stack.extend(children.get(pid, []))
    return total


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", required=True)
    parser.add_argument("--test-root", default=None)
    parser.add_argument("--train-images", type=int, default=10_000)
    parser.add_argument("--max-steps", type=int, default=40)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("overrides", nargs="*", help="extra key=value settings for supernet.train")
    args = parser.parse_args()
    out = Path(tempfile.mkdtemp(prefix="bench-memory-"))
    test = [f"data.test_root={args.test_root}", "data.holdout_size=0"] if args.test_root else []
    command = [sys.executable, "-m", "supernet.train", "data=imagefolder", f"data.root={args.data_root}", *test,
               f"data.max_images={args.train_images}", f"data.num_workers={args.workers}", f"max_steps={args.max_steps}",
               "epochs=1", "progress=false", f"out_dir={out}", *args.overrides]
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    peak = [0]

    def sample() -> None:
        while process.poll() is None:
            peak[0] = max(peak[0], tree_rss(process.pid))
            time.sleep(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    output, _ = process.communicate()
    sampler.join()
    seconds = time.perf_counter() - started
    if process.returncode != 0:
        print(output[-3000:])
        return 2
    gigabytes = peak[0] / 1e9
    verdict = "PASS" if gigabytes < TARGET_GB else "FAIL"
    print(output.strip().splitlines()[-3:] and "\n".join(output.strip().splitlines()[-3:]))
    print(f"{args.train_images} training images, {args.workers} workers, {args.max_steps} steps, {seconds:.0f} s: "
          f"peak resident memory of the process tree {gigabytes:.2f} GB  [{verdict}: target < {TARGET_GB} GB]")
    if args.json:
        args.json.write_text(json.dumps({"peak_bytes": peak[0], "seconds": seconds, "command": command}, indent=2))
    return 0 if verdict == "PASS" else 1


if __name__ == "__main__":
    raise SystemExit(main())
