"""pcam submit against a fake Kaggle CLI: validation, polling, scores recorded, every refusal."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
from test_leak import make_run

from pcamlib.cli import main
from pcamlib.kaggle import KaggleError, kaggle_scores, submit, submit_file
from pcamlib.submission import SubmissionError, write_submission

SECRET = "s3cr3t-kaggle-key-0123456789"
IDS = [f"{i:040x}" for i in range(12)]
PROBS = np.linspace(0.05, 0.95, 12)
FIELDS = ["fileName", "date", "description", "status", "publicScore", "privateScore"]
# The Kaggle CLI as this project drives it, its state in a JSON file: submissions (newest
# first), how many polls until the new one is scored (None: never), and how submit behaves.
FAKE_KAGGLE = """#!{python}
import csv, json, os, pathlib, sys
path = pathlib.Path({state!r})
state = json.loads(path.read_text())
args = sys.argv[1:]
state["calls"].append(args)
path.write_text(json.dumps(state))
if not (os.environ.get("KAGGLE_KEY") or os.environ.get("KAGGLE_API_TOKEN")):
    print("You must authenticate before you can call the Kaggle API.")
    sys.exit(1)
if state["outdated"]:
    print("Warning: Looks like you're using an outdated API Version, please consider updating "
          "(server 1.6.17 / client 1.5.16)")
if args[:2] == ["competitions", "submit"]:
    if state["submit"] == "rules":
        print("403 Client Error: Forbidden for url: https://www.kaggle.com/api/v1/competitions/"
              "submissions/submit/histopathologic-cancer-detection")
        sys.exit(1)
    if state["submit"] == "server error":
        print("500 Server Error: Internal Server Error (key " + os.environ["KAGGLE_KEY"] + ")",
              file=sys.stderr)
        sys.exit(1)
    name = pathlib.Path(args[args.index("-f") + 1]).name
    state["rows"].insert(0, dict(fileName=name, date="2026-11-28 10:00:%02d" % len(state["rows"]),
        description=args[args.index("-m") + 1], status="SubmissionStatus.PENDING",
        publicScore="", privateScore=""))
    state["polls"] = 0
    print("100%|##########| 1.2M/1.2M [00:01<00:00, 403.2kB/s]", file=sys.stderr)
    print("Successfully submitted to Histopathologic Cancer Detection")
elif args[:2] == ["competitions", "submissions"]:
    state["polls"] += 1
    if state["score_after"] is not None and state["polls"] > state["score_after"]:
        state["rows"][0].update(status="SubmissionStatus.COMPLETE", publicScore="0.9512",
                                privateScore="0.9401")
    if state["rows"]:
        writer = csv.DictWriter(sys.stdout, {fields!r})
        writer.writeheader()
        writer.writerows(state["rows"])
    else:
        print("No submissions found")
path.write_text(json.dumps(state))
"""
OLDER = dict(
    fileName="submission.csv",
    date="2026-01-01 09:00:00",
    description="an older try",
    status="SubmissionStatus.COMPLETE",
    publicScore="0.5",
    privateScore="0.5",
)


@pytest.fixture
def kaggle(tmp_path, monkeypatch):
    """The fake CLI on PATH with credentials set; returns ``configure(**state) -> state()``."""
    for name in ("KAGGLE_USERNAME", "KAGGLE_KEY", "KAGGLE_CONFIG_DIR", "KAGGLE_API_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("PCAM_HOME", str(tmp_path))  # no data/full: only --data gives test ids
    monkeypatch.delitem(sys.modules, "google.colab", raising=False)
    bin_dir, state_file = tmp_path / "bin", tmp_path / "kaggle-state.json"
    bin_dir.mkdir()
    cli = bin_dir / "kaggle"
    cli.write_text(FAKE_KAGGLE.format(python=sys.executable, state=str(state_file), fields=FIELDS))
    cli.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{__import__('os').environ['PATH']}")
    monkeypatch.setenv("KAGGLE_USERNAME", "someone")
    monkeypatch.setenv("KAGGLE_KEY", SECRET)

    def configure(**changes):
        state = dict(rows=[OLDER], polls=0, score_after=2, outdated=True, submit="ok", calls=[])
        state_file.write_text(json.dumps({**state, **changes}))
        return lambda: json.loads(state_file.read_text())

    return configure


@pytest.fixture
def made(tmp_path):
    """A clean run, the submission it wrote (the run recorded beside it), the test ids' csv."""
    run = make_run(tmp_path / "runs" / "cnn1", "data/sample")
    listing = tmp_path / "sample_submission.csv"
    listing.write_text("id,label\n" + "".join(f"{i},0\n" for i in IDS))
    path = write_submission(IDS, PROBS, tmp_path / "out" / "submission.csv", run=run)
    return run, path, listing


def test_submits_polls_past_the_version_warning_and_records_the_scores(kaggle, made, capfd):
    state = kaggle()
    run, path, listing = made
    record = submit_file(path, "pcam-cpu, tta 8", data=listing, timeout=10, poll=0.01)
    assert (record["public"], record["private"], record["status"]) == (0.9512, 0.9401, "complete")
    assert json.loads((run / "kaggle.json").read_text()) == record  # not the older 0.5 one
    assert kaggle_scores(run) == {"kaggle_public": 0.9512, "kaggle_private": 0.9401}
    submitted = [c for c in state()["calls"] if c[1] == "submit"]
    competition = "histopathologic-cancer-detection"
    assert submitted == [["competitions", "submit", "-c", competition, "-f", str(path), "-m",
                          "pcam-cpu, tta 8"]]  # fmt: skip
    listings = [c for c in state()["calls"] if c[1] == "submissions"]
    assert len(listings) == 1 + 3  # the listing before, then polls until scored
    shown = capfd.readouterr()
    assert "Kaggle public 0.9512, private 0.9401; recorded in" in shown.out
    assert SECRET not in shown.out + shown.err + (run / "kaggle.json").read_text()


def test_the_command_line_finds_the_run_the_file_names(kaggle, made, capsys):
    kaggle(outdated=False, rows=[])
    run, path, listing = made
    args = ["submit", str(path), "-m", "cli", "--data", str(listing), "--poll-interval", "0.01"]
    assert main(args) == 0
    assert "Kaggle public 0.9512, private 0.9401" in capsys.readouterr().out
    assert kaggle_scores(run)["kaggle_public"] == 0.9512
    assert main([*args[:-2], "--timeout", "0"]) == 2
    assert "--timeout 0: must be" in capsys.readouterr().err


def test_rules_not_accepted_is_one_line_naming_the_fix(kaggle, made):
    kaggle(submit="rules")
    run, path, listing = made
    with pytest.raises(KaggleError, match=r"403 Forbidden: accept the rules at kaggle.com/c/hist"):
        submit_file(path, "x", data=listing, poll=0.01)
    assert not (run / "kaggle.json").exists()


def test_a_server_error_is_shown_without_the_credentials(kaggle, made):
    kaggle(submit="server error")
    run, path, listing = made
    with pytest.raises(KaggleError) as error:
        submit_file(path, "x", data=listing, poll=0.01)
    assert str(error.value) == (
        "kaggle competitions submit failed (exit 1): 500 Server Error: Internal Server Error "
        "(key ***)"
    )


def test_a_submission_never_scored_times_out_and_is_recorded_unscored(kaggle, made):
    kaggle(score_after=None)
    run, path, listing = made
    with pytest.raises(KaggleError, match=r"submitted, but not scored within 0.3 s \(status pend"):
        submit_file(path, "x", data=listing, timeout=0.3, poll=0.05)
    record = json.loads((run / "kaggle.json").read_text())
    assert (record["public"], record["status"]) == (None, "pending")
    assert all(math.isnan(v) for v in kaggle_scores(run).values())


def test_without_credentials_or_cli_nothing_is_sent(kaggle, made, monkeypatch, tmp_path, capsys):
    state = kaggle()
    run, path, listing = made
    monkeypatch.setenv("PATH", str(tmp_path / "nowhere"))
    with pytest.raises(KaggleError, match=r"^the kaggle command is not installed"):
        submit_file(path, "x", data=listing)
    monkeypatch.delenv("KAGGLE_KEY")
    assert submit(path, "x", data=listing) is None
    printed = capsys.readouterr().out.strip().splitlines()
    assert len(printed) == 1 and "No Kaggle credentials" in printed[0]
    assert main(["submit", str(path), "-m", "x", "--data", str(listing)]) == 2
    assert "no Kaggle credentials: add KAGGLE_USERNAME" in capsys.readouterr().err
    assert state()["calls"] == []


def test_a_bad_file_or_a_leaky_run_is_refused_before_anything_is_sent(kaggle, made, tmp_path):
    state = kaggle()
    run, path, listing = made
    with pytest.raises(KaggleError, match=r"12 rows, but the competition's test set has 57,458"):
        submit_file(path, "x")  # no --data, no data/full: the row count is all there is
    hard = tmp_path / "hard.csv"
    hard.write_text("id,label\n" + "".join(f"{i},{n % 2}\n" for n, i in enumerate(IDS)))
    with pytest.raises(SubmissionError, match="exactly 0 or 1"):
        submit_file(hard, "x", data=listing)
    leaky = make_run(tmp_path / "leaky", "/data/camelyonpatch_level_2_split_valid_x.h5")
    with pytest.raises(SubmissionError, match="trained on PCam's valid split"):
        submit_file(path, "x", data=listing, run=leaky)
    assert state()["calls"] == []


def test_kaggle_scores_are_nan_without_a_submission_and_bad_records_are_named(tmp_path):
    assert all(math.isnan(v) for v in kaggle_scores(tmp_path).values())
    (tmp_path / "kaggle.json").write_text('{"public": "high"}')
    with pytest.raises(KaggleError, match=r"kaggle.json: public/private must be numbers or null"):
        kaggle_scores(tmp_path)
    (tmp_path / "kaggle.json").write_text("{")
    with pytest.raises(KaggleError, match=r"kaggle.json: unreadable"):
        kaggle_scores(Path(tmp_path))
