"""Finding jobs: the job folders under a jobs root (:func:`scan_jobs`, :func:`list_jobs`, :func:`get_job`)."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

from napari_medseg._options import close_matches_message
from napari_medseg.errors import FileFormatError, InvalidInputError
from napari_medseg.jobs.job import Job
from napari_medseg.jobs.protocol import JOB_FILE, _resolve_root


def scan_jobs(jobs_root: str | os.PathLike | None = None) -> tuple[list[Job], list[tuple[Path, str]]]:
    """The jobs under ``jobs_root`` (oldest first) and the folders skipped, with the reason.

    Never blocks and never follows a link out of the jobs folder: a job folder that is a symlink, a
    ``job.json`` that is a symlink, a FIFO, too big, not JSON or not a valid record is skipped and
    reported. Folders without a ``job.json`` (such as the plugin's ``runs/``) are not jobs.

    Returns
    -------
    jobs : list of Job
    problems : list of (Path, str)
        The skipped folders and why.
    """
    root = _resolve_root(jobs_root)
    jobs: list[Job] = []
    problems: list[tuple[Path, str]] = []
    try:
        entries = sorted(root.iterdir()) if root.is_dir() else []
    except OSError as exc:
        return [], [(root, f"cannot list the jobs folder: {exc.strerror or exc}")]
    for folder in entries:
        if folder.name.startswith("."):
            continue
        try:
            if folder.is_symlink():
                if (folder / JOB_FILE).exists():
                    problems.append((folder, "the job folder is a symbolic link; job folders must be real folders"))
                continue
            if not folder.is_dir() or not os.path.lexists(folder / JOB_FILE):
                continue
            jobs.append(Job(folder))
        except (FileFormatError, OSError) as exc:
            problems.append((folder, str(exc)))
    return sorted(jobs, key=lambda job: (job.created, job.id)), problems


def list_jobs(jobs_root: str | os.PathLike | None = None) -> list[Job]:
    """All jobs under ``jobs_root`` (default :func:`default_jobs_root`), oldest first.

    A folder whose ``job.json`` cannot be used (see :func:`scan_jobs`) is skipped with a warning.
    """
    jobs, problems = scan_jobs(jobs_root)
    for folder, why in problems:
        warnings.warn(f"skipped {folder}: {why}", stacklevel=2)
    return jobs


def get_job(id_or_prefix: str, *, jobs_root: str | os.PathLike | None = None) -> Job:
    """The job whose id is ``id_or_prefix`` or starts with it (a unique prefix).

    Parameters
    ----------
    id_or_prefix : str
        A job id as ``medseg jobs list`` shows it, or a unique prefix of one; also accepted: the
        job's folder path.
    jobs_root : str, os.PathLike or None, keyword-only
        Default :func:`default_jobs_root`.

    Raises
    ------
    InvalidInputError
        If no job matches (the message names the closest ids) or the prefix matches several.
    """
    text = str(id_or_prefix).strip()
    if not text:
        raise InvalidInputError("job id is empty; see 'medseg jobs list'")
    as_path = Path(text)
    if as_path.is_dir() and os.path.lexists(as_path / JOB_FILE):
        return Job(as_path)
    root = _resolve_root(jobs_root)
    # an id is a name in the jobs folder, never a path out of it
    if "/" not in text and os.sep not in text and text not in (".", "..") and os.path.lexists(root / text / JOB_FILE):
        if (root / text).is_symlink():
            raise FileFormatError(f"{root / text}: the job folder is a symbolic link; job folders must be real folders")
        return Job(root / text)
    with warnings.catch_warnings():  # an unusable record elsewhere in the folder is not this lookup's error
        warnings.simplefilter("ignore")
        ids = [job.id for job in list_jobs(root)]
    matches = [job_id for job_id in ids if job_id.startswith(text)]
    if len(matches) == 1:
        return Job(root / matches[0])
    if matches:
        raise InvalidInputError(f"job id {text!r} is ambiguous in {root}: it starts {', '.join(matches)}")
    # ids start with a timestamp, so compare the part a user would mistype against the whole id too
    raise InvalidInputError(
        f"no job {text!r} in {root} ({len(ids)} job(s); see 'medseg jobs list')" + close_matches_message(text, ids)
    )
