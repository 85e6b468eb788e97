"""Keep library chatter (progress bars, deprecation notices) out of our output; our own
progress display and tables say what is happening."""

from __future__ import annotations

import logging
import os
import warnings

# Loggers that print import-time noise on CPU machines (missing CUDA kernels, optional hub kernels).
NOISY_LOGGERS = ("bitsandbytes", "bitsandbytes.cextension", "torchao", "torch.utils._pytree", "optimum.quanto",
                 "torch._dynamo", "kernels", "diffusers.quantizers.torchao.torchao_quantizer")


def quiet_import_noise() -> None:
    """Silence import-time chatter; call before importing torch/diffusers (loggers can be set early)."""
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)


def quiet_libraries() -> None:
    quiet_import_noise()
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"diffusers|transformers|torchao")
    warnings.filterwarnings("ignore", message=r".*torch_dtype.*deprecated.*")
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
