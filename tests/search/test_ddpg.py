"""DDPG (search/ddpg.py): seeded, and it learns a one-step problem whose best action depends on the state."""
import torch

from chanprune.search.ddpg import DDPG

torch.set_num_threads(1)


def _train(seed=0, steps=800):
    """Reward −(a − s)²: the best action equals the state's only feature, s ∈ {0.2, 0.8}."""
    agent = DDPG(1, hidden=32, lr_actor=3e-3, lr_critic=3e-3, tau=0.05, discount=0.0, batch_size=32, buffer_size=512, seed=seed)
    g = torch.Generator().manual_seed(seed)
    for step in range(steps):
        s = torch.tensor([0.2 if step % 2 else 0.8])
        a = float(torch.rand((), generator=g))
        agent.buffer.add(s, a, -(a - float(s)) ** 2, s, True)
        if len(agent.buffer) >= 32:
            agent.update()
    return agent


def test_ddpg_learns_a_state_dependent_action():
    agent = _train()
    assert abs(agent.act(torch.tensor([0.2])) - 0.2) < 0.15
    assert abs(agent.act(torch.tensor([0.8])) - 0.8) < 0.15


def test_same_seed_same_agent():
    a, b = _train(seed=1, steps=80), _train(seed=1, steps=80)
    for p, q in zip(a.actor.parameters(), b.actor.parameters()):
        assert torch.equal(p, q)
    c = _train(seed=2, steps=80)
    assert any(not torch.equal(p, q) for p, q in zip(a.actor.parameters(), c.actor.parameters()))
