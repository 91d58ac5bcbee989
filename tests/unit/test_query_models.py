"""Query result models and the Prometheus exporter, without Redis."""

from __future__ import annotations

import json
import math
import random
from typing import Any

import msgspec
from pydantic import TypeAdapter

from query import schemas
from query.legacy import member_numbers
from query.prom_exporter import render_metrics
from query.reader import (
    MetricsReader,
    RollingRow,
    RollingStats,
    RunInfo,
    SeriesPoint,
    SeriesResult,
    to_json,
)
from stepstream.contract import Alert, Goodput, WindowStats
from stepstream.keys import (
    STORED_WINDOW_STATS,
    parse_series_member,
    text_series_member,
    window_stats_json,
    window_stats_value,
)
from stepstream.stored_stats import OpenStats
from stepstream.window_values import code_field, metric_code, unpack_window_values


def test_rolling_stats_keep_extra_numeric_fields_generically() -> None:
    stats = RollingStats.model_validate(
        {"count": 3, "mean": 1.5, "std": 0.25, "p95": "NaN", "slope": None, "note": "x"}
    )
    numbers = stats.numbers()
    assert numbers["std"] == 0.25 and numbers["count"] == 3.0
    assert math.isnan(numbers["p95"])
    assert "note" not in numbers and "slope" not in numbers and "min" not in numbers
    assert (
        '"p95":"NaN"' in to_json(RollingRow(rank=0, metric="m", window="w", stats=stats)).decode()
    )
    extra = RollingStats.model_validate({"count": 1, "p999": 0.5, "kurtosis": "Infinity"})
    assert extra.p999 == 0.5 and extra.numbers() == {
        "count": 1.0,
        "nonfinite": 0.0,
        "p999": 0.5,
        "kurtosis": math.inf,
    }


def test_rolling_stats_are_the_contracts_window_stats() -> None:
    # Derived from the contract: the stats stored by position (every one of them today);
    # a stat the contract gains later reads as an extra (tests/unit/test_window_schema.py).
    fields = [f for f in RollingStats.__struct_fields__ if f != "model_extra"]
    assert fields == list(STORED_WINDOW_STATS) == list(WindowStats.model_fields)[: len(fields)]


class WindowStore:
    """Just enough of a redis-py client for MetricsReader.rolling: window hashes and the
    run's metric code table."""

    def __init__(self, windows: dict[str, dict[Any, Any]], codes: dict[Any, Any]) -> None:
        self.windows = windows
        self.codes = codes
        self.asked: list[tuple[str, Any]] = []
        self.piped = False

    def smembers(self, key: str) -> set[str]:
        return set(self.windows)

    def pipeline(self, transaction: bool = False) -> WindowStore:
        self.asked, self.piped = [], True
        return self

    def hvals(self, key: str) -> None:
        self.asked.append(("hvals", key.rsplit(":", 1)[1]))

    def hgetall(self, key: str) -> dict[Any, Any] | None:
        suffix = key.rsplit(":", 1)[1]
        found = self.codes if suffix == "mcodes" else self.windows[suffix]
        if self.piped:
            self.asked.append(("reply", found))
            return None
        return found

    def execute(self) -> list[Any]:
        self.piped = False
        return [
            list(self.windows.get(arg, {}).values()) if kind == "hvals" else arg
            for kind, arg in self.asked
        ]


def stored_stats(rng: random.Random, extra: bool) -> dict[str, Any]:
    """Stats as the sink stores them (OpenStats JSON): NaN as strings, flags, extras."""
    values = [0.0, -0.0, 1e-05, 1e16, 0.1, 1 / 3, math.nan, math.inf, -math.inf, 2.5e-300]
    stats = schemas.RollingStats.model_validate(
        {
            "count": rng.randrange(100),
            "mean": rng.choice(values),
            "min": rng.random(),
            "p95": rng.choice([*values, None]),
            "flags": rng.choice([None, ["nan"], ["spike", "nan"]]),
            **({"p999": rng.choice(values), "kurtosis": "NaN", "note": "x"} if extra else {}),
        }
    )
    body: dict[str, Any] = json.loads(stats.model_dump_json())
    return body


def test_rolling_rows_read_and_write_as_the_pydantic_rows_did() -> None:
    rng = random.Random(5)
    bodies = {
        window: {
            f"{rank}|{metric}": stored_stats(rng, extra=window == "10s")
            for rank in (0, 1, 2, 10, 11)
            for metric in ("loss", "grad/norm:l1", "a.b-c@d")
        }
        for window in ("50steps", "10s")
    }
    want = sorted(
        (
            schemas.RollingRow(
                rank=int(field.split("|")[0]),
                metric=field.split("|")[1],
                window=window,
                stats=schemas.RollingStats.model_validate(body),
            )
            for window, mapping in bodies.items()
            for field, body in mapping.items()
        ),
        key=lambda r: (r.window, r.rank, r.metric),
    )
    want_json = TypeAdapter(list[schemas.RollingRow]).dump_json(want)

    def stored(window: str, field: str, body: dict[str, Any], layout: str) -> bytes:
        """The value as the sink stores it now (packed where it can, else a JSON row), or
        as earlier releases did (JSON rows; JSON objects before them)."""
        if layout == "mixed":
            layout = rng.choice(["packed", "array", "object"])
        if layout == "object":
            return json.dumps(body).encode()
        rank, metric = field.split("|")
        stats = OpenStats.model_validate(body)
        write = window_stats_value if layout == "packed" else window_stats_json
        return write(int(rank), metric, window, {**stats.__dict__, **(stats.model_extra or {})})

    codes = {
        code_field(metric_code(m)).encode(): m.encode() for m in ("loss", "grad/norm:l1", "a.b-c@d")
    }
    cases = [(layout, False) for layout in ("packed", "array", "object", "mixed")]
    # a client made with decode_responses=True
    cases += [("array", True), ("object", True)]
    for layout, decoded in cases:
        windows: dict[str, dict[Any, Any]] = {
            w: {f.encode(): stored(w, f, b, layout) for f, b in m.items()}
            for w, m in bodies.items()
        }
        if decoded:
            windows = {
                w: {f.decode(): b.decode() for f, b in m.items()} for w, m in windows.items()
            }
        rows = MetricsReader(WindowStore(windows, codes)).rolling("r")
        assert to_json(rows) == want_json
        assert [(r.window, r.rank, r.metric) for r in rows] == [
            (r.window, r.rank, r.metric) for r in want
        ]
        for row, model in zip(rows, want, strict=True):
            assert isinstance(row.stats.mean, float | None)
            assert json.dumps(row.stats.numbers()) == json.dumps(model.stats.numbers())
        assert rows[0].stats.p999 is not None  # extras of "10s" read as attributes
    one = MetricsReader(WindowStore({"50steps": {b"3|m": b'{"count":2,"mean":"NaN"}'}}, {}))
    (row,) = one.rolling("r", "50steps")
    assert row.rank == 3 and row.stats.count == 2 and math.isnan(row.stats.mean or 0.0)


def test_series_json_is_the_pydantic_series_json() -> None:
    values = [0.0, 1e-05, 1e16, math.nan, math.inf, -math.inf, 1 / 3]
    points = [
        SeriesPoint(float(i), v, i, 1.7e9 + i if i % 2 else None) for i, v in enumerate(values)
    ]
    result = SeriesResult("r", 1, "loss", "step", points, 7, "lttb", 3.0)
    model = schemas.SeriesResult.model_validate(msgspec.to_builtins(result))
    assert to_json(result) == model.model_dump_json().encode()
    assert '"value":"NaN"' in to_json(result).decode()


def test_series_members_parse_as_float_parses_them() -> None:
    rng = random.Random(9)
    specials = [
        math.nan,
        math.inf,
        -math.inf,
        0.0,
        -0.0,
        1e-05,
        1e16,
        5e-324,
        1.7976931348623157e308,
    ]
    values = specials + [rng.uniform(-1e6, 1e6) * 10 ** rng.randint(-300, 300) for _ in range(2000)]
    members = [text_series_member(step, step * 7, v).encode() for step, v in enumerate(values)]
    numbers = member_numbers(members)
    want = [parse_series_member(m.decode()) for m in members]
    assert numbers[0::3] == [float(step) for step, _, _ in want]
    assert numbers[1::3] == [float(seq) for _, seq, _ in want]
    # bit for bit, NaN included
    assert [msgspec.json.encode(v) for v in numbers[2::3]] == [
        msgspec.json.encode(v) for _, _, v in want
    ]
    assert [math.copysign(1.0, v) for v in numbers[2::3]] == [
        math.copysign(1.0, v) for _, _, v in want
    ]
    decoded = [m.decode() for m in members[3:6]]  # a client made with decode_responses=True
    assert member_numbers(decoded) == numbers[9:18]  # type: ignore[arg-type]


class FakeReader:
    """Two runs of 3 ranks x 2 metrics x 1 window."""

    def runs(self) -> list[RunInfo]:
        return [RunInfo(run=r, last_activity=1.0) for r in ("a", "b")]

    def latest(self, run: str) -> dict[tuple[int, str], float]:
        return {(rank, m): 1.0 for rank in range(3) for m in ("loss", "lr")}

    def goodput(self, run: str) -> Goodput | None:
        if run != "a":
            return None
        return Goodput(
            run=run,
            wall_s=10.0,
            productive_s=8.0,
            ettr=0.8,
            badput_s={"data_wait": 1.5, "slowest_rank": 0.5},
            slowest_by_rank={"2": 0.5},
        )

    def active_alerts(self, run: str) -> list[Alert]:
        if run != "a":
            return []
        common = {"run": run, "t": 1.0, "raised_at": 1.0, "severity": "warning"}
        return [
            Alert(fingerprint="f1", rule="loss-high", status="pending", rank=1, **common),
            Alert(fingerprint="f2", rule="nonfinite", status="firing", **common),
        ]

    def rolling(self, run: str) -> list[RollingRow]:
        stats = RollingStats.model_validate({"count": 5, "mean": 2.0, "ema": 1.0})
        return [
            RollingRow(rank=rank, metric=m, window="50steps", stats=stats)
            for rank in range(3)
            for m in ("loss", "lr")
        ]


def test_metrics_export_every_stat_with_labels() -> None:
    text = render_metrics(FakeReader(), max_series=1000).decode()
    assert (
        'stepstream_rolling{metric="loss",rank="2",run="b",stat="ema",window="50steps"} 1.0' in text
    )
    assert 'stepstream_latest{metric="lr",rank="0",run="a"} 1.0' in text
    assert "stepstream_exporter_series 24.0" in text
    assert "stepstream_exporter_series_dropped 0.0" in text


def test_metrics_export_goodput_and_badput_by_cause() -> None:
    text = render_metrics(FakeReader(), max_series=1000).decode()
    assert 'stepstream_goodput_ettr{run="a"} 0.8' in text
    assert 'stepstream_badput_seconds{cause="data_wait",rank="",run="a"} 1.5' in text
    assert 'stepstream_badput_seconds{cause="slowest_rank",rank="2",run="a"} 0.5' in text
    assert 'run="b"' not in text.split("stepstream_goodput_ettr")[-1].split("# HELP")[0]


def test_metrics_cardinality_is_capped_and_counted() -> None:
    text = render_metrics(FakeReader(), max_series=10).decode()
    assert "stepstream_exporter_series 10.0" in text
    assert "stepstream_exporter_series_dropped 14.0" in text
    assert text.count("stepstream_latest{") + text.count('stat="count"') == 10


def test_metrics_export_open_alerts_with_their_state_like_prometheus_alerts() -> None:
    text = render_metrics(FakeReader(), max_series=1000).decode()
    assert (
        'stepstream_alerts{alertname="loss-high",alertstate="pending",rank="1",run="a",'
        'severity="warning"} 1.0' in text
    )
    assert (
        'stepstream_alerts{alertname="nonfinite",alertstate="firing",rank="",run="a",'
        'severity="warning"} 1.0' in text
    )
    assert text.count("stepstream_alerts{") == 2


def test_rolling_columns_hold_what_the_rows_hold() -> None:
    rng = random.Random(11)
    metrics = ("loss", "grad/norm:l1", "a.b-c@d", "zeta")
    codes = {code_field(metric_code(m)).encode(): m.encode() for m in metrics}
    for layout in ("packed", "mixed", "unflagged"):
        mapping: dict[Any, Any] = {}
        for rank in (10, 0, 3, 1):
            for metric in metrics:
                stats = OpenStats.model_validate(stored_stats(rng, extra=False))
                fields = {**stats.__dict__, **(stats.model_extra or {})}
                if layout == "unflagged":
                    fields["flags"] = None
                packed = layout != "mixed" or rng.random() < 0.5
                write = window_stats_value if packed else window_stats_json
                mapping[f"{rank}|{metric}".encode()] = write(rank, metric, "10s", fields)
        store = WindowStore({"10s": mapping}, codes)
        reader = MetricsReader(store)
        rows = reader.rolling("r", "10s")
        cols = reader.rolling_columns("r", "10s")
        assert len(cols) == len(rows) == 16
        assert cols.metrics == tuple(sorted(metrics))
        assert cols.rank.tolist() == [r.rank for r in rows] == sorted(r.rank for r in rows)
        assert cols.names() == [r.metric for r in rows]
        for i, row in enumerate(rows):
            for name in cols.stat_names:
                want = getattr(row.stats, name)
                got = float(cols.column(name)[i])
                assert bool(cols.computed[i, cols.stat_names.index(name)]) == (want is not None)
                if want is None or math.isnan(want):
                    assert math.isnan(got)
                else:
                    assert got == want
            assert cols.flags.get(i) == (row.stats.flags or None)
        # Without open flags every value is packed: the window is one frombuffer.
        all_packed = unpack_window_values(list(mapping.values())) is not None
        assert all_packed == (layout == "unflagged")
    # A code the run's table does not name yet is left out, not misnamed.
    value = window_stats_value(0, "unnamed", "10s", {"count": 1, "mean": 1.0})
    reader = MetricsReader(WindowStore({"10s": {b"0|unnamed": value}}, {}))
    assert len(reader.rolling_columns("r", "10s")) == 0 and reader.rolling("r", "10s") == []
    assert len(reader.rolling_columns("r", "nothing")) == 0
