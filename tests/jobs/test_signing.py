"""Standard Webhooks signatures, checked against the reference implementation."""

from __future__ import annotations

import json

from standardwebhooks.webhooks import Webhook

from jobs.signing import generate_secret, sign, signature_headers


def test_spec_test_vector() -> None:
    # The example from the Standard Webhooks specification.
    secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    body = b'{"test": 2432232314}'
    assert sign(secret, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body) == (
        "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=")


def test_reference_library_verifies_our_headers() -> None:
    secret = generate_secret()
    assert secret.startswith("whsec_")
    body = json.dumps({"type": "order.created", "data": {"id": 1}}).encode()
    import time

    headers = signature_headers([secret], "msg_42", int(time.time()), body)
    assert Webhook(secret).verify(body, headers) == {"type": "order.created", "data": {"id": 1}}


def test_rotation_sends_one_signature_per_secret() -> None:
    old, new = generate_secret(), generate_secret()
    import time

    headers = signature_headers([new, old], "msg_1", int(time.time()), b"{}")
    assert len(headers["webhook-signature"].split(" ")) == 2
    Webhook(old).verify(b"{}", headers)
    Webhook(new).verify(b"{}", headers)
