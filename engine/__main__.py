import sys

from .job.progress import hold_cancel_requests

# First of all: a cancel while the engine imports PyTorch is held for the job, not a KeyboardInterrupt traceback.
hold_cancel_requests()

from .cli import main  # noqa: E402 - after the signal set-up on purpose

sys.exit(main())
