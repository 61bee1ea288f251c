"""Turn a failed push's TLS error into what to do about it.

OpenSSL's words ("tlsv1 alert unknown ca") say which side refused and why,
but not in terms of podiam's files and settings. The operator's push client
passes the exception here and logs or reports the result.
"""

from __future__ import annotations

_PROXY_SIDE = "the operator refused the proxy's certificate"
_OPERATOR_SIDE = "the proxy refused the operator's client certificate"

# (substring of OpenSSL's message, lower case) -> explanation; first match wins.
_EXPLANATIONS: tuple[tuple[str, str], ...] = (
    ("hostname mismatch",
     _PROXY_SIDE + ": it does not carry the DNS name {server_name!r} that the operator verifies (add it to the proxies' "
     "certificate, e.g. agent.json \"hosts\" or a cert-manager dnsNames, or set --proxy-server-name, PODIAM_PROXY_SERVER_NAME)"),
    ("certificate has expired", _PROXY_SIDE + ": it has expired (renew the proxies' Secret)"),
    ("certificate is not yet valid", _PROXY_SIDE + ": it is not valid yet (check the clocks)"),
    ("unable to get local issuer certificate",
     _PROXY_SIDE + ": it was not issued by a CA in the operator's CA file (the proxies' and the operator's Secrets come from different CAs)"),
    ("self-signed certificate", _PROXY_SIDE + ": it is self-signed or its CA is not in the operator's CA file"),
    ("self signed certificate", _PROXY_SIDE + ": it is self-signed or its CA is not in the operator's CA file"),
    ("unsuitable certificate purpose", _PROXY_SIDE + ": it is not allowed for TLS server authentication (extended key usage)"),
    ("alert unknown ca",
     _OPERATOR_SIDE + ": its CA is not in the proxies' CA file (the proxies' and the operator's Secrets come from different CAs)"),
    ("alert certificate expired", _OPERATOR_SIDE + ": it has expired, or is not valid yet as the proxy's clock sees it"),
    ("alert certificate required", _OPERATOR_SIDE + ": the operator sent none (check PODIAM_TLS_CLIENT_CERT_FILE / _KEY_FILE)"),
    ("alert unsupported certificate", _OPERATOR_SIDE + ": it is not allowed for TLS client authentication (extended key usage)"),
    ("alert bad certificate", _OPERATOR_SIDE + " (bad certificate: wrong usage, or not valid at the proxy's time)"),
    ("alert handshake failure", "the TLS handshake failed: the proxy may require a client certificate the operator did not send"),
    ("wrong version number", "the proxy's control port did not answer with TLS (wrong port, or a plain-HTTP listener?)"),
)


def explain_handshake_failure(error: BaseException, server_name: str) -> str:
    """One line for the log, an Event or a status: what failed and what to change."""
    text = str(error)
    lowered = text.lower()
    for needle, explanation in _EXPLANATIONS:
        if needle in lowered:
            return f"{explanation.format(server_name=server_name)} [{text}]"
    return f"TLS to the proxy failed: {text}"


def explain_refusal(status: int, body: str, operator_identity: str) -> str | None:
    """The proxy's 403 for a certificate that names someone else, in podiam's terms (None for other answers)."""
    if status != 403 or "client certificate must name" not in body:
        return None
    return (f"the proxy refused the operator's client certificate: it must name the proxy's --operator-identity ({body.strip()}); "
            f"the operator's certificate is meant to name {operator_identity!r}: make the proxies' --operator-identity "
            "and PODIAM_TLS_OPERATOR_IDENTITY agree with the certificate")
