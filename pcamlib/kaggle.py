"""The Kaggle competition through its CLI: credentials, the data, a submission and its score
(kept in ``RUN_DIR/kaggle.json``). Credentials reach only the CLI's environment: pcamlib never
prints, logs or writes them, and scrubs them from whatever the CLI prints."""

from __future__ import annotations

import contextlib
import csv
import json
import os
import re
import shutil
import subprocess
import time
import zipfile
from datetime import datetime, timezone
from pathlib import Path

from tqdm import tqdm  # text bars: tqdm.auto warns in kernels without ipywidgets

from .cache import atomic_write_text
from .config import KAGGLE_INPUT, on_kaggle, resolve_out
from .pcam import download_pcam
from .pretrained import is_pretrained
from .sources import DataError
from .submission import check_no_leak, check_submission, expected_test_ids, submission_run

COMPETITION = "histopathologic-cancer-detection"
RULES = f"rules at kaggle.com/c/{COMPETITION}"
HOW_TO_ADD = (
    "add KAGGLE_USERNAME and KAGGLE_KEY as Colab secrets (key icon, left bar; values from "
    "Kaggle → Settings → Create New Token), or KAGGLE_API_TOKEN, or put kaggle.json or "
    f"access_token in ~/.kaggle/, or set them in the environment, and accept the {RULES}"
)
FULL_DATA = "data/full"  # where the competition goes, relative to the project
DEFAULT_OUT = {"kaggle": FULL_DATA, "pcam": "data/pcam"}  # get_full_data's sources
KAGGLE_TEST_ROWS = 57_458  # the competition's test set
RECORD = "kaggle.json"
CLI_TIMEOUT_S = 300  # one CLI call (an upload included)
SUBMISSIONS = f"kaggle.com/c/{COMPETITION}/submissions"
NAMES = ("KAGGLE_USERNAME", "KAGGLE_KEY", "KAGGLE_API_TOKEN")
KINDS = ("public", "private")  # the two leaderboards
KEY = ("fileName", "date", "description")  # one submission in the listing


class KaggleError(DataError):
    """Kaggle or its CLI refused or failed: one line saying what to do."""


def _colab_secret(name: str) -> str | None:
    with contextlib.suppress(Exception):  # not Colab, no such secret, or no access to it
        from google.colab import userdata

        return userdata.get(name) or None
    return None


def _complete(found: dict[str, str]) -> bool:
    user, key, token = map(found.get, NAMES)
    return bool((user and key) or token)


def kaggle_credentials() -> dict[str, str] | None:
    """The Kaggle CLI's environment from the first source with credentials (the environment, Colab
    secrets, kaggle.json, ~/.kaggle/access_token, which the CLI reads itself), else None."""
    env = dict(os.environ)
    if _complete(env):
        return env
    if _complete(found := {**env, **{n: s for n in NAMES if (s := _colab_secret(n))}}):
        return found  # asked only now: Colab may ask the user to grant access
    home = Path.home()
    for folder in (env.get("KAGGLE_CONFIG_DIR"), home / ".kaggle", home / ".config" / "kaggle"):
        if folder and (Path(folder) / "kaggle.json").is_file():
            return {**env, "KAGGLE_CONFIG_DIR": str(folder)}
    tokens = [home / ".kaggle" / name for name in ("access_token", "access_token.txt")]
    return env if any(t.is_file() and t.read_text().strip() for t in tokens) else None


def _cli_env() -> dict[str, str]:
    """The Kaggle CLI's environment, with credentials; one line when either is missing."""
    if (env := kaggle_credentials()) is None:
        raise KaggleError(f"no Kaggle credentials: {HOW_TO_ADD}")
    if shutil.which("kaggle", path=env.get("PATH")) is None:
        raise KaggleError("the kaggle command is not installed: pip install 'pcamlib[kaggle]'")
    return env


def download_competition(out: str | os.PathLike = FULL_DATA, *, force: bool = False) -> Path:
    """The competition unpacked in ``out`` (train/, test/…) unless there: the CLI's zip is kept
    in ``OUT.download/`` until unpacked into ``OUT.partial/``, which becomes ``out`` when whole."""
    out = resolve_out(out)
    if (out / "train_labels.csv").is_file() and not force:
        return out
    env, folder = _cli_env(), out.with_name(out.name + ".download")
    folder.mkdir(parents=True, exist_ok=True)
    archive = folder / f"{COMPETITION}.zip"
    command = ["kaggle", "competitions", "download", "-c", COMPETITION, "-p", str(folder)]
    if not zipfile.is_zipfile(archive):  # missing, or cut short by an interruption
        archive.unlink(missing_ok=True)
        if code := subprocess.run(command, env=env).returncode:
            why = f"check the credentials and that you accepted the {RULES}; rerun to resume"
            raise DataError(f"kaggle download failed (exit {code}); {why}")
    if not zipfile.is_zipfile(archive):
        archive.unlink(missing_ok=True)
        raise DataError(f"{archive}: the download is not a readable zip archive; rerun to fetch it")
    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)  # an interrupted unpack starts over
    with zipfile.ZipFile(archive) as zf:
        for member in tqdm(zf.infolist(), desc="unpacking", unit="file", mininterval=1):
            zf.extract(member, partial)
    if not (partial / "train_labels.csv").is_file():
        raise DataError(f"{archive}: the archive has no train_labels.csv")
    shutil.rmtree(out, ignore_errors=True)
    os.replace(partial, out)
    shutil.rmtree(folder, ignore_errors=True)
    return out


def kaggle_scores(run_dir: str | os.PathLike) -> dict[str, float]:
    """``{"kaggle_public", "kaggle_private"}`` of a run's submission, NaN when none was scored."""
    path = Path(run_dir) / RECORD
    try:
        record = json.loads(path.read_text()) if path.is_file() else {}
        values = [record.get(key) for key in KINDS]
    except (ValueError, AttributeError) as exc:
        raise KaggleError(f"{path}: unreadable ({exc})") from None
    if not all(v is None or isinstance(v, int | float) for v in values):
        raise KaggleError(f"{path}: public/private must be numbers or null, got {values}")
    scores = [float("nan" if v is None else v) for v in values]
    return dict(zip(("kaggle_public", "kaggle_private"), scores, strict=True))


def _kaggle(args: list[str], env: dict[str, str]) -> tuple[str, str, int]:
    """(stdout, all output, exit status) of one CLI call, scrubbed of the keys it could echo."""
    run = dict(env=env, capture_output=True, text=True, timeout=CLI_TIMEOUT_S)
    try:
        done = subprocess.run(["kaggle", *args], **run)
    except subprocess.TimeoutExpired:
        raise KaggleError(f"kaggle {' '.join(args[:2])}: no answer in {CLI_TIMEOUT_S} s") from None
    home = Path.home() / ".kaggle"
    files = [Path(env.get("KAGGLE_CONFIG_DIR") or home) / "kaggle.json", home / "access_token"]
    texts = [path.read_text() for path in files if path.is_file()]
    secrets = [env.get("KAGGLE_KEY", ""), env.get("KAGGLE_API_TOKEN", ""), *map(str.strip, texts)]
    out, err = done.stdout, done.stderr
    for secret in secrets + re.findall(r'"key"\s*:\s*"([^"]+)"', "".join(texts)):
        if len(secret) >= 4:  # a blank or tiny value would scrub ordinary text
            out, err = out.replace(secret, "***"), err.replace(secret, "***")
    return out, out + "\n" + err, done.returncode


def _failure(what: str, output: str, code: int) -> KaggleError:
    """The one line for a failed CLI call: rules, credentials, or what the server said."""
    if re.search(r"\b403\b|forbidden", output, re.I):
        why = f"403 Forbidden: accept the {RULES}/rules with the account of these credentials"
        return KaggleError(f"kaggle {what}: {why}, then rerun")
    if re.search(r"\b401\b|unauthori[sz]ed|must authenticate|invalid credentials", output, re.I):
        return KaggleError(f"kaggle {what}: the credentials were rejected; {HOW_TO_ADD}")
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    said = next((line for line in reversed(lines) if not line.startswith("Warning:")), "")
    return KaggleError(f"kaggle {what} failed (exit {code}): {said or 'no output'}")


def _submissions(env: dict[str, str]) -> list[dict[str, str]]:
    """Your submissions, newest first, from ``--csv`` output that may start with warnings."""
    out, text, code = _kaggle(["competitions", "submissions", "-c", COMPETITION, "--csv"], env)
    lines = out.splitlines()
    header = next((i for i, line in enumerate(lines) if line.startswith("fileName,")), None)
    if code == 0 and header is not None:
        return list(csv.DictReader(lines[header:]))
    if code == 0 and "no submissions found" in out.lower():
        return []
    raise _failure("competitions submissions", text, code)


def _wait(env: dict, name: str, before: set, timeout: float, poll: float) -> tuple[dict, str]:
    """The new submission of ``name`` and its status ('complete', 'pending', 'error', '') once
    scored, or as they are when ``timeout`` runs out."""
    deadline = time.monotonic() + timeout
    with tqdm(desc="waiting for Kaggle's score", unit=" polls") as bar:
        while True:
            new = [r for r in _submissions(env) if tuple(map(r.get, KEY)) not in before]
            row = next((r for r in new if r.get("fileName") == name), {})
            status = row.get("status", "").rsplit(".", 1)[-1].strip().lower()  # SubmissionStatus.X
            if status in ("complete", "error") or time.monotonic() >= deadline:
                return row, status
            time.sleep(max(0.0, min(poll, deadline - time.monotonic())))
            bar.update()


def _validate(path: Path, data: str | os.PathLike | None) -> None:
    """Check against ``data``'s test ids (default: the full data's, Kaggle input's), else rows."""
    if data is None:
        listings = [resolve_out(FULL_DATA), KAGGLE_INPUT]
        data = next((p for p in listings if (p / "sample_submission.csv").is_file()), None)
    frame = check_submission(path, expected_test_ids(data) if data is not None else None)
    if data is None and len(frame) != KAGGLE_TEST_ROWS:
        why = f"the competition's test set has {KAGGLE_TEST_ROWS:,} (a submission for the sample?)"
        raise KaggleError(f"{path}: {len(frame):,} rows, but {why}; --data DIR checks the ids")


def submit_file(file, message: str, *, run=None, data=None, timeout=600.0, poll=10.0) -> dict:
    """Check ``file`` and its ``run`` (default: the one ``write_submission`` noted), submit it,
    wait up to ``timeout`` s for its score, print it, record it in ``RUN_DIR/kaggle.json``."""
    path = Path(file)
    _validate(path, data)
    run = run if run is not None else submission_run(path)
    # Its directory (check_no_leak's first source) gets the record; the shipped model cannot leak.
    folder = None if run is None or is_pretrained(run) else Path(check_no_leak(run)[0].model)
    env = _cli_env()
    before = {tuple(map(row.get, KEY)) for row in _submissions(env)}
    submitted_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
    _, text, code = _kaggle(
        ["competitions", "submit", "-c", COMPETITION, "-f", str(path), "-m", message], env
    )
    # Old CLIs exit 0 on errors: success is their 'Successfully submitted', or no error printed.
    failed = code or re.search(r"forbidden|unauthori[sz]ed|could not|error|you must", text, re.I)
    if failed and "successfully submitted" not in text.lower():
        raise _failure("competitions submit", text, code)
    row, status = _wait(env, path.name, before, timeout, poll)
    record = {"file": str(path.resolve()), "message": message, "submitted_at": submitted_at}
    for kind in KINDS:  # '' or 'nan' until scored
        score = row.get(f"{kind}Score") or ""
        record[kind] = float(score) if re.fullmatch(r"\d*\.?\d+(e-?\d+)?", score) else None
    record["status"] = status or "not listed"
    kept = "" if folder is None else f"; recorded in {folder / RECORD}"
    if folder is not None:
        atomic_write_text(folder / RECORD, json.dumps(record, indent=1) + "\n")
    if record["status"] == "error":
        raise KaggleError(f"{path}: Kaggle could not score this submission; see {SUBMISSIONS}")
    if record["status"] != "complete":
        why = f"not scored within {timeout:g} s (status {record['status']}); its score will show"
        raise KaggleError(f"{path}: submitted, but {why} at {SUBMISSIONS}{kept}")
    shown = {k: "n/a" if record[k] is None else f"{record[k]:.4f}" for k in KINDS}
    print(f"{path.name}: Kaggle public {shown['public']}, private {shown['private']}{kept}")
    return record


def submit(file: str | os.PathLike, message: str, **options) -> dict | None:
    """The notebooks' one call: :func:`submit_file`, or None and a hint without credentials."""
    if kaggle_credentials() is None:
        print(f"No Kaggle credentials, so nothing was submitted. To submit, {HOW_TO_ADD}.")
        return None
    return submit_file(file, message, **options)


def get_full_data(
    out: str | os.PathLike | None = None, *, source: str = "kaggle", mirror: str | None = None
) -> Path | None:
    """The notebooks' one call: the full data in ``out``, downloaded once. ``"kaggle"``: the
    competition (on Kaggle, its attached input), or without credentials a one-line hint and None,
    so the series goes on with the sample. ``"pcam"``: PCam's release."""
    if source not in DEFAULT_OUT:
        raise ValueError(f"source must be one of {', '.join(DEFAULT_OUT)}; got {source!r}")
    out = resolve_out(out if out is not None else DEFAULT_OUT[source])
    if source == "pcam":
        return download_pcam(out, mirror=mirror)
    if mirror is not None:
        raise ValueError("mirror is for source='pcam'; the Kaggle data comes from the Kaggle CLI")
    if on_kaggle():  # Kaggle Notebooks: the competition is attached as (read-only) input
        return KAGGLE_INPUT
    if kaggle_credentials() is None and not (out / "train_labels.csv").is_file():
        print(
            "No Kaggle credentials: the series uses the embedded sample. To get the full data, "
            f"{HOW_TO_ADD}."
        )
        return None
    return download_competition(out)
