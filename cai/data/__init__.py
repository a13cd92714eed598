"""Datasets: one TFDS builder per source (array_record files, read with ``as_data_source``) and
the token streams training reads."""

from __future__ import annotations

import contextlib
import io
import logging
from typing import Any


def prepare(builder: Any, **kwargs: Any) -> None:
    """``builder.download_and_prepare(**kwargs)``, quietly unless INFO logging is on: TFDS
    prints its "Downloading and preparing dataset" lines and progress bars to stdout."""
    if logging.getLogger().isEnabledFor(logging.INFO):
        builder.download_and_prepare(**kwargs)
        return
    import tensorflow_datasets as tfds

    tfds.disable_progress_bar()
    with contextlib.redirect_stdout(io.StringIO()):
        builder.download_and_prepare(**kwargs)
