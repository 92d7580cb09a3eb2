"""CACP (methods.md §7): the budget clamp, the conditional actor, export, save/load, no test-split reads."""
import copy
import json
import random

import pytest
import torch

import chanprune
from chanprune.errors import ConfigError, PruneError
from chanprune.methods.cacp import BudgetClamp, CACPConfig, CACPFamily, CACPPolicy, Episodes, rollout, state_dim
from chanprune.search.ddpg import Actor
from tests.conftest import tiny

torch.set_num_threads(1)


def _chain_cost(widths, inputs, unit):
    """MACs of a plain conv chain: layer l costs keep_{l-1}·keep_l·unit_l (keep_{-1} = input channels)."""

    def cost(keep):
        prev, total = inputs, 0.0
        for k, u in zip(keep, unit):
            total += prev * k * u
            prev = k
        return total

    return cost


@pytest.mark.parametrize("exact", [False, True])
def test_clamp_meets_every_budget_for_random_actions(exact):
    """Verify 1: whatever the actions, the episode ends within the budget; with ``exact`` it also cannot
    stop short (one more channel in the last group would pass the budget, or that group is whole)."""
    rng = random.Random(0)
    for trial in range(200):
        widths = [rng.choice([4, 8, 16, 32, 64]) for _ in range(rng.randint(2, 9))]
        unit = [rng.uniform(1, 50) for _ in widths]
        cost = _chain_cost(widths, rng.choice([1, 3, 16]), unit)
        rate = rng.uniform(0.05, 0.95)
        high = rng.uniform(0.5, 0.95)
        try:
            clamp = BudgetClamp(widths, cost, rate * cost(widths), high, exact=exact)
        except PruneError:
            floor = [max(1, n - int(high * n)) for n in widths]
            assert cost(floor) > rate * cost(widths)  # refused only when truly unreachable
            continue
        keep = []
        for t in range(len(widths)):
            k = clamp.keep(t, keep, rng.uniform(0, 1))
            assert clamp.floor[t] <= k <= widths[t]
            keep.append(k)
        budget = rate * cost(widths)
        assert cost(keep) <= budget * (1 + 1e-9)
        if exact:
            assert keep[-1] == widths[-1] or cost(keep[:-1] + [keep[-1] + 1]) > budget


def test_clamp_leaves_feasible_actions_alone():
    widths, unit = [16, 16, 16], [1.0, 1.0, 1.0]
    cost = _chain_cost(widths, 3, unit)
    clamp = BudgetClamp(widths, cost, 0.9 * cost(widths), 0.9)
    assert clamp.keep(0, [], 0.5) == 8  # the paper's clamp only raises actions that would miss the budget


@pytest.fixture(scope="module")
def digits():
    return chanprune.load_data("digits")


@pytest.fixture(scope="module")
def net():
    return tiny("resnet20")


def _cfg(**kw):
    base = dict(warmup=3, episodes=3, hidden=16, val_images=64, calibration=64, replay_batch=8, support=(0.4, 0.7))
    return CACPConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def family(net, digits):
    return chanprune.prune(net, _cfg(), digits)


def test_episodes_walk_the_groups_in_forward_order(net, digits):
    env = Episodes(net, _cfg(), digits, None)
    table, groups = env.table, env.session.graph.groups
    assert groups[table.order[0]].name == "conv1" and sorted(table.order) == list(range(len(groups)))
    assert table.order != list(range(len(groups)))  # Torch-Pruning lists the residual streams first
    walk = list(range(1, len(groups) + 1))
    assert [table.to_groups(walk)[g] for g in table.order] == walk
    assert table.channels == [groups[g].channels for g in table.order]


def test_changing_only_the_rate_changes_the_actions(net, digits):
    """Verify 2: the actor reads R (the first state feature), so its raw actions differ between rates."""
    env = Episodes(net, _cfg(), digits, None)
    actor = Actor(state_dim(True), 16, torch.Generator().manual_seed(3))
    kw = dict(conditional=True, support=(0.4, 0.7), action_low=0.0, action_high=0.9, exact=True)
    with torch.no_grad():
        a = rollout(env.table, 0.4, lambda s: float(actor(s[None])), **kw)
        b = rollout(env.table, 0.7, lambda s: float(actor(s[None])), **kw)
    assert a.states[0][1:].tolist() == b.states[0][1:].tolist()  # only R differs in the first state
    assert a.raw_actions[0] != b.raw_actions[0]


def test_episodes_cycle_the_support_and_reward_accuracy_over_its_running_mean(family):
    """Verify 3: episode e trains at support[e mod |support|]; r = top1 / running mean of top1 at that R."""
    log = family.policy.log
    assert [e["rate"] for e in log] == [(0.4, 0.7)[i % 2] for i in range(6)]
    for rate in (0.4, 0.7):
        seen = [e for e in log if e["rate"] == rate]
        for i, e in enumerate(seen):
            mean = sum(s["accuracy"] for s in seen[: i + 1]) / (i + 1)
            assert e["reward"] == pytest.approx(e["accuracy"] / mean)
        assert all(e["macs_kept"] <= rate + 1e-9 for e in seen)


def test_family_exports_verified_models_within_budget_and_deterministically(family, net, digits):
    """Verify 1, 4, 6: support and in-between rates meet their budget (Torch-Pruning's counter); without
    noise the same R gives the same model; the episode's accuracy is the exported model's."""
    for rate in (0.4, 0.55, 0.7):
        pruned = family.at(rate)
        rec = pruned.chanprune_history[-1]
        assert rec["verified"] and rec["method"] == "cacp" and rec["compensation"]["consumers"]
        assert rec["macs"]["kept"] <= rate * 1.01
        assert rec["cacp"]["predicted_macs_kept"] <= rate + 1e-9
    fresh = CACPFamily(net, family.policy, digits)
    a, b = family.at(0.55), fresh.at(0.55)
    assert a.chanprune_history[-1]["cacp"]["keep"] == b.chanprune_history[-1]["cacp"]["keep"]
    for (n, p), (_, q) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(p, q), n
    env = Episodes(net, family.policy.config, digits, None)
    keep = a.chanprune_history[-1]["cacp"]["keep"]
    x, y = env.val
    with torch.no_grad():
        exported = 100.0 * float((a(x).argmax(1) == y).float().mean())
    assert exported == pytest.approx(env.accuracy(keep))


def test_a_saved_policy_reproduces_the_family(family, net, digits, tmp_path):
    family.save(tmp_path / "policy")
    loaded = CACPFamily.load(tmp_path / "policy", net, digits)
    assert loaded.policy.best == family.policy.best
    for rate in (0.4, 0.6):
        a, b = family.at(rate), loaded.at(rate)
        assert a.chanprune_history[-1]["cacp"]["keep"] == b.chanprune_history[-1]["cacp"]["keep"]
        assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))
    (tmp_path / "policy.safetensors").write_bytes(b"garbage")
    with pytest.raises(chanprune.ChanpruneError, match="do not match"):
        CACPPolicy.load(tmp_path / "policy")


def test_rates_outside_the_trained_range_are_refused(family):
    with pytest.raises(ConfigError, match="outside the trained range"):
        family.at(0.9)


class _Untouchable:
    def __getattr__(self, name):
        raise AssertionError(f"the search read the test split ({name})")

    def __len__(self):
        raise AssertionError("the search read the test split (len)")


def test_the_reward_never_reads_the_test_split(net, digits):
    """Validation images come from the training split, disjoint from the calibration images."""
    guarded = copy.copy(digits)
    object.__setattr__(guarded, "test", _Untouchable())
    cfg = _cfg(warmup=2, episodes=1)
    fam = chanprune.prune(net, cfg, guarded)
    fam.at(0.5)
    env = Episodes(net, cfg, digits, None)
    xc, _ = digits.calibration(cfg.calibration, seed=cfg.seed)
    xv, _ = env.val
    calib_rows = {tuple(r.tolist()) for r in xc.flatten(1)}
    assert not any(tuple(r.tolist()) in calib_rows for r in xv.flatten(1))
    train_rows = {tuple(r.tolist()) for r in digits.normalize(digits.train.images).flatten(1)}
    assert all(tuple(r.tolist()) in train_rows for r in xv.flatten(1))


def test_amc_mode_has_no_rate_input_and_one_agent_per_rate(net, digits):
    fam = chanprune.prune(net, _cfg(conditional=False, warmup=2, episodes=1), digits)
    assert sorted(fam.policy.actors) == ["0.4", "0.7"]
    assert fam.policy.actors["0.4"].net[0].in_features == state_dim(False) == state_dim(True) - 1
    assert fam.at(0.4).chanprune_history[-1]["macs"]["kept"] <= 0.4 * 1.01
    with pytest.raises(ConfigError, match="AMC-mode"):
        fam.at(0.55)


@pytest.mark.parametrize("bad", [dict(support=()), dict(support=(0.5, 1.2)), dict(action_low=0.9, action_high=0.5),
                                 dict(reward_norm="x"), dict(recover="bn"), dict(recover="compensate"), dict(round_to=8)])
def test_bad_configs_say_what_to_change(bad):
    with pytest.raises(ConfigError):
        CACPConfig(**bad)


def test_cli_searches_exports_and_reexports_from_the_saved_policy(tmp_path):
    from typer.testing import CliRunner

    from chanprune import cli

    torch.manual_seed(0)
    chanprune.save(chanprune.create_model("lenet5", num_classes=10, in_channels=1), tmp_path / "m", extra={"data": "digits"})
    common = [str(tmp_path / "m"), "--data", "digits", "--test-limit", "50"]
    run = CliRunner().invoke(cli.app, ["cacp", *common, "--warmup", "2", "--episodes", "1", "--val-images", "50",
                                       "--calibration", "64", "--support", "0.4", "0.7", "--export", "0.4", "0.55",
                                       "--out", str(tmp_path / "a")])
    assert run.exit_code == 0, run.output
    first = json.loads((tmp_path / "a" / "record.json").read_text())
    assert [m["rate"] for m in first["members"]] == [0.4, 0.55]
    assert all(m["macs"]["kept"] <= m["rate"] * 1.01 and m["verified"] for m in first["members"])
    again = CliRunner().invoke(cli.app, ["cacp", *common, "--policy", str(tmp_path / "a" / "policy"), "--export", "0.4", "0.55",
                                         "--out", str(tmp_path / "b")])
    assert again.exit_code == 0, again.output
    second = json.loads((tmp_path / "b" / "record.json").read_text())
    assert [m["keep"] for m in second["members"]] == [m["keep"] for m in first["members"]]
    assert [m["accuracy_no_finetune"] for m in second["members"]] == [m["accuracy_no_finetune"] for m in first["members"]]
    bad = CliRunner().invoke(cli.app, ["cacp", *common, "--support", "a", "b"])
    assert isinstance(bad.exception, ConfigError) and "takes numbers" in str(bad.exception)
    bad = CliRunner().invoke(cli.app, ["prune", *common[:3], "--method", "cacp"])
    assert isinstance(bad.exception, ConfigError) and "chanprune cacp" in str(bad.exception)
