"""Every registered method on Hypothesis-generated architectures: verified, or refused in one sentence.

The generator (tests/fuzz/_archs.py) draws grouped convs (1/2/3/4/8 groups), ConvNeXt-style channels-last
blocks with layer scale, SE blocks, dead units, GELU/Hardswish, U-Net stages (transposed conv, skip
concatenation) besides plain, residual, concatenated and depthwise blocks. Each method prunes each drawn
model to 50 % of its MACs (:func:`~tests.fuzz._archs.run_method`); the outcome must be

* verified — the surgery verified against the masked original, and independently re-checked: float64 on
  other images for the plain methods, :func:`~tests.fuzz._archs.refit_check` for CP and CaP (the kept
  indices match the recorded plan; each refit consumer is closer to the original than no refit); or
* a ChanpruneError whose message is one sentence.

Anything else — a raw torch/numpy/Torch-Pruning exception, a failed re-check — fails the test.
EXAMPLES (80) architectures × every method run here (CACP, a policy search, on every 8th), about two and a
half minutes at one thread; bench/fuzz_surgery.py --methods runs many more.
"""
from __future__ import annotations

import collections

from hypothesis import HealthCheck, Phase, given, settings

from chanprune.api import METHODS
from tests.fuzz._archs import arch_specs, method_configs, run_method

EXAMPLES = 80
SEARCH_EVERY = 8  # CACP (a policy search, seconds per model) runs on every 8th architecture only
OUTCOMES: collections.Counter = collections.Counter()


def test_every_method_is_fuzzed():
    assert set(method_configs()) == set(METHODS)


@settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None, phases=[Phase.generate],
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much])
@given(spec=arch_specs(max_blocks=4))  # no shrinking: the failing spec is printed as drawn
def _trial(spec):
    OUTCOMES["architectures"] += 1
    for method in method_configs():
        if method == "cacp" and OUTCOMES["architectures"] % SEARCH_EVERY != 1:
            continue
        outcome, reason, detail = run_method(spec, method)
        OUTCOMES[(method, outcome)] += 1
        assert outcome != "crashed", f"{method} on {spec}: {reason}: {detail}"


def test_every_method_verifies_or_refuses_cleanly():
    OUTCOMES.clear()
    _trial()
    verified = sum(n for key, n in OUTCOMES.items() if key[1:] == ("verified",))
    assert OUTCOMES["architectures"] == EXAMPLES
    assert verified >= EXAMPLES * (len(METHODS) - 1) // 2, OUTCOMES  # most models are pruned, not refused
