"""watch(): norms, ratios, first non-finite layer and timings, with no sync on the step."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from producers.watch import GLOBAL_NORM, GradStats, Watch
from stepstream.contract import RecordKind


def setup(
    every: int = 1, weights_every: int | None = 1
) -> tuple[nn.Module, torch.optim.Optimizer, Watch, list[Any]]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    seen: list[Any] = []
    watch = Watch(
        lambda step, kind, values: seen.append((step, kind, values)),
        model,
        opt,
        every,
        weights_every=weights_every,
    )
    return model, opt, watch, seen


def step(model: nn.Module, opt: torch.optim.Optimizer, poison: tuple[str, ...] = ()) -> None:
    x = torch.randn(4, 8)
    loss = model(x).pow(2).mean()
    opt.zero_grad()
    loss.backward()
    for name, p in model.named_parameters():
        if name in poison and p.grad is not None:
            p.grad[0] = math.nan
    opt.step()


def test_norms_and_update_ratios_match_direct_computation() -> None:
    model, opt, watch, seen = setup()
    step(model, opt)  # first step: learns gradient order
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    x = torch.randn(4, 8)
    loss = model(x).pow(2).mean()
    opt.zero_grad()
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    opt.step()
    watch.remove()
    (s, kind, deferred), (s2, kind2, train) = seen[-2:]
    assert (s, kind, s2, kind2) == (1, RecordKind.GRAD, 1, RecordKind.TRAIN)
    # On the CPU the norms are read at once (a tensor held until the flush slowed the
    # steps); on a GPU the stacked tensor goes to the publisher thread (no sync here).
    assert isinstance(deferred, GradStats) and isinstance(deferred.parts, list)
    assert all(type(v) is float for v in deferred.parts)
    as_tensor = GradStats(
        deferred.names,
        deferred.index,
        deferred.order,
        torch.tensor(deferred.parts, dtype=torch.float64),
        deferred.weights,
        deferred.updates,
    )
    assert as_tensor.resolve() == deferred.resolve()
    values, text = deferred.resolve()
    assert text is None and values["grad/nonfinite_count"] == 0
    for name, p in model.named_parameters():
        assert math.isclose(values[f"grad/norm/{name}"], grads[name].norm().item(), rel_tol=1e-5)
        assert math.isclose(values[f"weight/norm/{name}"], before[name].norm().item(), rel_tol=1e-5)
        ratio = (p.detach() - before[name]).norm().item() / before[name].norm().item()
        assert math.isclose(values[f"update_ratio/{name}"], ratio, rel_tol=1e-4)
    total = math.sqrt(sum(g.norm().item() ** 2 for g in grads.values()))
    assert math.isclose(values[GLOBAL_NORM], total, rel_tol=1e-5)
    assert train["opt/lr/0"] == 0.1 and train["opt/momentum/0"] == 0.9
    assert train["perf/step_time_s"] > 0 and train["perf/compute_s"] > 0
    assert train["perf/data_wait_s"] >= 0
    assert math.isclose(train["perf/samples_per_s"], 4 / train["perf/step_time_s"])


def test_first_nonfinite_layer_is_the_first_in_backward_order() -> None:
    model, opt, watch, seen = setup()
    step(model, opt)
    step(model, opt, poison=("0.weight", "2.weight"))
    watch.remove()
    values, text = seen[-2][2].resolve()
    assert values["grad/nonfinite_count"] == 2
    assert math.isnan(values[GLOBAL_NORM])
    assert text == "first non-finite gradient: 2.weight"  # the output layer's grad is first


def test_every_n_steps_and_remove() -> None:
    model, opt, watch, seen = setup(every=3, weights_every=None)
    for _ in range(34):
        step(model, opt)
    grads = [(s, v) for s, kind, v in seen if kind == RecordKind.GRAD]
    assert [s for s, _ in grads] == list(range(0, 34, 3))
    # Weight norms and update ratios by default every 10th watched step only.
    with_weights = [s for s, v in grads if any(n.startswith("weight/") for n in v.resolve()[0])]
    assert with_weights == [0, 30]
    assert all("grad/norm/0.weight" in v.resolve()[0] for _, v in grads)
    watch.remove()
    step(model, opt)
    assert len(seen) == 2 * len(grads)


def test_token_throughput_from_token_ids() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Embedding(50, 8), nn.Flatten(), nn.Linear(8 * 5, 2))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    seen: list[Any] = []
    watch = Watch(lambda *a: seen.append(a), model, opt, every=1, update_ratio=False)
    for _ in range(2):
        ids = torch.randint(0, 50, (6, 5))
        opt.zero_grad()
        model(ids).sum().backward()
        opt.step()
    watch.remove()
    train = seen[-1][2]
    assert math.isclose(train["perf/tokens_per_s"], 30 / train["perf/step_time_s"])
    assert train["opt/momentum/0"] == 0.9  # Adam's beta1
    values, _ = seen[-2][2].resolve()
    assert not any(name.startswith("update_ratio/") for name in values)


def test_closure_steps_read_the_gradients_the_closure_made() -> None:
    # Lightning and LBFGS run forward and backward inside step(closure): the norms must be
    # this step's gradients, not the previous step's (or none on the first step).
    model, opt, watch, seen = setup()
    for _ in range(2):
        x = torch.randn(4, 8)
        made: dict[str, torch.Tensor] = {}

        def closure(x: torch.Tensor = x, made: dict[str, torch.Tensor] = made) -> torch.Tensor:
            opt.zero_grad(set_to_none=True)
            loss = model(x).pow(2).mean()
            loss.backward()
            made.update({n: p.grad.clone() for n, p in model.named_parameters()})
            return loss

        opt.step(closure)
        grad = next(v for s, kind, v in reversed(seen) if kind == RecordKind.GRAD)
        values, _ = grad.resolve()
        for name, g in made.items():
            assert math.isclose(values[f"grad/norm/{name}"], g.norm().item(), rel_tol=1e-5)
    opt.step(closure=closure)  # as a keyword too
    watch.remove()
    assert [s for s, kind, _ in seen if kind == RecordKind.GRAD] == [0, 1, 2]


def test_timing_off_leaves_step_times_to_the_caller() -> None:
    torch.manual_seed(0)
    model = nn.Linear(8, 3)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    seen: list[Any] = []
    watch = Watch(lambda s, k, v: seen.append((s, k, v)), model, opt, timing=False)
    for _ in range(2):
        step(model, opt)
    watch.remove()
    train = [v for _, kind, v in seen if kind == RecordKind.TRAIN]
    assert train and all("perf/step_time_s" not in v and "opt/lr/0" in v for v in train)


def test_keyword_inputs_count_samples_and_tokens() -> None:
    class Keywords(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb = nn.Embedding(10, 4)

        def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
            return self.emb(input_ids)

    model = Keywords()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    seen: list[Any] = []
    watch = Watch(lambda s, k, v: seen.append((s, k, v)), model, opt)
    for _ in range(2):
        opt.zero_grad()
        model(input_ids=torch.randint(0, 10, (3, 5))).sum().backward()
        opt.step()
    watch.remove()
    train = [v for _, kind, v in seen if kind == RecordKind.TRAIN][-1]
    ratio = train["perf/tokens_per_s"] / train["perf/samples_per_s"]
    assert math.isclose(ratio, 5.0)


def test_an_evaluation_between_steps_is_not_the_next_steps_forward() -> None:
    model, opt, watch, seen = setup()
    step(model, opt)
    model.eval()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(100, 8))  # evaluation batches: not samples of the next step
    model.train()
    step(model, opt)
    watch.remove()
    train = [v for _, kind, v in seen if kind == RecordKind.TRAIN][-1]
    assert math.isclose(train["perf/samples_per_s"] * train["perf/step_time_s"], 4.0)


def test_a_resumed_job_counts_its_steps_from_the_step_it_resumes_at() -> None:
    # A new incarnation resumed at step 120: its records continue the run's steps, not
    # 0, 1, ... again (stage 2 would take them for steps already finished).
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    seen: list[Any] = []
    watch = Watch(lambda s, kind, values: seen.append(s), model, opt, 1, start_step=120)
    step(model, opt)
    step(model, opt)
    watch.remove()
    assert sorted(set(seen)) == [120, 121]
