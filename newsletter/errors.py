"""One exception hierarchy for the whole service.

Every error a user can cause derives from :class:`NewsletterError`; the CLI turns
it into one line on stderr and a non-zero exit code (``exit_code``)::

    NewsletterError                 exit 1
    ├── ConfigError                 exit 2  bad or missing config file / setting / secret
    ├── InputError                  exit 2  bad command-line input (address, date, file)
    │   └── CSVImportError                  the whole CSV file is unreadable
    ├── NotFoundError               exit 1  unknown edition, newsletter, subscriber, story
    ├── StateError                  exit 1  operation not allowed in the current state
    ├── FeedError                   exit 1  a feed could not be fetched or parsed
    ├── NoStoriesError              exit 1  nothing to build an edition from
    ├── RenderError                 exit 1  template or MJML failure
    │   └── CheckFailed                     pre-send checks blocked the edition
    └── ProviderError               exit 1  the delivery provider refused or is unreachable
        └── ProviderConfigError             missing key, bad credentials, unknown host
"""

from __future__ import annotations


class NewsletterError(Exception):
    """Base of every user-facing error; ``str(err)`` is the one-line message."""

    exit_code = 1


class ConfigError(NewsletterError):
    """The configuration file, a setting or a secret is invalid."""

    exit_code = 2


class InputError(NewsletterError):
    """A command-line argument or input file is invalid."""

    exit_code = 2


class CSVImportError(InputError):
    """A CSV file cannot be imported at all (unreadable, no header, no email column)."""


class NotFoundError(NewsletterError):
    """A named thing (edition, newsletter, subscriber, story) does not exist."""


class StateError(NewsletterError):
    """The operation is not allowed in the entity's current state."""


class FeedError(NewsletterError):
    """A feed could not be fetched or yielded no usable entries."""


class NoStoriesError(NewsletterError):
    """No eligible stories exist for the edition being built."""


class RenderError(NewsletterError):
    """A template failed to render (undefined variable, MJML syntax error)."""


class CheckFailed(RenderError):
    """Pre-send checks found problems; ``problems`` lists each one."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("pre-send checks failed: " + "; ".join(problems))


class ProviderError(NewsletterError):
    """The delivery provider refused the request or could not be reached."""


class ProviderConfigError(ProviderError):
    """The provider is misconfigured: missing key, bad credentials, unknown host."""

    exit_code = 2
