"""Whether the Hugging Face hub can be reached, decided before a download is tried: offline, huggingface_hub
retries a name lookup five times over 23 s before it gives up, and a run that needs the hub should fail at once."""

from __future__ import annotations

import contextlib


def hub_unreachable() -> str | None:
    """Why the hub cannot be reached from here (offline mode, or its host name does not resolve); None when it may
    be reached. Behind a proxy the name is the proxy's to resolve, so nothing is decided here."""
    import socket
    from urllib.parse import urlparse
    from urllib.request import getproxies

    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return "HF_HUB_OFFLINE is set"
    proxies = getproxies()
    if proxies.get("https") or proxies.get("all"):
        return None
    host = urlparse(constants.ENDPOINT).hostname
    try:
        socket.getaddrinfo(host, 443)
    except (socket.gaierror, UnicodeError) as err:
        return f"{host} does not resolve: {getattr(err, 'strerror', None) or err}"
    return None


@contextlib.contextmanager
def cache_only():
    """huggingface_hub and datasets read their caches alone inside, as under HF_HUB_OFFLINE=1."""
    import datasets.config
    from huggingface_hub import constants

    before = constants.HF_HUB_OFFLINE, datasets.config.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = datasets.config.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE, datasets.config.HF_HUB_OFFLINE = before
