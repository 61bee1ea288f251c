"""What the dead-code check (vulture, ``make lint``) cannot see being used: read by a library, or by the tests only.

vulture reads this file with the product's code and counts each name below
as used. Nothing imports or runs it. kopf's handlers and pydantic's
validators need no line here: ``[tool.vulture]`` in pyproject.toml ignores
what those decorators register.
"""

from vulture.whitelist_utils import Whitelist

used = Whitelist()

# kopf reads the settings the operator's start-up handler sets (operator/podiam_operator/handlers.py).
used.server_timeout
used.client_timeout
used.connect_timeout
used.request_timeout

# Read by the libraries they belong to: asyncio's TLS read size (operator/podiam_operator/__main__.py), aiohttp's
# choice of reading proxy variables and ~/.netrc per request (operator/podiam_operator/_kits/kube.py).
used.max_size
used._trust_env

# logging's formatters read the record the proxy's rate-limiting log filter rewrote (metadata_proxy/_ratelog.py).
used.msg
used.exc_text
used.source_ip

# aiobotocore calls these overrides: the region from the node's metadata (operator/podiam_operator/_kits/sts.py).
used._get_region
used._get_fetcher_cls

# Read by the tests: the proxy's iptables rules in place (tests/node, tests/chart/test_images.py), and what
# the proxy's store holds besides pods and roles (tests/unit/proxy).
used.installed
used.pending_count
used.token_only_count

# msgspec decodes a list page into these struct fields by name, and the operator reads them back as dict keys
# (operator/podiam_operator/_kits/shapes.py).
used.restartCount
used.nodeName
used.hostNetwork
used.serviceAccountName
used.podIP
used.hostIP
used.containerStatuses
used.observedGeneration
used.resourceVersion
used.continue_
used.deletionTimestamp
used.ownerReferences
