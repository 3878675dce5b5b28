"""Time to the first training batch, first and second start, and peak memory, at two data set sizes.

Generates (in a temporary folder, removed afterwards unless --keep or --data) folders of small
JPEGs (32x32, or --side) in 10 class folders, e.g. 20,000 and 200,000 images, then runs ``augpipe.train(...)`` in a fresh
Python process for each measurement, with its own image index (AUGPIPE_CACHE_DIR in the
temporary folder):

- **first start**: an empty index, so every file is decoded (the scan);
- **second start**: the same command again; the index knows every file;
- **peak memory**: ``--cache-mb 0`` (nothing kept in memory), the ``ru_maxrss`` of the process
  (``os.wait4``), after ``--batches`` training batches.

Time to the first batch runs from just before the process is started to the end of the first
training step, as seen by a callback registered in the child process (``--callbacks``), which
then ends the process. It prints a table and the ratios the goals are about: second start / first
start (goal <= 0.05) and peak memory at the large size / at the small size (goal <= 1.10).

    python bench/startup.py                       # 20,000 and 200,000 images
    python bench/startup.py --sizes 2000,20000    # quicker
    python bench/startup.py --sizes 20000 --side 160 --data /tmp/bench-data   # larger pictures, kept
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from multiprocessing import get_context
from pathlib import Path

CLASSES = 10


def _write_block(task) -> int:
    """Random-ish 32x32 pictures (a smooth coloured pattern and noise), as JPEGs."""
    import cv2
    import numpy as np

    root, cls, lo, hi, side = task
    rng = np.random.default_rng(cls * 1_000_003 + lo)
    folder = os.path.join(root, f"class{cls}")
    os.makedirs(folder, exist_ok=True)
    yy, xx = np.mgrid[0:side, 0:side].astype(np.float32)
    for i in range(lo, hi):
        a, b, c = rng.uniform(-4, 4, 3)
        base = (
            np.sin(xx * a / 8 + c)[..., None] * rng.uniform(40, 120, 3)
            + np.cos(yy * b / 8)[..., None] * rng.uniform(20, 80, 3)
            + rng.uniform(60, 190, 3)
        )
        img = np.clip(base + rng.normal(0, 12, (side, side, 3)), 0, 255).astype(np.uint8)
        ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 90])
        buf.tofile(os.path.join(folder, f"{i:07d}.jpg"))
    return hi - lo


def generate(root: Path, n: int, side: int = 32) -> float:
    """``n`` JPEGs in ``CLASSES`` class folders, written by one process per core; seconds taken."""
    start = time.perf_counter()
    per = n // CLASSES
    tasks = [(str(root), c, lo, min(per, lo + 1000), side) for c in range(CLASSES) for lo in range(0, per, 1000)]
    with get_context("fork").Pool(os.cpu_count() or 1) as pool:
        written = sum(pool.imap_unordered(_write_block, tasks))
    assert written == per * CLASSES
    return time.perf_counter() - start


# -- the child process ----------------------------------------------------------------------------
def child(args) -> None:
    """One training start: record the time of the first (and last wanted) batch, then exit."""
    import resource
    import types

    imports = time.time()
    import augpipe
    import augpipe.data.prepare as prepare
    from augpipe.hookspecs import hookimpl
    from augpipe.plugin_manager import get_plugins
    from augpipe.training.callbacks import Callback

    class FirstBatch(Callback):
        def __init__(self):
            self.steps = 0

        def on_train_batch_end(self, epoch, step, loss):
            self.steps += 1
            if self.steps == 1:
                self.first = time.time()
            if self.steps >= args.batches:
                rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
                Path(args.result).write_text(json.dumps({"first_batch": self.first, "rss_kb": rss, **phases}))
                sys.stdout.flush()
                os._exit(0)  # the measurement is done; nothing of the run is needed

    # When the data part (open, index or scan, checks) starts and ends, apart from the rest.
    phases = {"imports": imports}
    decode_data = prepare.decode_data

    def timed_decode_data(*a, **kw):
        phases["data_start"] = time.time()
        try:
            return decode_data(*a, **kw)
        finally:
            phases["data_end"] = time.time()

    prepare.decode_data = timed_decode_data
    module = types.ModuleType("startup_bench_plugin")

    @hookimpl
    def augpipe_register_callbacks(register):
        register("first_batch", lambda run_dir, config: FirstBatch())

    module.augpipe_register_callbacks = augpipe_register_callbacks
    get_plugins().register(module, name="startup-bench", package="bench", version="0")
    augpipe.train(
        plugin="cnn",
        model="cnn_small",
        data=args.child,
        epochs=1,
        batch_size=args.batch_size,
        cache_mb=args.cache_mb,
        workers=args.workers,
        out=args.runs,
        callbacks=["first_batch"],
        progress=False,
        aug="light",
    )
    raise SystemExit("the run ended before the wanted batch")


def start(
    data: Path, cache_dir: Path, runs: Path, cache_mb: float, batches: int, workers: int, batch_size: int
) -> dict:
    """One fresh process; its time to the first batch and its peak memory."""
    result = runs / f"result-{time.time_ns()}.json"
    env = dict(os.environ, AUGPIPE_CACHE_DIR=str(cache_dir))
    cmd = [
        sys.executable,
        __file__,
        "--child",
        str(data),
        "--cache-mb",
        str(cache_mb),
        "--batches",
        str(batches),
        "--workers",
        str(workers),
        "--batch-size",
        str(batch_size),
        "--runs",
        str(runs),
        "--result",
        str(result),
    ]
    t0 = time.time()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    err = proc.stderr.read().decode(errors="replace")
    proc.stderr.close()
    if proc.returncode != 0 or not result.exists():
        raise SystemExit(f"child failed ({proc.returncode}):\n{err[-3000:]}")
    got = json.loads(result.read_text())
    return {
        "first_batch_s": got["first_batch"] - t0,
        "rss_mb": usage.ru_maxrss / 1024,
        "data_s": got["data_end"] - got["data_start"],
        "python_s": got["imports"] - t0,
        "to_data_s": got["data_start"] - t0,
        "after_data_s": got["first_batch"] - got["data_end"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="20000,200000", help="data set sizes (images), comma separated")
    ap.add_argument("--side", type=int, default=32, help="image side in pixels (32)")
    ap.add_argument("--batches", type=int, default=20, help="training batches of the memory runs")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--workers", type=int, default=0, help="loader workers (0: this machine's 2-core default)")
    ap.add_argument("--repeats", type=int, default=1, help="second starts per size (the median is shown)")
    ap.add_argument("--tmp", default=None, help="where to generate (default: the system's temporary folder)")
    ap.add_argument("--keep", action="store_true", help="keep the generated folders")
    ap.add_argument(
        "--data", default=None, help="generate the data sets here, once, and keep them (later runs reuse them)"
    )
    # the child process
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--cache-mb", type=float, default=1024, help=argparse.SUPPRESS)
    ap.add_argument("--runs", help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args)
        return

    sizes = [int(s) for s in args.sizes.split(",")]
    work = Path(tempfile.mkdtemp(prefix="augpipe-startup-", dir=args.tmp))
    rows = []
    try:
        for n in sizes:
            name = f"data-{n}" + (f"-{args.side}px" if args.side != 32 else "")
            data = (Path(args.data) if args.data else work) / name
            done = data / ".complete"
            if not done.exists():
                made = generate(data, n, args.side)
                done.write_text("")
                print(f"generated {n:,} images in {made:.1f} s", flush=True)
            runs = work / f"runs-{n}"
            runs.mkdir()
            cache = work / f"cache-{n}"
            first = start(data, cache, runs, 1024, 1, args.workers, args.batch_size)
            seconds = sorted(
                (start(data, cache, runs, 1024, 1, args.workers, args.batch_size) for _ in range(args.repeats)),
                key=lambda r: r["first_batch_s"],
            )
            second = seconds[len(seconds) // 2]
            memory = start(data, cache, runs, 0, args.batches, args.workers, args.batch_size)
            row = {
                "images": n,
                "first_s": first["first_batch_s"],
                "second_s": second["first_batch_s"],
                "ratio": second["first_batch_s"] / first["first_batch_s"],
                "data_first_s": first["data_s"],
                "data_second_s": second["data_s"],
                "data_ratio": second["data_s"] / first["data_s"],
                "fixed_s": second["to_data_s"],
                "after_s": second["after_data_s"],
                "rss_mb": memory["rss_mb"],
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
            if not args.keep and not args.data:
                shutil.rmtree(data)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"kept {work}")

    print()
    print(
        "| images | first start (s) | second start (s) | second / first | data part, first (s) | "
        "data part, second (s) | data second / first (goal <= 0.05) | peak RSS, --cache-mb 0 (MB) |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['images']:,} | {r['first_s']:.2f} | {r['second_s']:.2f} | {r['ratio']:.3f} | "
            f"{r['data_first_s']:.2f} | {r['data_second_s']:.2f} | **{r['data_ratio']:.3f}** | {r['rss_mb']:.0f} |"
        )
    if len(rows) >= 2:
        print(
            f"\npeak memory {rows[-1]['images']:,} / {rows[0]['images']:,} images: "
            f"**{rows[-1]['rss_mb'] / rows[0]['rss_mb']:.3f}** (goal <= 1.10)"
        )


if __name__ == "__main__":
    main()
