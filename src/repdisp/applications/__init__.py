"""applications"""


def __getattr__(name: str):  # PEP 562: ``repdisp.PACKAGE.MODULE`` without importing it first
    import importlib
    import importlib.util

    if not name.startswith("_") and importlib.util.find_spec(f"{__name__}.{name}") is not None:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
