"""`synthaug` command line: run, simulate, validate, schema, inspect, report, compare.

Exit codes: 0 ok, 1 the job failed, 2 bad usage or config.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
import traceback
from pathlib import Path

from augment.errors import ConfigError

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="synthaug", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="run a job config (resumes an interrupted run of the same config)")
    run.add_argument("config", type=Path)
    run.add_argument("--out", help="job folder or s3://bucket/prefix (default: runs/<config name>)")
    run.add_argument("--address", help="Ray cluster address (default: $RAY_ADDRESS, else an embedded local Ray)")
    run.add_argument("--overwrite", action="store_true", help="replace a job folder that holds another config")

    simulate = commands.add_parser("simulate", help="render simulator frames to shards (+ a contact sheet)")
    simulate.add_argument("config", type=Path, help="a config whose source is a simulator")
    simulate.add_argument("--out", help="job folder or s3://bucket/prefix (default: runs/<config name>)")
    simulate.add_argument("--frames", type=int, help="number of frames (overrides source.frames)")
    simulate.add_argument("--size", type=int, help="square frames of this many pixels (overrides source.image_size, or width and height)")
    simulate.add_argument("--seed", type=int, help="simulator seed (overrides source.seed)")
    simulate.add_argument("--address", help="Ray cluster address (default: $RAY_ADDRESS, else an embedded local Ray)")
    simulate.add_argument("--overwrite", action="store_true", help="replace a job folder that holds another config")

    validate = commands.add_parser("validate", help="check a config without running it")
    validate.add_argument("config", type=Path)

    commands.add_parser("schema", help="print the config's JSON Schema (for editors)")

    inspect = commands.add_parser("inspect", help="counts per class and source; verify every shard's checksum")
    inspect.add_argument("out", help="job folder or s3://bucket/prefix")

    report = commands.add_parser("report", help="recompute OUT/report/ (report.json, report.html) for a finished job")
    report.add_argument("out", help="job folder or s3://bucket/prefix")
    report.add_argument("--address", help="Ray cluster address (default: $RAY_ADDRESS, else an embedded local Ray)")

    browse = commands.add_parser("fiftyone", help="a finished job as a FiftyOne dataset (views, Brain runs); "
                                                  "--launch opens the App")
    browse.add_argument("out", type=Path)
    browse.add_argument("--name", help="dataset name (default: the job's name); re-exporting updates it in place")
    browse.add_argument("--no-real", action="store_true", help="synthetic rows only (no real or holdout rows)")
    browse.add_argument("--no-brain", action="store_true", help="skip the Brain runs (uniqueness, similarity, map)")
    browse.add_argument("--launch", action="store_true", help="serve the App and wait (Ctrl-C stops it)")
    browse.add_argument("--port", type=int, default=5151, help="App port (default 5151)")
    browse.add_argument("--address", default="127.0.0.1",
                        help="App address (default 127.0.0.1; 0.0.0.0 serves every interface)")

    compare = commands.add_parser("compare", help="two jobs' reports side by side")
    compare.add_argument("first", type=Path)
    compare.add_argument("second", type=Path)
    compare.add_argument("--html", type=Path, help="also write the table as an HTML page here")
    return parser


def _simulate_config(args: argparse.Namespace):
    """The config with the command line's --frames/--size/--seed written into its source."""
    from jobs.config import load_config

    overrides = {k: v for k, v in {"frames": args.frames, "image_size": args.size, "seed": args.seed}.items()
                 if v is not None}
    if args.size is not None:  # square frames replace a landscape config's width and height
        overrides.update(width=None, height=None)
    config = load_config(args.config, source_overrides=overrides)
    if config.source.kind != "simulator":
        raise ConfigError(f"{args.config}: source.kind is {config.source.kind!r}; simulate needs a simulator source")
    return config


def _keep_traceback(out: Path) -> str:
    """Write the traceback to OUT/error.log; where that is impossible, to stderr."""
    log_path = out / "error.log"
    try:
        log_path.write_text(traceback.format_exc())
    except OSError:
        traceback.print_exc(file=sys.stderr)
        return "traceback above"
    return f"traceback in {log_path}"


def _terminated(signum: int, frame: object) -> None:
    """SIGTERM unwinds like Ctrl-C: the lock is released and Ray shut down on the way out."""
    raise KeyboardInterrupt


def _run(args: argparse.Namespace, command: list[str]) -> int:
    from jobs.config import load_config
    from augment.store import parse_location
    from jobs.remote import staging_folder
    from jobs.runner import CONTACT_SHEET_FILE, JobFailed, run_job, summarize_rejections

    config = _simulate_config(args) if args.command == "simulate" else load_config(args.config)
    out = parse_location(args.out) if args.out else Path("runs") / config.name
    try:
        result = run_job(config, out, address=args.address, overwrite=args.overwrite, command=command)
    except (ConfigError, KeyboardInterrupt):
        raise
    except JobFailed as error:
        print(f"synthaug: job failed: {error}", file=sys.stderr)
        return EXIT_FAILED
    except Exception as error:  # noqa: BLE001 - the CLI turns any failure into one line + a log file
        logs = out if isinstance(out, Path) else staging_folder(out, config.execution.storage.endpoint_url)
        print(f"synthaug: job failed: {type(error).__name__}: {error} ({_keep_traceback(logs)})", file=sys.stderr)
        return EXIT_FAILED
    counts = ", ".join(f"{name}={n}" for name, n in sorted(result.class_counts.items()))
    resumed = f", {result.resumed_shards} kept from an earlier run" if result.resumed_shards else ""
    print(f"wrote {result.rows} training rows in {result.shards} shards (+{result.holdout_rows} holdout) "
          f"to {result.out} in {result.seconds:.1f}s{resumed}")
    print(f"per class: {counts}")
    print(summarize_rejections(result.rejected))
    if (result.staging / CONTACT_SHEET_FILE).exists():
        print(f"contact sheet: {result.out}/{CONTACT_SHEET_FILE}")
    return EXIT_OK


def _validate(args: argparse.Namespace) -> int:
    from jobs.config import load_config

    config = load_config(args.config)
    print(f"{args.config}: ok (job {config.name!r}, config hash {config.content_hash()[:12]})")
    return EXIT_OK


def _inspect(args: argparse.Namespace) -> int:
    from augment.store import parse_location
    from jobs.inspect import inspect_job

    report, problems = inspect_job(parse_location(args.out))
    print(report)
    for problem in problems:
        print(f"problem: {problem}", file=sys.stderr)
    return EXIT_FAILED if problems else EXIT_OK


def _report(args: argparse.Namespace) -> int:
    from augment.store import parse_location
    from jobs.runner import report_job

    path = report_job(parse_location(args.out), address=args.address)
    if path is None:
        print(f"synthaug: no report for {args.out} (see the log above)", file=sys.stderr)
        return EXIT_FAILED
    print(f"report: {path} and {path.with_name('report.html')}")
    return EXIT_OK


def _fiftyone(args: argparse.Namespace) -> int:
    from augment.fiftyone_export import import_fiftyone
    from jobs.browse import check_port, export_job, launch

    try:
        import_fiftyone()
    except ImportError as error:
        print(f"synthaug: {error}", file=sys.stderr)
        return EXIT_USAGE
    if args.launch:
        check_port(args.port, args.address)  # before the export, which can take minutes
    dataset, result, views = export_job(args.out, args.name, include_real=not args.no_real, brain=not args.no_brain)
    print(f"fiftyone dataset {result.name!r}: {result.samples} samples ({result.added} added, {result.updated} "
          f"updated, {result.unchanged} unchanged, {result.removed} removed; {result.media_written} media files "
          f"written) in {result.seconds:.1f}s")
    print(f"saved views: {', '.join(views)}")
    if args.launch:
        launch(dataset, args.port, args.address)
    return EXIT_OK


def _compare(args: argparse.Namespace) -> int:
    from jobs.compare import compare, compare_html

    text, rows = compare(args.first, args.second)
    print(text)
    if args.html:
        args.html.write_text(compare_html(rows))
        print(f"wrote {args.html}")
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    args = _parser().parse_args(argv)
    # What job.json records as the command line: as the shell passed it, or as given to main().
    command = list(sys.argv) if argv is None else ["synthaug", *argv]
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _terminated)
    try:
        if args.command in ("run", "simulate"):
            return _run(args, command)
        if args.command == "validate":
            return _validate(args)
        if args.command == "schema":
            from jobs.config import json_schema

            print(json.dumps(json_schema(), indent=2))
            return EXIT_OK
        if args.command == "report":
            return _report(args)
        if args.command == "compare":
            return _compare(args)
        if args.command == "fiftyone":
            return _fiftyone(args)
        return _inspect(args)
    except ConfigError as error:
        print(f"synthaug: {error}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("synthaug: interrupted; run the same command again to resume", file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
