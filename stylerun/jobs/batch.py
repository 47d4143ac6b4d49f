"""Batches of transfers that survive failures: the jobs, their checks, the manifest, the driver.

A batch is a list of jobs, read from a JSON Lines or CSV file (`read_specs`) or made as
the cross product of contents and styles (`grid_specs`), run into one folder, OUTDIR:

* `plan` checks every job before any runs: its options through the option model, its
  inputs on disk, its output inside OUTDIR, and the engine's `check_job`. A job that
  fails a check is recorded as failed, with the reason, and the others still run.
* Each job gets an id, a hash of what decides its picture and where it goes (input file
  contents, options, output name), and `OUTDIR/manifest.jsonl` keeps one record per job,
  rewritten atomically whenever a job changes state. A rerun of the same command skips the
  jobs whose record says done and whose output exists, retries failed ones (unless asked
  not to) and resumes stopped ones from ``OUTDIR/.checkpoints/<id>.ckpt.npz``.
* `Batch.run` hands the jobs to an executor (`jobs/executors.py`: local processes or Ray)
  and records what comes back. A failure inside a job is a failed record, never the end
  of the batch; a stop request (Ctrl-C) lets the running jobs write their checkpoints.

Only a JOBS file that cannot be read as jobs at all (missing, not JSON Lines or CSV,
empty, a line that is not a JSON object) raises `InputError`.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import shutil
import stat
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath
from typing import Any

from stylerun.engine.checkpoint import SUFFIX, checkpoint_every
from stylerun.engine.run import PATH_OPTIONS, Job, check_job
from stylerun.errors import InputError, StylerunError
from stylerun.files.atomic import write_bytes
from stylerun.files.hashing import file_sha256
from stylerun.files.limits import check_regular_file
from stylerun.jobs.worker import CHECKPOINTS, WORK, Task, TaskResult, error_text, failed
from stylerun.options import RESUMABLE, TransferOptions
from stylerun.records import json_value

MANIFEST = "manifest.jsonl"
#: Options the batch chooses for each job (a job or flag giving one is refused).
BATCH_DECIDES = ("checkpoint",)
#: Options that say where and how a job runs, not what it paints: not part of its id.
NOT_IDENTITY = (*RESUMABLE, "checkpoint_every", "save_every")
#: A JOBS file, and a manifest, are text of at most this many bytes.
MAX_JOBS_BYTES = 64 << 20


@dataclass(frozen=True)
class JobSpec:
    """One job as written: where (``jobs.jsonl:3``), its fields, and the folder its paths are relative to."""

    source: str
    data: dict[str, Any]
    base: Path
    error: str | None = None


# --- reading jobs ----------------------------------------------------------------------------------


def read_specs(path: str | Path) -> list[JobSpec]:
    """The jobs of a JSON Lines file (one object a line; blank and ``#`` lines skipped) or a CSV file
    with a header row. Which one: by the suffix (.jsonl, .ndjson, .json, .csv), else by the content."""
    path = Path(path)
    check_regular_file(path, InputError, "jobs file")
    if path.stat().st_size > MAX_JOBS_BYTES:
        raise InputError(f"{path} is larger than {MAX_JOBS_BYTES:,} bytes; split it into several batches")
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError:
        raise InputError(f"{path} is not UTF-8 text; JOBS must be JSON Lines or CSV") from None
    specs = _jsonl(path, text) if _is_jsonl(path, text) else _csv(path, text)
    if not specs:
        raise InputError(f"{path} has no jobs")
    return specs


def _is_jsonl(path: Path, text: str) -> bool:
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson", ".json"):
        return True
    if suffix == ".csv":
        return False
    first = next((line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")), "")
    return first.startswith("{")


def _jsonl(path: Path, text: str) -> list[JobSpec]:
    specs = []
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        try:
            data = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InputError(f"{path}:{number}: not JSON ({exc.msg}); JOBS must be JSON Lines (one object a line) "
                             "or CSV") from None
        if not isinstance(data, dict):
            raise InputError(f"{path}:{number}: a job must be a JSON object, got {type(data).__name__}")
        specs.append(JobSpec(f"{path.name}:{number}", data, path.parent))
    return specs


def _csv(path: Path, text: str) -> list[JobSpec]:
    reader = csv.DictReader(io.StringIO(text), skipinitialspace=True)
    try:
        header = [h.strip() for h in reader.fieldnames or []]
        if "content" not in header or "style" not in header:
            raise InputError(f"{path}: not JSON Lines, nor CSV with a header row naming the content and style "
                             "columns")
        reader.fieldnames = header
        return [_csv_spec(path, reader.line_num, row) for row in reader]
    except csv.Error as exc:
        raise InputError(f"{path}:{reader.line_num}: not CSV ({exc})") from None


def _csv_spec(path: Path, number: int, row: dict[str | None, Any]) -> JobSpec:
    """A CSV row as a job: values read as JSON where they parse (``256``, ``1e-3``, ``true``), else as
    text; `style` may list several files separated by ``;``; empty cells are left out."""
    source = f"{path.name}:{number}"
    if None in row:
        return JobSpec(source, {}, path.parent, "the row has more cells than the header")
    data: dict[str, Any] = {}
    for key, value in row.items():
        value = (value or "").strip()
        if not value:
            continue
        if key == "style":
            data[key] = [part.strip() for part in value.split(";") if part.strip()]
        elif key in ("content", "output"):
            data[key] = value
        else:
            try:
                data[key] = json.loads(value)
            except json.JSONDecodeError:
                data[key] = value
    return JobSpec(source, data, path.parent)


def grid_specs(contents: Sequence[str | Path], styles: Sequence[str | Path]) -> list[JobSpec]:
    """Every content with every style (``a.jpg;b.jpg`` is one blended style), paths relative to here."""
    if not contents or not styles:
        raise InputError("--grid needs --content FILE... and --style FILE...")
    base = Path.cwd()
    specs = []
    for content in contents:
        for style in styles:
            data = {"content": str(content), "style": [s for s in str(style).split(";") if s]}
            specs.append(JobSpec(f"grid {len(specs) + 1}", data, base))
    return specs


# --- planning --------------------------------------------------------------------------------------


@dataclass
class PlannedJob:
    """A job of the batch: as the user gave it, its id and output, and the engine's `Job` (None when refused)."""

    index: int
    source: str
    content: Any
    style: Any
    id: str = ""
    output: str | None = None  # relative to OUTDIR, forward slashes
    job: Job | None = None
    given: frozenset[str] = frozenset()  # options the job or the command line set
    error: str | None = None
    asked_output: Any = None


def plan(specs: Sequence[JobSpec], outdir: str | Path, defaults: dict[str, Any] | None = None) -> list[PlannedJob]:
    """Every job checked, with its id and output; `defaults` (options from the command line) apply to
    every job that does not set them itself. Nothing is decoded or run."""
    outdir = Path(outdir)
    try:
        outdir.mkdir(parents=True, exist_ok=True)
        for name in (CHECKPOINTS, WORK):
            own_folder(outdir, name)
        (outdir / CHECKPOINTS).mkdir(exist_ok=True)
    except OSError as exc:
        raise InputError(f"cannot use {outdir} as the output folder ({exc.strerror or exc})") from None
    entries = [_entry(index, spec, dict(defaults or {})) for index, spec in enumerate(specs, start=1)]
    _assign_outputs(entries)
    hashes: dict[tuple, str] = {}
    for entry in entries:
        if entry.error is None:
            try:
                _check(entry, outdir, hashes)
            except (StylerunError, OSError) as exc:
                entry.error, entry.job = error_text(exc), None
        if not entry.id:
            raw = {"content": entry.content, "style": entry.style, "output": entry.asked_output}
            entry.id = _digest({"refused": raw, "source": entry.source})
    return entries


def own_folder(outdir: Path, name: str) -> None:
    """Refuse OUTDIR/`name` (the batch's own folder, whose entries it removes) when it is a link or not a
    folder: the batch would otherwise write and delete through it, outside OUTDIR."""
    try:
        mode = os.lstat(outdir / name).st_mode
    except FileNotFoundError:
        return
    if stat.S_ISLNK(mode) or not stat.S_ISDIR(mode):
        kind = "a link" if stat.S_ISLNK(mode) else "not a folder"
        raise InputError(f"{outdir / name} is {kind}; the batch keeps its own files there and removes them, so it "
                         "must be a real folder inside OUTDIR (remove it)")


def _entry(index: int, spec: JobSpec, options: dict[str, Any]) -> PlannedJob:
    data = dict(spec.data)
    entry = PlannedJob(index, spec.source, data.pop("content", None), data.pop("style", None),
                  asked_output=data.pop("output", None), error=spec.error)
    if entry.error is not None:
        return entry
    try:
        decided = [name for name in BATCH_DECIDES if name in data or name in options]
        if decided:
            raise InputError(f"{decided[0]} is chosen by the batch (OUTDIR/{CHECKPOINTS}); leave it out")
        content = _file_field(entry.content, "content", spec.base)
        styles = entry.style if isinstance(entry.style, list) else [entry.style]
        if not styles or entry.style is None:
            raise InputError("a job needs a style: a path or a list of paths")
        style = tuple(_file_field(s, "style", spec.base) for s in styles)
        if entry.asked_output is not None and (not isinstance(entry.asked_output, str) or not entry.asked_output):
            raise InputError(f"output must be a file name inside OUTDIR, got {entry.asked_output!r}")
        options.update(_resolved_paths(data, spec.base))
        entry.given = frozenset(options)
        entry.job = Job(content, style, TransferOptions.from_dict(options))
    except StylerunError as exc:
        entry.error = error_text(exc)
    return entry


def _file_field(value: Any, name: str, base: Path) -> str:
    if not isinstance(value, str) or not value:
        raise InputError(f"a job needs {name} as a file path, got {value!r}")
    return str(base / value)


def _resolved_paths(data: dict[str, Any], base: Path) -> dict[str, Any]:
    """The job's options with the files they name taken relative to the JOBS file's folder."""
    data = dict(data)
    for name in PATH_OPTIONS:
        value = data.get(name)
        if isinstance(value, str) and value:
            data[name] = str(base / value)
        elif isinstance(value, list):
            data[name] = [str(base / v) if isinstance(v, str) and v else v for v in value]
    return data


def _assign_outputs(entries: list[PlannedJob]) -> None:
    """Outputs as asked (a second job asking for the same one is refused), then the derived
    ``<content>__<style>+<style>.png`` names, made unique in job order so a rerun names them alike."""
    taken: dict[str, int] = {}
    for entry in entries:
        if entry.error is None and entry.asked_output is not None:
            try:
                output = inside(entry.asked_output)
            except InputError as exc:
                entry.error = str(exc)
                continue
            if output in taken:
                entry.error = f"output {output} is also the output of job {taken[output]}"
            else:
                taken[output], entry.output = entry.index, output
    for entry in entries:
        if entry.error is None and entry.output is None:
            stem = "__".join([_stem(entry.job.content), "+".join(_stem(s) for s in entry.job.style)])
            output, more = f"{stem}.png", 2
            while output in taken:
                output, more = f"{stem}-{more}.png", more + 1
            taken[output], entry.output = entry.index, output
    _refuse_overwritten(entries)


def _refuse_overwritten(entries: list[PlannedJob]) -> None:
    """Of a job whose output is another job's `save_every` picture (``a_0001.png`` beside ``a.png``) and that
    other job, the later is refused: they would overwrite each other, and the manifest would call both done."""
    savers: dict[tuple[str, str, str], list[PlannedJob]] = {}
    for entry in entries:
        if entry.error is None and entry.output is not None and entry.job.options.save_every > 0:
            out = PurePosixPath(entry.output)
            savers.setdefault((str(out.parent), out.stem, out.suffix), []).append(entry)
    for entry in entries if savers else ():
        out = PurePosixPath(entry.output or "")
        stem, _, number = out.stem.rpartition("_")
        for saver in savers.get((str(out.parent), stem, out.suffix), []) if number.isdigit() else ():
            every, last = saver.job.options.save_every, saver.job.options.iterations
            if entry.error or saver.error or f"{int(number):04d}" != number or not 0 < int(number) <= last \
                    or int(number) % every:
                continue
            later = max(entry, saver, key=lambda e: e.index)
            later.error = (f"output {entry.output} of job {entry.index} is also a picture that job {saver.index} "
                           f"saves every {every} iterations (save_every); choose another output")


def _stem(path: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in Path(path).stem)[:60] or "image"


def inside(output: str) -> str:
    """An output name relative to OUTDIR, refused when absolute, climbing out (``..``) or reserved."""
    path = PurePosixPath(output)
    if path.is_absolute() or output.startswith("\\") or (len(output) > 1 and output[1] == ":"):
        raise InputError(f"output {output} must be a path inside OUTDIR, not an absolute path")
    if ".." in path.parts or not path.parts or path.name in ("", "."):
        raise InputError(f"output {output} must be a file name inside OUTDIR (no '..')")
    if path.parts[0] in (CHECKPOINTS, WORK) or str(path) == MANIFEST:
        raise InputError(f"output {output} is reserved for the batch's own files")
    return str(path)


def target(outdir: Path, output: str) -> Path:
    """OUTDIR/output, refused when a link on the way (or the file itself) leads outside OUTDIR."""
    path = outdir / inside(output)
    if not path.resolve().is_relative_to(outdir.resolve()):
        raise InputError(f"output {output} leads outside OUTDIR through a link; refusing to write there")
    return path


def _check(entry: PlannedJob, outdir: Path, hashes: dict[tuple, str]) -> None:
    """The checks that need the disk: the output's place, the inputs, then the engine's own."""
    job = entry.job
    output = target(outdir, entry.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    files = [("content image", job.content), *(("style image", s) for s in job.style)]
    files += [(name, p) for name in PATH_OPTIONS for p in _paths(getattr(job.options, name))]
    for what, path in files:
        check_regular_file(path, InputError, what)
    entry.id = _digest({
        "content": _file_hash(job.content, hashes), "style": [_file_hash(s, hashes) for s in job.style],
        "options": {k: v for k, v in job.options.to_dict().items() if k not in NOT_IDENTITY + PATH_OPTIONS},
        "files": {name: [_file_hash(p, hashes) for p in _paths(getattr(job.options, name))] for name in PATH_OPTIONS},
        "output": entry.output,
    })
    options = job.options.replace(checkpoint=str(outdir / CHECKPOINTS / f"{entry.id}{SUFFIX}"))
    if "checkpoint_every" not in entry.given:
        options = options.replace(checkpoint_every=checkpoint_every(options))
    entry.job = replace(job, options=options, output=output)
    check_job(entry.job)


def _paths(value: Any) -> list[str]:
    if value is None:
        return []
    return [str(v) for v in value] if isinstance(value, (list, tuple)) else [str(value)]


def _file_hash(path: str, hashes: dict[tuple, str]) -> str:
    """An input's content hash (so a changed file reruns its jobs), read once per batch per file."""
    st = os.stat(path)
    key = (os.path.realpath(path), st.st_mtime_ns, st.st_size)
    if key not in hashes:
        hashes[key] = file_sha256(path)[:16]
    return hashes[key]


def _digest(data: Any) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]


# --- the manifest ----------------------------------------------------------------------------------


def read_manifest(outdir: Path) -> tuple[dict[str, dict[str, Any]], str | None]:
    """(records by id, the file's text) of an earlier run; lines that are not records are passed over."""
    path = outdir / MANIFEST
    if not path.is_file() or path.stat().st_size > MAX_JOBS_BYTES:
        return {}, None
    text = path.read_text(encoding="utf-8", errors="replace")
    records = {}
    for line in text.splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and isinstance(record.get("id"), str) and isinstance(record.get("status"), str):
            records[record["id"]] = record
    return records, text


def new_record(entry: PlannedJob, status: str) -> dict[str, Any]:
    return {"id": entry.id, "index": entry.index, "source": entry.source, "status": status,
            "content": entry.content, "style": entry.style, "output": entry.output, "loss": None,
            "content_loss": None, "style_loss": None, "alpha": None, "beta": None, "iterations": None,
            "seconds": None, "error": entry.error, "checkpoint": None, "resumed_from": None, "warnings": []}


class Manifest:
    """`OUTDIR/manifest.jsonl`, one record per job in job order; written atomically, and only when it changed."""

    def __init__(self, path: Path, records: list[dict[str, Any]], text: str | None):
        self.path, self.records, self.text = path, records, text

    def write(self) -> None:
        text = "".join(json.dumps({k: json_value(v) for k, v in r.items()}) + "\n" for r in self.records)
        if text != self.text:
            write_bytes(self.path, text.encode())
            self.text = text


# --- running ---------------------------------------------------------------------------------------


class BatchListener:
    """What a front end hears while a batch runs; every method is optional."""

    def started(self, entry: PlannedJob) -> None: ...

    def finished(self, entry: PlannedJob, record: dict[str, Any]) -> None: ...

    def stopping(self) -> None: ...


@dataclass
class Summary:
    counts: dict[str, int] = field(default_factory=dict)
    interrupted: bool = False

    def count(self, status: str) -> int:
        return self.counts.get(status, 0)


class Batch:
    """The planned jobs against an earlier manifest: which are done, which to run, and the records."""

    def __init__(self, entries: list[PlannedJob], outdir: str | Path, retry_failed: bool = True):
        self.outdir = Path(outdir)
        previous, text = read_manifest(self.outdir)
        self.entries, self.todo, self.skipped = entries, [], 0
        records = []
        for entry in entries:
            old = previous.get(entry.id) if entry.error is None else None
            if old is not None and self._keeps(entry, old, retry_failed):
                record = {**old, "index": entry.index, "source": entry.source}
                self.skipped += 1
            else:
                record = new_record(entry, "failed" if entry.error else "pending")
                if entry.error is None:
                    self.todo.append(entry)
            records.append(record)
        self.manifest = Manifest(self.outdir / MANIFEST, records, text)
        # work folders left by a batch that was killed outright: their jobs start again (one batch per OUTDIR)
        own_folder(self.outdir, WORK)
        for stale in (self.outdir / WORK).glob("*"):
            if stat.S_ISDIR(os.lstat(stale).st_mode):  # a real folder; a link is never followed
                shutil.rmtree(stale, ignore_errors=True)

    def _keeps(self, entry: PlannedJob, old: dict[str, Any], retry_failed: bool) -> bool:
        if old["status"] == "done":
            return (self.outdir / entry.output).is_file()
        return old["status"] == "failed" and not retry_failed

    def record(self, entry: PlannedJob) -> dict[str, Any]:
        return self.manifest.records[entry.index - 1]

    def checkpoint(self, entry: PlannedJob) -> Path:
        return self.outdir / CHECKPOINTS / f"{entry.id}{SUFFIX}"

    def task(self, entry: PlannedJob, threads: int) -> Task:
        """What a worker gets: the checked job, with the batch's thread count unless the job set its own."""
        job, ckpt = entry.job, self.checkpoint(entry)
        options = job.options if "threads" in entry.given else job.options.replace(threads=threads)
        return Task(entry.id, job.content, job.style, options, entry.output, str(self.outdir),
                    str(ckpt) if ckpt.is_file() else None)

    def run(self, executor: Any, listener: BatchListener | None = None,
            stop: Callable[[], bool] | None = None) -> Summary:
        """Run the jobs to do on a started `executor`, at most its `slots` at a time, until all
        are done or `stop` says so; then the running ones are asked to stop and waited for."""
        listener, stop = listener or BatchListener(), stop or (lambda: False)
        self.manifest.write()
        pending, running, stopping = deque(self.todo), {}, False
        while running or (pending and not stopping):
            while pending and len(running) < executor.slots and not stop():
                entry = pending.popleft()
                listener.started(entry)
                try:
                    running[executor.submit(self.task(entry, executor.threads))] = entry
                except OSError as exc:  # an input removed since the checks, as a Ray executor reads it
                    listener.finished(entry, self.finish(entry, failed(entry.id, f"cannot read an input: {exc}")))
                    continue
                self.record(entry)["status"] = "running"
            if stop() and not stopping:
                stopping = True
                executor.request_stop()
                listener.stopping()
            self.manifest.write()
            for handle, result in executor.wait(list(running), 0.25) if running else ():
                entry = running.pop(handle)
                listener.finished(entry, self.finish(entry, result))
        return self.summary(stopping)

    def finish(self, entry: PlannedJob, result: TaskResult) -> dict[str, Any]:
        """Record `result`: write what came back as bytes, keep the checkpoint only of a stopped job."""
        ckpt = self.checkpoint(entry)
        try:
            self.land(result, ckpt)
        except (OSError, StylerunError) as exc:
            result = replace(result, status="failed", error=f"cannot write the result: {exc}")
        if result.status != "interrupted":
            ckpt.unlink(missing_ok=True)
        record = self.record(entry)
        record.update(status=result.status, loss=result.loss, content_loss=result.content_loss,
                      style_loss=result.style_loss, alpha=result.alpha, beta=result.beta,
                      iterations=result.iterations, seconds=result.seconds,
                      error=result.error, resumed_from=result.resumed_from, warnings=list(result.warnings),
                      checkpoint=str(PurePosixPath(CHECKPOINTS, ckpt.name)) if ckpt.is_file() else None)
        self.manifest.write()
        return record

    def land(self, result: TaskResult, ckpt: Path) -> None:
        for name, data in result.files.items():
            path = target(self.outdir, name)
            path.parent.mkdir(parents=True, exist_ok=True)
            write_bytes(path, data)
        if result.checkpoint is not None:
            write_bytes(ckpt, result.checkpoint)

    def tidy(self) -> None:
        """Remove the batch's own folders where they are empty (nothing to resume, nothing running)."""
        for name in (WORK, CHECKPOINTS):
            try:
                (self.outdir / name).rmdir()
            except OSError:  # not empty, or not there
                pass

    def summary(self, interrupted: bool = False) -> Summary:
        counts: dict[str, int] = {}
        for record in self.manifest.records:
            counts[record["status"]] = counts.get(record["status"], 0) + 1
        return Summary(counts, interrupted)
