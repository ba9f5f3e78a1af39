"""Hide the passwords in connection URLs before anything is logged, printed or served."""

import re

# scheme://user:password@host or scheme://:password@host. As urllib reads a URL, the password runs to the last "@"
# of the authority, which ends at the first "/", "?" or "#".
_URL_PASSWORD = re.compile(r"(?P<head>[a-zA-Z][a-zA-Z0-9+.-]*://[^:/?#@\s]*:)[^\s/?#]*@")
MASK = "***"


def redact_url(url: str) -> str:
    """Return ``url`` with its password (if any) replaced by ``***``: ``redis://:***@host:6379/0``."""
    return redact(url)


def redact(text: str) -> str:
    """Return ``text`` with the password of every ``scheme://user:password@host`` in it replaced by ``***``."""
    if "://" not in text:
        return text
    return _URL_PASSWORD.sub(lambda m: f"{m['head']}{MASK}@", text)
