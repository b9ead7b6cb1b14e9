"""Charts for the console, drawn on the server as SVG (pygal): no chart script needed.

Each chart is its own SVG response, shown with ``<img>`` (with the figures in its
``alt`` text), so the console's pages keep their strict Content-Security-Policy;
the SVG gets one of its own that allows only its inline styles (pygal's) and no
script. The figures come from ``newsletter.staff.overview``.
"""

from __future__ import annotations

from typing import Annotated

import pygal
from fastapi import APIRouter, Depends, Path, Query, Request
from pygal.etree import etree
from pygal.style import Style
from starlette.responses import Response

from newsletter.content.editions import get_edition
from newsletter.models import utcnow
from newsletter.staff import overview
from newsletter.staff.access import Permission
from newsletter.web.admin.auth import require
from newsletter.web.state import WebState

router = APIRouter()
#: An image: its own styles, nothing else, never framed.
SVG_CSP = "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'"
STYLE = Style(
    background="#ffffff",
    plot_background="#ffffff",
    foreground="#1f2328",
    foreground_strong="#1f2328",
    foreground_subtle="#545b66",
    colors=("#7e2414", "#3d4450", "#c99700", "#1f6f43", "#9b1c1c", "#545b66"),
    font_family="Helvetica, Arial, sans-serif",
    label_font_size=13,
    major_label_font_size=13,
    legend_font_size=13,
    title_font_size=16,
    value_font_size=12,
)
FUNNEL = ("accepted", "delivered", "opened", "clicked")


def _svg(chart: pygal.Graph) -> Response:
    tree = chart.render_tree()
    for parent in list(tree.iter()):  # pygal always embeds its config as a script: drop it
        for child in list(parent):
            if str(child.tag).endswith("script"):
                parent.remove(child)
    body = etree.tostring(tree, encoding="utf-8", xml_declaration=True)
    return Response(
        body,
        media_type="image/svg+xml",
        headers={"content-security-policy": SVG_CSP, "cache-control": "no-store"},
    )


def _config() -> dict[str, object]:
    return {
        "style": STYLE,
        "js": [],  # no script: the SVG is an image
        "width": 720,
        "height": 320,
        "show_legend": True,
        "legend_at_bottom": True,
        "print_values": True,
        "explicit_size": True,
    }


def funnel_chart(audience: int, funnel: dict[str, int], title: str) -> pygal.Graph:
    """Audience → accepted → delivered → opened → clicked, as horizontal bars."""
    chart = pygal.HorizontalBar(title=title, **_config())
    chart.x_labels = ["audience", *FUNNEL]
    chart.add("readers", [audience, *(funnel.get(k, 0) for k in FUNNEL)])
    return chart


def activity_chart(days: list[overview.Day]) -> pygal.Graph:
    """Sends and bounces per day."""
    chart = pygal.Bar(title="Sent and bounced per day", x_label_rotation=45, **_config())
    chart.config.print_values = False
    chart.x_labels = [d.day.strftime("%d %b") for d in days]
    chart.add("sent", [d.sent for d in days])
    chart.add("bounced", [d.bounced for d in days])
    return chart


@router.get(
    "/admin/charts/funnel/{edition_id}.svg",
    dependencies=[Depends(require(Permission.DASHBOARD))],
)
def funnel(request: Request, edition_id: Annotated[int, Path(ge=1, le=2**31 - 1)]) -> Response:
    web: WebState = request.app.state.web
    with web.sessions() as session:
        figures = overview.figures(session, get_edition(session, edition_id))
    title = f"Edition {figures.id}: {figures.newsletter}, {figures.issue_date}"
    return _svg(funnel_chart(figures.audience, figures.funnel, title))


@router.get("/admin/charts/activity.svg", dependencies=[Depends(require(Permission.DASHBOARD))])
def activity(request: Request, days: Annotated[int, Query(ge=1, le=366)] = 30) -> Response:
    web: WebState = request.app.state.web
    with web.sessions() as session:
        figures = overview.activity(session, days=days, now=utcnow())
    return _svg(activity_chart(figures))
