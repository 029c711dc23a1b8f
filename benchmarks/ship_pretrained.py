"""Package a trained ``pcam-cpu`` run as pcamlib's shipped model (``pcamlib/pretrained/``).

    python benchmarks/recipe.py --train pcam-jpeg/data/train --valid pcam-jpeg/data/valid \\
        --out runs/pcam-cpu-pretrained
    python benchmarks/ship_pretrained.py --run runs/pcam-cpu-pretrained \\
        --train pcam-jpeg/data/train --valid pcam-jpeg/data/valid

(``pcam-jpeg`` is a clone of github.com/vflorenc/AI4ALL-PCam: PCam patches as JPEG in class
folders.) Writes ``pcam-cpu.keras`` (the best epoch's weights, no optimizer state),
``card.json``, ``MODEL_CARD.md`` and ``train_content.txt.gz`` (its training patches' hashes).
``recipe.py``'s ``recipe_benchmark.json`` in the run gives the PCam-valid scores, so nothing is
evaluated again.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import subprocess
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

PCAM = (
    "PatchCamelyon (PCam), CC0: Veeling et al., 'Rotation Equivariant CNNs for Digital "
    "Pathology', MICCAI 2018 (github.com/basveeling/pcam); patches of Camelyon16 slides"
)
CLONE = "pcam-jpeg/data"  # git clone --depth 1 https://github.com/vflorenc/AI4ALL-PCam pcam-jpeg
JPEG_COPY = "as JPEG in class folders: data/{split} of github.com/vflorenc/AI4ALL-PCam"


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True, help="run directory made by benchmarks/recipe.py")
    parser.add_argument("--train", required=True, help="the PCam train patches it trained on")
    parser.add_argument("--valid", required=True, help="the PCam valid patches it was scored on")
    parser.add_argument("--out", default=str(Path(__file__).parent.parent / "pcamlib/pretrained"))
    parser.add_argument("--commit", help="commit of the code that trained it (default: HEAD)")
    parser.add_argument("--note", default="", help="what else ran on the machine meanwhile")
    return parser.parse_args(argv)


def machine() -> str:
    import keras

    return (
        f"{os.cpu_count()}-core CPU ({platform.machine()}, {platform.system()}), no GPU; "
        f"Keras {keras.__version__}, {keras.backend.backend()} backend"
    )


def build_card(args, run: Path) -> dict:
    from pcamlib.config import SAMPLE_DIR
    from pcamlib.sources import read_labels
    from pcamlib.stream import fingerprint, read_split

    config = json.loads((run / "config.json").read_text())
    state = json.loads((run / "state.json").read_text())
    scores = json.loads((run / "recipe_benchmark.json").read_text())
    split = read_split(run)
    commit = args.commit or subprocess.check_output(["git", "rev-parse", "HEAD"], text=True)
    sample, _ = read_labels(SAMPLE_DIR / "train_labels.csv")
    keep = ("epoch", "loss", "auc", "val_auc", "learning_rate", "seconds")
    return {
        "name": "pretrained",
        "model": "pcamnet",
        "recipe": config["recipe"],
        "config": {k: config[k] for k in ("image_size", "model_kwargs", "epochs", "batch_size")},
        "tta": config["tta"],
        "commit": commit.strip(),
        "command": (  # as a user runs it, in a clone of AI4ALL-PCam named pcam-jpeg
            f"python benchmarks/recipe.py --train {CLONE}/train --valid {CLONE}/valid "
            f"--out runs/{run.name}  &&  python benchmarks/ship_pretrained.py "
            f"--run runs/{run.name} --train {CLONE}/train --valid {CLONE}/valid"
        ),
        "data": {
            "source": PCAM,
            "pcam_splits": ["train"],
            "train_rows": int((split.subset == "train").sum()),
            "train": f"{(split.subset == 'train').sum():,} of {len(split):,} PCam train patches "
            + JPEG_COPY.format(split="train"),
            "held_out": f"the other {(split.subset == 'val').sum():,} chose the best epoch",
        },
        "pcam_valid": {
            "data": "3,000 PCam valid patches (other slides) " + JPEG_COPY.format(split="valid"),
            **{t: scores[t] for t in ("tta1", "tta8")},
        },
        "best_epoch": state["best_epoch"],
        "best_val_auc": round(state["best_val_auc"], 4),
        "history": [{k: round(r[k], 4) for k in keep if k in r} for r in state["history"]],
        "train_seconds": scores["train_seconds"],
        "timing_note": args.note,
        "machine": machine(),
        "sample_fingerprint": fingerprint(sample["id"]),
    }


def training_content(run: Path, train: str) -> list[str]:
    """Sorted content hashes of the patches the run trained on (not those it held out)."""
    from pcamlib.cache import load_patches
    from pcamlib.stream import read_split

    cache = load_patches(train, "train", progress=False)
    split = read_split(run)
    trained = set(split.loc[split["subset"] == "train", "id"])
    return sorted(c for i, c in zip(cache.ids, cache.content, strict=True) if i in trained)


def model_card(card: dict) -> str:
    """MODEL_CARD.md: the card for people."""
    rows = "\n".join(
        f"| TTA×{t[3:]} | {m['roc_auc']:.4f} [{m['auc_lo']:.4f}, {m['auc_hi']:.4f}] | "
        f"{m['pr_auc']:.4f} | {m['accuracy']:.3f} | {m['sensitivity']:.3f} | "
        f"{m['specificity']:.3f} | {m['ece']:.3f} |"
        for t, m in card["pcam_valid"].items()
        if t.startswith("tta")
    )
    history = "\n".join(
        f"| {r['epoch']} | {r['loss']:.4f} | {r['auc']:.4f} | {r['val_auc']:.4f} | "
        f"{r['seconds']:.0f} |"
        for r in card["history"]
    )
    c, d = card["config"], card["data"]
    return f"""# Model card: `pretrained` (PCamNet, recipe `{card["recipe"]}`)

A compact BN-ReLU VGG-style net (`pcamlib.models.PCamNet`, stem {c["model_kwargs"]["stem"]},
widths {c["model_kwargs"]["widths"]}) that takes raw uint8 96×96 RGB patches and returns
P(tumour in the centre 32×32). Load it with `pcamlib.train.load_model("pretrained")`,
`pcam predict --model pretrained`, or fine-tune it with `pcam train --init pretrained`.

- **Data**: {d["source"]}. Trained on {d["train"]}; {d["held_out"]}.
  Only PCam's *train* split: Kaggle's test set is drawn from PCam's valid and test splits.
- **Overlap with the embedded sample**: `sample_overlap.csv` lists the sample's patches that
  have a near-identical twin among the training patches (`benchmarks/overlap.py`); pcamlib's
  scores of this model leave them out.
- **Made by** (commit `{card["commit"][:12]}`): `{card["command"]}`
- **Training**: {card["train_seconds"] / 60:.1f} min for {len(card["history"])} epochs on a
  {card["machine"]}{"; " + card["timing_note"] if card["timing_note"] else ""}. Best epoch
  {card["best_epoch"]} (held-out AUC {card["best_val_auc"]}).

## PCam valid ({card["pcam_valid"]["data"]})

ROC AUC with its 95% DeLong confidence interval; TTA×8 averages the 8 dihedral views
(rotations and flips); accuracy, sensitivity and specificity at 0.5; ECE is the expected
calibration error.

| views | ROC AUC [95% CI] | PR AUC | accuracy | sensitivity | specificity | ECE |
|---|---|---|---|---|---|---|
{rows}

## Training history

| epoch | loss | train AUC | held-out AUC | seconds |
|---|---|---|---|---|
{history}
"""


def main() -> None:
    args = parse_args()
    from pcamlib.cache import atomic_path, atomic_write_text
    from pcamlib.train import load_model

    run, out = Path(args.run), Path(args.out)
    card = build_card(args, run)
    model = load_model(run / "best.keras")  # compile=False: no optimizer state is saved
    with atomic_path(out / "pcam-cpu.keras") as tmp:
        model.save(tmp)
    atomic_write_text(out / "card.json", json.dumps(card, indent=1))
    with atomic_path(out / "train_content.txt.gz") as tmp, gzip.open(tmp, "wt") as lines:
        lines.writelines(f"{h}\n" for h in training_content(run, args.train))
    atomic_write_text(out / "MODEL_CARD.md", model_card(card))
    size = (out / "pcam-cpu.keras").stat().st_size / 2**20
    print(f"wrote {out}/pcam-cpu.keras ({size:.1f} MiB), card.json, MODEL_CARD.md")


if __name__ == "__main__":
    main()
