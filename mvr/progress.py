"""The one progress-bar helper: tqdm, quiet when stderr is not a terminal or MVR_QUIET is set."""

import os
import sys


def progress_enabled(show=None):
    if show is not None:
        return bool(show)
    if os.environ.get("MVR_QUIET", "") not in ("", "0"):
        return False
    return sys.stderr.isatty()


def progress(total=None, desc=None, unit="it", show=None):
    """A tqdm bar (``update(n)``, ``close()``); disabled unless :func:`progress_enabled`."""
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit, disable=not progress_enabled(show), dynamic_ncols=True)
