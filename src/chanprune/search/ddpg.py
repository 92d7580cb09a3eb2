"""DDPG (Lillicrap et al., arXiv 1509.02971) with one continuous action in [0, 1], as AMC and CACP use it.

* actor μ(s) = sigmoid(MLP(s)), critic Q(s, a) = MLP([s, a]), each with two hidden ReLU layers;
* critic target  y = r + γ·(1 − done)·Q'(s', μ'(s'))  (primed: the target networks);
* critic loss ‖Q(s, a) − y‖², actor loss −Q(s, μ(s)); target networks follow by θ' ← τθ + (1 − τ)θ'.

Everything random (weight initialisation, replay sampling) draws from generators seeded by ``seed``, so
two agents built with the same seed and fed the same transitions are identical, and the global torch
random state is left alone.
"""
from __future__ import annotations

import copy

import torch
import torch.nn as nn
import torch.nn.functional as F


def _mlp(inputs: int, hidden: int, gen: torch.Generator) -> nn.Sequential:
    net = nn.Sequential(nn.Linear(inputs, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, 1))
    with torch.no_grad():
        for layer in net:
            if isinstance(layer, nn.Linear):  # PyTorch's default init, drawn from our generator
                bound = 1.0 / layer.in_features ** 0.5
                layer.weight.uniform_(-bound, bound, generator=gen)
                layer.bias.uniform_(-bound, bound, generator=gen)
    return net


class Actor(nn.Module):
    """μ(s) ∈ (0, 1): the fraction of a layer's channels to remove."""

    def __init__(self, state_dim: int, hidden: int = 300, gen: torch.Generator | None = None):
        super().__init__()
        self.net = _mlp(state_dim, hidden, gen or torch.Generator().manual_seed(0))

    def forward(self, state: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.net(state))


class Critic(nn.Module):
    """Q(s, a): the expected return of action a in state s."""

    def __init__(self, state_dim: int, hidden: int = 300, gen: torch.Generator | None = None):
        super().__init__()
        self.net = _mlp(state_dim + 1, hidden, gen or torch.Generator().manual_seed(0))

    def forward(self, state: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([state, action], dim=-1))


class ReplayBuffer:
    """A ring buffer of transitions (s, a, r, s', done); the oldest go first when it is full."""

    def __init__(self, capacity: int, state_dim: int):
        self.capacity = int(capacity)
        self.state = torch.zeros(self.capacity, state_dim)
        self.action = torch.zeros(self.capacity, 1)
        self.reward = torch.zeros(self.capacity, 1)
        self.next_state = torch.zeros(self.capacity, state_dim)
        self.done = torch.zeros(self.capacity, 1)
        self.size = 0
        self._next = 0

    def add(self, state, action: float, reward: float, next_state, done: bool) -> None:
        i = self._next
        self.state[i] = torch.as_tensor(state, dtype=torch.float32)
        self.action[i] = float(action)
        self.reward[i] = float(reward)
        self.next_state[i] = torch.as_tensor(next_state, dtype=torch.float32)
        self.done[i] = float(done)
        self._next = (i + 1) % self.capacity
        self.size = min(self.size + 1, self.capacity)

    def sample(self, batch_size: int, gen: torch.Generator):
        idx = torch.randint(0, self.size, (min(batch_size, self.size),), generator=gen)
        return self.state[idx], self.action[idx], self.reward[idx], self.next_state[idx], self.done[idx]

    def __len__(self) -> int:
        return self.size


class DDPG:
    """The actor–critic pair, their target copies, the optimisers and the replay buffer."""

    def __init__(self, state_dim: int, *, hidden: int = 300, lr_actor: float = 1e-4, lr_critic: float = 1e-3,
                 tau: float = 0.01, discount: float = 1.0, batch_size: int = 64, buffer_size: int = 1000,
                 seed: int = 0):
        gen = torch.Generator().manual_seed(seed)
        self.actor = Actor(state_dim, hidden, gen)
        self.critic = Critic(state_dim, hidden, gen)
        self.actor_target = copy.deepcopy(self.actor)
        self.critic_target = copy.deepcopy(self.critic)
        self.actor_opt = torch.optim.Adam(self.actor.parameters(), lr=lr_actor)
        self.critic_opt = torch.optim.Adam(self.critic.parameters(), lr=lr_critic)
        self.buffer = ReplayBuffer(buffer_size, state_dim)
        self.tau, self.discount, self.batch_size = tau, discount, batch_size
        self._gen = torch.Generator().manual_seed(seed + 1)

    @torch.no_grad()
    def act(self, state) -> float:
        """μ(s), without exploration noise."""
        return float(self.actor(torch.as_tensor(state, dtype=torch.float32)[None])[0, 0])

    def update(self) -> tuple[float, float]:
        """One gradient step of the critic and the actor on a replay batch; returns (critic, actor) loss."""
        s, a, r, s2, done = self.buffer.sample(self.batch_size, self._gen)
        with torch.no_grad():
            target = r + self.discount * (1 - done) * self.critic_target(s2, self.actor_target(s2))
        critic_loss = F.mse_loss(self.critic(s, a), target)
        self.critic_opt.zero_grad()
        critic_loss.backward()
        self.critic_opt.step()
        actor_loss = -self.critic(s, self.actor(s)).mean()
        self.actor_opt.zero_grad()
        actor_loss.backward()
        self.actor_opt.step()
        with torch.no_grad():
            for net, tgt in ((self.actor, self.actor_target), (self.critic, self.critic_target)):
                for p, q in zip(net.parameters(), tgt.parameters()):
                    q.mul_(1 - self.tau).add_(p, alpha=self.tau)
        return critic_loss.item(), actor_loss.item()
