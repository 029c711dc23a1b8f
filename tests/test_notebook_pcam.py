"""Notebook 04 on PCam's HDF5 layout (smoke mode): no Kaggle test set there, so no submission.

The notebook must run to its end: the shipped model scored on PCam valid, its predictions on
PCam test, one line saying why no submission.csv is written, and nothing sent to Kaggle.
"""

from __future__ import annotations

import nbformat
from nbclient import NotebookClient
from test_pcam_splits import write_pcam

from pcamlib.config import REPO_ROOT

NOTEBOOK = REPO_ROOT / "notebooks" / "04_submission.ipynb"


def test_04_runs_on_pcam_and_says_in_one_line_why_it_writes_no_submission(tmp_path, monkeypatch):
    data, out = tmp_path / "pcam", tmp_path / "outputs"
    write_pcam(data, {"train": 8, "valid": 8, "test": 8})
    monkeypatch.setenv("PCAM_SMOKE", "1")
    monkeypatch.setenv("PCAM_DATA", str(data))
    monkeypatch.setenv("PCAM_OUT", str(out))
    monkeypatch.delenv("PCAM_CACHE_DIR", raising=False)
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    where = {"metadata": {"path": str(NOTEBOOK.parent)}}  # the set-up cell finds the clone
    NotebookClient(notebook, timeout=300, kernel_name="python3", resources=where).execute()
    printed = [
        "".join(o.get("text", "") for o in cell.get("outputs", []) if o.output_type == "stream")
        for cell in notebook.cells
    ]
    why = [text for text in printed if "no submission.csv written" in text]
    assert len(why) == 1 and why[0] == why[0].splitlines()[0] + "\n"
    assert why[0].startswith(f"{data}: ") and "PCam's valid and test splits" in why[0]
    assert not any("Warning" in text for text in printed), printed  # its overlap is known
    assert (out / "runs" / "pretrained" / "state.json").is_file()
    assert not (out / "submission.csv").exists()
