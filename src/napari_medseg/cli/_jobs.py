"""``medseg jobs``: start, list, show, cancel, resume and read the logs of background jobs.

A job is a ``medseg`` command (train, finetune, refine, predict) run as a detached child process
that writes JSON Lines events into its own folder (see :mod:`napari_medseg.jobs` and
``docs/jobs.md``); ``medseg jobs selftest`` is a small real job for tests and demos.
"""

from __future__ import annotations

import argparse
import json
import time

_EPILOG = (
    "Jobs live in $MEDSEG_JOBS_DIR or the user data folder (see --jobs-dir). Exit codes: 0 success, 2 bad "
    "input (unknown job id, a job that cannot be resumed), 130 cancelled (selftest)."
)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    from napari_medseg.jobs import JobKind, LogStream, add_job_dir_argument

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--jobs-dir",
        metavar="DIR",
        default=None,
        help="folder holding the job folders (default: $MEDSEG_JOBS_DIR, else the user data folder)",
    )
    jobs = subparsers.add_parser(
        "jobs",
        help="background jobs: start, list, show, cancel, resume, log",
        description="Follow and control background jobs (training, fine-tuning, refinement, prediction run as "
        "detached processes). A job's state lives in its folder, so any terminal, napari or Slicer can re-attach "
        "to it, also after the program that started it has closed.",
        epilog=_EPILOG,
    )
    actions = jobs.add_subparsers(dest="jobs_command", metavar="ACTION")
    actions.required = True

    kinds = [str(k) for k in JobKind]
    start = actions.add_parser(
        "start",
        parents=[common],
        help="start a medseg command as a background job and print its id",
        description="Start 'medseg COMMAND ARGS...' as a detached background job and print its id. COMMAND is one "
        f"of {', '.join(kinds)} ('selftest' runs 'medseg jobs selftest'). Relative paths in ARGS are resolved "
        "against the current folder.",
        epilog=_EPILOG,
    )
    start.add_argument("kind", metavar="COMMAND", choices=kinds, help=" | ".join(kinds))
    start.add_argument(
        "job_argv",
        metavar="ARGS",
        nargs=argparse.REMAINDER,
        help="the command's arguments (the options of 'jobs start' itself go before COMMAND)",
    )
    start.add_argument("--json", action="store_true", help="print one JSON object {id, folder, status}")
    start.set_defaults(func=run_start)

    listing = actions.add_parser(
        "list", parents=[common], help="list jobs with status and progress", epilog=_EPILOG
    )
    listing.add_argument("--json", action="store_true", help="print a JSON list of job summaries")
    listing.set_defaults(func=run_list)

    show = actions.add_parser(
        "show",
        parents=[common],
        help="status, progress, latest metrics and last events of a job",
        epilog=_EPILOG,
    )
    show.add_argument("job_id", metavar="ID", help="job id or a unique prefix of it")
    show.add_argument("--events", type=int, default=10, metavar="N", help="last events to print (default 10)")
    show.add_argument("--json", action="store_true", help="print one JSON object (the summary and last events)")
    show.set_defaults(func=run_show)

    cancel = actions.add_parser(
        "cancel",
        parents=[common],
        help="cancel a job (it checkpoints and stops; killed if it does not)",
        description="Ask the job to stop (it writes a checkpoint and exits); if it still runs after --timeout-s "
        "send SIGTERM, and after another --timeout-s SIGKILL to its process group. Prints the final status.",
        epilog=_EPILOG,
    )
    cancel.add_argument("job_id", metavar="ID", help="job id or a unique prefix of it")
    cancel.add_argument(
        "--timeout-s", type=float, default=30.0, metavar="S", help="grace period in seconds (default 30)"
    )
    cancel.set_defaults(func=run_cancel)

    resume = actions.add_parser(
        "resume",
        parents=[common],
        help="start a new job continuing a cancelled, failed or lost one (its argv + --resume)",
        epilog=_EPILOG,
    )
    resume.add_argument("job_id", metavar="ID", help="job id or a unique prefix of it")
    resume.add_argument("--json", action="store_true", help="print one JSON object {id, folder, resumed_from}")
    resume.set_defaults(func=run_resume)

    log = actions.add_parser("log", parents=[common], help="the end of a job's stdout/stderr", epilog=_EPILOG)
    log.add_argument("job_id", metavar="ID", help="job id or a unique prefix of it")
    log.add_argument("--lines", type=int, default=20, metavar="N", help="lines per file (default 20)")
    log.add_argument(
        "--stream", choices=[str(s) for s in LogStream], default="both", help="which file (default: both)"
    )
    log.set_defaults(func=run_log)

    selftest = actions.add_parser(
        "selftest",
        help="a small real job (gradient descent with checkpoints) to try jobs with",
        description="Run a deterministic gradient descent on a fixed least-squares problem, one step per "
        "--step-seconds, reporting epoch/metric/checkpoint events when run as a job; honours cancel (writes a "
        "checkpoint) and --resume continues exactly. Prints one JSON object with the final loss. Try: "
        "'medseg jobs start selftest --output st --steps 50 --step-seconds 0.2', then 'medseg jobs list'.",
        epilog=_EPILOG,
    )
    selftest.add_argument("--output", required=True, metavar="DIR", help="folder for the checkpoint")
    selftest.add_argument("--steps", type=int, default=20, metavar="N", help="gradient steps (default 20)")
    selftest.add_argument("--step-seconds", type=float, default=0.0, metavar="S", help="pause per step (default 0)")
    selftest.add_argument("--checkpoint-every", type=int, default=5, metavar="K", help="steps (default 5)")
    selftest.add_argument("--resume", action="store_true", help="continue from the checkpoint in --output")
    selftest.add_argument("--fail-at-step", type=int, default=None, metavar="K", help="raise an error at step K")
    selftest.add_argument("--ignore-cancel-file", action="store_true", help=argparse.SUPPRESS)
    add_job_dir_argument(selftest)
    selftest.set_defaults(func=run_selftest_command)


def _print_json(value) -> None:
    print(json.dumps(value, indent=None, default=str))


def _progress_text(summary: dict) -> str:
    for key, done, total in (("epoch", "epoch", "epochs"), ("progress", "done", "total")):
        event = summary.get(key)
        if event and done in event and total in event:
            return f"{key} {event[done]}/{event[total]}"
    return "-"


def _metrics_text(summary: dict) -> str:
    parts = []
    for name, event in summary["metrics"].items():
        value = event.get("value")
        parts.append(f"{name}={value:.4g}" if isinstance(value, float) else f"{name}={value}")
    return " ".join(parts) or "-"


def _created_text(created: float) -> str:
    try:
        return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(created))
    except (OverflowError, OSError, ValueError, TypeError):  # an event's time is data: it may be anything
        return "?"


def run_start(args: argparse.Namespace) -> None:
    from napari_medseg.jobs import JobKind, request_from_argv, start_job

    argv = list(args.job_argv)
    if argv[:1] == ["--"]:
        argv = argv[1:]
    argv = ["jobs", "selftest", *argv] if args.kind == JobKind.SELFTEST else [args.kind, *argv]
    # the command line parsed into the kind's typed request: refused here (exit 2), not in the child
    job = start_job(request_from_argv(args.kind, argv, where="medseg jobs start"), jobs_root=args.jobs_dir)
    if args.json:
        _print_json({"id": job.id, "folder": str(job.folder), "status": str(job.status())})
    else:
        print(job.id)


def run_list(args: argparse.Namespace) -> None:
    import sys

    from napari_medseg.errors import MedsegError
    from napari_medseg.jobs import default_jobs_root, scan_jobs

    # a broken or hostile job folder is reported on stderr and skipped; the others are listed
    jobs, problems = scan_jobs(args.jobs_dir)
    summaries = []
    for job in jobs:
        try:
            summaries.append(job.summary())
        except (MedsegError, OSError) as exc:
            problems.append((job.folder, str(exc)))
    for folder, why in problems:
        print(f"medseg jobs list: skipped {folder}: {why}", file=sys.stderr)
    if args.json:
        _print_json(summaries)
        return
    if not summaries:
        print(f"no jobs in {args.jobs_dir or default_jobs_root()}")
        return
    rows = [("ID", "KIND", "STATUS", "CREATED", "PROGRESS", "METRICS")]
    for s in summaries:
        rows.append((s["id"], s["kind"], s["status"], _created_text(s["created"]), _progress_text(s), _metrics_text(s)))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:  # plain columns: ids are never truncated, and the output greps well
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)) + "  " + row[-1])


def _event_text(event: dict) -> str:
    fields = {k: v for k, v in event.items() if k not in ("time", "event", "traceback")}
    stamp = _created_text(event.get("time", 0))[-8:]
    return f"{stamp}  {event.get('event', '?'):<10}  " + json.dumps(fields, default=str)


def run_show(args: argparse.Namespace) -> None:
    from napari_medseg.cli import UsageError
    from napari_medseg.jobs import JobStatus, get_job

    if args.events < 0:
        raise UsageError(f"--events={args.events}: expected a non-negative number")
    job = get_job(args.job_id, jobs_root=args.jobs_dir)
    summary = job.summary()
    events = job.last_events(args.events)
    if args.json:
        _print_json({**summary, "last_events": events})
        return
    print(f"job       {summary['id']}")
    print(f"kind      {summary['kind']}")
    print(f"status    {summary['status']}")
    print(f"command   medseg {' '.join(summary['argv'])}")
    print(f"created   {_created_text(summary['created'])} on {summary['host']} (pid {summary['pid']})")
    print(f"folder    {summary['folder']}")
    print(f"progress  {_progress_text(summary)}")
    print(f"metrics   {_metrics_text(summary)}")
    if summary["checkpoint"]:
        print(f"checkpoint {summary['checkpoint'].get('path')} (epoch {summary['checkpoint'].get('epoch')})")
    for key in ("resumed_from", "resumed_by"):
        if summary[key]:
            print(f"{key.replace('_', ' ')}  {summary[key]}")
    final = summary["final"] or {}
    if final.get("event") == "done":
        print(f"outputs   {json.dumps(final.get('outputs', {}), default=str)}")
    elif final.get("message"):
        print(f"message   {final['message']}")
    if events:
        print("last events:")
        for event in events:
            print("  " + _event_text(event))
    if summary["status"] in (JobStatus.FAILED, JobStatus.LOST):
        tail = job.log_tail(10, stream="stderr")
        if tail:
            print("stderr (last lines):")
            print(tail, end="")


def run_cancel(args: argparse.Namespace) -> None:
    from napari_medseg.jobs import get_job

    job = get_job(args.job_id, jobs_root=args.jobs_dir)
    job.check_identity()  # a pid that is not provably the job's: refused (exit 2), never signalled
    before = job.status()
    if before.is_final:
        print(f"job {job.id} has already finished ({before}); nothing to cancel")
        return
    status = job.cancel(timeout_s=args.timeout_s)
    signals = [s["signal"] for s in job.record.get("signals", [])]
    print(f"job {job.id}: {status}" + (f" (sent {', '.join(signals)})" if signals else ""))


def run_resume(args: argparse.Namespace) -> None:
    from napari_medseg.jobs import get_job

    job = get_job(args.job_id, jobs_root=args.jobs_dir)
    new = job.resume()
    if args.json:
        _print_json({"id": new.id, "folder": str(new.folder), "resumed_from": job.id})
    else:
        print(new.id)


def run_log(args: argparse.Namespace) -> None:
    from napari_medseg.jobs import get_job

    job = get_job(args.job_id, jobs_root=args.jobs_dir)
    print(job.log_tail(args.lines, stream=args.stream), end="")


def run_selftest_command(args: argparse.Namespace) -> None:
    from napari_medseg.jobs import run_reported, run_selftest

    # run_reported(None) runs unreported: the same handler serves 'medseg jobs selftest' in a terminal
    with run_reported(args.job_dir, watch_cancel_file=not args.ignore_cancel_file) as reporter:
        if reporter is not None:
            reporter.what = "selftest step"
        result = run_selftest(
            args.output,
            steps=args.steps,
            step_seconds=args.step_seconds,
            checkpoint_every=args.checkpoint_every,
            resume=args.resume,
            fail_at_step=args.fail_at_step,
            progress=reporter.progress if reporter else None,
            cancel=reporter.cancel if reporter else None,
            emit=reporter.emit if reporter else None,
        )
        if reporter is not None:
            reporter.outputs.update(result)
    _print_json(result)
