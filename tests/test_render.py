"""Rendering: golden files, escaping, errors, pre-send checks and the personaliser.

Regenerate the golden files after an intended template change with
``UPDATE_GOLDEN=1 .venv/bin/pytest tests/test_render.py`` and review the diff.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import replace
from datetime import UTC, date, datetime
from html.parser import HTMLParser
from pathlib import Path

import pytest

from newsletter.config import SenderSettings, ServiceSettings, Settings, SiteSettings
from newsletter.content.render import (
    MAX_HTML_BYTES,
    check_or_raise,
    check_rendered,
    format_date_long,
    render_edition,
    render_mjml_source,
)
from newsletter.content.types import (
    NAME,
    PLACEHOLDERS,
    PREFERENCES_URL,
    UNSUBSCRIBE_URL,
    Brand,
    EditionView,
    RecipientValues,
    RenderedEdition,
    StoryView,
)
from newsletter.delivery.personalise import (
    Personaliser,
    display_name,
    substitutions,
)
from newsletter.errors import CheckFailed, RenderError

ROOT = Path(__file__).resolve().parent.parent
TEMPLATES = ROOT / "templates"
GOLDEN = Path(__file__).resolve().parent / "golden"
VALIDATOR = ROOT / ".mjml-validator" / "node_modules" / ".bin" / "mjml"
SUBJECT = "{{ newsletter.name }} for {{ edition.date_long }}: {{ lead.title }}"

BRAND = Brand(
    service_name="The Daily Ledger",
    from_name="The Daily Ledger",
    postal_address="The Daily Ledger, 1 Newsroom Way, Springfield, IL 62701, USA",
    base_url="https://news.example.com",
    reply_to="editors@news.example.com",
)

_STORIES = [
    ("World", "Reuters", "Coastal cities agree on a shared plan for rising seas"),
    ("Business", "Financial Wire", "Central bank holds rates steady as inflation cools"),
    ("Science", "Nature News", "Telescope spots water vapour on a temperate exoplanet"),
    ("", "The Ledger", "Why the city's night buses are suddenly full"),
    ("Health", "AP", "New guidance on screen time for teenagers"),
    ("Technology", "Ars Technica", "A 40-year-old file format still runs the world's ports"),
    ("Culture", "The Guardian", "The quiet revival of the neighbourhood bookshop"),
    ("Sport", "BBC Sport", "Underdogs reach the final after a penalty shoot-out"),
]


def make_story(i: int, **changes: object) -> StoryView:
    kicker, source, title = _STORIES[i % len(_STORIES)]
    story = StoryView(
        title=title,
        url=f"https://example.com/news/{i + 1}?utm_source=ledger&ref=briefing",
        summary_html=(
            f"<p>Story {i + 1}: officials said on Monday that the plan would take "
            "<strong>five years</strong> and cost less than <em>expected</em>.</p>"
            f'<p>Read the <a href="https://example.com/docs/{i + 1}">full report</a>.</p>'
        ),
        summary_text=(
            f"Story {i + 1}: officials said on Monday that the plan would take five "
            "years and cost less than expected. Read the full report."
        ),
        kicker=kicker,
        source=source,
        published_at=datetime(2026, 11, 24, 5, i, tzinfo=UTC),
    )
    return replace(story, **changes)  # type: ignore[arg-type]


def make_edition(stories: list[StoryView] | None = None, **changes: object) -> EditionView:
    view = EditionView(
        id=42,
        newsletter_slug="daily-briefing",
        newsletter_name="The Daily Ledger",
        newsletter_description="The day's top stories, every morning.",
        issue_date=date(2026, 11, 24),
        stories=tuple(stories if stories is not None else [make_story(i) for i in range(8)]),
    )
    return replace(view, **changes)  # type: ignore[arg-type]


def render(
    view: EditionView | None = None,
    *,
    brand: Brand = BRAND,
    subject: str = SUBJECT,
    template: str = "briefing",
    templates_dir: Path = TEMPLATES,
) -> RenderedEdition:
    return render_edition(
        view or make_edition(),
        brand=brand,
        subject_template=subject,
        template=template,
        templates_dir=templates_dir,
    )


class Elements(HTMLParser):
    """Every start tag with its attributes, and the visible text, of an HTML document."""

    def __init__(self, html: str) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []
        self.feed(html)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data: str) -> None:
        self.text.append(data)

    def named(self, tag: str) -> list[dict[str, str | None]]:
        return [attrs for name, attrs in self.tags if name == tag]


# ----- golden files ----------------------------------------------------------


@pytest.mark.parametrize(
    ("part", "filename"),
    [("subject", "briefing.subject"), ("html", "briefing.html"), ("text", "briefing.txt")],
)
def test_golden(part: str, filename: str) -> None:
    actual: str = getattr(render(), part)
    golden = GOLDEN / filename
    if os.environ.get("UPDATE_GOLDEN") == "1":
        golden.parent.mkdir(exist_ok=True)
        golden.write_text(actual, encoding="utf-8", newline="")
    assert golden.exists(), f"{golden} is missing; run with UPDATE_GOLDEN=1 to create it"
    assert actual == golden.read_text(encoding="utf-8"), (
        f"{part} differs from {golden}; if intended, regenerate with UPDATE_GOLDEN=1"
    )


def test_rendering_is_deterministic() -> None:
    assert render() == render()


def test_subject_is_one_plain_line_and_shortened() -> None:
    lead = make_story(0, title="Storm  warning:\n<b>coast</b> & " + "very long words " * 20)
    subject = render(make_edition([lead, make_story(1)])).subject
    assert "\n" not in subject and "  " not in subject
    assert "<b>coast</b> &" in subject  # plain text: not HTML-escaped
    assert len(subject) <= 150 and subject.endswith("…")
    short = render(make_edition(), subject="  {{ newsletter.name }}\n{{ stories|length }} ")
    assert short.subject == "The Daily Ledger 8"


def test_date_long() -> None:
    assert format_date_long(date(2026, 11, 24)) == "Tuesday, 24 November 2026"
    assert format_date_long(date(2027, 1, 3)) == "Sunday, 3 January 2027"


def test_html_layout_essentials() -> None:
    html = render().html
    doc = Elements(html)
    titles = [s.title for s in make_edition().stories]
    story_links = [
        a for a in doc.named("a") if (a.get("href") or "").startswith("https://example.com/news/")
    ]
    assert len({a["href"] for a in story_links}) == 8
    text = " ".join(" ".join(doc.text).split())
    for title in titles:
        assert title in text
    assert "Tuesday, 24 November 2026" in text
    assert f"Hi {NAME}," in text
    assert "Reply to this email to reach the editors." in text
    assert BRAND.postal_address in text
    assert "Top story · World" in text
    assert doc.named("img") == []  # no images: nothing to block, nothing to alt
    assert "fonts.googleapis.com" not in html  # no remote fonts or stylesheets
    assert len(html.encode()) < 50 * 1024


def test_text_part_layout() -> None:
    text = render().text
    assert text.startswith(
        "THE DAILY LEDGER\nTuesday, 24 November 2026\n"
        "View in your browser: https://news.example.com/archive/daily-briefing/2026-11-24\n"
        "\nHi %%NAME%%,\n"
    )
    assert " 1. TOP STORY · WORLD\n    Coastal cities agree" in text
    assert " 4. Why the city's night buses are suddenly full\n" in text  # no kicker
    for i in range(1, 9):
        assert f"\n    https://example.com/news/{i}?utm_source=ledger&ref=briefing\n" in text
    assert f"Unsubscribe: {UNSUBSCRIBE_URL}\n" in text
    assert f"Preferences: {PREFERENCES_URL}\n" in text
    assert BRAND.postal_address in text
    long_lines = [line for line in text.splitlines() if len(line) > 72 and "://" not in line]
    assert long_lines == []
    assert "<" not in text  # no markup leaks into the text part


def test_headlines_alike_and_each_source_named_once() -> None:
    rendered = render()
    html, text = rendered.html, rendered.text
    sizes = re.findall(r'class="title"[^>]*>\s*<div style="[^"]*font-size:(\d+px)', html)
    assert len(sizes) == 8 and len(set(sizes)) == 1  # the lead's headline like the others
    for source in ("Reuters", "Financial Wire", "Nature News"):
        assert html.count(source) == 1 and text.count(source) == 1
    assert "Read at" not in html and "Read more at" not in text
    assert html.count("View in your browser") == 1
    assert 'href="https://news.example.com/archive/daily-briefing/2026-11-24"' in html


@pytest.mark.parametrize(("name", "greeting"), [("", "Hi there,"), ("Cher", "Hi Cher,")])
def test_the_greeting_works_with_no_name_or_one_word(name: str, greeting: str) -> None:
    personal = Personaliser(render())
    values = RecipientValues(name, "https://news.example.com/u", "https://news.example.com/p")
    assert greeting in personal.html(values) and f"\n{greeting}\n" in personal.text(values)
    assert "Hi ," not in personal.html(values) and "Hi  " not in personal.text(values)


def test_reply_line_only_with_reply_to() -> None:
    rendered = render(brand=replace(BRAND, reply_to=None))
    assert "reach the editors" not in rendered.html
    assert "reach the editors" not in rendered.text


def test_accent_follows_newsletter_slug() -> None:
    daily = render().html
    good = render(make_edition(newsletter_slug="good-news")).html
    assert "#a8321e" in daily and "#2f6b4a" not in daily
    assert "#2f6b4a" in good and "#a8321e" not in good


def test_single_story_edition_wording() -> None:
    rendered = render(make_edition([make_story(0)]))
    assert "Here is the story worth your time" in rendered.text
    assert "more stor" not in rendered.html  # preheader without "and 0 more stories"


# ----- escaping --------------------------------------------------------------

SCRIPT = "<script>alert('x')</script>"
IMG = '"><img src=x onerror=alert(1)>'


def test_hostile_text_fields_are_escaped_in_html_and_verbatim_in_text() -> None:
    lead = make_story(0, title=f"Title {SCRIPT}", kicker=f"Kick {IMG}", source=f"Src {IMG}")
    other = make_story(1, title=f"Other {IMG}", kicker=SCRIPT, source=SCRIPT)
    rendered = render(make_edition([lead, other, make_story(2)]))
    doc = Elements(rendered.html)
    assert doc.named("script") == []
    assert doc.named("img") == []
    assert not any(k.startswith("on") for _, attrs in doc.tags for k in attrs)
    visible = "".join(doc.text)
    assert f"Title {SCRIPT}" in visible  # shown as text, not executed
    assert f"Other {IMG}" in visible
    assert "&lt;script&gt;" in rendered.html
    for needle in (f"Title {SCRIPT}", f"Other {IMG}", f"Src {IMG}", "KICK " + IMG.upper()):
        assert needle in rendered.text


def test_sanitised_summary_html_passes_through() -> None:
    summary = (
        "<p>One <strong>two</strong> <em>three</em><br>four</p>"
        "<ul><li>a</li></ul><ol><li>b</li></ol><blockquote>quoted</blockquote>"
        '<p><a href="https://example.com/source?a=1&amp;b=2">source</a></p>'
    )
    rendered = render(make_edition([make_story(0, summary_html=summary), make_story(1)]))
    doc = Elements(rendered.html)
    for tag in ("strong", "em", "br", "ul", "ol", "li", "blockquote"):
        assert doc.named(tag), tag
    assert any(a.get("href") == "https://example.com/source?a=1&b=2" for a in doc.named("a"))
    assert "&lt;strong&gt;" not in rendered.html


def test_story_url_is_attribute_escaped() -> None:
    url = 'https://example.com/a?x=1&y="2"'
    rendered = render(make_edition([make_story(0, url=url), make_story(1)]))
    hrefs = [a.get("href") for a in Elements(rendered.html).named("a")]
    assert url in hrefs
    assert check_rendered(rendered) == []


# ----- errors ----------------------------------------------------------------


def test_unknown_variable_in_subject_names_it() -> None:
    with pytest.raises(RenderError, match=r"subject template.*'no_such_thing' is undefined"):
        render(subject="{{ newsletter.name }} {{ no_such_thing }}")


def test_subject_syntax_error() -> None:
    with pytest.raises(RenderError, match="subject template.*syntax error"):
        render(subject="{{ newsletter.name ")


def copy_templates(tmp_path: Path) -> Path:
    target = tmp_path / "templates"
    shutil.copytree(TEMPLATES, target)
    return target


def test_undefined_in_partial_names_file_and_line(tmp_path: Path) -> None:
    templates = copy_templates(tmp_path)
    footer = templates / "partials" / "footer.mjml.j2"
    footer.write_text(footer.read_text() + "{{ brand.no_such_field }}\n")
    with pytest.raises(RenderError) as info:
        render(templates_dir=templates)
    message = str(info.value)
    assert message.startswith("error in briefing.mjml.j2 (partials/footer.mjml.j2, line ")
    assert "no_such_field" in message and "\n" not in message


def test_mjml_syntax_error_names_template(tmp_path: Path) -> None:
    (tmp_path / "broken.mjml.j2").write_text(
        "<mjml><mj-body><mj-section><mj-column><mj-text>{{ lead.title }}"
        "</mj-column></mj-section></mj-body></mjml>"
    )
    (tmp_path / "broken.txt.j2").write_text("{{ lead.title }} {{ recipient.unsubscribe_url }}")
    with pytest.raises(RenderError, match=r"^MJML error in broken\.mjml\.j2: ") as info:
        render(template="broken", templates_dir=tmp_path)
    assert "\n" not in str(info.value)


def test_missing_template(tmp_path: Path) -> None:
    with pytest.raises(RenderError, match="template 'nope.mjml.j2' not found"):
        render(template="nope", templates_dir=tmp_path)


def test_jinja_syntax_error_in_body(tmp_path: Path) -> None:
    (tmp_path / "bad.mjml.j2").write_text("<mjml>\n{% if %}\n</mjml>")
    with pytest.raises(RenderError, match=r"error in bad\.mjml\.j2 \(bad\.mjml\.j2, line 2\)"):
        render(template="bad", templates_dir=tmp_path)


def test_edition_without_stories() -> None:
    with pytest.raises(RenderError, match="no stories"):
        render(make_edition([]))


# ----- pre-send checks -------------------------------------------------------


def test_clean_edition_passes_checks() -> None:
    rendered = render()
    assert check_rendered(rendered) == []
    check_or_raise(rendered)


def test_oversized_edition() -> None:
    long = "<p>" + "A paragraph of considerable length about the news. " * 40 + "</p>"
    stories = [make_story(i, summary_html=long) for i in range(40)]
    rendered = render(make_edition(stories))
    assert len(rendered.html.encode()) > MAX_HTML_BYTES
    problems = check_rendered(rendered)
    assert len(problems) == 1
    assert re.fullmatch(r"HTML is \d+\.\d KB \(\d+ bytes\), over the 90 KB limit .*", problems[0])


@pytest.mark.parametrize(
    "url",
    [
        "/news/relative",
        "news/relative",
        "//example.com/x",
        "javascript:alert(1)",
        " JavaScript:alert(1)",
        "ftp://example.com/x",
        "https:no-host",
        "#top",
        "",
    ],
)
def test_bad_story_link_is_caught(url: str) -> None:
    rendered = render(make_edition([make_story(0), make_story(1, url=url)]))
    problems = check_rendered(rendered)
    assert problems == [f"not an absolute http(s) URL: a href={url!r}"]


def with_html(html: str, text: str = f"Unsubscribe: {UNSUBSCRIBE_URL}") -> RenderedEdition:
    return RenderedEdition(subject="Subject", html=html, text=text)


UNSUB_LINK = f'<a href="{UNSUBSCRIBE_URL}">Unsubscribe</a>'


def test_link_rules() -> None:
    ok = (
        f'{UNSUB_LINK}<a href="{PREFERENCES_URL}">p</a><a href="mailto:editors@example.com">m</a>'
        f'<a href="HTTPS://Example.com/x">x</a><img src="https://example.com/i.png" alt="">'
        f'<a href="https://example.com/view?u={UNSUBSCRIBE_URL}">v</a><a href="{NAME}">n</a>'
    )
    assert check_rendered(with_html(ok)) == []
    bad = (
        f'{UNSUB_LINK}<img src="mailto:a@example.com" alt="x"><a href="x{NAME}">n</a>'
        '<td background="/bg.png"></td><a href="javascript&#58;alert(1)">j</a>'
    )
    assert check_rendered(with_html(bad)) == [
        "not an absolute http(s) URL: img src='mailto:a@example.com'",
        "not an absolute http(s) URL: a href='x%%NAME%%'",
        "not an absolute http(s) URL: td background='/bg.png'",
        "not an absolute http(s) URL: a href='javascript:alert(1)'",
    ]


def test_bad_links_are_deduplicated_and_capped() -> None:
    html = UNSUB_LINK + "".join(f'<a href="/p{i % 7}">x</a>' for i in range(30))
    problems = check_rendered(with_html(html))
    assert len(problems) == 6
    assert problems[-1] == "not an absolute http(s) URL: … and 2 more"


def test_links_inside_outlook_conditional_comments_are_checked() -> None:
    html = (
        UNSUB_LINK
        + '<!--[if mso | IE]><a href="/outlook">o</a><img src="https://e.com/i"><![endif]-->'
    )
    assert check_rendered(with_html(html)) == [
        "not an absolute http(s) URL: a href='/outlook'",
        "image without alt attribute: src='https://e.com/i'",
    ]


def test_image_without_alt_in_summary() -> None:
    summary = '<p>Look: <img src="https://example.com/chart.png"></p>'
    rendered = render(make_edition([make_story(0, summary_html=summary), make_story(1)]))
    assert check_rendered(rendered) == [
        "image without alt attribute: src='https://example.com/chart.png'"
    ]


def test_missing_unsubscribe_and_empty_subject() -> None:
    rendered = render()
    broken = RenderedEdition(
        subject="  ",
        html=rendered.html.replace(UNSUBSCRIBE_URL, "https://news.example.com/"),
        text=rendered.text.replace(UNSUBSCRIBE_URL, ""),
    )
    problems = check_rendered(broken)
    assert problems == [
        "subject is empty",
        'HTML has no unsubscribe link (<a href="%%UNSUBSCRIBE_URL%%">)',
        "text part has no unsubscribe URL (%%UNSUBSCRIBE_URL%%)",
    ]
    with pytest.raises(CheckFailed) as info:
        check_or_raise(broken)
    assert info.value.problems == problems


def test_unsubscribe_placeholder_as_text_is_not_a_link() -> None:
    problems = check_rendered(with_html(f"<p>{UNSUBSCRIBE_URL}</p>"))
    assert problems == ['HTML has no unsubscribe link (<a href="%%UNSUBSCRIBE_URL%%">)']


# ----- placeholders and the personaliser -------------------------------------


def test_placeholders_survive_jinja_mjml_and_css_inlining() -> None:
    rendered = render()
    hrefs = [a.get("href") for a in Elements(rendered.html).named("a")]
    assert hrefs.count(UNSUBSCRIBE_URL) == 1
    assert hrefs.count(PREFERENCES_URL) == 1
    assert f'href="{UNSUBSCRIBE_URL}"' in rendered.html
    assert f'href="{PREFERENCES_URL}"' in rendered.html
    assert f"Hi {NAME}," in rendered.html
    for mangled in ("%25%25", "&#37;", "%%UNSUBSCRIBE_URL%%&", "%%name%%"):
        assert mangled not in rendered.html
    assert f"Hi {NAME}," in rendered.text


ANN = RecipientValues(
    name='<b>Ann & "Bo"</b>',
    unsubscribe_url="https://news.example.com/u/tok.en?x=1&y=2",
    preferences_url="https://news.example.com/p/tok.en?x=1&y=2",
)


def test_personaliser_escapes_for_html_only() -> None:
    personaliser = Personaliser(render())
    html = personaliser.html(ANN)
    text = personaliser.text(ANN)
    assert "Hi &lt;b&gt;Ann &amp; &quot;Bo&quot;&lt;/b&gt;," in html
    assert "<b>Ann" not in html
    assert 'href="https://news.example.com/u/tok.en?x=1&amp;y=2"' in html
    assert 'Hi <b>Ann & "Bo"</b>,' in text
    assert "Unsubscribe: https://news.example.com/u/tok.en?x=1&y=2\n" in text
    unsubscribe = [a for a in Elements(html).named("a") if "/u/" in (a.get("href") or "")]
    assert [a["href"] for a in unsubscribe] == [ANN.unsubscribe_url]
    for placeholder in PLACEHOLDERS:
        assert placeholder not in html and placeholder not in text


@pytest.mark.parametrize("name", ["", "   ", "\n"])
def test_personaliser_default_name(name: str) -> None:
    personaliser = Personaliser(render())
    values = replace(ANN, name=name)
    assert "Hi there," in personaliser.html(values)
    assert "\nHi there,\n" in personaliser.text(values)


@pytest.mark.parametrize(
    ("raw", "shown"),
    [("", "there"), (" \t\n", "there"), (" Ann\r\n  Lee ", "Ann Lee"), ("Zoë", "Zoë")],
)
def test_display_name(raw: str, shown: str) -> None:
    # SendGrid's substitutions use the same function, so every provider greets alike.
    assert display_name(raw) == shown


def naive(body: str, values: dict[str, str]) -> str:
    for placeholder, value in values.items():
        body = body.replace(placeholder, value)
    return body


@pytest.mark.parametrize(
    "values",
    [
        ANN,
        RecipientValues("Zoë {0} %%NAME%%", "https://e.com/u/{1}", "https://e.com/p/%s"),
        RecipientValues("", "https://e.com/u", "https://e.com/p"),
    ],
)
def test_personaliser_matches_naive_substitution(values: RecipientValues) -> None:
    rendered = render()
    personaliser = Personaliser(rendered)
    assert personaliser.subject == rendered.subject
    html_values = substitutions(values, html=True)
    text_values = substitutions(values, html=False)
    assert personaliser.html(values) == naive(rendered.html, html_values)
    assert personaliser.text(values) == naive(rendered.text, text_values)
    assert personaliser.html(values) != rendered.html


def test_substitutions() -> None:
    assert substitutions(ANN, html=False) == {
        NAME: ANN.name,
        UNSUBSCRIBE_URL: ANN.unsubscribe_url,
        PREFERENCES_URL: ANN.preferences_url,
    }
    escaped = substitutions(replace(ANN, name=" Ann\r\n Lee "), html=True)
    assert escaped[NAME] == "Ann Lee"
    assert escaped[UNSUBSCRIBE_URL] == "https://news.example.com/u/tok.en?x=1&amp;y=2"


def test_brand_from_settings() -> None:
    settings = Settings(
        service=ServiceSettings(name="Svc"),
        sender=SenderSettings(from_name="From", postal_address="Addr", reply_to="r@example.com"),
        site=SiteSettings(base_url="https://site.example.com/"),
    )
    assert Brand.from_settings(settings) == Brand(
        service_name="Svc",
        from_name="From",
        postal_address="Addr",
        base_url="https://site.example.com",
        reply_to="r@example.com",
    )


# ----- the MJML source -------------------------------------------------------

_PADDING_ATTR = re.compile(r'\b((?:inner-)?padding(?:-\w+)?)="([^"]*)"')


def bare_zero_paddings(source: str) -> list[str]:
    """Padding attributes with a bare ``0`` in them (Outlook wants ``0px``)."""
    return [
        f'{name}="{value}"'
        for name, value in _PADDING_ATTR.findall(source)
        if any(token == "0" for token in value.split())
    ]


def test_bare_zero_detector() -> None:
    assert bare_zero_paddings('<mj-text padding="0 10px" padding-top="0px">') == [
        'padding="0 10px"'
    ]


def test_paddings_use_0px_in_templates_and_rendered_mjml() -> None:
    sources = [p.read_text() for p in sorted(TEMPLATES.rglob("*.mjml.j2"))]
    sources.append(
        render_mjml_source(
            make_edition(), brand=BRAND, template="briefing", templates_dir=TEMPLATES
        )
    )
    assert sum(len(_PADDING_ATTR.findall(s)) for s in sources) > 20
    for source in sources:
        assert bare_zero_paddings(source) == []


def test_preheader_keeps_contrast() -> None:
    html = render().html
    match = re.search(r'<div style="display:none;[^"]*">([^<]*)</div>', html)
    assert match, "preheader not found"
    style = match.group(0)
    assert "color:#ffffff" not in style and "opacity:0" not in style
    assert match.group(1).startswith("Coastal cities agree on a shared plan for rising seas")


@pytest.mark.skipif(
    not VALIDATOR.exists(),
    reason="reference MJML validator not installed: npm install --prefix .mjml-validator mjml",
)
def test_reference_mjml_validator_accepts_template(tmp_path: Path) -> None:
    source = tmp_path / "briefing.mjml"
    source.write_text(
        render_mjml_source(
            make_edition(), brand=BRAND, template="briefing", templates_dir=TEMPLATES
        ),
        encoding="utf-8",
    )
    result = subprocess.run(
        [str(VALIDATOR), "--validate", str(source)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Element" not in result.stderr and "Attribute" not in result.stderr, result.stderr
    bad = tmp_path / "bad.mjml"
    bad.write_text(
        '<mjml><mj-body><mj-section><mj-column><mj-text padding="abc">x'
        "</mj-text></mj-column></mj-section></mj-body></mjml>"
    )
    result = subprocess.run(
        [str(VALIDATOR), "--validate", str(bad)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode != 0  # the validator really validates


@pytest.mark.skipif(
    shutil.which("spamassassin") is None,
    reason="spamassassin not installed (Debian package spamassassin)",
)
def test_spamassassin_finds_no_low_contrast_text(tmp_path: Path) -> None:
    from email.message import EmailMessage

    personaliser = Personaliser(render())
    values = RecipientValues("Ann", "https://news.example.com/u/t", "https://news.example.com/p/t")
    msg = EmailMessage()
    msg["From"] = "The Daily Ledger <briefing@news.example.com>"
    msg["To"] = "ann@example.org"
    msg["Subject"] = personaliser.subject
    msg.set_content(personaliser.text(values))
    msg.add_alternative(personaliser.html(values), subtype="html")
    result = subprocess.run(
        ["spamassassin", "-L", "-t", "-x", "--cf=use_bayes 0", "--cf=bayes_auto_learn 0"],
        input=msg.as_string(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    report = result.stdout
    assert "Content analysis details" in report, result.stderr
    assert "HTML_FONT_LOW_CONTRAST" not in report, report
