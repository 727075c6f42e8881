"""The findings page of ``repdisp reproduce``: a claims table as Markdown and HTML.

Input is plain data: a title, a list of paragraphs (the setup and the verdict rule), and claim
rows (dicts with ``claim``, ``paper``, ``scope``, ``result``, ``verdict``, ``command``), plus
optional extra sections of (heading, Markdown text) and figures of (caption, path relative to the
page). The verdicts are decided by the caller; this
module only renders them. Both files are written atomically (temp file + rename), so a page that
exists is always complete.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

from .files import _atomic_bytes

COLUMNS = ("claim", "scope", "paper", "result", "verdict")
_BADGE = {"supported": "#1a7f37", "contradicted": "#cf222e", "inconclusive": "#9a6700"}


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _row_list(rows: list[int]) -> str:
    """[1, 2, 3, 5] -> 'rows 1-3, 5'; [4] -> 'row 4'."""
    runs: list[list[int]] = []
    for r in rows:
        if runs and r == runs[-1][-1] + 1:
            runs[-1].append(r)
        else:
            runs.append([r])
    text = ", ".join(f"{a[0]}-{a[-1]}" if len(a) > 1 else f"{a[0]}" for a in runs)
    return ("rows " if len(rows) > 1 else "row ") + text


def markdown(
    title: str,
    intro: list[str],
    claims: list[dict[str, Any]],
    sections: list[tuple[str, str]] = (),
    figures: list[tuple[str, str]] = (),
) -> str:
    lines = [f"# {title}", ""]
    for para in intro:
        lines += [para, ""]
    lines += ["## Claims", ""]
    lines.append("| # | " + " | ".join(COLUMNS) + " |")
    lines.append("|---" * (len(COLUMNS) + 1) + "|")
    for i, c in enumerate(claims, 1):
        row = [_cell(c.get(k, "")) for k in COLUMNS]
        row[-1] = f"**{row[-1]}**"
        lines.append(f"| {i} | " + " | ".join(row) + " |")
    lines.append("")
    rows_of: dict[str, list[int]] = {}  # command -> the rows it reproduces, first-seen order
    for i, c in enumerate(claims, 1):
        if c.get("command"):
            rows_of.setdefault(c["command"], []).append(i)
    if rows_of:
        lines += ["## Commands that reproduce each row", ""]
        lines += [f"- {_row_list(rows)}: `{cmd}`" for cmd, rows in rows_of.items()]
        lines.append("")
    for head, body in sections:
        lines += [f"## {head}", "", body.rstrip(), ""]
    if figures:
        lines += ["## Figures", ""]
        for caption, path in figures:
            lines += [f"{caption}", "", f"![{caption}]({path})", ""]
    return "\n".join(lines)


def _md_inline(text: str) -> str:
    """Escape, then render `code` spans (the only inline markup the page uses)."""
    parts = html.escape(str(text)).split("`")
    return "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts))


def html_page(
    title: str,
    intro: list[str],
    claims: list[dict[str, Any]],
    sections: list[tuple[str, str]] = (),
    figures: list[tuple[str, str]] = (),
) -> str:
    style = (
        "body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em}"
        "table{border-collapse:collapse;width:100%;font-size:14px}"
        "th,td{border:1px solid #ccc;padding:4px 6px;vertical-align:top;text-align:left}"
        "th{background:#f3f3f3}.v{color:#fff;padding:1px 6px;border-radius:4px}"
        "pre{background:#f6f8fa;padding:8px;overflow-x:auto;font-size:13px}"
    )
    out = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title><style>{style}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
    ]
    out += [f"<p>{_md_inline(p)}</p>" for p in intro]
    out.append("<h2>Claims</h2><table><tr><th>#</th>")
    out += [f"<th>{html.escape(k)}</th>" for k in COLUMNS]
    out.append("</tr>")
    for i, c in enumerate(claims, 1):
        v = str(c.get("verdict", ""))
        colour = next((col for k, col in _BADGE.items() if v.startswith(k)), "#57606a")
        cells = [_md_inline(c.get(k, "")) for k in COLUMNS[:-1]]
        cells.append(f"<span class='v' style='background:{colour}'>{html.escape(v)}</span>")
        cmd = c.get("command")
        if cmd:
            cells[-2] += f"<br><code style='font-size:11px'>{html.escape(cmd)}</code>"
        out.append(f"<tr><td>{i}</td>" + "".join(f"<td>{x}</td>" for x in cells) + "</tr>")
    out.append("</table>")
    for head, body in sections:
        out.append(f"<h2>{html.escape(head)}</h2><pre>{html.escape(body)}</pre>")
    if figures:
        out.append("<h2>Figures</h2>")
    for caption, path in figures:
        src = html.escape(path, quote=True)
        out.append(
            f"<figure><a href='{src}'><img src='{src}' style='max-width:100%' "
            f"alt='{html.escape(caption, quote=True)}'></a>"
            f"<figcaption>{html.escape(caption)}</figcaption></figure>"
        )
    out.append("</body></html>")
    return "\n".join(out) + "\n"


def write_findings(
    folder: str | Path,
    title: str,
    intro: list[str],
    claims: list[dict[str, Any]],
    sections: list[tuple[str, str]] = (),
    figures: list[tuple[str, str]] = (),
) -> tuple[Path, Path]:
    """Write ``findings.md`` and ``findings.html`` into ``folder``; returns both paths."""
    folder = Path(folder)
    md = _atomic_bytes(
        folder / "findings.md", markdown(title, intro, claims, sections, figures).encode()
    )
    page = _atomic_bytes(
        folder / "findings.html", html_page(title, intro, claims, sections, figures).encode()
    )
    return md, page
