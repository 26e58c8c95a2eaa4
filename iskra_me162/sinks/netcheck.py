"""What every network sink checks and explains the same way: host names, CA files, TLS errors.

* :func:`check_host`: the one rule for a host written in the configuration (the Domoticz
  server, ``mqtt_host``, the host of ``http_listen``): an IP address or a DNS host name.
* :func:`client_tls_context` and :func:`ca_file_problem`: a CA file that cannot be used, in a
  few words (no such file, permission denied, not a PEM CA certificate).
* :func:`explain_tls_error`: a failed TLS handshake as one line that says what is wrong and
  what to change; each sink supplies its own words for the fix (:class:`TlsAdvice`).
"""

from __future__ import annotations

import ipaddress
import re
import ssl
from dataclasses import dataclass

# A DNS label: letters, digits, hyphens, not at either end. Underscores too: not valid in host
# names by RFC 952/1123, but Docker's and some routers' DNS serve names with them.
_LABEL = re.compile(r"(?!-)[A-Za-z0-9_-]{1,63}(?<!-)")
_IPV4_LOOKALIKE = re.compile(r"[0-9.]+")
# OpenSSL's X509_V_ERR_HOSTNAME_MISMATCH and X509_V_ERR_IP_ADDRESS_MISMATCH.
_NAME_MISMATCH = (62, 64)


def check_host(host: str) -> str:
    """``host`` if it is an IP address (IPv4, or IPv6 without brackets) or a host name.

    ValueError otherwise, with a message that names the host and what it is not, for the caller
    to put after the setting's name: ``'300.1.1.1' is not an IPv4 address``, ``'my host' is
    neither an IP address nor a host name``. A host name has labels of 1 to 63 letters, digits,
    hyphens or underscores (no hyphen at either end), at most 253 characters, and may end in a
    dot; only digits and dots must be an IPv4 address (``1.2.3`` is a typo, not a name).
    """
    if not isinstance(host, str) or not host:
        raise ValueError("the host is empty")
    if _IPV4_LOOKALIKE.fullmatch(host):
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            raise ValueError(f"{host!r} is not an IPv4 address") from None
        return host
    if ":" in host:
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"{host!r} is not an IPv6 address") from None
        return host
    labels = host.removesuffix(".").split(".")
    if len(host) > 253 or not all(_LABEL.fullmatch(label) for label in labels):
        raise ValueError(f"{host!r} is neither an IP address nor a host name")
    return host


def client_tls_context(ca_file: str = "") -> ssl.SSLContext:
    """A client context that checks the certificate and the host name against ``ca_file`` (a
    PEM file of CA certificates) or, without one, the system's CAs.

    ValueError with :func:`ca_file_problem`'s words when the CA file cannot be used.
    """
    try:
        return ssl.create_default_context(cafile=ca_file or None)
    except (OSError, ValueError) as error:  # ssl.SSLError is an OSError
        raise ValueError(ca_file_problem(error)) from None


def ca_file_problem(error: BaseException) -> str:
    """Why a CA file could not be loaded, in a few words that do not repeat the path."""
    if isinstance(error, FileNotFoundError):
        return "no such file"
    if isinstance(error, PermissionError):
        return "permission denied"
    if isinstance(error, IsADirectoryError):
        return "a directory, not a file"
    if isinstance(error, ssl.SSLError):
        return f"not a usable PEM CA certificate ({error.reason or 'unreadable'})"
    if isinstance(error, OSError) and error.strerror:
        return f"unreadable ({error.strerror})"
    return "not a usable PEM CA certificate"


@dataclass(frozen=True)
class TlsAdvice:
    """A sink's own words for the fix, after the diagnosis (each names its own settings)."""

    other_name: str  # the certificate is for another host name
    untrusted: str  # the certificate is not signed by a trusted CA
    not_tls: str  # the peer answered in something other than TLS


def explain_tls_error(error: ssl.SSLError, peer: str, advice: TlsAdvice) -> str:
    """One line for a failed TLS handshake with ``peer`` ("Domoticz at https://h", "the MQTT
    broker at h:8883"): what is wrong, the library's detail, and ``advice``'s fix."""
    if isinstance(error, ssl.SSLCertVerificationError):
        detail = error.verify_message or "certificate not trusted"
        if error.verify_code in _NAME_MISMATCH:
            return explain_other_host_name(detail, peer, advice)
        return f"the TLS certificate of {peer} is not trusted ({detail}); {advice.untrusted}"
    reason = error.reason or "handshake failed"
    if reason == "WRONG_VERSION_NUMBER":  # a plain-text answer read as a TLS record
        return f"{peer} does not speak TLS on this port ({advice.not_tls})"
    return f"TLS with {peer} failed ({reason})"


def explain_other_host_name(detail: str, peer: str, advice: TlsAdvice) -> str:
    """One line for a certificate made for another host name (``detail``: the library's words).

    Apart from :func:`explain_tls_error` for libraries that check the name themselves, as
    urllib3 1.26 (Debian 12) does: its ``CertificateError`` is a ValueError, not an SSLError.
    """
    return f"the TLS certificate of {peer} is for another host name ({detail}); {advice.other_name}"
