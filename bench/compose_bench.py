"""Benchmark: compose an 8-story edition (Jinja2 + MJML + css-inline + text) and
personalise it per recipient.

    .venv/bin/python bench/compose_bench.py [--runs 200] [--recipients 20000]

Targets (DESIGN.md): compose ≤ 50 ms, HTML ≤ 90 KB; personalising must be far
cheaper than re-rendering per recipient.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from datetime import UTC, date, datetime
from pathlib import Path

from mjml import mjml2html

from newsletter.content import render
from newsletter.content.render import (
    check_rendered,
    render_edition,
    render_mjml_source,
)
from newsletter.content.types import (
    Brand,
    EditionView,
    RecipientValues,
    StoryView,
)
from newsletter.delivery.personalise import (
    Personaliser,
    substitutions,
)

TEMPLATES = Path(__file__).resolve().parent.parent / "templates"
SUBJECT = "{{ newsletter.name }} for {{ edition.date_long }}: {{ lead.title }}"
BRAND = Brand(
    service_name="The Daily Ledger",
    from_name="The Daily Ledger",
    postal_address="The Daily Ledger, 1 Newsroom Way, Springfield, IL 62701, USA",
    base_url="https://news.example.com",
    reply_to="editors@news.example.com",
)
SENTENCE = "Officials said the measure, agreed after months of talks, would take effect next year. "


def story(i: int) -> StoryView:
    """A story with a realistic ~450-character summary (two paragraphs, a link)."""
    return StoryView(
        title=f"Story {i + 1}: coastal cities agree on a shared plan for rising seas",
        url=f"https://example.com/2026/11/24/story-{i + 1}?utm_source=ledger",
        summary_html=(
            f"<p>{SENTENCE * 3}<strong>Critics</strong> were unconvinced.</p>"
            f'<p>{SENTENCE}<a href="https://example.com/report/{i}">Read the report</a>.</p>'
        ),
        summary_text=SENTENCE * 4 + "Critics were unconvinced.",
        kicker="World",
        source="Reuters",
        published_at=datetime(2026, 11, 24, 5, 0, tzinfo=UTC),
    )


def edition(n: int) -> EditionView:
    return EditionView(
        id=1,
        newsletter_slug="daily-briefing",
        newsletter_name="The Daily Ledger",
        newsletter_description="The day's top stories, every morning.",
        issue_date=date(2026, 11, 24),
        stories=tuple(story(i) for i in range(n)),
    )


def compose(view: EditionView) -> render.RenderedEdition:
    return render_edition(
        view, brand=BRAND, subject_template=SUBJECT, template="briefing", templates_dir=TEMPLATES
    )


def clear_caches() -> None:
    render._environment.cache_clear()
    render._subject_template.cache_clear()
    render._inliner.cache_clear()


def timings(
    fn: Callable[[], object], runs: int, before: Callable[[], None] | None = None
) -> list[float]:
    out = []
    for _ in range(runs):
        if before:
            before()
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


def p95(values: list[float]) -> float:
    return statistics.quantiles(values, n=20)[-1]


def row(label: str, values: list[float], unit: float, suffix: str) -> str:
    mean, top = statistics.fmean(values) * unit, p95(values) * unit
    return f"| {label:<44} | {mean:>9.3f} {suffix} | {top:>9.3f} {suffix} |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--recipients", type=int, default=20_000)
    args = parser.parse_args()

    view = edition(8)
    rendered = compose(view)
    problems = check_rendered(rendered)
    html_kb = len(rendered.html.encode()) / 1024
    one_kb = len(compose(edition(1)).html.encode()) / 1024
    per_story_kb = (html_kb - one_kb) / 7

    # Stage by stage, warm caches (as in a long-running scheduler).
    mjml_source = render_mjml_source(
        view, brand=BRAND, template="briefing", templates_dir=TEMPLATES
    )
    stripped = render._INLINE_STYLE.sub("", mjml_source)
    css = "\n".join(m.group(1) for m in render._INLINE_STYLE.finditer(mjml_source))
    compiled = mjml2html(stripped, disable_comments=True, fonts={})
    ctx = render._context(view, BRAND)
    text_template = render._environment(TEMPLATES).get_template("briefing.txt.j2")

    r = args.runs
    print(f"compose: 8-story edition, {r} runs, times per edition\n")
    print(f"| {'what':<44} | {'mean':>12} | {'p95':>12} |")
    print(f"|{'-' * 46}|{'-' * 14}|{'-' * 14}|")
    full = timings(lambda: compose(view), r)
    print(row("compose, warm (Jinja+MJML+css-inline+text)", full, 1e3, "ms"))
    cold = timings(lambda: compose(view), max(r // 4, 10), before=clear_caches)
    print(row("compose, cold (templates compiled each run)", cold, 1e3, "ms"))
    print(
        row(
            "  Jinja → MJML source",
            timings(
                lambda: render_mjml_source(
                    view, brand=BRAND, template="briefing", templates_dir=TEMPLATES
                ),
                r,
            ),
            1e3,
            "ms",
        )
    )
    print(
        row(
            "  MJML → HTML (mjml-python)",
            timings(lambda: mjml2html(stripped, disable_comments=True, fonts={}), r),
            1e3,
            "ms",
        )
    )
    print(row("  css-inline", timings(lambda: render._inliner(css).inline(compiled), r), 1e3, "ms"))
    print(row("  Jinja → text", timings(lambda: text_template.render(ctx), r), 1e3, "ms"))
    print(row("check_rendered", timings(lambda: check_rendered(rendered), r), 1e3, "ms"))

    n = args.recipients
    recipients = [
        RecipientValues(
            f"Reader {i}",
            f"https://news.example.com/u/{i:08d}.Zm9vYmFyYmF6cXV4",
            f"https://news.example.com/p/{i:08d}.Zm9vYmFyYmF6cXV4",
        )
        for i in range(n)
    ]
    personaliser = Personaliser(rendered)

    def personalise_all() -> None:
        for values in recipients:
            personaliser.html(values)
            personaliser.text(values)

    def naive_all() -> None:
        for values in recipients:
            for part, is_html in ((rendered.html, True), (rendered.text, False)):
                for key, value in substitutions(values, html=is_html).items():
                    part = part.replace(key, value)

    fast = timings(personalise_all, 5)
    slow = timings(naive_all, 3)
    fast_us = min(fast) / n * 1e6
    slow_us = min(slow) / n * 1e6
    print(f"\npersonalise: {n} recipients, HTML + text per recipient (best of runs)\n")
    print(f"| {'what':<44} | {'per recipient':>14} |")
    print(f"|{'-' * 46}|{'-' * 16}|")
    print(f"| {'Personaliser.html + .text':<44} | {fast_us:>11.2f} µs |")
    print(f"| {'naive str.replace of substitutions()':<44} | {slow_us:>11.2f} µs |")
    rerender_us = statistics.fmean(full) * 1e6
    print(f"| {'re-render per recipient (compose, warm)':<44} | {rerender_us:>11.0f} µs |")

    mean_ms = statistics.fmean(full) * 1e3
    print("\nsize and targets\n")
    print(f"| {'what':<44} | {'value':>14} | {'target':>8} |")
    print(f"|{'-' * 46}|{'-' * 16}|{'-' * 10}|")
    print(f"| {'HTML, 8 stories':<44} | {html_kb:>11.1f} KB | {'≤ 90 KB':>8} |")
    print(f"| {'HTML, 1 story (fixed part + 1 story)':<44} | {one_kb:>11.1f} KB | {'':>8} |")
    print(f"| {'HTML per extra story':<44} | {per_story_kb:>11.1f} KB | {'':>8} |")
    text_kb = len(rendered.text.encode()) / 1024
    print(f"| {'text part, 8 stories':<44} | {text_kb:>11.1f} KB | {'':>8} |")
    print(f"| {'compose mean (warm)':<44} | {mean_ms:>11.2f} ms | {'≤ 50 ms':>8} |")
    speedup = rerender_us / fast_us
    print(f"| {'personalise vs re-render':<44} | {speedup:>12.0f} x | {'':>8} |")
    print(f"\npre-send checks: {'ok' if not problems else problems}")
    ok = mean_ms <= 50 and html_kb <= 90 and not problems
    print("targets met" if ok else "TARGETS MISSED")


if __name__ == "__main__":
    main()
