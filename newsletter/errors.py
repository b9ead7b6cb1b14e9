"""One exception hierarchy for the whole service.

Every error a user can cause derives from :class:`NewsletterError`. A service
error carries a stable ``code`` (``"edition.held"``) and structured ``fields``
(``edition_id=12``) and a one-line description of what is wrong, in the
service's own terms: never a command, a flag, an exit code or a page. Each face
chooses its words from the code: the CLI adds the next command to run and an exit
status (``newsletter.cli.common``), a web face a page or a JSON problem and an
HTTP status. The tree::

    NewsletterError                 error
    ├── ConfigError                 config.*      bad or missing config file / setting / secret
    ├── InputError                  input.*       bad input: an address, a date, a file, a token
    │   └── CSVImportError          import.*      the whole CSV file is unreadable
    ├── NotFoundError               *.not_found   unknown edition, newsletter, subscriber, story
    ├── StateError                  *.<state>     not allowed in the entity's current state
    ├── FeedError                   feed.*        a feed could not be fetched or parsed
    ├── NoStoriesError              edition.no_stories
    ├── RenderError                 render.*      template or MJML failure
    │   └── CheckFailed             edition.checks_failed   pre-send checks blocked the edition
    ├── ProviderError               provider.*    the provider refused or went away mid-send
    │   └── ProviderConfigError     provider.config   missing key, bad credentials, unreachable
    └── QueueError                  queue.*       the workers' broker cannot be reached
"""

from __future__ import annotations

from typing import Any


class NewsletterError(Exception):
    """Base of every user-facing error; ``str(err)`` is the one-line description.

    ``code`` names the error for the faces (stable across releases); ``fields``
    hold what it is about (``edition_id``, ``slug``, ``email``, ...).
    """

    code = "error"

    def __init__(self, message: str, *, code: str | None = None, **fields: Any) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code
        self.fields: dict[str, Any] = fields


class ConfigError(NewsletterError):
    """The configuration file, a setting or a secret is invalid."""

    code = "config.invalid"


class InputError(NewsletterError):
    """An argument, a form value, a token or an input file is invalid."""

    code = "input.invalid"


class CSVImportError(InputError):
    """A CSV file cannot be imported at all (unreadable, no header, no email column)."""

    code = "import.unreadable"


class NotFoundError(NewsletterError):
    """A named thing (edition, newsletter, subscriber, story) does not exist."""

    code = "not_found"


class StateError(NewsletterError):
    """The operation is not allowed in the entity's current state."""

    code = "state.invalid"


class FeedError(NewsletterError):
    """A feed could not be fetched or yielded no usable entries."""

    code = "feed.unusable"


class NoStoriesError(NewsletterError):
    """No eligible stories exist for the edition being built."""

    code = "edition.no_stories"


class RenderError(NewsletterError):
    """A template failed to render (undefined variable, MJML syntax error)."""

    code = "render.failed"


class CheckFailed(RenderError):
    """Pre-send checks found problems; ``problems`` lists each one."""

    code = "edition.checks_failed"

    def __init__(self, problems: list[str], *, edition_id: int | None = None) -> None:
        self.problems = problems
        super().__init__(
            "pre-send checks failed: " + "; ".join(problems),
            edition_id=edition_id,
            problems=problems,
        )


class ProviderError(NewsletterError):
    """The delivery provider refused the request or could not be reached."""

    code = "provider.failed"


class ProviderConfigError(ProviderError):
    """The provider cannot work: missing key, bad credentials, unreachable host."""

    code = "provider.config"


class QueueError(NewsletterError):
    """The broker that carries sends to the workers (Redis, RabbitMQ) cannot be reached."""

    code = "queue.unavailable"
