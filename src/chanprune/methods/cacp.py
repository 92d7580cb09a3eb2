"""CACP: conditional automated channel pruning (Liu et al., arXiv 2009.09724; methods.md §7).

One search trains a policy that takes the MAC rate R as an input, so it yields a pruned model for any
R in the trained range. Stages, in the paper's order:

  allocation  a DDPG actor (:mod:`chanprune.search.ddpg`) walks the prunable groups in forward order; at group t
              it sees s_t = [R, t, depthwise, n, c, h, w, stride, k, MACs_t, params_t, removed_t,
              rest_t, a_{t−1}] and answers a_t, the fraction of the group's channels to remove; the
              :class:`BudgetClamp` raises a_t where needed so the episode always ends at ≤ R of the MACs
  selection   within a group, the lowest channels by a registered criterion (L1 by default)
  recovery    every consumer refit in closed form (:mod:`chanprune.recovery`) from the original
              model's input moments, cached once per search and once per family (the method's own
              refit, like CP's and CaP's, so ``recover`` stays ``"none"``)
  reward      top-1 on a validation subset carved from the *training* split (disjoint from the
              calibration images; the test split is never read) divided by a per-rate normaliser
  training    R cycles through the support rates, one per episode (support[e mod |support|]);
              ``warmup`` episodes of uniform random actions, then actor actions plus Gaussian noise
              σ = noise·noise_decayᵉ; every transition of an episode carries the episode's reward
  export      for a rate R: the actor without noise, then the clamp, then the verified pipeline
              (surgery, verification against the masked original, the same recovery, the record)

**Convention:** a rate is the fraction of the dense model's MACs **kept** (the paper's density, and
``target_macs`` everywhere in chanprune); an action is the fraction of a group's channels removed.

``conditional=False`` is AMC (He et al., arXiv 1802.03494) from the same code: the state has no R and
one agent is trained per support rate.
"""
from __future__ import annotations

import copy
import json
import math
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, ClassVar, Sequence

import numpy as np
import torch
import torch.nn as nn

from .._atomic import atomic_path
from ..config import PruneConfig
from ..cost import CostModel
from ..criteria import CRITERIA, get_criterion
from ..data.base import _stratified_indices
from ..errors import ConfigError, LoadError, PruneError
from ..graph import PruningGraph
from ..recovery import compensate_model, consumer_moments
from ..recovery.stats import call_order, supported
from ..search.ddpg import DDPG, Actor
from ..surgery import apply_plan
from .pipeline import PruneSession, run_pipeline
from .registry import register_method

# f(R) of the authors' reward r = top1 / f(R) (their code compares R with strings, so it never fires there)
PAPER_REWARD_TABLE = {0.3: 11.0, 0.5: 70.0}
PAPER_REWARD_DEFAULT = 100.0
STATIC_FEATURES = ("index", "depthwise", "channels", "in_channels", "height", "width", "stride", "kernel",
                   "macs", "params")
DYNAMIC_FEATURES = ("removed", "rest", "previous_action")


@dataclass
class CACPConfig(PruneConfig):
    """Conditional DDPG search of per-group rates for every MAC rate in [min(support), max(support)].

    ``support`` are fractions of the MACs *kept*. ``episodes`` counts training episodes after the
    ``warmup`` random ones (both per agent; AMC mode trains one agent per support rate).
    """

    method: ClassVar[str] = "cacp"
    refits_consumers: ClassVar[bool] = True  # in every episode and at export, from moments cached once
    support: tuple[float, ...] = (0.3, 0.5, 0.7)
    conditional: bool = True
    criterion: str = "l1"
    warmup: int = 100
    episodes: int = 800
    noise: float = 0.5
    noise_decay: float = 0.95
    action_low: float = 0.05
    action_high: float = 0.9
    exact_budget: bool = True  # also cap actions so no episode removes more than R asks (False: the paper's clamp)
    hidden: int = 300
    lr_actor: float = 1e-4
    lr_critic: float = 1e-3
    tau: float = 0.01
    discount: float = 1.0
    replay_batch: int = 64
    buffer_size: int | None = None  # None: warmup × number of groups (the paper's choice)
    updates_per_episode: int | None = None  # None: one per transition (the number of groups)
    reward_norm: str = "running_mean"  # "running_mean" (per rate), "paper_table", "none"
    val_images: int = 1000
    refit: bool = True  # the closed-form consumer refit (False: channels only removed)

    def __post_init__(self):
        super().__post_init__()
        self.support = tuple(sorted(float(r) for r in self.support))
        if not self.support or len(set(self.support)) != len(self.support):
            raise ConfigError(f"support must be one or more distinct rates, not {self.support!r}; e.g. support=(0.3, 0.5, 0.7).")
        for r in self.support:
            if not 0 < r < 1:
                raise ConfigError(f"every support rate is a fraction of the MACs kept in (0, 1), not {r}.")
        if self.target_params is not None or self.round_to is not None:
            raise ConfigError("CACP targets the MACs through its support rates; drop target_params and round_to.")
        if self.criterion not in CRITERIA:
            raise ConfigError(f"unknown criterion {self.criterion!r}; choose one of {', '.join(sorted(CRITERIA))}.")
        if not 0 <= self.action_low < self.action_high < 1:
            raise ConfigError(f"need 0 <= action_low < action_high < 1 (fractions removed), got {self.action_low}, {self.action_high}.")
        for name in ("warmup", "episodes", "hidden", "replay_batch", "val_images"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < (0 if name in ("warmup", "episodes") else 1):
                raise ConfigError(f"{name} must be a {'non-negative' if name in ('warmup', 'episodes') else 'positive'} integer, not {v!r}.")
        if self.warmup + self.episodes < 1:
            raise ConfigError("warmup + episodes must be at least 1 so the search sees one episode.")
        if self.reward_norm not in ("running_mean", "paper_table", "none"):
            raise ConfigError(f"reward_norm must be 'running_mean', 'paper_table' or 'none', not {self.reward_norm!r}.")
        if self.recover != "none":
            raise ConfigError(f"CACP refits the consumers itself in every episode and at export (refit=True, or refit=False "
                              f"for none); an export must be the model its episodes scored, so recover must stay 'none', not {self.recover!r}.")


# --------------------------------------------------------------------------- the layers and the budget


class LayerTable:
    """The groups in the order the forward pass reaches them (the order an episode walks), the facts the
    policy sees about each, and the MACs of any kept-channel counts.

    Lists here (``channels``, ``static``, ``rest``, and the ``keep`` arguments) are in walk order;
    :meth:`to_groups` maps a walk-order list to the graph's group order.
    """

    def __init__(self, graph: PruningGraph, cost: CostModel):
        self.cost = cost
        self.total = float(cost.macs)
        shapes: dict[nn.Module, tuple] = {}
        roots = {g.root for g in graph.groups}

        def record(module, _inputs, output):
            shapes.setdefault(module, tuple(output.shape))

        hooks = [m.register_forward_hook(record) for m in roots]
        try:
            with torch.no_grad():
                graph.model.eval()(graph.example_inputs)
        finally:
            for h in hooks:
                h.remove()
        calls, _ = call_order(graph.model, graph.example_inputs)
        reached = {name: i for i, name in enumerate(calls)}
        self.order = sorted(range(len(graph.groups)), key=lambda i: (reached.get(graph.groups[i].name, len(reached)), i))
        groups = [graph.groups[i] for i in self.order]
        self.channels = [g.channels for g in groups]
        macs = [0.0] * len(graph.groups)
        params = [0.0] * len(graph.groups)
        for layer_macs, layer_params, _out, _in, _oo, links in cost.layers:
            for g, out_mult, _ in links:
                if out_mult:
                    macs[g] += layer_macs
                    params[g] += layer_params
        rows = []
        for t, g in enumerate(groups):
            m = g.root
            shape = shapes.get(m, ())
            h, w = (shape[2], shape[3] if len(shape) > 3 else 1) if len(shape) > 2 else (1, 1)
            conv = isinstance(m, (nn.Conv1d, nn.Conv2d))
            depthwise = conv and m.groups > 1 and m.groups == m.in_channels
            stride = m.stride[0] if conv else 1
            kernel = m.kernel_size[0] if conv else 1
            in_c = m.in_channels if conv else m.in_features
            rows.append([t, float(depthwise), g.channels, in_c, h, w, stride, kernel, macs[g.index], params[g.index]])
        raw = torch.tensor(rows, dtype=torch.float32)
        lo, hi = raw.min(0).values, raw.max(0).values
        self.static = torch.where(hi > lo, (raw - lo) / (hi - lo).clamp_min(1e-12), torch.zeros_like(raw))
        walk_macs = [macs[g.index] for g in groups]
        # MACs of the groups after t (their producers), as a fraction of the model's
        self.rest = [sum(walk_macs[t + 1:]) / self.total for t in range(len(groups))]

    def __len__(self) -> int:
        return len(self.channels)

    def to_groups(self, keep: Sequence[int]) -> list[int]:
        """A complete walk-order list in the graph's group order."""
        out = [0] * len(self.order)
        for t, g in enumerate(self.order):
            out[g] = int(keep[t])
        return out

    def macs(self, keep: Sequence[int]) -> float:
        """MACs for walk-order kept counts."""
        return self.cost(self.to_groups(keep))[0]

    def removed(self, keep_so_far: Sequence[int]) -> float:
        """MACs removed by the groups decided so far (the rest dense), as a fraction of the model's."""
        full = list(keep_so_far) + self.channels[len(keep_so_far):]
        return 1.0 - self.macs(full) / self.total


class BudgetClamp:
    """Clamp an action so that the episode can still end at ≤ ``budget`` MACs (and, if ``exact``, near it).

    At group t, with the groups before it decided: every later group assumed pruned at ``action_high``,
    the group keeps at most k_max channels, the most for which the cost stays within the budget; by
    induction every episode ends within the budget whatever the actions, as long as pruning every group
    at ``action_high`` does (checked first). This is the paper's clamp. With ``exact``, every later
    group assumed dense, it also keeps at least k_min, the fewest for which the cost still reaches the
    budget, so no episode removes more than the rate asks (the last group lands within one channel's
    MACs of the budget); k_max wins where the two cross. ``cost`` maps per-group kept counts to MACs and
    must not decrease when a count grows.
    """

    def __init__(self, channels: Sequence[int], cost: Callable[[list[int]], float], budget: float,
                 action_high: float, exact: bool = False):
        self.channels = list(channels)
        self.cost = cost
        self.budget = float(budget)
        self.exact = exact
        self.floor = [max(1, n - math.floor(action_high * n)) for n in self.channels]
        smallest = cost(list(self.floor))
        if smallest > self.budget * (1 + 1e-9):
            raise PruneError(
                f"the budget of {self.budget:.4g} MACs cannot be met: removing {action_high:.0%} of every group "
                f"still leaves {smallest:.4g}; ask for a larger rate or raise action_high.")

    def _largest(self, lo: int, hi: int, ok: Callable[[int], bool]) -> int:
        """The largest k in [lo, hi] with ok(k), ok monotone decreasing and ok(lo) true."""
        if ok(hi):
            return hi
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (mid, hi) if ok(mid) else (lo, mid)
        return lo

    def keep(self, t: int, decided: Sequence[int], action: float) -> int:
        """Channels group t keeps for ``action`` (fraction removed), given the counts ``decided`` before it."""
        n = self.channels[t]
        head, floor_tail, dense_tail = list(decided), self.floor[t + 1:], self.channels[t + 1:]
        limit = self.budget * (1 + 1e-9)
        k_max = self._largest(self.floor[t], n, lambda k: self.cost(head + [k] + floor_tail) <= limit)
        want = min(n, max(self.floor[t], n - int(round(action * n))))
        if self.exact and self.cost(head + [want] + dense_tail) < self.budget:
            # the fewest channels that still reach the budget: one more than the largest that does not
            below = self._largest(self.floor[t], n, lambda k: self.cost(head + [k] + dense_tail) < self.budget)
            want = min(n, below + 1) if self.cost(head + [below] + dense_tail) < self.budget else below
        return min(want, k_max)


@dataclass
class Rollout:
    states: list[torch.Tensor]
    actions: list[float]          # effective actions (after the clamp), fractions removed, in walk order
    raw_actions: list[float]      # what the actor (or the random warm-up) asked for, in walk order
    keep: list[int]               # kept channels per group, in the graph's group order


def rollout(table: LayerTable, rate: float, act: Callable[[torch.Tensor], float], *, conditional: bool,
            support: Sequence[float], action_low: float, action_high: float, exact: bool) -> Rollout:
    """One pass over the groups: state → action → clamp → kept channels."""
    clamp = BudgetClamp(table.channels, table.macs, rate * table.total, action_high, exact)
    lo, hi = min(support), max(support)
    r_feature = (rate - lo) / (hi - lo) if hi > lo else rate
    out = Rollout([], [], [], [])
    walk: list[int] = []
    prev = 0.0
    for t in range(len(table)):
        dynamic = torch.tensor([table.removed(walk), table.rest[t], prev], dtype=torch.float32)
        parts = ([torch.tensor([r_feature], dtype=torch.float32)] if conditional else []) + [table.static[t], dynamic]
        state = torch.cat(parts)
        raw = min(action_high, max(action_low, float(act(state))))
        k = clamp.keep(t, walk, raw)
        prev = 1.0 - k / table.channels[t]
        out.states.append(state)
        out.raw_actions.append(raw)
        out.actions.append(prev)
        walk.append(k)
    out.keep = table.to_groups(walk)
    return out


def state_dim(conditional: bool) -> int:
    return int(conditional) + len(STATIC_FEATURES) + len(DYNAMIC_FEATURES)


# --------------------------------------------------------------------------- episodes


def validation_set(bundle, calibration: int, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` normalised training images disjoint from the calibration draw ``bundle.calibration(calibration, seed)``."""
    labels = bundle.train.labels.numpy()
    cal = _stratified_indices(labels, calibration, seed) if calibration < len(labels) else np.arange(len(labels))
    rest = np.setdiff1d(np.arange(len(labels)), cal)
    if rest.size == 0:
        raise ConfigError("the calibration images use the whole training split, leaving none for CACP's validation "
                          "subset; lower calibration.")
    pick = torch.from_numpy(rest[_stratified_indices(labels[rest], n, seed + 1)])
    return bundle.normalize(bundle.train.images[pick]), bundle.train.labels[pick].clone()


def refit_moments(model: nn.Module, session: PruneSession) -> dict:
    """Input moments of every consumer of every group of ``model``, from the session's calibration batches."""
    names = sorted({m.name for g in session.graph.groups for m in g.consumers if supported(m.module)})  # grouped convs are not refit
    return consumer_moments(model, names, session.batches)


class Episodes:
    """Accuracy of any per-group kept counts: criterion selection, surgery, closed-form refit, validation."""

    def __init__(self, model: nn.Module, config: CACPConfig, data, example_inputs):
        if not hasattr(data, "train") or not hasattr(data, "calibration"):
            raise ConfigError("CACP carves its validation images from the training split; pass data=a DataBundle (chanprune.load_data).")
        self.model = copy.deepcopy(model).eval()  # the witness and the source of the moments
        self.config = config
        self.session = PruneSession(model, config, data, example_inputs)
        self.table = LayerTable(self.session.graph, self.session.cost)
        score = get_criterion(config.criterion)
        self.scores = [score(g, self.session.scores) for g in self.session.graph.groups]
        self.val = validation_set(data, config.calibration, config.val_images, config.seed)
        self.moments = refit_moments(self.model, self.session) if config.refit else None

    def plan(self, keep: Sequence[int]) -> dict[int, list[int]]:
        return self.session.remove_lowest(self.scores, list(keep))

    def pruned(self, keep: Sequence[int]) -> nn.Module:
        """The pruned, recovered model (unverified: the export verifies)."""
        plan = self.plan(keep)
        graph = PruningGraph(copy.deepcopy(self.model), self.session.example_inputs, ignored_layers=self.config.ignored_layers)
        pruned, report = apply_plan(graph, plan, self.model, verify=False)
        if self.moments is not None:
            compensate_model(self.model, pruned, graph, report.removed, self.session.batches, moments=self.moments)
        return pruned.eval()

    def accuracy(self, keep: Sequence[int]) -> float:
        """Top-1 (percent) on the validation subset of the training split."""
        net = self.pruned(keep)
        x, y = self.val
        correct = 0
        with torch.no_grad():
            for i in range(0, len(y), 256):
                correct += int((net(x[i:i + 256]).argmax(1) == y[i:i + 256]).sum())
        return 100.0 * correct / len(y)


class RewardNorm:
    """r = top1 / f(R): f the running mean of top1 at R (default), the paper's table, or 1."""

    def __init__(self, kind: str):
        self.kind = kind
        self.sums: dict[float, float] = {}
        self.counts: dict[float, int] = {}

    def __call__(self, rate: float, accuracy: float) -> float:
        if self.kind == "paper_table":
            return accuracy / PAPER_REWARD_TABLE.get(round(rate, 6), PAPER_REWARD_DEFAULT)
        if self.kind == "none":
            return accuracy
        self.sums[rate] = self.sums.get(rate, 0.0) + accuracy
        self.counts[rate] = self.counts.get(rate, 0) + 1
        return accuracy / max(self.sums[rate] / self.counts[rate], 1e-12)


def train_agent(env: Episodes, config: CACPConfig, rates: Sequence[float], *, conditional: bool,
                progress: Callable[[dict], None] | None = None) -> tuple[Actor, dict, list[dict]]:
    """Train one agent on episodes cycling through ``rates``; returns (actor, best per rate, episode log)."""
    T = len(env.table)
    agent = DDPG(state_dim(conditional), hidden=config.hidden, lr_actor=config.lr_actor, lr_critic=config.lr_critic,
                 tau=config.tau, discount=config.discount, batch_size=config.replay_batch,
                 buffer_size=config.buffer_size or max(1, config.warmup) * T, seed=config.seed)
    gen = torch.Generator().manual_seed(config.seed + 2)
    norm = RewardNorm(config.reward_norm)
    best: dict[str, dict] = {}
    log: list[dict] = []
    lo, hi = config.action_low, config.action_high
    for e in range(config.warmup + config.episodes):
        t0 = time.perf_counter()
        rate = rates[e % len(rates)]
        if e < config.warmup:
            act = lambda s: lo + (hi - lo) * float(torch.rand((), generator=gen))  # noqa: E731
        else:
            sigma = config.noise * config.noise_decay ** (e - config.warmup)
            act = lambda s: agent.act(s) + sigma * float(torch.randn((), generator=gen))  # noqa: E731
        ro = rollout(env.table, rate, act, conditional=conditional, support=config.support, action_low=lo, action_high=hi,
                     exact=config.exact_budget)
        acc = env.accuracy(ro.keep)
        reward = norm(rate, acc)
        for t in range(T):
            nxt = ro.states[t + 1] if t + 1 < T else ro.states[t]
            agent.buffer.add(ro.states[t], ro.actions[t], reward, nxt, t == T - 1)
        if e >= config.warmup:
            for _ in range(config.updates_per_episode or T):
                agent.update()
        key = f"{rate:g}"
        if key not in best or acc > best[key]["accuracy"]:
            best[key] = {"keep": ro.keep, "accuracy": acc, "reward": reward, "episode": e}
        entry = {"episode": e, "rate": rate, "accuracy": acc, "reward": reward,
                 "macs_kept": env.table.cost.kept(ro.keep), "seconds": time.perf_counter() - t0}
        log.append(entry)
        if progress is not None:
            progress(entry)
    return agent.actor, best, log


# --------------------------------------------------------------------------- the policy and the family


@dataclass
class CACPPolicy:
    """The trained actor(s) plus what they need to act again: config, groups, best episodes, the log.

    Conditional: one actor under the key ``"all"``; AMC mode: one actor per support rate (key ``f"{R:g}"``).
    Saved as ``<stem>.safetensors`` (actor weights) and ``<stem>.json`` (everything else, no pickle).
    """

    config: CACPConfig
    groups: list[dict]
    actors: dict[str, Actor]
    best: dict[str, dict] = field(default_factory=dict)
    log: list[dict] = field(default_factory=list)
    seconds: float = 0.0

    def actor_for(self, rate: float) -> Actor:
        if self.config.conditional:
            lo, hi = self.config.support[0], self.config.support[-1]
            if not lo - 1e-9 <= rate <= hi + 1e-9:
                raise ConfigError(f"rate {rate} lies outside the trained range [{lo}, {hi}] of MACs kept; "
                                  "search again with a wider support.")
            return self.actors["all"]
        key = f"{rate:g}"
        if key not in self.actors:
            raise ConfigError(f"this AMC-mode policy was searched for {', '.join(self.actors)} only, not {key}; "
                              "use conditional=True for rates in between.")
        return self.actors[key]

    def save(self, path: str | os.PathLike) -> Path:
        import hashlib

        import safetensors.torch

        stem = Path(str(path).removesuffix(".json").removesuffix(".safetensors"))
        json_path, st_path = Path(str(stem) + ".json"), Path(str(stem) + ".safetensors")
        tensors = {f"{key}.{name}": p.detach().clone().contiguous().cpu()
                   for key, actor in self.actors.items() for name, p in actor.state_dict().items()}
        with atomic_path(st_path) as tmp:
            safetensors.torch.save_file(tensors, str(tmp), metadata={"format": "pt"})
        doc = {
            "format": "chanprune-cacp-policy", "version": 1,
            "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.config.to_dict().items()},
            "groups": self.groups, "actors": sorted(self.actors), "best": self.best, "log": self.log,
            "seconds": self.seconds,
            "weights": {"file": st_path.name, "sha256": hashlib.sha256(st_path.read_bytes()).hexdigest()},
        }
        with atomic_path(json_path) as tmp:
            tmp.write_text(json.dumps(doc, indent=1))
        return json_path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "CACPPolicy":
        import hashlib

        import safetensors.torch

        stem = Path(str(path).removesuffix(".json").removesuffix(".safetensors"))
        json_path = Path(str(stem) + ".json")
        try:
            doc = json.loads(json_path.read_text())
        except (OSError, ValueError) as exc:
            raise LoadError(f"cannot read a CACP policy at {json_path} ({type(exc).__name__}); pass the stem written by family.save().") from None
        if doc.get("format") != "chanprune-cacp-policy":
            raise LoadError(f"{json_path} is not a CACP policy (format {doc.get('format')!r}); pass the stem written by family.save().")
        st_path = json_path.parent / doc["weights"]["file"]
        if not st_path.exists() or hashlib.sha256(st_path.read_bytes()).hexdigest() != doc["weights"]["sha256"]:
            raise LoadError(f"the weights {st_path} are missing or do not match the hash in {json_path.name}; save the policy again.")
        tensors = safetensors.torch.load_file(str(st_path))
        cfg = dict(doc["config"])
        cfg.pop("method", None)
        config = CACPConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in cfg.items()})
        actors = {}
        for key in doc["actors"]:
            actor = Actor(state_dim(config.conditional), config.hidden)
            actor.load_state_dict({n[len(key) + 1:]: t for n, t in tensors.items() if n.startswith(key + ".")})
            actors[key] = actor.eval()
        return cls(config, doc["groups"], actors, doc["best"], doc["log"], doc["seconds"])


def search(model: nn.Module, config: CACPConfig, data, example_inputs=None,
           progress: Callable[[dict], None] | None = None) -> CACPPolicy:
    """Run the search: one conditional agent over the support rates, or (AMC mode) one agent per rate."""
    t0 = time.perf_counter()
    env = Episodes(model, config, data, example_inputs)
    for rate in config.support:  # a support rate the clamp cannot meet fails before any episode
        BudgetClamp(env.table.channels, env.table.macs, rate * env.table.total, config.action_high)
    actors, best, log = {}, {}, []
    groups = [{"name": g.name, "channels": g.channels} for g in env.session.graph.groups]
    runs = [("all", config.support)] if config.conditional else [(f"{r:g}", (r,)) for r in config.support]
    for key, rates in runs:
        actor, b, lg = train_agent(env, config, rates, conditional=config.conditional, progress=progress)
        actors[key] = actor.eval()
        best.update(b)
        log.extend(lg)
    return CACPPolicy(config, groups, actors, best, log, time.perf_counter() - t0)


class CACPFamily(Mapping):
    """Pruned models of one search: ``family.at(rate)`` for any rate in the trained range.

    As a mapping its keys are the support rates (fractions of MACs kept) and its values the models the
    policy gives there (built on first use). ``source="best"`` exports the best episode the search saw at
    a support rate instead of the noise-free actor.
    """

    def __init__(self, model: nn.Module, policy: CACPPolicy, data, example_inputs=None):
        self.model, self.policy, self.data, self.example_inputs = model, policy, data, example_inputs
        self._cache: dict = {}
        self._moments: dict | None = None  # the refit's statistics, computed on the first export

    @property
    def rates(self) -> tuple[float, float]:
        return self.policy.config.support[0], self.policy.config.support[-1]

    def keep_at(self, rate: float, table: LayerTable, source: str = "actor") -> tuple[list[int], Rollout | None]:
        cfg = self.policy.config
        if source == "best":
            entry = self.policy.best.get(f"{rate:g}")
            if entry is None:
                raise ConfigError(f"the search saw no episode at rate {rate:g}; best episodes exist for {', '.join(self.policy.best)}.")
            return list(entry["keep"]), None
        if source != "actor":
            raise ConfigError(f"source must be 'actor' or 'best', not {source!r}.")
        actor = self.policy.actor_for(rate)
        with torch.no_grad():
            ro = rollout(table, rate, lambda s: float(actor(s[None])[0, 0]), conditional=cfg.conditional,
                         support=cfg.support, action_low=cfg.action_low, action_high=cfg.action_high,
                         exact=cfg.exact_budget)
        return ro.keep, ro

    def at(self, rate: float, source: str = "actor") -> nn.Module:
        """The pruned model at ``rate`` (fraction of MACs kept): verified surgery, recovery, record."""
        rate = float(rate)
        key = (round(rate, 9), source)
        if key in self._cache:
            return self._cache[key]
        cfg = replace(self.policy.config, target_macs=rate)

        def planner(session: PruneSession) -> dict[int, list[int]]:
            table = LayerTable(session.graph, session.cost)
            if [g.channels for g in session.graph.groups] != [g["channels"] for g in self.policy.groups]:
                raise ConfigError("this policy was searched on a model with other channel groups; load it with the model it was searched on.")
            keep, ro = self.keep_at(rate, table, source)
            score = get_criterion(cfg.criterion)
            scores = [score(g, session.scores) for g in session.graph.groups]
            session.notes["cacp"] = {
                "rate": rate, "source": source, "conditional": cfg.conditional, "keep": keep,
                "actions": ro.actions if ro else None, "predicted_macs_kept": table.cost.kept(keep),
                "search_seconds": self.policy.seconds,
            }
            plan = session.remove_lowest(scores, keep)
            if cfg.refit:
                if self._moments is None:
                    self._moments = refit_moments(session.work, session)
                session.post_surgery.append(lambda pruned: session.notes.__setitem__("compensation", compensate_model(
                    session.original, pruned, session.graph, plan, session.batches, moments=self._moments)))
            return plan

        pruned = run_pipeline(self.model, cfg, self.data, self.example_inputs, planner)
        self._cache[key] = pruned
        return pruned

    def __getitem__(self, rate: float) -> nn.Module:
        return self.at(rate)

    def __iter__(self):
        return iter(self.policy.config.support)

    def __len__(self) -> int:
        return len(self.policy.config.support)

    def save(self, path: str | os.PathLike) -> Path:
        """Save the policy (``<path>.json`` + ``<path>.safetensors``); :meth:`load` rebuilds the family."""
        return self.policy.save(path)

    @classmethod
    def load(cls, path: str | os.PathLike, model: nn.Module, data, example_inputs=None) -> "CACPFamily":
        return cls(model, CACPPolicy.load(path), data, example_inputs)


@register_method(CACPConfig)
def cacp(model: nn.Module, config: CACPConfig, data=None, example_inputs=None) -> CACPFamily:
    """``prune(model, CACPConfig(...), data)``: search once, return the family of pruned models."""
    return CACPFamily(model, search(model, config, data, example_inputs), data, example_inputs)
