"""TLS between the operator and the proxies, operator side: ``runtime.Tls`` (one per operator, built by
``_assembly``), the certificates it makes (``auto``) or checks (``secrets``), and what a failed push means
(``explain``). Its settings are the ``--tls-*`` section of the operator's settings."""
