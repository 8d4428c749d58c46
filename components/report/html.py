"""``report.html``: the Markdown report's sections as one self-contained page, with the pictures embedded.

The same page is the pipeline's KFP ``HTML`` artifact, so it renders in the Vertex AI console: no
script, no external file; each picture is a ``data:image/png;base64`` image.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Mapping
from typing import Any

from markdown_it import MarkdownIt

from vxdeploy.components.report.build import report_sections

_STYLE = """
body { font-family: -apple-system, "Segoe UI", Roboto, Helvetica, Arial, sans-serif; margin: 1.5rem auto;
       max-width: 1200px; padding: 0 1rem; color: #202124; line-height: 1.45; }
h1 { font-size: 1.5rem; } h2 { font-size: 1.25rem; border-bottom: 1px solid #dadce0; padding-bottom: .2rem; }
table { border-collapse: collapse; margin: .6rem 0 1rem; font-size: .85rem; display: block;
        overflow-x: auto; }
th, td { border: 1px solid #dadce0; padding: .25rem .5rem; text-align: left; vertical-align: top; }
th { background: #f1f3f4; } tr:nth-child(even) td { background: #fafafa; }
code { background: #f1f3f4; padding: 0 .2rem; border-radius: 3px; }
pre { background: #f1f3f4; padding: .6rem; overflow-x: auto; }
figure { margin: .6rem 0 1.4rem; } figure img { max-width: 100%; height: auto; }
figcaption { font-size: .85rem; color: #5f6368; }
"""


def _markdown() -> MarkdownIt:
    # CommonMark with GitHub tables; raw HTML in the text (a model name, an error) is escaped.
    return MarkdownIt("commonmark", {"html": False}).enable("table")


def picture_tag(name: str, caption: str, png: bytes) -> str:
    """A figure with the PNG embedded as a data URI."""
    data = base64.b64encode(png).decode("ascii")
    alt = html.escape(caption, quote=True)
    return (
        f'<figure id="figure-{name}"><img alt="{alt}" src="data:image/png;base64,{data}">'
        f"<figcaption>{html.escape(caption)}</figcaption></figure>"
    )


def render_html(report: Mapping[str, Any], pictures: Mapping[str, tuple[str, bytes]] | None = None) -> str:
    """The page: every section of the Markdown report, each followed by its picture when the run has one.

    Args:
        report: The run's report (:func:`vxdeploy.components.report.build.build_report`).
        pictures: name -> (caption, PNG); drawn from the report when None
            (:func:`vxdeploy.components.report.figures.report_pictures`).
    """
    if pictures is None:
        from vxdeploy.components.report.figures import report_pictures

        pictures = report_pictures(report)
    md = _markdown()
    parts = []
    for section in report_sections(report):
        parts.append(md.render(f"{'#' * section.level} {section.title}\n\n{section.body}"))
        if section.figure and section.figure in pictures:
            caption, png = pictures[section.figure]
            parts.append(picture_tag(section.figure, caption, png))
    title = html.escape(f"vxdeploy run {report.get('run_id', '')}")
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{title}</title>\n<style>{_STYLE}</style>\n</head>\n<body>\n"
        + "\n".join(parts)
        + "\n</body>\n</html>\n"
    )
