"""A stage's output record whose delivery failed is sent again (stepstream.faust_seam)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from stepstream.faust_seam import retrying


class Permanent(Exception):
    pass


def _run(outcomes: list[Any], **kwargs: Any) -> tuple[Any, int]:
    """Deliveries with these outcomes in turn (a value, or an exception to fail with):
    what the retrying future ends with and how many sends were made."""

    async def main() -> tuple[Any, int]:
        loop = asyncio.get_running_loop()
        sends = 0

        def delivery() -> asyncio.Future[Any]:
            nonlocal sends
            outcome = outcomes[sends]
            sends += 1
            fut: asyncio.Future[Any] = loop.create_future()
            if isinstance(outcome, BaseException):
                loop.call_soon(fut.set_exception, outcome)
            else:
                loop.call_soon(fut.set_result, outcome)
            return fut

        async def resend() -> asyncio.Future[Any]:
            return delivery()

        outer = retrying(delivery(), resend, backoff_s=0.001, **kwargs)
        try:
            return await asyncio.wait_for(outer, 5), sends
        except Exception as exc:
            return exc, sends

    return asyncio.run(main())


def test_a_failed_delivery_is_sent_again_until_delivered() -> None:
    result, sends = _run([RuntimeError("unknown"), RuntimeError("unknown"), "meta"])
    assert (result, sends) == ("meta", 3)


def test_the_first_delivery_is_the_only_send_when_it_succeeds() -> None:
    assert _run(["meta"]) == ("meta", 1)


def test_a_permanent_error_is_final_at_once() -> None:
    result, sends = _run([Permanent("too large"), "meta"], permanent=(Permanent,))
    assert isinstance(result, Permanent) and sends == 1


@pytest.mark.parametrize("attempts", [1, 3])
def test_the_last_error_ends_it_after_the_attempts(attempts: int) -> None:
    errors = [RuntimeError(f"send {i}") for i in range(attempts)]
    result, sends = _run([*errors, "never"], attempts=attempts)
    assert sends == attempts
    assert result is errors[-1]
