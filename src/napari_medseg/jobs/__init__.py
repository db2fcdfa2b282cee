"""Background jobs: a long run (training, fine-tuning, refinement, prediction) as a detached child process.

A job is a folder ``<jobs_root>/<job_id>/`` that holds all of its state, so any process (the napari
plugin, the Slicer module, ``medseg jobs``) can find it, follow it, cancel it or resume it, also
after the process that started it has closed:

``job.json``
    Written by the parent only (atomically): id, kind, argv, cwd, created, host, pid, the process
    start time (to guard against pid reuse), cancel requests, signals sent, the status last observed.
``events.jsonl``
    Written by the child only: one JSON object per line, each with ``"time"`` (unix seconds) and
    ``"event"``, appended with a single write + flush + fsync. Readers take complete lines only.
``cancel``
    A flag file the parent creates to ask the child to stop at its next check.
``stdout.log``, ``stderr.log``
    The child's standard output and error.

The child is ``python -m napari_medseg.cli <argv> --job-dir <folder>``: any subcommand that calls
:func:`add_job_dir_argument` and reports through :func:`run_reported` can run as a job. The event
protocol is described in ``docs/jobs.md``.

A job's status is derived from its events and its process, never trusted from a cache:

========= ==============================================================================
pending   the process was started but has not emitted ``started`` yet
running   ``started`` was emitted, no final event yet, and the process is alive
done      the child emitted ``done``
failed    the child emitted ``error``
cancelled the child emitted ``cancelled``, or it was killed after a cancel request
lost      the process is gone without a final event (crashed, killed, out of memory)
========= ==============================================================================

This module is Qt-free: the napari plugin polls :meth:`Job.read_events` from a timer or a worker,
the Slicer module from a ``qt.QTimer``, exactly as ``medseg jobs show`` does.

The package, one concept per module:

================ ===================================================================================
``protocol``     the job folder's files, :class:`JobKind`, :class:`JobStatus`, the events, ``read_events``
``requests``     typed job requests (predict, register, train, finetune, refine, selftest): the job
                 record's data, and the only writer of a job's ``medseg`` argv
``guard``        what keeps a record data: bounded reads, record/argv/env checks, process identity
``output_lock``  the lock a job holds on its output (filelock)
``reporter``     the child's side: :class:`JobReporter`, :func:`run_reported`, :func:`reporter_from_args`
``job``          the parent's side: :class:`Job` (status, wait, cancel, resume, logs)
``launch``       :func:`start_job`: the job folder, its record, the detached child
``store``        :func:`scan_jobs`, :func:`list_jobs`, :func:`get_job`
``selftest``     :func:`run_selftest`, a small real job for tests and demos
================ ===================================================================================
"""

from __future__ import annotations

from napari_medseg.jobs.job import Job
from napari_medseg.jobs.launch import start_job
from napari_medseg.jobs.protocol import (
    CANCEL_FILE,
    EVENTS_FILE,
    JOB_FILE,
    JOBS_DIR_ENV,
    STDERR_FILE,
    STDOUT_FILE,
    EventType,
    JobKind,
    JobStatus,
    LogLevel,
    LogStream,
    default_jobs_root,
    new_run_name,
    read_events,
)
from napari_medseg.jobs.requests import (
    REQUEST_SCHEMA,
    REQUEST_TYPES,
    FinetuneRequest,
    PredictRequest,
    RefineRequest,
    RegisterRequest,
    Request,
    SelftestRequest,
    TrainRequest,
    request_from_argv,
    request_from_record,
)
from napari_medseg.jobs.reporter import JobReporter, add_job_dir_argument, reporter_from_args, run_reported
from napari_medseg.jobs.selftest import SELFTEST_CHECKPOINT, run_selftest
from napari_medseg.jobs.store import get_job, list_jobs, scan_jobs

__all__ = [
    "JobKind",
    "JobStatus",
    "EventType",
    "LogLevel",
    "LogStream",
    "JOBS_DIR_ENV",
    "JOB_FILE",
    "EVENTS_FILE",
    "CANCEL_FILE",
    "STDOUT_FILE",
    "STDERR_FILE",
    "SELFTEST_CHECKPOINT",
    "default_jobs_root",
    "new_run_name",
    "Request",
    "PredictRequest",
    "RegisterRequest",
    "TrainRequest",
    "FinetuneRequest",
    "RefineRequest",
    "SelftestRequest",
    "REQUEST_SCHEMA",
    "REQUEST_TYPES",
    "request_from_record",
    "request_from_argv",
    "JobReporter",
    "run_reported",
    "add_job_dir_argument",
    "reporter_from_args",
    "Job",
    "start_job",
    "scan_jobs",
    "list_jobs",
    "get_job",
    "read_events",
    "run_selftest",
]
