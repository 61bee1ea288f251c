"""CA rotation and leaf renewal as pure state transitions, with an injected clock.

The key property: at every step of a rotation, a proxy or operator replica
that still holds the previous step's files (the kubelet updates Secret
volumes with a delay shorter than the overlap window) and one that holds the
current step's still complete a real mutual-TLS handshake.
"""

from __future__ import annotations

import dataclasses
import datetime
import itertools
import ssl

import pytest
from cryptography import x509

from podiam_operator import _settings
from podiam_operator.tls import authority, checks, leaves, pki
from tests.unit.tls.conftest import handshake, now

pytestmark = pytest.mark.unit

MINUTE = datetime.timedelta(minutes=1)


@dataclasses.dataclass(frozen=True)
class Published:
    """What one step puts into the proxies' and the operator's Secrets."""

    proxy: pki.KeyPair
    operator: pki.KeyPair
    bundle: tuple[x509.Certificate, ...]


def _publish(state: authority.CaState, previous: Published | None, settings: _settings.OperatorSettings, at: datetime.datetime) -> Published:
    def leaf(old: pki.KeyPair | None, spec: leaves.Spec) -> pki.KeyPair:
        return leaves.issue(state, spec, settings, at) if leaves.due(old, state, spec, settings, at) else old  # type: ignore[return-value]
    return Published(
        proxy=leaf(previous.proxy if previous else None, leaves.proxy_spec(settings)),
        operator=leaf(previous.operator if previous else None, leaves.operator_spec(settings)),
        bundle=state.bundle(),
    )


def _rotation(settings: _settings.OperatorSettings) -> list[Published]:
    start = now()
    state = authority.initial(settings, start)
    steps = [_publish(state, None, settings, start)]
    moments = [start, start + settings.tls_ca_overlap, start + 2 * settings.tls_ca_overlap]
    for index, at in enumerate(moments):
        following = authority.step(state, settings, at, force=index == 0)
        assert following is not None
        state = following
        steps.append(_publish(state, steps[-1], settings, at))
    assert state.phase is authority.Phase.STEADY
    return steps


def test_rotation_phases_and_bundles(settings: _settings.OperatorSettings) -> None:
    start = now()
    first = authority.initial(settings, start)
    assert first.phase is authority.Phase.STEADY and first.bundle() == first.active.chain
    assert authority.step(first, settings, start) is None  # nothing due
    introduced = authority.step(first, settings, start, force=True)
    assert introduced is not None and introduced.phase is authority.Phase.INTRODUCED
    assert introduced.active == first.active and introduced.pending is not None
    assert introduced.bundle() == (first.active.cert, introduced.pending.cert)
    assert authority.step(introduced, settings, start + settings.tls_ca_overlap / 2) is None
    assert authority.step(introduced, settings, start + settings.tls_ca_overlap / 2, force=True) is None  # one rotation at a time
    switched = authority.step(introduced, settings, start + settings.tls_ca_overlap)
    assert switched is not None and switched.phase is authority.Phase.SWITCHED
    assert switched.active == introduced.pending and switched.retiring == (first.active.cert,)
    assert set(switched.bundle()) == {first.active.cert, introduced.pending.cert}
    done = authority.step(switched, settings, start + 2 * settings.tls_ca_overlap)
    assert done is not None and done.phase is authority.Phase.STEADY and done.bundle() == (introduced.pending.cert,)


def test_no_handshake_fails_between_adjacent_steps_of_a_rotation(settings: _settings.OperatorSettings) -> None:
    steps = _rotation(settings)
    assert steps[0].proxy.cert.issuer != steps[-1].proxy.cert.issuer  # the leaves did move to the new CA
    for proxy_step, operator_step in itertools.product(range(len(steps)), repeat=2):
        if abs(proxy_step - operator_step) > 1:
            continue
        proxy, operator = steps[proxy_step], steps[operator_step]
        handshake(operator.operator, operator.bundle, proxy.proxy, proxy.bundle)


def test_skipping_the_overlap_would_break_pushes(settings: _settings.OperatorSettings) -> None:
    """The check above can fail: a proxy two steps behind is refused."""
    steps = _rotation(settings)
    with pytest.raises(ssl.SSLError):
        handshake(steps[3].operator, steps[3].bundle, steps[1].proxy, steps[1].bundle)


def test_rotation_starts_at_the_renewal_point() -> None:
    settings = _settings.OperatorSettings(tls_ca_lifetime=datetime.timedelta(days=3000), tls_leaf_lifetime=datetime.timedelta(days=90))
    start = datetime.datetime(2030, 1, 1, tzinfo=datetime.timezone.utc)
    state = authority.initial(settings, start)
    point = pki.renewal_point(state.active.cert, settings.tls_renew_at)
    assert datetime.timedelta(days=1999) < point - start < datetime.timedelta(days=2001)
    assert authority.next_check(state, settings, start) == point
    assert authority.step(state, settings, point - MINUTE) is None
    stepped = authority.step(state, settings, point)
    assert stepped is not None and stepped.phase is authority.Phase.INTRODUCED
    assert authority.next_check(stepped, settings, point) == point + settings.tls_ca_overlap


def test_a_ca_too_close_to_expiry_for_an_overlap_is_replaced_at_once() -> None:
    settings = _settings.OperatorSettings(tls_ca_lifetime=datetime.timedelta(days=10), tls_leaf_lifetime=datetime.timedelta(days=1))
    start = datetime.datetime(2030, 1, 1, tzinfo=datetime.timezone.utc)
    state = authority.initial(settings, start)
    late = state.active.cert.not_valid_after_utc + MINUTE
    replaced = authority.step(state, settings, late)
    assert replaced is not None and replaced.phase is authority.Phase.STEADY
    assert replaced.active != state.active and replaced.bundle() == replaced.active.chain


def test_ca_secret_round_trip_in_every_phase(settings: _settings.OperatorSettings) -> None:
    start = now()
    state = authority.initial(settings, start)
    for at, force in ((start, True), (start + settings.tls_ca_overlap, False), (start + 2 * settings.tls_ca_overlap, False)):
        data, annotations = authority.to_secret(state)
        back = authority.from_secret(data, annotations, "Secret ns/podiam-ca")
        assert back.active.cert == state.active.cert and back.bundle() == state.bundle() and back.phase is state.phase
        assert annotations[authority.PHASE_ANNOTATION] == state.phase.value
        following = authority.step(state, settings, at, force=force)
        assert following is not None
        state = following


def test_damaged_ca_secret_is_reported_not_replaced(settings: _settings.OperatorSettings) -> None:
    data, annotations = authority.to_secret(authority.initial(settings, now()))
    with pytest.raises(checks.TlsProblem, match="Secret ns/podiam-ca lacks tls.key"):
        authority.from_secret({k: v for k, v in data.items() if k != "tls.key"}, annotations, "Secret ns/podiam-ca")
    other = authority.initial(settings, now())
    with pytest.raises(checks.TlsProblem, match="tls.key does not belong to tls.crt"):
        authority.from_secret({**data, "tls.key": other.active.key_pem()}, annotations, "Secret ns/podiam-ca")
    with pytest.raises(checks.TlsProblem, match="Secret ns/podiam-ca key tls.crt holds no PEM certificate"):
        authority.from_secret({**data, "tls.crt": b"garbage"}, annotations, "Secret ns/podiam-ca")


# Leaves ---------------------------------------------------------------------


def test_leaf_due_reasons_with_an_injected_clock() -> None:
    settings = _settings.OperatorSettings(tls_leaf_lifetime=datetime.timedelta(days=90))
    start = datetime.datetime(2030, 1, 1, tzinfo=datetime.timezone.utc)
    state = authority.initial(settings, start)
    spec = leaves.proxy_spec(settings)
    assert leaves.due(None, state, spec, settings, start) == "there is none yet"
    leaf = leaves.issue(state, spec, settings, start)
    assert leaves.due(leaf, state, spec, settings, start) is None
    renew_at = leaves.next_check(leaf, settings)
    assert datetime.timedelta(days=59) < renew_at - start < datetime.timedelta(days=61)
    assert leaves.due(leaf, state, spec, settings, renew_at - MINUTE) is None
    assert "reached its renewal point" in str(leaves.due(leaf, state, spec, settings, renew_at))
    other = authority.initial(settings, start)
    assert "not issued by the signing CA" in str(leaves.due(leaf, other, spec, settings, start))
    assert "names or usage differ" in str(leaves.due(leaf, state, leaves.operator_spec(settings), settings, start))
    rsa = settings.model_copy(update={"tls_key_type": _settings.KeyType.RSA_2048})
    assert "key type setting changed to rsa-2048" in str(leaves.due(leaf, state, spec, rsa, start))
    assert "key does not match" in str(leaves.due(pki.KeyPair(leaf.chain, state.active.key), state, spec, settings, start))


def test_leaf_secret_round_trip(settings: _settings.OperatorSettings) -> None:
    state = authority.initial(settings, now())
    leaf = leaves.issue(state, leaves.operator_spec(settings), settings, now())
    data = leaves.to_secret(leaf, state)
    assert set(data) == {"tls.crt", "tls.key", "ca.crt"} and data["ca.crt"] == state.bundle_pem()
    back = leaves.from_secret(data)
    assert back is not None and back.cert == leaf.cert
    assert leaves.from_secret({"tls.crt": b"x", "tls.key": b"y"}) is None
    assert leaves.from_secret({}) is None
