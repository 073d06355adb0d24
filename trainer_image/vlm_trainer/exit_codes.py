"""The trainer's exit codes: one definition that the CLI and the operator's Job builder share.

The operator imports this module (it is torch-free, like ``config.py``) to build the Job's
``podFailurePolicy``; the trainer returns these codes from ``vlm-trainer`` subcommands.
Numbers follow BSD ``sysexits.h`` where one fits:

- ``EXIT_OK`` 0, ``EXIT_DATA_INVALID`` 1 (``validate-data`` found bad lines), ``EXIT_USAGE``
  2, ``EXIT_FAILED`` 3 (anything else: the Job may retry);
- ``EXIT_DATA_REFUSED`` 65 (EX_DATAERR) and ``EXIT_CONFIG`` 78 (EX_CONFIG): a retry cannot
  fix them, the Job fails at once;
- ``EXIT_MODEL_EXISTS`` 73 (EX_CANTCREAT): ``promote``'s output model exists and overwriting
  was not asked for (reason ``ModelExists``; the promote Job fails at once);
- ``EXIT_STORAGE_FULL`` 74 (EX_IOERR): a snapshot could not be written (disk full or any
  other write error); the partial snapshot was removed and older ones kept. A retry would hit
  the same wall, so the Job fails at once (reason ``StorageFull``);
- ``EXIT_PREEMPTED`` 75 (EX_TEMPFAIL): the trainer got SIGTERM, wrote a snapshot at the step
  where every rank stopped, and exited cleanly. Not a failure: the Job ignores it (it does not
  count against ``backoffLimit``) and the next pod resumes from that snapshot. Deliberately not
  143 (128 + SIGTERM), which a process killed by an unhandled SIGTERM also returns.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_DATA_INVALID = 1
EXIT_USAGE = 2
EXIT_FAILED = 3
EXIT_DATA_REFUSED = 65  # EX_DATAERR
EXIT_MODEL_EXISTS = 73  # EX_CANTCREAT
EXIT_STORAGE_FULL = 74  # EX_IOERR
EXIT_PREEMPTED = 75  # EX_TEMPFAIL
EXIT_CONFIG = 78  # EX_CONFIG

# A pod that exits with one of these fails the Job at once (podFailurePolicy FailJob).
FAIL_JOB_CODES = (EXIT_DATA_REFUSED, EXIT_STORAGE_FULL, EXIT_CONFIG)
# A pod that exits with this one is ignored by the Job (podFailurePolicy Ignore).
IGNORE_CODES = (EXIT_PREEMPTED,)
