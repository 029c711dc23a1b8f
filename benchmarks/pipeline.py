"""Input-pipeline benchmark: pcamlib's pack + PatchStream against the reference's feeding.

    python benchmarks/pipeline.py data/sample
    python benchmarks/pipeline.py data/sample --replicate 10
    python benchmarks/pipeline.py /path/to/pcam-jpeg/train --parts pack,feed

Measures, in one run and on the same images, and prints a table per part:

* feed:  images/s of one epoch of PatchStream batches over the packed memmap vs the
         reference ``ImageDataGenerator(rescale=1/255).flow_from_dataframe(...)`` (PIL decode,
         resize to 64×64, batch 256), each host-side augmentation alone, and each recipe's
         feed as train() builds it ("as trained": read, batch, host augmentation if the
         recipe augments on the host, hand-off with keras.ops.convert_to_tensor);
* train: ``model.fit`` throughput of CNNModel1@64 fed by PatchStream vs by the same images
         as an in-memory numpy array (warm-up first, then alternating rounds);
* model-augment: the in-model augmentation layers of each recipe run on this CPU (what
         augment_on="model" costs when there is no accelerator);
* pack:  images/s of ``pcamlib.cache.pack`` (fresh cache, ``--cores`` CPUs) vs a plain
         single-threaded read loop (tifffile for TIFF, Pillow otherwise).

``--replicate K`` copies every image K times under new ids into a temporary Kaggle-layout
folder first, to measure at a larger scale than the embedded sample. Page caches are warmed
before every comparison, so both sides read files from memory. Timings on a shared machine
are noisy: each number is the median of ``--rounds`` alternating runs.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pcamlib import sources  # noqa: E402
from pcamlib.cache import PackedCache, pack  # noqa: E402
from pcamlib.sources import PatchSource, open_source, read_image  # noqa: E402


def replicate(source: PatchSource, k: int, root: Path) -> PatchSource:
    """K copies of every image as a Kaggle-layout folder (ids ``<id>_<copy>``)."""
    (root / "train").mkdir(parents=True)
    rows = []
    for copy in range(k):
        for item_id, label, path in zip(source.ids, source.labels, source.paths, strict=True):
            new_id = f"{item_id.replace('/', '_')}_{copy}"
            shutil.copyfile(path, root / "train" / f"{new_id}{path.suffix}")
            rows.append((new_id, int(label)))
    pd.DataFrame(rows, columns=["id", "label"]).to_csv(root / "train_labels.csv", index=False)
    return open_source(root, "train")


def warm(paths) -> None:
    for path in paths:
        with open(path, "rb") as f:
            f.read()


def timed(fn) -> tuple[float, float]:
    """Wall-clock and process CPU seconds (all threads) of ``fn()``."""
    start, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - start, time.process_time() - cpu


def rates(n: int, runs: list[tuple[float, float]]) -> tuple[float, float]:
    """Median images/s and median CPU µs per image."""
    wall = statistics.median(w for w, _ in runs)
    return n / wall, 1e6 * statistics.median(c for _, c in runs) / n


def table(title: str, rows: list[tuple]) -> None:
    print(f"\n{title}")
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    for k, row in enumerate(rows):
        cells = zip(row, widths, strict=True)
        print(
            "  "
            + "  ".join(str(v).rjust(w) if i else str(v).ljust(w) for i, (v, w) in enumerate(cells))
        )
        if k == 0:
            print("  " + "  ".join("-" * w for w in widths))


def plain_loop(source: PatchSource) -> None:
    import tifffile
    from PIL import Image

    for path in source.paths:
        if path.suffix.lower() in (".tif", ".tiff"):
            tifffile.imread(path)
        else:
            with Image.open(path) as im:
                np.asarray(im)


def bench_pack(source: PatchSource, work: Path, rounds: int) -> PackedCache:
    warm(source.paths)
    out = work / "cache"

    def run_pack():
        shutil.rmtree(out, ignore_errors=True)
        pack(source, out, progress=False)

    def own_loop():
        for path in source.paths:
            read_image(path)

    def pack_with_tifffile():  # the same pack with every TIFF decoded by tifffile.imread
        fast_path = sources._plain_tiff
        sources._plain_tiff = lambda data, where: None
        try:
            run_pack()
        finally:
            sources._plain_tiff = fast_path

    methods = {"pack": run_pack, "loop": lambda: plain_loop(source), "own": own_loop}
    if source.paths[0].suffix.lower().startswith(".tif"):
        methods["tifffile"] = pack_with_tifffile
    runs = {name: [] for name in methods}
    for r in range(rounds):
        for name in list(methods)[:: 1 if r % 2 == 0 else -1]:
            runs[name].append(timed(methods[name]))
    n = len(source)
    reader = "tifffile" if source.paths[0].suffix.lower().startswith(".tif") else "Pillow"
    (p, p_cpu), (q, q_cpu), (o, o_cpu) = (rates(n, runs[k]) for k in ("pack", "loop", "own"))
    extra = []
    if "tifffile" in runs:
        t, t_cpu = rates(n, runs["tifffile"])
        extra = [("pcamlib pack, tifffile.imread for every TIFF", f"{t:,.0f}", f"{t_cpu:.0f}",
                  f"{t / q:.1f}x")]  # fmt: skip
    table(
        f"pack: {n} images, {len(os.sched_getaffinity(0))} cores, median of {rounds}",
        [
            ("method", "images/s", "CPU µs/img", "ratio"),
            ("pcamlib pack (decode + write verified cache)", f"{p:,.0f}", f"{p_cpu:.0f}",
             f"{p / q:.1f}x"),
            (f"plain {reader} read loop (decode only)", f"{q:,.0f}", f"{q_cpu:.0f}", "1.0x"),
            ("pcamlib read_image loop (decode only)", f"{o:,.0f}", f"{o_cpu:.0f}",
             f"{o / q:.1f}x"),
            *extra,
        ],
    )  # fmt: skip
    return PackedCache.open(out)


def recipe_feed(cache: PackedCache, name: str):
    """The recipe's training feed as train() builds it, plus the hand-off to Keras."""
    import keras

    from pcamlib.augment import host_augmentation
    from pcamlib.config import TrainConfig
    from pcamlib.stream import PatchStream

    config = TrainConfig.from_recipe(name)
    s = PatchStream(cache.images, cache.labels, batch_size=config.batch_size, shuffle=True,
                    seed=config.seed, **host_augmentation(config))  # fmt: skip

    # The hand-off as the backend's trainer does it: Keras' JAX trainer device_puts each
    # numpy batch (keras/src/backend/jax/trainer.py, _distribute_data); TF converts it.
    if keras.backend.backend() == "jax":
        import jax

        hand_off = jax.device_put
    else:
        hand_off = keras.ops.convert_to_tensor

    def epoch():
        for i in range(len(s)):
            x, y = s[i]
            hand_off(x), hand_off(y)
        s.on_epoch_end()

    return epoch


def bench_feed(source: PatchSource, cache: PackedCache, rounds: int) -> None:
    from keras.src.legacy.preprocessing.image import ImageDataGenerator

    from pcamlib.stream import PatchStream

    frame = pd.DataFrame({"path": [str(p) for p in source.paths], "label": source.labels})
    frame["label"] = frame["label"].astype(str)
    warm(source.paths)

    def reference():
        gen = ImageDataGenerator(rescale=1 / 255).flow_from_dataframe(
            frame, None, x_col="path", y_col="label", target_size=(64, 64),
            batch_size=256, class_mode="binary",
        )  # fmt: skip
        for _ in range(len(gen)):
            next(gen)

    def stream(**kwargs):
        s = PatchStream(cache.images, cache.labels, batch_size=256, shuffle=True, **kwargs)

        def epoch():
            for i in range(len(s)):
                s[i]
            s.on_epoch_end()

        return epoch

    import contextlib
    import io

    methods = {
        "ImageDataGenerator.flow_from_dataframe (reference)": reference,
        "PatchStream (memmap, shuffled)": stream(),
        "PatchStream + dihedral augmentation": stream(augment=True),
        "PatchStream + centre crop 64": stream(crop=64),
        "PatchStream + shift 4 (host)": stream(shift=4),
        "PatchStream + colour jitter 0.1 (host)": stream(color_jitter=0.1),
        "PatchStream + HED jitter 0.1 (host)": stream(hed_jitter=0.1),
        "pcam-gpu feed (as trained)": recipe_feed(cache, "pcam-gpu"),
        "pcam-cpu feed (as trained)": recipe_feed(cache, "pcam-cpu"),
    }
    times = {name: [] for name in methods}
    with contextlib.redirect_stdout(io.StringIO()):  # "Found N validated image filenames…"
        for r in range(rounds):
            for name in list(methods)[:: 1 if r % 2 == 0 else -1]:
                times[name].append(timed(methods[name]))
    n = len(cache)
    rate = {name: rates(n, t) for name, t in times.items()}
    ref = rate["ImageDataGenerator.flow_from_dataframe (reference)"][0]
    rows = [("feed (one epoch, batch 256)", "images/s", "CPU µs/img", "vs reference")]
    rows += [(k, f"{v:,.0f}", f"{c:.1f}", f"{v / ref:.1f}x") for k, (v, c) in rate.items()]
    table(f"feed: {n} images, median of {rounds}", rows)


def bench_model_augment(cache: PackedCache, rounds: int) -> None:
    """CPU cost of the in-model augmentation layers when the model runs on this CPU."""
    import keras

    from pcamlib.augment import model_front
    from pcamlib.config import TrainConfig

    backend = keras.backend.backend()
    x = keras.ops.convert_to_tensor(np.asarray(cache.images[: min(256, len(cache))]))
    rows = [("augmentation in the training graph", "images/s", "CPU µs/img")]
    for name in ("pcam-cpu", "pcam-gpu"):
        front = model_front(TrainConfig.from_recipe(name).replace(augment_on="model"))

        def apply(x, front=front):
            for layer in front:
                x = layer(x, training=True)
            return x

        if backend == "tensorflow":
            import tensorflow as tf

            apply = tf.function(apply)
        keras.ops.convert_to_numpy(apply(x))  # trace / compile

        def run(apply=apply):
            for _ in range(max(1, len(cache) // len(x))):
                keras.ops.convert_to_numpy(apply(x))

        n = max(1, len(cache) // len(x)) * len(x)
        rate, cpu = rates(n, [timed(run) for _ in range(rounds)])
        label = ", ".join(type(layer).__name__ for layer in front)
        rows.append((f"{name} layers on this CPU ({backend}): {label}", f"{rate:,.0f}",
                     f"{cpu:.1f}"))  # fmt: skip
    table(f"augment in the model: batch {len(x)}, median of {rounds}", rows)


def bench_train(cache: PackedCache, epochs: int, rounds: int, limit: int, batch: int) -> None:
    import keras

    from pcamlib.models import build_model
    from pcamlib.stream import PatchStream
    from pcamlib.train import compile_model

    n = min(limit, len(cache))
    rows = np.sort(np.random.default_rng(0).permutation(len(cache))[:n])
    x = np.asarray(cache.images[rows])
    y = cache.labels[rows].astype(np.float32)
    keras.utils.set_random_seed(0)
    model = compile_model(build_model("cnn1"), keras.optimizers.Adam(1e-4))

    class EpochTimes(keras.callbacks.Callback):
        """Wall-clock and process CPU seconds of every epoch."""

        def __init__(self):
            super().__init__()
            self.wall, self.cpu = [], []

        def on_epoch_begin(self, epoch, logs=None):
            self.start = time.perf_counter(), time.process_time()

        def on_epoch_end(self, epoch, logs=None):
            self.wall.append(time.perf_counter() - self.start[0])
            self.cpu.append(time.process_time() - self.start[1])

    def fit(name: str, n_epochs: int) -> EpochTimes:
        clock = EpochTimes()
        if name == "stream":
            data = PatchStream(cache.images, cache.labels, rows, batch_size=batch, shuffle=True)
            model.fit(data, epochs=n_epochs, verbose=0, callbacks=[clock])
        else:
            model.fit(x, y, batch_size=batch, epochs=n_epochs, shuffle=True, verbose=0,
                      callbacks=[clock])  # fmt: skip
        return clock

    fit("stream", 1), fit("numpy", 1)  # warm-up: trace the train step for both feeds
    wall, cpu, paired = {"stream": [], "numpy": []}, {"stream": [], "numpy": []}, []
    for r in range(rounds):
        this_round = {}
        for name in ("stream", "numpy") if r % 2 == 0 else ("numpy", "stream"):
            clock = fit(name, epochs)
            wall[name] += clock.wall
            cpu[name] += clock.cpu
            this_round[name] = statistics.median(clock.wall)
        paired.append(this_round["numpy"] / this_round["stream"])
    med = {k: n / statistics.median(v) for k, v in wall.items()}
    best = {k: n / min(v) for k, v in wall.items()}
    cpu_us = {k: 1e6 * statistics.median(v) / n for k, v in cpu.items()}
    table(
        f"train: CNNModel1@64, {n} images, batch {batch}, {rounds} alternating rounds of "
        f"{epochs} epoch(s) each, {len(os.sched_getaffinity(0))} cores",
        [
            ("model.fit fed by", "img/s median", "img/s best", "CPU µs/img", "ratio"),
            ("PatchStream over the memmap", f"{med['stream']:,.0f}", f"{best['stream']:,.0f}",
             f"{cpu_us['stream']:.0f}", f"{statistics.median(paired):.3f}"),
            ("in-memory numpy array", f"{med['numpy']:,.0f}", f"{best['numpy']:,.0f}",
             f"{cpu_us['numpy']:.0f}", "1.000"),
        ],
    )  # fmt: skip
    print(f"  ratio = median over rounds of numpy epoch time / PatchStream epoch time; "
          f"per round: {', '.join(f'{p:.3f}' for p in paired)}")  # fmt: skip


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data", help="any layout open_source reads (Kaggle, class folders, …)")
    parser.add_argument("--replicate", type=int, default=1, help="copy every image K times")
    parser.add_argument(
        "--parts", default="pack,feed,model-augment,train", help="which benchmarks to run"
    )
    parser.add_argument("--cores", type=int, default=2, help="pin the process to N CPUs")
    parser.add_argument("--rounds", type=int, default=3, help="alternating pack/feed repeats")
    parser.add_argument("--train-rounds", type=int, default=6, help="alternating fit rounds")
    parser.add_argument("--epochs", type=int, default=2, help="training epochs per fit round")
    parser.add_argument("--train-images", type=int, default=3200, help="cap for training")
    parser.add_argument("--batch", type=int, default=64, help="training batch size")
    parser.add_argument("--workdir", help="scratch folder (default: a new temporary one)")
    args = parser.parse_args(argv)

    cpus = sorted(os.sched_getaffinity(0))[: args.cores]
    os.sched_setaffinity(0, cpus)
    parts = set(args.parts.split(","))
    work = Path(args.workdir or tempfile.mkdtemp(prefix="pcam-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        source = open_source(args.data, "train")
        if args.replicate > 1:
            source = replicate(source, args.replicate, work / "replicated")
        suffixes = sorted({p.suffix for p in source.paths})
        print(f"data: {args.data} ×{args.replicate} = {len(source)} images {suffixes}")
        load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
        print(f"machine: {os.cpu_count()} CPUs, load average {load} (other work shares them)")
        if "pack" in parts:
            cache = bench_pack(source, work, args.rounds)
        else:
            cache = pack(source, work / "cache", progress=False)
        if "feed" in parts:
            bench_feed(source, cache, args.rounds)
        if "model-augment" in parts:
            bench_model_augment(cache, args.rounds)
        if "train" in parts:
            bench_train(cache, args.epochs, args.train_rounds, args.train_images, args.batch)
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
