"""Keep library chatter (progress bars, deprecation notices) out of our output; our own
progress display and tables say what is happening."""

from __future__ import annotations

import logging
import os
import warnings


def quiet_libraries() -> None:
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"diffusers|transformers|torchao")
    warnings.filterwarnings("ignore", message=r".*torch_dtype.*deprecated.*")
    for name in ("bitsandbytes", "torchao", "optimum.quanto", "torch._dynamo"):
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        import diffusers

        diffusers.utils.logging.set_verbosity_error()
        diffusers.utils.logging.disable_progress_bar()
    except ImportError:  # pragma: no cover - diffusers is a hard dependency
        pass
    try:
        import transformers

        transformers.utils.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()
    except ImportError:  # pragma: no cover
        pass
