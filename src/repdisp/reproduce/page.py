"""The findings page of ``repdisp reproduce``: the claims table as Markdown and HTML.

``findings(cfg, out)`` collects the claim rows of a run folder (``claims.claims``), adds
``q_bh`` (Benjamini-Hochberg over the rows that carry a p-value, over this page) to each such
row, groups the rows by paper figure/table (``group_rows``: ``GROUPS`` order) and opens the page
with one sentence per paper section saying what held and what did not (``summary``), and writes
``claims.json`` (rule, rows, missing steps), ``claims.csv`` (when there are rows),
``findings.md`` and ``findings.html``. The page states the setup, the statistics and the verdict
rule (``verdict.VERDICT_RULE``), lists the command that reproduces each row (rows grouped by
command), the steps not finished yet, and every finished step's figure (paths relative to the
page). Verdicts are decided by the claim builders; the renderers (``markdown``, ``html_page``)
take plain data (title, paragraphs, rows, sections of (heading, Markdown), figures of (caption,
path)) and only render them. Files are written atomically (temp file + rename), so a page that
exists is always complete; the page is rewritten after every step.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

from .claims import CLAIMS, read
from .claims import claims as claim_rows
from .config import label, segments, stem
from .verdict import VERDICT_RULE

COLUMNS = ("figure", "claim", "scope", "paper", "result", "verdict")
# The paper's order of the groups of rows (a row's ``figure``); unknown groups follow, first seen
GROUPS = (
    "Fig. 3", "Fig. 4", "Fig. 5", "§2.2(2) random init", "Fig. 6", "Fig. 7", "Table 2",
    "Fig. 8", "§3.1 hard slices", "§3.2 Tables 3-4", "Table 1", "§3.3 kNN-LM", "Fig. 31",
)  # fmt: skip
# One sentence per paper section at the top of the page: (section prefix of the claim, topic)
SECTIONS = (
    ("§2.2", "perplexity vs dispersion"),
    ("§2.3", "training and fine-tuning"),
    ("§3.1", "accuracy and dispersion"),
    ("§3.2", "the dispersion gap"),
    ("§3.3", "kNN-LM keys"),
    ("§4", "the push-away loss"),
    ("App. B", "appendix analyses"),
)
_BADGE = {"supported": "#1a7f37", "contradicted": "#cf222e", "inconclusive": "#9a6700"}


def group_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows grouped by paper figure/table (``GROUPS`` order, then unknown groups as first
    seen); grid order kept within a group. A row without ``figure`` gets its claim's section."""
    for r in rows:
        r.setdefault("figure", section(r.get("claim", "")) or "other")
    seen = list(GROUPS) + [g for g in dict.fromkeys(r["figure"] for r in rows) if g not in GROUPS]
    return sorted(rows, key=lambda r: seen.index(r["figure"]))


def section(claim_text: str) -> str | None:
    """The paper section a claim names first (``§2.2``, ``App. B``), None when none."""
    import re

    m = re.match(r"\s*(§\d+\.\d+|App\. [A-Z])", claim_text)
    return m.group(1) if m else None


def summary(rows: list[dict[str, Any]]) -> list[str]:
    """One sentence per paper section with rows: which groups held here and which did not."""
    out = []
    for prefix, topic in SECTIONS:
        mine = [r for r in rows if (section(r.get("claim", "")) or "") == prefix]
        if not mine:
            continue
        by: dict[str, list[str]] = {"supported": [], "contradicted": [], "inconclusive": []}
        for r in mine:
            kind = next((k for k in by if str(r.get("verdict", "")).startswith(k)), "inconclusive")
            by[kind].append(r["figure"])

        def names(groups: list[str]) -> str:
            counts = {g: groups.count(g) for g in dict.fromkeys(groups)}
            return ", ".join(f"{g} ×{n}" if n > 1 else g for g, n in counts.items())

        held = f"held in {len(by['supported'])} of {len(mine)} rows"
        held += f" ({names(by['supported'])})" if by["supported"] else ""
        parts = [f"{len(by[k])} {k} ({names(by[k])})" for k in ("contradicted", "inconclusive")]
        parts = [p for p, k in zip(parts, ("contradicted", "inconclusive"), strict=True) if by[k]]
        rest = "; did not hold: " + ", ".join(parts) if parts else ""
        out.append(f"- **{prefix}** ({topic}): {held}{rest}.")
    return out


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
    """Escape, then render `code` spans, **bold** and line breaks (the page's only markup)."""
    import re

    parts = html.escape(str(text)).split("`")
    out = "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts))
    return re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", out).replace("\n", "<br>")


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
    from ..io.results import _atomic_bytes

    folder = Path(folder)
    md = _atomic_bytes(
        folder / "findings.md", markdown(title, intro, claims, sections, figures).encode()
    )
    page = _atomic_bytes(
        folder / "findings.html", html_page(title, intro, claims, sections, figures).encode()
    )
    return md, page


def findings(cfg: dict[str, Any], out: Path, seconds: float | None = None) -> tuple[Path, Path]:
    """Rewrite the run folder's claims files and findings page; returns (md, html) paths."""
    from ..io.results import write_csv, write_json

    rows, missing = claim_rows(cfg, out)
    rows = group_rows(rows)
    models = ", ".join(label(m) for m in cfg["models"])
    corpora = ", ".join(stem(d) for d in cfg["data"])

    def size(m: str, d: str) -> str:
        cell = out / label(m) / stem(d)
        done = read(cell / "ppl_vs_dispersion.json")
        if done and done.get("series"):
            return f"{done['series'][0]['n_segments']} ({label(m)} · {stem(d)})"
        for name in ("layers.json", "sublayer_link.json"):  # a run with --only
            done = read(cell / name)
            if done and done.get("n_segments"):
                return f"{done['n_segments']} ({label(m)} · {stem(d)})"
        return f"up to {segments(cfg, m, d)} ({label(m)} · {stem(d)}, not run yet)"

    sizes = ", ".join(size(m, d) for m in cfg["models"] for d in cfg["data"])
    intro = [
        f"Models: {models}. Corpora: {corpora}. Segments of {cfg['seq_len']} tokens per model "
        f"and corpus, N = {sizes} (asked for {cfg['segments']}; a corpus with fewer windows "
        f"gives all of them), dtype {cfg['dtype']}, seed {cfg['seed']}.",
        "Statistics: across-segment CIs resample segments and re-bin with Algorithm 1 in every "
        f"replicate ({cfg['stats_reps']} replicates; {cfg['layer_stats_reps']} for the "
        f"layer-wise rows); p-values are permutation tests ({cfg['permutations']} shuffles of "
        "perplexity over segments). The effect size is the change in dispersion per doubling "
        f"of perplexity, the OLS slope on log2 perplexity over {cfg['curve_bins']} equal-count "
        "bins (across) or over segments (within).",
        VERDICT_RULE,
    ]
    with_p = [r for r in rows if r.get("p") is not None]
    if with_p:
        from scipy.stats import false_discovery_control

        q = false_discovery_control([r["p"] for r in with_p], method="bh")
        for r, qv in zip(with_p, q, strict=True):
            r["q_bh"] = float(qv)
        k = sum(qv < 0.05 for qv in q)
        intro.append(
            f"Multiple comparisons: {len(with_p)} rows carry a p-value (the slope's permutation "
            "test; the paired t-test over seeds for the kNN rows); "
            f"{k} of them keep q < 0.05 after Benjamini-Hochberg over this page "
            "(`q_bh` in claims.csv/json). The verdicts themselves follow the rule above, "
            "row by row."
        )
    if rows:
        intro.insert(0, "What held here, per paper section (verdicts of the table below):\n"
                     + "\n".join(summary(rows)))  # fmt: skip
    if cfg.get("only"):
        intro.append(f"Only the rows {', '.join(cfg['only'])} were asked for (`--only`).")
    sections = []
    if missing:
        sections.append(("Not finished yet", "\n".join(f"- {m}" for m in missing)))
    timing = read(out / "step_seconds.json")
    if timing:
        sections.append(("Wall time per step", timing_table(timing, read(out / "floor_seconds.json"))))
    if seconds is not None:
        intro.append(f"Wall time of this invocation: {seconds:.0f} s.")
    if rows:
        write_csv(out / "claims.csv", rows)
    write_json(out / "claims.json", {"rule": VERDICT_RULE, "claims": rows, "missing": missing})
    return write_findings(
        out, "repdisp reproduce: findings", intro, rows, sections, figures(cfg, out)
    )


def timing_table(timing: dict[str, float], floors: dict[str, float] | None) -> str:
    """Markdown table: step, seconds, floor seconds (the plain forwards it ran), ratio; then the
    whole run against its floor (sums over the steps)."""
    floors = floors or {}
    note = "(the first step of a cell includes the cell's extraction; a skipped step keeps the "
    note += "time of the run that computed it. Floor: what the step ran, done plainly: a plain "
    note += "batched forward over the same segments, windows or prompts for each pass through "
    note += "a model (shards read back from the cache count none), and for training the same "
    note += "number of plain optimiser steps plus plain forwards for its evaluations; the "
    note += "grid's floor is their sum)"
    lines = ["| step | seconds | floor s | ratio |", "|---|---:|---:|---:|"]
    for k, v in timing.items():
        f = floors.get(k, 0.0)
        lines.append(f"| {k} | {v:.1f} | {f:.1f} | {f'{v / f:.2f}x' if f > 0 else '-'} |")
    total, floor = sum(timing.values()), sum(floors.get(k, 0.0) for k in timing)
    ratio = f"{total / floor:.2f}x its floor" if floor > 0 else "no floor measured"
    lines.append(f"| all steps | {total:.1f} | {floor:.1f} | {ratio.split()[0] if floor else '-'} |")
    return note + "\n\n" + "\n".join(lines) + f"\n\nWhole run: {total:.1f} s, {ratio}."


def figures(cfg: dict[str, Any], out: Path) -> list[tuple[str, str]]:
    """(caption, path relative to the page) of every finished step's figure, grid order (the
    ``figure`` of each cell claim, in registration order)."""
    found = []
    shown = [c.figure for c in CLAIMS if c.over == "cell" and c.figure]
    for spec in cfg["models"]:
        for data in cfg["data"]:
            rel = Path(label(spec)) / stem(data)
            for name, what in shown:
                if (out / rel / name).exists():
                    found.append((f"{label(spec)} · {stem(data)}: {what}", f"{rel / name}"))
    return found
