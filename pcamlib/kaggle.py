"""Submit to the Kaggle competition, wait for the score, and keep it next to the run.

``pcam submit FILE -m MSG`` (or :func:`submit` from a notebook) validates the file, refuses a
model whose Kaggle score would be leaked (:func:`pcamlib.submission.check_no_leak`), submits
with the Kaggle CLI, polls until Kaggle has scored it, prints the public and private scores and
writes them to ``RUN_DIR/kaggle.json`` (:func:`kaggle_scores` reads them back). Credentials
(:func:`pcamlib.download.kaggle_credentials`) reach only the CLI's environment; whatever the
CLI prints is scrubbed of them before pcamlib shows any of it.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
import shutil
import subprocess
import time
from datetime import datetime, timezone
from pathlib import Path

from .cache import atomic_write_text
from .config import KAGGLE_INPUT
from .download import COMPETITION, DEFAULT_OUT, HOW_TO_ADD, kaggle_credentials, resolve_out
from .submission import check_no_leak, check_submission, expected_test_ids, submission_run

__all__ = ["KaggleError", "kaggle_scores", "submit", "submit_file"]

KAGGLE_TEST_ROWS = 57_458  # the competition's test set
RECORD = "kaggle.json"
CLI_TIMEOUT_S = 300  # one CLI call (an upload included)
NO_CLI = "the kaggle command is not installed: pip install 'pcamlib[kaggle]'"
SUBMISSIONS = f"kaggle.com/c/{COMPETITION}/submissions"


class KaggleError(ValueError):
    """Kaggle or its CLI refused or failed: one line saying what to do."""


def kaggle_scores(run_dir: str | os.PathLike[str]) -> dict[str, float]:
    """``{"kaggle_public", "kaggle_private"}`` of a run's submission, NaN when none was scored."""
    path = Path(run_dir) / RECORD
    if not path.is_file():
        return {"kaggle_public": math.nan, "kaggle_private": math.nan}
    try:
        record = json.loads(path.read_text())
        values = [record.get(key) for key in ("public", "private")]
    except (ValueError, AttributeError) as exc:
        raise KaggleError(f"{path}: unreadable ({exc})") from None
    if not all(v is None or isinstance(v, int | float) for v in values):
        raise KaggleError(f"{path}: public/private must be numbers or null, got {values}")
    public, private = (math.nan if v is None else float(v) for v in values)
    return {"kaggle_public": public, "kaggle_private": private}


def _secrets(env: dict[str, str]) -> list[str]:
    """Every credential value the CLI could echo, to scrub from what pcamlib shows."""
    found = [env.get("KAGGLE_KEY", ""), env.get("KAGGLE_API_TOKEN", "")]
    folder = env.get("KAGGLE_CONFIG_DIR")
    files = [Path(folder) / "kaggle.json"] if folder else []
    files += [Path.home() / ".kaggle" / "kaggle.json", Path.home() / ".kaggle" / "access_token"]
    for path in files:
        try:
            text = path.read_text()
        except OSError:
            continue
        try:
            found.append(str(json.loads(text).get("key", "")))
        except (ValueError, AttributeError):
            found.append(text.strip())
    return [s for s in found if len(s) >= 4]


def _scrub(text: str, secrets: list[str]) -> str:
    for secret in secrets:
        text = text.replace(secret, "***")
    return text


def _kaggle(args: list[str], env: dict[str, str]) -> tuple[str, str, int]:
    """(stdout, stderr, exit status) of one Kaggle CLI call, credentials scrubbed."""
    try:
        done = subprocess.run(
            ["kaggle", *args], env=env, capture_output=True, text=True, timeout=CLI_TIMEOUT_S
        )
    except FileNotFoundError:
        raise KaggleError(NO_CLI) from None
    except subprocess.TimeoutExpired:
        raise KaggleError(f"kaggle {' '.join(args[:2])}: no answer in {CLI_TIMEOUT_S} s") from None
    secrets = _secrets(env)
    return _scrub(done.stdout, secrets), _scrub(done.stderr, secrets), done.returncode


def _failure(what: str, output: str, code: int) -> KaggleError:
    """The one line for a failed CLI call: rules, credentials, or what the server said."""
    if re.search(r"\b403\b|forbidden", output, re.I):
        return KaggleError(
            f"kaggle {what}: 403 Forbidden: accept the rules at kaggle.com/c/{COMPETITION}/rules "
            "with the account of these credentials, then rerun"
        )
    if re.search(r"\b401\b|unauthori[sz]ed|must authenticate|invalid credentials", output, re.I):
        return KaggleError(f"kaggle {what}: the credentials were rejected; {HOW_TO_ADD}")
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    said = next((line for line in reversed(lines) if not line.startswith("Warning:")), "")
    return KaggleError(f"kaggle {what} failed (exit {code}): {said or 'no output'}")


def _submit(path: Path, message: str, env: dict[str, str]) -> None:
    """``kaggle competitions submit``; success is its 'Successfully submitted' line, or a clean
    exit without any error in its output (the scores are polled either way)."""
    args = ["competitions", "submit", "-c", COMPETITION, "-f", str(path), "-m", message]
    out, err, code = _kaggle(args, env)
    text = out + "\n" + err
    if "successfully submitted" in text.lower():
        return
    if code != 0 or re.search(r"forbidden|unauthori[sz]ed|could not|error|you must", text, re.I):
        raise _failure("competitions submit", text, code)


def _submissions(env: dict[str, str]) -> list[dict[str, str]]:
    """Your submissions, newest first, from ``--csv`` output that may start with warnings."""
    out, err, code = _kaggle(["competitions", "submissions", "-c", COMPETITION, "--csv"], env)
    if code != 0:
        raise _failure("competitions submissions", out + "\n" + err, code)
    lines = out.splitlines()
    header = next((i for i, line in enumerate(lines) if line.startswith("fileName,")), None)
    if header is None:
        if "no submissions found" in out.lower():
            return []
        raise _failure("competitions submissions", out + "\n" + err, code)
    return list(csv.DictReader(io.StringIO("\n".join(lines[header:]))))


def _key(row: dict[str, str]) -> tuple[str, ...]:
    return tuple(row.get(k, "") for k in ("fileName", "date", "description"))


def _status(row: dict[str, str] | None) -> str:
    """'complete', 'pending' or 'error' (newer CLIs print ``SubmissionStatus.COMPLETE``)."""
    return "" if row is None else row.get("status", "").rsplit(".", 1)[-1].strip().lower()


def _score(text: str | None) -> float | None:
    try:
        value = float(text or "")
    except ValueError:
        return None
    return None if math.isnan(value) else value


def _wait(env, name: str, before: set, timeout: float, poll: float, progress: bool):
    """The new submission of ``name`` once scored, or as it is when ``timeout`` runs out."""
    from tqdm.auto import tqdm

    start = time.monotonic()
    bar = tqdm(
        total=round(timeout), desc="waiting for Kaggle's score", unit="s", disable=not progress
    )
    with bar:
        while True:
            new = [r for r in _submissions(env) if _key(r) not in before]
            row = next((r for r in new if r.get("fileName") == name), None)
            elapsed = time.monotonic() - start
            if _status(row) in ("complete", "error") or elapsed >= timeout:
                return row
            time.sleep(min(poll, timeout - elapsed))
            bar.update(min(round(time.monotonic() - start), bar.total) - bar.n)


def _validate(path: Path, data: str | os.PathLike[str] | None) -> None:
    """``check_submission`` against the test ids of ``data`` (default: the full data's
    sample_submission.csv, in ``data/full`` or Kaggle's input), else the competition's row
    count."""
    if data is None:
        listings = [folder / "sample_submission.csv" for folder in (full_data(), KAGGLE_INPUT)]
        data = next((listing for listing in listings if listing.is_file()), None)
    frame = check_submission(path, expected_test_ids(data) if data is not None else None)
    if data is None and len(frame) != KAGGLE_TEST_ROWS:
        raise KaggleError(
            f"{path}: {len(frame):,} rows, but the competition's test set has "
            f"{KAGGLE_TEST_ROWS:,} (a submission for the sample?); --data DIR checks the ids"
        )


def full_data() -> Path:
    """Where ``pcam download`` puts the competition (``data/full`` of the project)."""
    return resolve_out(DEFAULT_OUT["kaggle"])


def _record_dir(run: str | os.PathLike[str] | None) -> Path | None:
    """The run directory to record the scores in (None: unknown, or the shipped model)."""
    if run is None:
        return None
    path = Path(run)
    folder = path if path.is_dir() else path.parent
    return folder if (folder / "config.json").is_file() else None


def submit_file(
    file: str | os.PathLike[str],
    message: str,
    *,
    run: str | os.PathLike[str] | None = None,
    data: str | os.PathLike[str] | None = None,
    timeout: float = 600.0,
    poll: float = 10.0,
    progress: bool = True,
) -> dict:
    """Validate, leak-check, submit ``file``, wait up to ``timeout`` s for its score; the record.

    ``run`` is the run that made the file (default: the one ``write_submission(run=…)``
    recorded, or the run directory the file is in); its scores go to ``RUN_DIR/kaggle.json``,
    also when Kaggle has not scored it in time (scores null). Raises :class:`KaggleError` (one
    line) for no credentials, no CLI, rules not accepted, a server error or a timeout.
    """
    path = Path(file)
    _validate(path, data)
    run = run if run is not None else submission_run(path)
    if run is not None:
        check_no_leak(run)
    env = kaggle_credentials()
    if env is None:
        raise KaggleError(f"no Kaggle credentials: {HOW_TO_ADD}")
    if shutil.which("kaggle", path=env.get("PATH")) is None:
        raise KaggleError(NO_CLI)
    before = {_key(row) for row in _submissions(env)}
    submitted_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
    _submit(path, message, env)
    row = _wait(env, path.name, before, timeout, poll, progress)
    record = {
        "file": str(path.resolve()),
        "message": message,
        "public": _score(row and row.get("publicScore")),
        "private": _score(row and row.get("privateScore")),
        "status": _status(row) or "not listed",
        "submitted_at": submitted_at,
    }
    run_dir = _record_dir(run)
    if run_dir is not None:
        atomic_write_text(run_dir / RECORD, json.dumps(record, indent=1) + "\n", durable=True)
    return _report(path, record, run_dir, timeout)


def _report(path: Path, record: dict, run_dir: Path | None, timeout: float) -> dict:
    """Print the scores (one line), or raise for a submission Kaggle did not score."""
    kept = f"; recorded in {run_dir / RECORD}" if run_dir is not None else ""
    if record["status"] == "error":
        raise KaggleError(f"{path}: Kaggle could not score this submission; see {SUBMISSIONS}")
    if record["status"] != "complete":
        raise KaggleError(
            f"{path}: submitted, but not scored within {timeout:g} s (status "
            f"{record['status']}); its score will show at {SUBMISSIONS}{kept}"
        )
    public, private = (
        "n/a" if record[k] is None else f"{record[k]:.4f}" for k in ("public", "private")
    )
    print(f"{path.name}: Kaggle public {public}, private {private}{kept}")
    return record


def submit(
    file: str | os.PathLike[str],
    message: str,
    *,
    run: str | os.PathLike[str] | None = None,
    **options,
) -> dict | None:
    """The notebooks' one call: :func:`submit_file`, or None (and a one-line hint) without
    Kaggle credentials."""
    if kaggle_credentials() is None:
        print(f"No Kaggle credentials, so nothing was submitted. To submit, {HOW_TO_ADD}.")
        return None
    return submit_file(file, message, run=run, **options)
