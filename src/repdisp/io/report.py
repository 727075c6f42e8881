"""One self-contained HTML page from every result in a folder (``repdisp report DIR``).

The folder is walked recursively and files are grouped into results by folder and name stem. A
result ``NAME`` collects ``NAME.json``, ``NAME.csv``, ``NAME_*.csv``, ``NAME.png`` and
``NAME_*.png``; files with no JSON of their own become results of their own. Each result is one
section, in the order a reader needs it:

1. a headline card, for a result file written by ``write_result`` whose type states one
   (``Result.headline()``): what was measured, on which model and data, the answer with its 95%
   CI, and whether it is significant (the CI excludes zero and p < 0.05, as the type defines it);
   notes on values that were not finite;
2. its figures (base64 PNG);
3. its tables (the CSV files);
4. its provenance (versions, git commit, models with their content hashes, data fingerprints,
   seed, command line) and the run block (date, host, wall time), then the raw JSON folded away.

Any other JSON is shown as a table (nested values as nested tables, long lists shortened). The
page has no external resources and reflows down to phone width. The page's own files
(``report.html``, and a ``report.png`` screenshot of it) are left out.
"""

from __future__ import annotations

import base64
import csv
import html
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..core.errors import RepdispError, warn
from ..core.shards import atomic_write
from .results import load_result

MAX_ROWS = 200  # CSV rows shown per table
MAX_LIST = 12  # list items shown inline
SKIP = {"report.html", "report.png"}

_CSS = """
*{box-sizing:border-box}
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1150px;color:#222;padding:0 1em;
line-height:1.4}
h1{font-size:1.6em}h2{font-size:1.25em;border-bottom:1px solid #ccc;padding-top:.6em}
h3{font-size:1em;color:#555;margin-bottom:.2em}
table{border-collapse:collapse;margin:.4em 0 1em;font-size:.82em}
td,th{border:1px solid #ddd;padding:2px 6px;text-align:left;vertical-align:top}
th{background:#f3f3f3}td.num{text-align:right;font-variant-numeric:tabular-nums}
img{max-width:100%;height:auto;border:1px solid #eee;margin:.4em 0}
nav li{margin:.15em 0}pre{font-size:.75em;background:#f8f8f8;padding:.6em;overflow-x:auto}
.scroll{max-height:420px;overflow:auto;max-width:100%}
.card{border:1px solid #ddd;border-left:6px solid #999;border-radius:4px;padding:.7em 1em;
margin:.8em 0;background:#fafafa}
.card.sig{border-left-color:#2a7d2a}.card.ns{border-left-color:#b06a00}
.card .what{color:#555;font-size:.9em}.card .answer{font-size:1.25em;font-weight:600;margin:.3em 0}
.badge{display:inline-block;font-size:.8em;padding:1px 8px;border-radius:10px;color:#fff;
background:#777}.badge.sig{background:#2a7d2a}.badge.ns{background:#b06a00}
.notes{background:#fff7e0;border:1px solid #f0d890;padding:.4em .8em;font-size:.85em}
details{margin:.4em 0}summary{cursor:pointer;color:#345}
nav .answer{color:#555;font-size:.85em}.run{color:#555;font-size:.85em}
img{max-width:min(100%,1100px)}
@media (max-width:600px){body{margin:1em auto;padding:0 .6em}h1{font-size:1.3em}
.card .answer{font-size:1.1em}table{font-size:.75em}}
"""


@dataclass
class Result:
    """The files of one result: a JSON document and the plots and tables that go with it."""

    name: str  # path relative to the report folder, without suffix
    json: Path | None = None
    images: list[Path] = field(default_factory=list)
    tables: list[Path] = field(default_factory=list)


_CHECKPOINT_FILES = {
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.json",
}


def _checkpoint_file(path: Path) -> bool:
    """A Hugging Face file of a checkpoint folder (config.json + safetensors), not a result."""
    return path.name in _CHECKPOINT_FILES and any(path.parent.glob("*.safetensors"))


def collect(folder: Path) -> list[Result]:
    """Group the folder's .json/.csv/.png files into results: the folder's own first (summaries),
    then those of subfolders, each in name order."""
    files = sorted(
        p for p in folder.rglob("*") if p.is_file() and p.suffix in (".json", ".csv", ".png")
    )
    files = [
        p for p in files if p.relative_to(folder).as_posix() not in SKIP and not _checkpoint_file(p)
    ]
    results: dict[Path, Result] = {}
    for p in files:
        if p.suffix == ".json":
            stem = p.with_suffix("")
            results[stem] = Result(stem.relative_to(folder).as_posix(), json=p)
    for p in files:
        if p.suffix == ".json":
            continue
        stem = p.with_suffix("")
        owners = [
            s
            for s in results
            if s == stem or (s.parent == stem.parent and stem.name.startswith(s.name + "_"))
        ]
        owner = max(owners, key=lambda s: len(s.name)) if owners else None
        if owner is None:
            owner = stem
            results[stem] = Result(stem.relative_to(folder).as_posix())
        (results[owner].images if p.suffix == ".png" else results[owner].tables).append(p)
    return [results[k] for k in sorted(results, key=lambda s: (len(s.parts), s))]


class _Html(str):
    """Already rendered HTML (not escaped again)."""


def _cell(v: Any, align: bool = True) -> str:
    """A table cell; numbers right-aligned in column tables (``align``), as written otherwise."""
    num = ' class="num"' if align and (v is None or isinstance(v, (int, float))) else ""
    if isinstance(v, float):
        return f"<td{num}>{v:.6g}</td>"
    return f"<td{num}>{v if isinstance(v, _Html) else html.escape(str(v))}</td>"


def _table(header: list[str], rows: list[list[Any]], align: bool = True) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(_cell(v, align) for v in row) + "</tr>" for row in rows)
    return f'<div class="scroll"><table><tr>{head}</tr>{body}</table></div>'


def _is_scalar(v: Any) -> bool:
    return v is None or isinstance(v, (str, int, float, bool))


def render_value(v: Any, depth: int = 0) -> Any:
    """JSON value as a table cell: scalars as they are, lists of flat records as tables,
    dicts as key/value tables, long lists of numbers shortened."""
    if _is_scalar(v):
        return v
    if isinstance(v, dict):
        return _Html(
            _table(["key", "value"], [[k, render_value(x, depth + 1)] for k, x in v.items()], False)
        )
    if v and all(isinstance(x, dict) for x in v):
        keys: list[str] = []
        for x in v:
            keys += [k for k in x if k not in keys]
        rows = [[render_value(x.get(k), depth + 1) for k in keys] for x in v[:MAX_ROWS]]
        more = f"<p>{len(v) - MAX_ROWS} more rows not shown</p>" if len(v) > MAX_ROWS else ""
        return _Html(_table(keys, rows) + more)
    if all(_is_scalar(x) for x in v):
        shown = ", ".join(f"{x:.4g}" if isinstance(x, float) else str(x) for x in v[:MAX_LIST])
        return f"[{shown}{', ...' if len(v) > MAX_LIST else ''}] ({len(v)} values)"
    return f"[{len(v)} nested values]"


_CSV_FIELD = 64 << 20  # longest CSV field read: 64 MiB


def _csv_table(path: Path) -> str:
    limit = csv.field_size_limit()
    try:
        csv.field_size_limit(max(limit, _CSV_FIELD))  # long text cells; tables are cut below
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f))
    except UnicodeDecodeError:
        warn(f"{path}: not UTF-8; left out of the report")
        return "<p>(not UTF-8: left out)</p>"
    except csv.Error as e:  # a field over the limit, a NUL byte
        warn(f"{path}: not a readable CSV ({e}); left out of the report")
        return "<p>(not a readable CSV: left out)</p>"
    finally:
        csv.field_size_limit(limit)
    if not rows:
        return "<p>(empty)</p>"

    def num(s: str) -> Any:
        try:
            return float(s) if any(c in s for c in ".eE") or s in ("nan", "inf") else int(s)
        except ValueError:
            return s

    body = [[num(c) for c in r] for r in rows[1 : MAX_ROWS + 1]]
    more = (
        f"<p>{len(rows) - 1 - MAX_ROWS} more rows in the CSV</p>"
        if len(rows) - 1 > MAX_ROWS
        else ""
    )
    return _table(rows[0], body) + more


def _image(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img alt="{html.escape(path.name)}" src="data:image/png;base64,{data}">'


def _anchor(name: str) -> str:
    return "r-" + "".join(c if c.isalnum() else "-" for c in name)


def _loaded(path: Path) -> Any:
    """The result object of a file written by ``write_result`` (None for other JSON)."""
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(doc, dict) or "provenance" not in doc or "kind" not in doc:
        return None
    try:
        return load_result(path)
    except RepdispError:
        return None


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _card(head: dict[str, Any]) -> str:
    sig = head.get("significant")
    cls, badge = (
        ("sig", "significant (95% CI excludes 0)")
        if sig is True
        else ("ns", "not significant")
        if sig is False
        else ("", "estimate (no test)")
    )
    ci = head.get("ci")
    ci_text = f" &middot; 95% CI [{_fmt(ci[0])}, {_fmt(ci[1])}]" if ci else ""
    return (
        f'<div class="card {cls}"><div class="what">{html.escape(str(head.get("what", "")))}</div>'
        f'<div class="answer">{html.escape(str(head.get("answer", "")))}</div>'
        f'<span class="badge {cls}">{badge}</span>'
        f'<span class="what"> value {_fmt(head.get("value"))}{ci_text}</span></div>'
    )


def _notes(notes: list[Any]) -> str:
    if not notes:
        return ""
    items = "".join(
        f"<li><code>{html.escape(str(n.get('key')))}</code> = {html.escape(str(n.get('value')))}"
        f" (written as null): {html.escape(str(n.get('why')))}</li>"
        if isinstance(n, dict)
        else f"<li>{html.escape(str(n))}</li>"
        for n in notes
    )
    return f'<div class="notes"><b>Notes</b><ul>{items}</ul></div>'


def _provenance(doc: dict[str, Any]) -> str:
    prov = dict(doc.get("provenance") or {})
    models = prov.pop("models", None) or []
    data = prov.pop("data", None) or []
    parts = ["<h3>provenance</h3>"]
    rows = [[k, v if _is_scalar(v) else json.dumps(v)] for k, v in prov.items()]
    parts.append(_table(["key", "value"], rows, False))
    if models:
        keys = list(dict.fromkeys(k for m in models for k in m))
        parts.append(_table(keys, [[m.get(k) for k in keys] for m in models], False))
    if data:
        keys = list(dict.fromkeys(k for d in data for k in d))
        parts.append(_table(keys, [[d.get(k) for k in keys] for d in data], False))
    run = doc.get("run") or {}
    if run:
        parts.append(
            "<p class='run'>run: "
            + html.escape(", ".join(f"{k} {_fmt(v)}" for k, v in run.items()))
            + "</p>"
        )
    return "".join(parts)


def render(folder: str | Path, title: str | None = None) -> str:
    """The HTML page for every result under ``folder``."""
    folder = Path(folder)
    if not folder.is_dir():
        raise RepdispError(f"{folder} is not a folder")
    results = collect(folder)
    if not results:
        raise RepdispError(f"{folder} holds no .json, .csv or .png results")
    title = title or f"repdisp report: {folder.resolve().name}"
    loaded = {r.name: _loaded(r.json) if r.json is not None else None for r in results}
    heads = {n: (obj.headline() if obj is not None else None) for n, obj in loaded.items()}
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        "<meta name='viewport' content='width=device-width, initial-scale=1'>",
        f"<title>{html.escape(title)}</title>",
        f"<style>{_CSS}</style></head><body><h1>{html.escape(title)}</h1>",
        f"<p>{len(results)} results from <code>{html.escape(folder.resolve().name)}</code>, "
        f"rendered {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.</p><nav><ol>",
    ]
    for r in results:
        head = heads[r.name]
        answer = (
            f' <span class="answer">&mdash; {html.escape(str(head["answer"]))}</span>'
            if head
            else ""
        )
        parts.append(f'<li><a href="#{_anchor(r.name)}">{html.escape(r.name)}</a>{answer}</li>')
    parts.append("</ol></nav>")
    for r in results:
        parts.append(f'<section id="{_anchor(r.name)}"><h2>{html.escape(r.name)}</h2>')
        doc = None
        if r.json is not None:
            try:
                doc = json.loads(r.json.read_text(encoding="utf-8"))
            except UnicodeDecodeError:
                warn(f"{r.json}: not UTF-8; left out of the report")
                parts.append(f"<p>{html.escape(r.json.name)}: not UTF-8 (left out)</p>")
            except json.JSONDecodeError as e:
                parts.append(
                    f"<p>{html.escape(r.json.name)}: invalid JSON ({html.escape(e.msg)})</p>"
                )
        obj = loaded[r.name]
        if obj is not None and doc is not None:
            if heads[r.name]:
                parts.append(_card(heads[r.name]))
            parts.append(_notes(doc.get("notes") or []))
        parts += [_image(p) for p in r.images]
        for p in r.tables:
            parts.append(f"<h3>{html.escape(p.name)}</h3>{_csv_table(p)}")
        if doc is not None and obj is not None:
            if not r.tables:  # tables of the result itself when no CSV was written
                for name, rows in obj.tables().items():
                    if rows:
                        parts.append(f"<h3>{html.escape(name)}</h3>")
                        parts.append(render_value(rows))
            parts.append(_provenance(doc))
        elif doc is not None:
            parts.append(f"<h3>{html.escape(r.json.name)}</h3>")
            value = render_value(doc)
            parts.append(value if isinstance(value, _Html) else f"<p>{html.escape(str(value))}</p>")
        if doc is not None:
            raw = html.escape(json.dumps(doc, indent=1)[:200_000])
            parts.append(f"<details><summary>raw JSON</summary><pre>{raw}</pre></details>")
        parts.append("</section>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(
    folder: str | Path, out: str | Path | None = None, title: str | None = None
) -> Path:
    """Render ``folder`` and write the page (default ``folder/report.html``)."""
    if not Path(folder).is_dir():
        what = "a file" if Path(folder).is_file() else "not found"
        raise RepdispError(
            f"{folder} is {what}: report takes the folder a command wrote its results in"
        )
    path = Path(out) if out else Path(folder) / "report.html"
    page = render(folder, title).encode("utf-8")
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda f: f.write(page))
    return path
