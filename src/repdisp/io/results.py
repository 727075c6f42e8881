"""Result files and the result protocol: the names of ``io.protocol``, ``io.provenance``,
``io.files``, ``io.figures``, ``io.writer`` and ``io.reader`` under their former home.

``from repdisp.io.results import X`` keeps working for every name that lived here; the contracts
are stated in those modules:

    protocol     ``Result`` (table, tables, figure, to_dict, to_frame, headline, segments),
                 ``GenericResult``, ``build``, ``text_table``, ``segment_field``
    provenance   ``record``, ``@recorded``, ``provenance``, ``command_line``, ``environment``
    files        ``strict_json``, ``write_json``, ``write_csv``, Parquet bytes, atomic writes
    figures      ``new_figure`` (no pyplot), ``save_figure``
    writer       ``write_result`` (NAME.json, .csv, .png, _segments.parquet), ``write_segments``
    reader       ``load_result`` (a file, or a folder as {name: result})
"""

from __future__ import annotations

# every name that lived here, private helpers included (noqa: they are re-exports)
from .figures import new_figure, save_figure
from .files import (  # noqa: F401
    _atomic_bytes,
    _csv_bytes,
    _dumps,
    _finite,
    _read_csv,
    parquet_bytes,
    read_csv,
    read_parquet,
    strict_json,
    write_csv,
    write_json,
)
from .protocol import (  # noqa: F401
    _REGISTRY,
    GenericResult,
    Result,
    _is_default_from_dict,
    _plain,
    _result_class,
    _scalar,
    build,
    long_segments,
    result_class,
    segment_field,
    segments_field_name,
    text_table,
)
from .provenance import (  # noqa: F401
    _call_text,
    _git,
    _quote,
    _version,
    call_name,
    command_line,
    data_provenance,
    environment,
    model_provenance,
    provenance,
    record,
    recorded,
    set_command_line,
)
from .reader import _TABLE_ONLY, _put_path, _restore, _split_index, load_result, parquet_provenance  # noqa: F401
from .writer import _MISSING, SCHEMA, _pop_path, result_document, write_result, write_segments  # noqa: F401

__all__ = [
    "SCHEMA",
    "GenericResult",
    "Result",
    "build",
    "call_name",
    "command_line",
    "data_provenance",
    "environment",
    "load_result",
    "long_segments",
    "model_provenance",
    "new_figure",
    "parquet_bytes",
    "parquet_provenance",
    "provenance",
    "read_csv",
    "read_parquet",
    "record",
    "recorded",
    "result_class",
    "result_document",
    "save_figure",
    "segment_field",
    "segments_field_name",
    "set_command_line",
    "strict_json",
    "text_table",
    "write_csv",
    "write_json",
    "write_result",
    "write_segments",
]
