"""Whether ``torch.compile`` can generate code on this machine, asked before compiling anything.

Inductor builds its CPU kernels with a C++ compiler (``g++``, or ``CXX``) and Triton builds its GPU
launchers with a C compiler (``cc``, ``gcc``, ``clang``, or ``CC``). Slim images carry neither (the
project's image installs both). Asking first lets an engine fall back at once, with the reason in its
log, rather than fail after tracing: the decode graph stays eager, and ``--attention-backend auto``
takes the gather kernel instead of FlexAttention.
"""

from __future__ import annotations

import os
import shutil

import torch


def missing_compiler(device: torch.device) -> str | None:
    """Why code cannot be compiled for ``device`` here, or None when it can (or cannot be told)."""
    if device.type == "cuda":
        if os.environ.get("CC") or any(shutil.which(cc) for cc in ("cc", "gcc", "clang")):
            return None
        return "no C compiler for Triton's launchers (cc, gcc or clang on PATH, or CC)"
    try:
        from torch._inductor.cpp_builder import get_cpp_compiler
    except ImportError:  # another torch layout: compiling will tell
        return None
    try:
        get_cpp_compiler()
    except Exception:  # noqa: BLE001 - InvalidCxxCompiler, or whatever the search raises
        return "no C++ compiler for Inductor's CPU kernels (g++ on PATH, or CXX)"
    return None
