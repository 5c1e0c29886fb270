"""The annotation sheet as a self-contained page (no scripts, no external files) for the people who fill it."""

from __future__ import annotations

import html
import math

import pandas as pd

from modeldiff.analysis.annotate import Selection

from . import asset


def sheet_html(
    sheet: pd.DataFrame, selection: Selection, title: str, about: dict[str, str], instructions: str = ""
) -> str:
    """A self-contained page (no scripts, no external files): what the sheet is, then one row per input with its
    decoded text, z under both models and D."""
    e = lambda v: html.escape(str(v))  # noqa: E731
    facts = "".join(f"<dt>{e(k)}</dt><dd>{e(v)}</dd>" for k, v in about.items())
    bins = ", ".join(
        f"{k}: [{lo:.4g}, {hi:.4g}] ({n} draws)"
        for k, (lo, hi, n) in enumerate(zip(selection.edges[:-1], selection.edges[1:], selection.bin_draws))
    )
    head = "".join(f"<th>{e(c)}</th>" for c in ("id", "bin", "D", "z_A", "z_B", "draws", "text", "tokens", "score"))
    body, previous = [], None
    for r in sheet.itertuples(index=False):
        cls = ' class="bin-start"' if r.bin != previous else ""
        previous = r.bin
        score = "" if math.isnan(r.score) else f"{r.score:.3g}"
        body.append(
            f"<tr{cls}><td>{e(r.id)}</td><td class=num>{r.bin}</td><td class=num>{r.D:.4f}</td>"
            f"<td class=num>{r.z_A:.4f}</td><td class=num>{r.z_B:.4f}</td><td class=num>{r.n_draws}</td>"
            f"<td class=text>{e(r.text)}</td><td class=tokens>{e(r.tokens)}</td>"
            f"<td class=num>{e(score)}</td></tr>"
        )
    title = e(title)
    return (
        f"<!DOCTYPE html>\n<html lang=en><head><meta charset=utf-8><title>{title}</title>"
        f"<style>{asset('sheet.css')}</style></head><body><h1>{title}</h1><dl>{facts}<dt>D bins</dt><dd>{e(bins)}</dd>"
        f"</dl><p>{e(instructions)}</p><table><thead><tr>{head}</tr></thead><tbody>\n"
        + "\n".join(body)
        + "\n</tbody></table></body></html>\n"
    )
