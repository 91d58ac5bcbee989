"""What a long-running worker gives back: memory of the runs it forgot."""

from __future__ import annotations

import sys

from stepstream.streaming import release_memory


def test_release_memory_hands_freed_pages_back_where_glibc_can() -> None:
    # Free a few MiB of small blocks (what forgotten windows and detector state are),
    # then trim: glibc reports whether it gave memory back; elsewhere it is a no-op.
    blocks = [bytearray(512) for _ in range(20_000)]
    del blocks
    released = release_memory()
    assert isinstance(released, bool)
    if not sys.platform.startswith("linux"):
        assert released is False
    assert isinstance(release_memory(), bool)  # looked up once, callable again


def _subclasses(base: type) -> list[type]:
    found = []
    for cls in base.__subclasses__():
        found += [cls, *_subclasses(cls)]
    return found


def test_parsing_a_message_keeps_no_string_of_it_past_the_message() -> None:
    # pydantic's default string cache keeps values (run names, incarnations, prediction
    # ids) alive after the message is gone; scattered over the allocator's arenas they
    # kept a soak's worker tens of MiB above its start. Two parses of the same bytes must
    # give two strings, not one cached object; keys (metric names) may be shared.
    import stepstream.serving_contract as serving
    from stepstream.contract import WireModel, decode_batch

    raw = (
        b'{"v": 1, "run": "soak-run-7f3a9c", "rank": 0, "world": 1, "incarnation": '
        b'"inc-0123456789", "records": [{"seq": 0, "t": 1.0, "step": 0, "kind": "train", '
        b'"values": {"loss": 1.0}}]}'
    )
    first, second = decode_batch(raw, 1 << 20), decode_batch(raw, 1 << 20)
    assert first.run == second.run == "soak-run-7f3a9c"
    assert first.run is not second.run
    assert first.incarnation is not second.incarnation
    prediction = b'{"kind": "prediction", "id": "req-5d1e0c7a", "t": 1.0}'
    a = serving.PredictionRecord.model_validate_json(prediction)
    b = serving.PredictionRecord.model_validate_json(prediction)
    assert a.id == b.id and a.id is not b.id
    # Every message model parses that way, also one added later.
    models = _subclasses(WireModel) + _subclasses(serving.ServingModel)
    assert len(models) > 10
    assert {m.__name__ for m in models if m.model_config.get("cache_strings") != "keys"} == set()
