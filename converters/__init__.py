"""Converter backends by name. Each implements `Converter`: it describes itself, exports, then runs what it made.

Adding a runtime is one module with a `Converter` subclass and one line in REGISTRY (or `register()`).
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import sys

from core import config

from .base import Artifact, ConversionError, Converter, ExportOptions, ExportSource, MissingDependency, PartialExport
from .coreml import CoreMLConverter
from .executorch import ExecuTorchConverter
from .tflite import TFLiteConverter

REGISTRY: dict[str, Converter] = {c.name: c for c in (ExecuTorchConverter(), TFLiteConverter(), CoreMLConverter())}


def register(converter: Converter) -> Converter:
    """Add a backend: from then on --backends, `schemes`, export, verify, bench and the reports know it."""
    REGISTRY[converter.name] = converter
    if converter.name not in config.BACKENDS:
        config.BACKENDS.append(converter.name)
    return converter


def origin(converter: Converter) -> dict:
    """Where a fresh process finds a backend that was registered at run time (its class; the bench measures each
    file in a child process, which knows only the built-in REGISTRY): its module, the module's file, the class."""
    cls = type(converter)
    try:
        file = inspect.getsourcefile(cls)
    except TypeError:  # a class with no source file (built in C, or typed into a console)
        file = None
    return {"module": cls.__module__, "file": file, "class": cls.__qualname__}


def restore(name: str, where: dict | None) -> Converter:
    """The backend `name`: from REGISTRY, or its class (see `origin`) imported, built with no arguments and registered."""
    if name in REGISTRY:
        return REGISTRY[name]
    if not where:
        raise ConversionError(f"unknown backend {name!r}, and no module to load it from; choose from {', '.join(REGISTRY)}")
    top = where["class"].split(".")[0]
    module = sys.modules.get(where["module"])
    if (module is None or not hasattr(module, top)) and where["module"] != "__main__":  # __main__ here is not the script's
        try:
            module = importlib.import_module(where["module"])
        except ImportError:
            module = None
    if module is None or not hasattr(module, top):  # not on the path (a test file, a script): load it from its file
        spec = importlib.util.spec_from_file_location(f"_backend_{name}", where["file"]) if where.get("file") else None
        if spec is None or spec.loader is None:
            raise ConversionError(f"backend {name!r}: cannot import {where['module']} (file {where.get('file')}); "
                                  "put its module on PYTHONPATH")
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
    cls = module
    for part in where["class"].split("."):  # a class defined inside another
        cls = getattr(cls, part)
    converter = cls()
    if converter.name != name:
        raise ConversionError(f"{where['module']}.{where['class']} names itself {converter.name!r}, not {name!r}")
    return register(converter)


def select(names: str) -> list[Converter]:
    """Parse a comma-separated backend list ('all' or empty means every backend)."""
    if names.strip() == "none":
        return []
    wanted = [n.strip() for n in names.split(",") if n.strip()] if names and names != "all" else list(REGISTRY)
    unknown = [n for n in wanted if n not in REGISTRY]
    if unknown:
        raise ConversionError(f"unknown backend(s) {unknown}; choose from {', '.join(REGISTRY)}")
    return [REGISTRY[n] for n in wanted]


def by_format(fmt: str) -> Converter | None:
    """The backend whose files have this suffix (`pte`, `tflite`, `mlpackage`), if one is registered."""
    return next((c for c in REGISTRY.values() if c.format == fmt), None)


__all__ = ["Artifact", "ConversionError", "Converter", "ExportOptions", "ExportSource", "MissingDependency", "PartialExport", "REGISTRY",
           "by_format", "origin", "register", "restore", "select"]
