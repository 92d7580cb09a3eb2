"""Searches over per-layer pruning rates that learn from rewards (reinforcement learning)."""
from .ddpg import DDPG, Actor, Critic, ReplayBuffer  # noqa: F401

__all__ = ["DDPG", "Actor", "Critic", "ReplayBuffer"]
