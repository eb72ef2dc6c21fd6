"""Errors the agent turns into observations the model can read, instead of crashing."""


class ToolInputError(ValueError):
    """A tool was called with arguments it cannot accept (empty query, too many queries, bad URL)."""


class FetchError(RuntimeError):
    """A page could not be fetched or is not readable text; the message says why, for the model and the log."""

    def __init__(self, url: str, reason: str, detail: str = "") -> None:
        self.url = url
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {url}" + (f" ({detail})" if detail else ""))


class CrawlError(RuntimeError):
    """A crawl could not produce a usable snapshot (unreachable root, zero pages); nothing is written."""
