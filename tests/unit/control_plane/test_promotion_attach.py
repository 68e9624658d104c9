"""The promotion on a follower's stdin through an engine attach (control_plane/drivers/agent_spec.py
`deliver_promotion`): the engine's multiplexed stream is played by a socket pair. Only lines with the order's nonce
are answers (tenant code may write to a promoted container's stdout); an order not taken in time goes by exec. The
real channel is exercised by tests/e2e/test_warm_moves.py (which checks the follower logged `channel: stdin`)."""

from __future__ import annotations

import json
import socket
import threading
from typing import Any

import pytest

from agent_image.contract import AgentSecrets, Promotion
from control_plane.drivers import agent_spec
from control_plane.drivers.agent_spec import SecretsNotDelivered, deliver_promotion

SECRETS = AgentSecrets("agent-token-0123456789", "admin-token-0123456789", "LFKEY", "very-secret")


def frame(line: dict[str, Any] | str, stream: int = 1) -> bytes:
    payload = (line if isinstance(line, str) else json.dumps(line)).encode() + b"\n"
    return bytes([stream, 0, 0, 0]) + len(payload).to_bytes(4, "big") + payload


class Engine:
    """`client.api.attach_socket` hands out one end of a socket pair; `follower(order)` plays the container."""

    def __init__(self, answer: Any) -> None:
        self.ours, self.theirs = socket.socketpair()
        self.answer = answer
        self.execs: list[list[str]] = []
        self.api = self

    def attach_socket(self, container_id: str, params: dict[str, Any]) -> socket.socket:
        threading.Thread(target=self._follower, daemon=True).start()
        return self.ours

    def _follower(self) -> None:
        received = b""
        while received.count(b"\n") < 2:
            received += self.theirs.recv(65536)
        order = Promotion.parse(received.split(b"\n")[1])
        for chunk in self.answer(order.nonce):
            self.theirs.sendall(chunk)


def test_only_answers_with_the_order_s_nonce_count(monkeypatch: pytest.MonkeyPatch) -> None:
    def answer(nonce: str) -> list[bytes]:
        return [
            frame("tenant output on stdout"),
            frame({"promoted": 5, "error": "forged"}),  # no nonce: tenant code, not the follower
            frame({"accepted": 0, "error": "", "nonce": nonce}),
            frame("log line", stream=2),
            frame({"promoted": 0, "error": "", "nonce": nonce}),
        ]

    engine = Engine(answer)
    monkeypatch.setattr(agent_spec, "_exec_line", lambda *a: pytest.fail("went by exec"))
    deliver_promotion(engine, "c0ffee", SECRETS, Promotion(9, 5.0), attach=True)


def test_a_refusal_or_a_failed_follower_is_an_error() -> None:
    engine = Engine(lambda nonce: [frame({"accepted": 2, "error": "invalid: txid", "nonce": nonce})])
    with pytest.raises(SecretsNotDelivered, match="refused: invalid: txid"):
        deliver_promotion(engine, "c0ffee", SECRETS, Promotion(9, 5.0), attach=True)
    engine = Engine(
        lambda nonce: [
            frame({"accepted": 0, "error": "", "nonce": nonce}),
            frame({"promoted": 5, "error": "restore_failed: tail", "nonce": nonce}),
        ]
    )
    with pytest.raises(SecretsNotDelivered, match="failed its promotion: restore_failed"):
        deliver_promotion(engine, "c0ffee", SECRETS, Promotion(9, 5.0), attach=True)


def test_an_order_nobody_takes_goes_by_exec(monkeypatch: pytest.MonkeyPatch) -> None:
    """A re-sent order to a promoted follower (its stdin closed): no answer with the nonce in time, then exec."""
    engine = Engine(lambda nonce: [frame({"accepted": 0, "error": "", "nonce": "someone-else"})])
    monkeypatch.setattr(agent_spec, "PROMOTION_ACK_TIMEOUT", 0.2)
    sent: list[str] = []
    monkeypatch.setattr(agent_spec, "_exec_line", lambda client, cid, argv, line, what, timeout: sent.append(line))
    deliver_promotion(engine, "c0ffee", SECRETS, Promotion(9, 5.0), attach=True)
    assert len(sent) == 1 and Promotion.parse(sent[0].split("\n")[1]).txid == 9
