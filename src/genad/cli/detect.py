"""`genad detect`: find anomalies in files or folders: a line per input as it is scored, then a
table (or machine-readable rows: --format jsonl | csv), and a report folder (--out)."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import re
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Generator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import typer

from genad import registry
from genad.cli.app import app
from genad.detector import Detector
from genad.errors import GenadError
from genad.evaluate import public_params
from genad.run import RunFolder, deferred_interrupts, pending, run_detector, stops_on_signals
from genad.types import ImageSample, PointCloudSample, Result, Sample, TimeSeriesSample, VideoSample

_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]*$")


def parse_params(items: list[str] | None) -> dict[str, Any]:
    """["shots=4", "backbone=lite1", "x=null"] -> {"shots": 4, "backbone": "lite1", "x": None}.
    Values are read as JSON when they parse (numbers, true/false, null, lists), else as text."""
    params: dict[str, Any] = {}
    for item in items or []:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not _KEY.match(key):
            raise GenadError(f"bad --param {item!r}: write key=value, e.g. --param grid=32")
        try:
            value: Any = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        params[key.replace("-", "_")] = value
    return params


def _safe_name(sample_id: str) -> str:
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", sample_id.replace("/", "__")).strip("._")
    return name[:150] or "sample"


def _pick_detector(name: str | None, modality: str, params: dict[str, Any]) -> Detector:
    if name is None:
        name = registry.DEFAULT_BY_MODALITY.get(modality, registry.DEFAULT_DETECTOR)
        try:
            registry.get(name)
        except (GenadError, ModuleNotFoundError):
            if modality != "image":
                raise
            typer.secho(f"note: detector {name!r} is not installed; using 'baseline'", err=True)
            name = "baseline"
    det = registry.create(name, **params)
    if modality not in det.modalities:
        raise GenadError(
            f"detector {name!r} reads {', '.join(det.modalities)}, not {modality}: "
            f"pick another with --detector (see `genad detectors`)"
        )
    return det


def threshold_options(params: dict[str, Any], threshold: float | None, calibration: Path | None) -> dict[str, Any]:
    """`-t` and `--calibration FILE` as the detector option `threshold` (normalised units):
    the same knob as `-p threshold=...`, the Python API and the service."""
    given = [(n, v) for n, v in (("-t", threshold), ("-p threshold", params.get("threshold"))) if v is not None]
    if calibration is not None:
        from genad.cli.calibrate import read_calibration_file

        given.append(("--calibration", read_calibration_file(calibration)["threshold"]))
    if len({float(v) for _, v in given}) > 1:
        raise GenadError("give the decision threshold once: " + ", ".join(f"{n} {v}" for n, v in given) + " disagree")
    if given:
        return {**params, "threshold": given[0][1]}
    return params


def max_tokens_option(params: dict[str, Any], max_tokens: int | None) -> dict[str, Any]:
    """`--max-tokens N` as the option of every LMM-backed detector (the same as -p max_tokens=N);
    a detector without it (embedded, ...) refuses it with its list of valid options."""
    if max_tokens is None:
        return params
    given = params.get("max_tokens")
    if given is not None and given != max_tokens:
        raise GenadError(f"give the answer length once: --max-tokens {max_tokens} and -p max_tokens={given} disagree")
    return {**params, "max_tokens": max_tokens}


#: the --max-tokens flag of detect and eval
MAX_TOKENS_HELP = "LMM-backed detectors: the longest answer in tokens (default 1024; reasoning models need more)."


def saved_model(
    path: Path, detector: str | None, normal: list[Path] | None, params: dict[str, Any], groups: dict[str, Any]
) -> Detector:
    """The detector saved in `path` (genad.load), with the command's -p / -t options applied on
    top; one clear line when --normal or another --detector is given, or an input is of a kind
    the model does not read."""
    import genad

    if normal:
        raise GenadError("--model is already fitted: give --normal (fit now) or --model (fitted before), not both")
    det = genad.load(path)
    if detector is not None and detector != det.name:
        raise GenadError(f"{path} holds a {det.name!r} model, not {detector!r}: drop --detector")
    other = sorted(set(groups) - set(det.modalities))
    if other:
        raise GenadError(f"the model in {path} reads {', '.join(det.modalities)}, not {', '.join(other)}")
    if params:
        det.set_params(**params)
    return det


class _Writer:
    """The run folder (results.jsonl as it goes, maps/), overlay PNGs, and what index.html
    needs. Without --out it only keeps the rows for the table."""

    def __init__(self, out: Path | None, config: dict[str, Any], resume: bool = False) -> None:
        self.out = out
        self.rows: list[Any] = []
        self.folder: RunFolder | None = None
        self.done: dict[str, dict[str, Any]] = {}
        if out is not None:
            self.folder = RunFolder(out)
            # a new detection replaces the old one; --resume continues it
            self.done = self.folder.start(
                config, resume=resume, overwrite=not resume, must_match=_RESUME_KEYS, option="--out"
            )
            (out / "overlays").mkdir(exist_ok=True)
            self.folder.__enter__()

    def resumed(self, sample: Sample, rec: dict[str, Any]) -> Result:
        """A result scored by an earlier run into this folder (--resume): back into the report."""
        from genad.report.detect_index import IndexRow, thumbnail_data_url

        assert self.out is not None
        r = RunFolder.result(rec)
        link, thumb = rec.get("overlay"), None
        if link and (self.out / link).is_file():
            from genad.io.images import read_image

            with contextlib.suppress(GenadError):
                thumb = thumbnail_data_url(read_image(self.out / link))
        self.rows.append(IndexRow(r, thumb, link, _truth(sample)))
        return r

    def add(self, sample: Sample, r: Result, n: int) -> None:
        if self.out is None or self.folder is None:
            return
        from genad.report.detect_index import IndexRow, thumbnail_data_url

        link = thumb = None
        if isinstance(sample, ImageSample) and r.error is None:
            try:
                image = sample.load()
                shown = image
                if r.anomaly_map is not None and r.anomaly_map.ndim == 2:
                    from PIL import Image

                    from genad.report.overlay import overlay, threshold_scale

                    # One colour scale for all: red means above the detector's threshold.
                    vmin, vmax = threshold_scale(r.anomaly_map, r.threshold)
                    shown = overlay(image, r.anomaly_map, alpha=0.45, vmin=vmin, vmax=vmax, regions=r.regions)
                    link = f"overlays/{_safe_name(sample.id)}.png"
                    Image.fromarray(shown).save(self.out / link)
                thumb = thumbnail_data_url(shown)
                if r.visual_prompt is not None:
                    # What the LMM saw (set-of-mark image, region labels) so anyone can check
                    # how its region numbers became the map.
                    from genad.engines.lmm.visual_prompt import save_visual_prompt

                    save_visual_prompt(self.out / "visual_prompts" / _safe_name(sample.id), r, image=image)
            except GenadError as e:  # e.g. the image vanished since scoring
                r.error = r.error or str(e)
            except Exception as e:  # drawing failed: that costs the picture, not the result
                r.extra["picture_error"] = f"{type(e).__name__}: {e}"
        elif r.error is None:
            link, thumb = self._picture(sample, r)
        self.folder.append(sample, r, n, overlay=link)
        self.rows.append(IndexRow(r, thumb, link, _truth(sample)))

    def _picture(self, sample: Sample, r: Result) -> tuple[str | None, str | None]:
        """A chart (series), coloured views (point cloud) or the most anomalous frame (video).
        The pictures come from the modality packages; a failure there only costs the picture."""
        from genad.report.detect_index import thumbnail_data_url

        assert self.out is not None
        link = f"overlays/{_safe_name(sample.id)}.png"
        try:
            if isinstance(sample, TimeSeriesSample):
                from genad.modalities.timeseries.render import plot_result

                plot_result(sample, r, self.out / link)
                from genad.io.images import read_image

                return link, thumbnail_data_url(read_image(self.out / link), side=360)
            picture = None
            if (
                isinstance(sample, PointCloudSample)
                and r.anomaly_map is not None
                and len(r.anomaly_map) == len(sample.points)
            ):
                from genad.modalities.pointcloud.render import colorize_points, render_views

                views = render_views(sample.points, n_views=3, size=224)
                picture = np.concatenate(colorize_points(views, r.anomaly_map), axis=1)
            elif isinstance(sample, VideoSample) and sample.frames is not None and len(sample.frames):
                k = (
                    int(np.argmax(r.anomaly_map))
                    if r.anomaly_map is not None and len(r.anomaly_map) == len(sample.frames)
                    else 0
                )
                picture = sample.frames[k]
            if picture is None:
                return None, None
            from PIL import Image

            Image.fromarray(picture).save(self.out / link)
            return link, thumbnail_data_url(picture)
        except Exception as e:
            r.extra["picture_error"] = f"{type(e).__name__}: {e}"
            return None, None

    def close(self, meta: str) -> Path | None:
        if self.out is None or self.folder is None:
            return None
        from genad.report.detect_index import write_detect_index

        self.folder.__exit__(None, None, None)
        return write_detect_index(self.out, self.rows, meta=meta)


def _truth(sample: Sample) -> str | None:
    if sample.truth is not None and sample.truth.label is not None:
        return sample.truth.defect_type or ("anomalous" if sample.truth.label else "normal")
    return None


#: what a --resume must agree on with the run it continues
_RESUME_KEYS = ("inputs", "normal", "model", "detector", "params", "threshold", "limit")
FORMATS = ("table", "jsonl", "csv")
#: the columns of --format csv
CSV_COLUMNS = ("input", "score", "normalized_score", "decision", "threshold", "regions", "explanation", "error")


def _one_line(text: str | None) -> str:
    return " ".join((text or "").split())


def _note(r: Result) -> str:
    """Regions (or ranges) and the explanation, in one line."""
    note = r.explanation or ""
    if r.regions:
        shown = r.regions[:2]
        boxes = "; ".join(
            f"#{g.index or k} {g.score:.3g}" + (f" at {tuple(int(v) for v in g.box)}" if g.box else "")
            for k, g in enumerate(shown, 1)
        )
        more = f" (+{len(r.regions) - len(shown)} more)" if len(r.regions) > len(shown) else ""
        note = f"{boxes}{more}  {note}".strip()
    if r.ranges:
        note = (", ".join(f"[{a},{b})" for a, b in r.ranges) + "  " + note).strip()
    return _one_line(note)


def row_line(s: Sample, r: Result) -> str:
    """The line `genad detect` prints for an input as soon as it is scored."""
    if r.error:
        return f"failed     {'':>5}  {s.id}  {_one_line(r.error)}"
    decision = "?" if r.decision is None else ("anomalous" if r.decision else "normal")
    norm = "" if r.normalized_score is None else f"{r.normalized_score:.2f}"
    note = _note(r)
    return f"{decision:<9}  {norm:>5}  {s.id}" + (f"  {note[:200]}" if note else "")


def row_json(s: Sample, r: Result) -> dict[str, Any]:
    """The record of --format jsonl: the Result's JSON form (without `extra`, which --out's
    results.jsonl keeps) and the input's path."""
    d = r.to_dict()
    d.pop("extra", None)
    return {"sample_id": s.id, "path": None if s.path is None else str(s.path), **d}


def row_csv(s: Sample, r: Result) -> list[Any]:
    regions = "; ".join(
        f"#{g.index or k} {g.score:.4g}" + (" at " + " ".join(str(int(v)) for v in g.box) if g.box else "")
        for k, g in enumerate(r.regions, 1)
    )
    return [
        s.id,
        "" if r.score is None else f"{r.score:.6g}",
        "" if r.normalized_score is None else f"{r.normalized_score:.6g}",
        "" if r.decision is None else ("anomalous" if r.decision else "normal"),
        "" if r.threshold is None else f"{r.threshold:.6g}",
        regions,
        _one_line(r.explanation),
        _one_line(r.error),
    ]


def _csv_line(values: Sequence[Any]) -> str:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerow(values)
    return buf.getvalue()


class _Rows:
    """Prints each input's row to stdout as soon as it is scored (flushed, so that a pipe sees
    it at once): a line (table), a JSON object (jsonl) or a CSV row (csv, after its header)."""

    def __init__(self, fmt: str) -> None:
        self.fmt = fmt
        if fmt == "csv":
            self._write(_csv_line(CSV_COLUMNS))

    @staticmethod
    def _write(text: str) -> None:
        sys.stdout.write(text)
        sys.stdout.flush()

    def add(self, s: Sample, r: Result) -> None:
        if self.fmt == "jsonl":
            self._write(json.dumps(row_json(s, r)) + "\n")
        elif self.fmt == "csv":
            self._write(_csv_line(row_csv(s, r)))
        else:
            self._write(row_line(s, r) + "\n")


def _print_table(pairs: list[tuple[Sample, Result]]) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    table = Table(show_lines=False)
    table.add_column("input", overflow="fold", min_width=min(48, max((len(s.id) for s, _ in pairs), default=5)))
    table.add_column("score 0-1", justify="right")
    table.add_column("raw / threshold", justify="right")
    table.add_column("decision")
    table.add_column("regions / explanation", overflow="fold")
    for s, r in pairs:
        if r.error:
            table.add_row(s.id, "", "", "[red]failed[/red]", f"[red]{escape(_one_line(r.error))}[/red]")
            continue
        decision = "?" if r.decision is None else ("[bold red]anomalous[/]" if r.decision else "[green]normal[/]")
        note = escape(_note(r))
        norm = "" if r.normalized_score is None else f"{r.normalized_score:.2f}"
        raw = "" if r.score is None else f"{r.score:.4g}"
        if r.threshold is not None:
            raw += f" / {r.threshold:.4g}"
        table.add_row(escape(s.id), norm, raw, decision, note[:300])
    Console().print(table)


@app.command("detect")
@stops_on_signals
def detect(
    paths: list[Path] = typer.Argument(
        ..., help="Files or folders to inspect (folders are searched recursively).", show_default=False
    ),
    normal: list[Path] = typer.Option(
        None,
        "--normal",
        "-n",
        show_default=False,
        help="Normal reference examples (folder or files; repeatable). With them the detector is few-shot; without, zero-shot (inputs are compared with one another).",
    ),
    detector: str = typer.Option(
        None,
        "--detector",
        "-d",
        show_default=False,
        help="Detector name (see `genad detectors`). Default: 'embedded' for images, the modality's default otherwise.",
    ),
    out: Path = typer.Option(
        None, "--out", "-o", show_default=False, help="Folder for heatmap overlays, results.jsonl and index.html."
    ),
    modality: str = typer.Option(
        None,
        "--modality",
        "-m",
        show_default=False,
        help="image | timeseries | pointcloud | video: overrides the guess from file suffixes.",
    ),
    threshold: float = typer.Option(
        None,
        "--threshold",
        "-t",
        show_default=False,
        min=0.0,
        max=1.0,
        help="Decision threshold on the normalised 0-1 score (default 0.5: the detector's calibrated boundary); the same as -p threshold=...; raw units: -p raw_threshold=...",
    ),
    calibration: Path = typer.Option(
        None,
        "--calibration",
        show_default=False,
        help="A threshold file written by `genad calibrate --save` (sets -t).",
    ),
    param: list[str] = typer.Option(
        None,
        "--param",
        "-p",
        show_default=False,
        help="Detector option as key=value (repeatable), e.g. --param grid=32.",
    ),
    recursive: bool = typer.Option(True, "--recursive/--no-recursive", help="Search sub-folders."),
    max_tokens: int = typer.Option(
        None, "--max-tokens", min=1, max=1_000_000, show_default=False, help=MAX_TOKENS_HELP
    ),
    model: Path = typer.Option(
        None,
        "--model",
        show_default=False,
        help="A model saved by `genad fit --save` (already fitted: no --normal, no refit); -p and -t still apply.",
    ),
    limit: int = typer.Option(
        None, "--limit", "-l", min=1, show_default=False, help="Score at most N inputs (the first N found)."
    ),
    fmt: str = typer.Option(
        "table",
        "--format",
        "-f",
        help="table: a line per input as it is scored, then a table; jsonl or csv: one machine-readable row per input on stdout as it is scored (progress and the summary go to stderr).",
    ),
    resume: bool = typer.Option(
        False, "--resume", help="Continue an interrupted detection into the same --out: score only what is missing."
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
    ray: str = typer.Option(
        None,
        "--ray",
        metavar="ADDRESS",
        show_default=False,
        help="Score on an existing Ray cluster (its head's host:port, or auto): chunks of inputs as tasks, a bounded number at a time; workers read the inputs by path (the same paths on every node). Needs pip install 'genad\\[ray]'.",
    ),
) -> None:
    """Find anomalies in images (or series, point clouds, videos) and say where they are.

    Examples:

      genad detect examples/magnetic_tile/test --normal examples/magnetic_tile/train/good --out demo-out

      genad detect photos/ --detector baseline          (zero-shot: needs 3+ images)

      genad detect sensor.csv --modality timeseries

      genad detect photos/ -d baseline --format jsonl --limit 100 > rows.jsonl

    Scores: higher = more anomalous. With --out you get overlays/*.png (heatmap over the image, regions boxed and numbered), results.jsonl (one line per input, written as it goes) and index.html (open it in a browser). Ctrl-C (or SIGTERM) stops within moments, keeping what was scored; with --out, --resume then scores only the rest.
    """
    if fmt not in FORMATS:
        raise GenadError(f"--format must be {', '.join(FORMATS[:-1])} or {FORMATS[-1]}, not {fmt!r}")
    if resume and out is None:
        raise GenadError("--resume needs --out: the folder of the detection to continue")
    score: Callable[..., Generator[tuple[Sample, Result], None, None]] = run_detector
    if ray is not None:  # joined first: a wrong address fails before anything is written
        from genad.run.ray_backend import runner

        score = runner(ray)
    params = max_tokens_option(threshold_options(parse_params(param), threshold, calibration), max_tokens)
    from genad.io import load_inputs

    samples = load_inputs(paths, modality=modality, recursive=recursive)
    if out is not None:
        # A report written inside an input folder must not be read back as input next time.
        out_abs = out.resolve()
        samples = [s for s in samples if s.path is None or out_abs not in s.path.resolve().parents]
        if not samples:
            raise GenadError(f"the only inputs found are inside --out {out}: choose another output folder")
    if limit is not None:
        samples = samples[:limit]
    refs: list[Sample] = load_inputs(normal, modality=modality, recursive=recursive) if normal else []

    groups: dict[str, list[Sample]] = defaultdict(list)
    for s in samples:
        groups[s.modality].append(s)
    if detector is not None and len(groups) > 1:
        raise GenadError(
            f"the inputs mix {', '.join(sorted(groups))}; one --detector cannot read them all: run them separately"
        )

    # every detector built and checked before anything is written: a bad option fails first
    plan: list[tuple[Detector, list[Sample], list[Sample]]] = []
    if model is not None:
        plan = [(saved_model(model, detector, normal, params, groups), samples, [])]
    todo: list[tuple[str, list[Sample]]] = [] if model is not None else list(groups.items())
    for mod, group in todo:
        det = _pick_detector(detector, mod, params)
        group_refs = [r for r in refs if r.modality == mod]
        if refs and not group_refs:
            raise GenadError(f"the --normal examples are not {mod} files like the inputs: give matching references")
        if not group_refs and not det.zero_shot:
            raise GenadError(f"detector {det.name!r} needs normal examples: add --normal DIR")
        plan.append((det, group, group_refs))
    names = [det.name for det, _, _ in plan]
    config = {
        "inputs": [str(p) for p in paths],
        "normal": [str(p) for p in normal or []],
        "model": None if model is None else str(model),
        "detector": ", ".join(names),
        "params": public_params(plan[0][0].params)
        if len(plan) == 1
        else {d.name: public_params(d.params) for d, _, _ in plan},
        "threshold": params.get("threshold"),
        "limit": limit,
    }
    writer = _Writer(out, config, resume=resume)
    order = {s.id: i for i, s in enumerate(samples)}
    pairs: list[tuple[Sample, Result]] = []
    rows = _Rows(fmt)
    for s in samples:  # scored by the run this one continues (--resume)
        rec = writer.done.get(s.id)
        if rec is not None and rec.get("error") is None and rec.get("score") is not None:
            r = writer.resumed(s, rec)
            pairs.append((s, r))
            rows.add(s, r)
    t0 = time.perf_counter()

    def sink(s: Sample, r: Result) -> None:
        with deferred_interrupts():  # Ctrl-C waits until the overlay and the record are written
            writer.add(s, r, order[s.id])
        r.anomaly_map = None  # written to the run folder: the table does not need it in memory
        pairs.append((s, r))

    interrupted = False
    try:
        for det, group, group_refs in plan:
            left = pending(group, writer.done)
            desc = f"genad detect {det.name}"
            with contextlib.closing(
                score(det, group, todo=left, refs=group_refs, sink=sink, progress_bar=not quiet, desc=desc)
            ) as results:
                for s, r in results:
                    rows.add(s, r)
    except KeyboardInterrupt:
        interrupted = True
    finally:
        meta = f"detector: {', '.join(names) or '?'}; " + (
            f"saved model {model}"
            if model is not None
            else ("few-shot, " + str(len(refs)) + " normal examples" if refs else "zero-shot")
        )
        index = writer.close(meta)
    if interrupted:
        typer.secho(f"interrupted: {len(pairs)} of {len(samples)} inputs scored", err=True)
        if out is not None:
            typer.secho(
                f"results so far are in {out}; to continue: genad detect ... --out {out} --resume "
                "(the same inputs and options)",
                err=True,
            )
        raise typer.Exit(130)

    pairs.sort(key=lambda p: order[p[0].id])
    machine = fmt != "table"
    if not machine:
        _print_table(pairs)
    n_bad = sum(1 for _, r in pairs if r.decision)
    n_err = sum(1 for _, r in pairs if r.error)
    t_shown = getattr(plan[0][0], "threshold", 0.5) if model is not None else params.get("threshold", 0.5)
    typer.echo(
        f"{len(pairs)} inputs, {n_bad} anomalous"
        + (f", {n_err} failed" if n_err else "")
        + f" ({time.perf_counter() - t0:.1f} s); anomalous = score 0-1 above {float(t_shown):g}"
        + (" (the detector's calibrated boundary)" if float(t_shown) == 0.5 else "")
        + (f", raw threshold {params['raw_threshold']:g}" if params.get("raw_threshold") is not None else ""),
        err=machine,
    )
    if index is not None:
        typer.echo(f"report: {index}", err=machine)
    if pairs and n_err == len(pairs):
        raise typer.Exit(1)
