"""The RNN controller of Neural Optimizer Search (Bello, Zoph, Vasudevan & Le, ICML 2017).

"Neural Optimizer Search with Reinforcement Learning" (arXiv:1709.07417), after
Zoph & Le's NAS controller (2017). An LSTM emits a rule decision by decision: at
each step a softmax over that decision's options is sampled and the choice is fed
back (embedded) as the next input. Rules are scored (fitness = validation
accuracy is the reward) and the policy is trained with PPO (Schulman et al. 2017),
or with REINFORCE (Williams 1992) and a moving-average baseline
(``algorithm="reinforce"``), the simple variant the paper names.

Works on any space offering ``decisions()``/``from_decisions()`` (a
:class:`~metalearn.searchspaces.base.DiscreteSpace`); each decision gets its own
output head and input embedding.

Faithful: autoregressive sampling with choices fed back; PPO's clipped objective on
sequence log-probabilities with an exponential-moving-average reward baseline;
updates on batches of sampled rules, each rewarded with its fitness. Differs: sizes are
small (hidden 32, batch 10, Adam lr 0.01, 4 PPO epochs per batch) to learn within
hundreds rather than tens of thousands of samples; advantages are divided by the
batch's reward standard deviation and a small entropy bonus slows collapse (both
off with ``normalize_advantages=False, entropy_weight=0``); a failed candidate's
reward is ``failed_reward`` (0, an accuracy of zero).

Repeats: every sample is learned from, as in the paper, but the budget buys only
new rules. A sample whose rule (key) was proposed before is not proposed again: it
joins its batch with that rule's reward (what re-evaluating the same job would
give) and the policy draws again, up to ``max_resamples`` times (20), the first
half from the policy itself, then at rising temperatures (1.5, 2, ... by
``resample_heat``) so that a collapsed policy still finds new rules; after that
the repeat is proposed (the ledger answers it for free). Each sample's
log-probability is recorded under the distribution it was drawn from and PPO's
ratio (for REINFORCE, an importance weight) corrects for the temperature.

Determinism (a run resumes by replaying the ledger into a fresh strategy): the
weights are drawn from a ``torch.Generator`` seeded with the strategy's seed, every
sample uses that generator, rewards are keyed by the rule's key, and the policy is
updated exactly when the next ``batch_size`` samples, in drawing order, all have
rewards, so the weights are a function of the seed and the sequence of asks and
tells. ``init`` points are evaluated first and are not sampled, so they are not
learned from, but they count as proposed and a later sample of one gets its reward.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from ..errors import UserError
from ..evaluator import Evaluation, Job
from ..searchspaces.base import SearchSpace
from .base import Strategy

ALGORITHMS = ("ppo", "reinforce")


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Run the policy's tiny tensor ops on one thread.

    Waking a thread pool costs more than these ops (measured on 2 busy cores: 16 ms
    for a 10 x 7 log-softmax on two threads, 2 us on one), and one thread also makes
    the arithmetic independent of the machine's thread count.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


class DecisionPolicy(nn.Module):
    """An LSTM that samples one categorical decision per step, fed its previous choice."""

    def __init__(self, sizes: Sequence[int], hidden_size: int, generator: torch.Generator,
                 init_range: float = 0.1) -> None:
        super().__init__()
        self.sizes = [int(n) for n in sizes]
        self.offsets = [sum(self.sizes[:i]) for i in range(len(self.sizes))]
        total = sum(self.sizes)
        self.start_token = total  # the input of the first step
        self.embedding = nn.Embedding(total + 1, hidden_size)
        self.cell = nn.LSTMCell(hidden_size, hidden_size)
        self.head = nn.Linear(hidden_size, total)  # decision i reads rows offsets[i]:+sizes[i]
        with torch.no_grad():  # Zoph & Le: uniform in [-0.08, 0.08]; drawn from our generator
            for parameter in self.parameters():
                parameter.uniform_(-init_range, init_range, generator=generator)

    def _logits(self, i: int, h: torch.Tensor) -> torch.Tensor:
        rows = slice(self.offsets[i], self.offsets[i] + self.sizes[i])
        return F.linear(h, self.head.weight[rows], self.head.bias[rows])

    @torch.no_grad()
    def sample(self, generator: torch.Generator, temperature: float = 1.0
               ) -> tuple[list[int], float]:
        """One decision sequence and its log-probability under the distribution sampled
        (the policy's softmax with its logits divided by ``temperature``)."""
        hidden = self.embedding.weight.new_zeros(1, self.cell.hidden_size)
        state = (hidden, hidden)
        x = self.embedding.weight[self.start_token].unsqueeze(0)
        choices, log_prob = [], 0.0
        for i in range(len(self.sizes)):
            state = self.cell(x, state)
            log_probs = F.log_softmax(self._logits(i, state[0])[0] / temperature, dim=0)
            choice = int(torch.multinomial(log_probs.exp(), 1, generator=generator))
            choices.append(choice)
            log_prob += float(log_probs[choice])
            x = self.embedding.weight[self.offsets[i] + choice].unsqueeze(0)
        return choices, log_prob

    def log_prob(self, choices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Log-probability and entropy of each row of ``choices`` (batch x decisions)."""
        batch = choices.shape[0]
        hidden = self.embedding.weight.new_zeros(batch, self.cell.hidden_size)
        state = (hidden, hidden)
        x = self.embedding.weight[self.start_token].expand(batch, -1)
        log_prob = hidden.new_zeros(batch)
        entropy = hidden.new_zeros(batch)
        for i in range(len(self.sizes)):
            state = self.cell(x, state)
            log_probs = F.log_softmax(self._logits(i, state[0]), dim=1)
            log_prob = log_prob + log_probs.gather(1, choices[:, i:i + 1]).squeeze(1)
            entropy = entropy - (log_probs.exp() * log_probs).sum(1)
            x = self.embedding(self.offsets[i] + choices[:, i])
        return log_prob, entropy


@dataclass(frozen=True)
class Sample:
    choices: tuple[int, ...]
    log_prob: float  # under the distribution it was drawn from (the behaviour policy)
    key: str         # the rule's key: its reward is the rule's fitness


class Controller(Strategy):
    """An LSTM policy over a discrete space's decisions, trained with PPO on fitness."""

    name = "controller"

    def __init__(self, space: SearchSpace, seed: int = 0, init: Sequence[str] = (),
                 algorithm: str = "ppo", batch_size: int = 10, learning_rate: float = 0.01,
                 hidden_size: int = 32, ppo_epochs: int = 4, ppo_clip: float = 0.2,
                 entropy_weight: float = 0.01, baseline_decay: float = 0.9,
                 normalize_advantages: bool = True, failed_reward: float = 0.0,
                 max_resamples: int = 20, resample_heat: float = 0.5) -> None:
        super().__init__(space, seed, init)
        if not (hasattr(space, "decisions") and hasattr(space, "from_decisions")):
            raise UserError(f"strategy {self.name!r} needs a space with decisions() "
                            f"(a discrete space); {space.name!r} has none (use cmaes, tpe or evolution)")
        if algorithm not in ALGORITHMS:
            raise UserError(f"unknown algorithm {algorithm!r} of strategy {self.name!r}; "
                            f"accepted: {', '.join(ALGORITHMS)}")
        if batch_size < 1 or ppo_epochs < 1 or hidden_size < 1 or max_resamples < 0 \
                or resample_heat < 0:
            raise UserError("batch_size, ppo_epochs and hidden_size must be >= 1, "
                            "max_resamples and resample_heat >= 0")
        self.algorithm = algorithm
        self.batch_size = batch_size
        self.ppo_epochs = ppo_epochs if algorithm == "ppo" else 1
        self.ppo_clip = ppo_clip
        self.entropy_weight = entropy_weight
        self.baseline_decay = baseline_decay
        self.normalize_advantages = normalize_advantages
        self.failed_reward = failed_reward
        self.max_resamples = max_resamples
        self.resample_heat = resample_heat
        self.generator = torch.Generator().manual_seed(seed)
        with one_thread():
            self.policy = DecisionPolicy(space.decisions(), hidden_size, self.generator)  # type: ignore[attr-defined]
        self.optimizer = torch.optim.Adam(self.policy.parameters(), lr=learning_rate)
        self.samples: list[Sample] = []          # drawn, not yet learned from, in order
        self.rewards: dict[str, float] = {}      # rule key -> reward, from the tells
        self.proposed: set[str] = set()          # keys of every rule proposed so far
        self.drawn = 0                           # samples drawn in all
        self.redrawn = 0                         # of which redrawn because their rule was known
        self.batches = 0                         # batches learned from so far
        self.baseline: float | None = None
        self.mean_rewards: list[float] = []      # mean reward of each batch, in order

    def _ask(self) -> Job:
        """A sample of a rule not proposed before, if one turns up within the redraws."""
        with one_thread():
            for attempt in range(self.max_resamples + 1):
                # the first half of the redraws from the policy itself, then ever hotter
                temperature = 1.0 + self.resample_heat * max(0, attempt - self.max_resamples // 2)
                choices, log_prob = self.policy.sample(self.generator, temperature)
                genome = self.space.from_decisions(choices)  # type: ignore[attr-defined]
                key = self.space.key(genome)
                self.samples.append(Sample(tuple(choices), log_prob, key))
                self.drawn += 1
                if key not in self.proposed:
                    break
                self.redrawn += 1
                self.learn()  # a known rule's sample may complete a batch
        self.proposed.add(key)
        return Job(candidate=self.space.candidate(genome))

    def _note_init(self, job: Job) -> None:
        self.proposed.add(job.candidate.key)

    def _tell(self, evaluation: Evaluation) -> None:
        key = evaluation.job.candidate.key
        if key not in self.rewards:
            self.rewards[key] = evaluation.score(failed=self.failed_reward)
            with one_thread():
                self.learn()

    def learn(self) -> None:
        """Update on each complete batch: the next ``batch_size`` samples, all rewarded."""
        while (len(self.samples) >= self.batch_size
               and all(s.key in self.rewards for s in self.samples[:self.batch_size])):
            batch = self.samples[:self.batch_size]
            del self.samples[:self.batch_size]
            self.update(batch)

    def update(self, batch: list[Sample]) -> None:
        """One PPO (or REINFORCE) update on a complete batch of the policy's samples."""
        choices = torch.tensor([s.choices for s in batch], dtype=torch.long)
        behaviour_log_prob = torch.tensor([s.log_prob for s in batch])
        rewards = torch.tensor([self.rewards[s.key] for s in batch])
        mean = float(rewards.mean())
        baseline = mean if self.baseline is None else self.baseline
        advantages = rewards - baseline
        spread = float(rewards.std(unbiased=False))
        if self.normalize_advantages and spread > 1e-6:  # (a batch of one rule has no spread)
            advantages = advantages / spread
        for _ in range(self.ppo_epochs):
            log_prob, entropy = self.policy.log_prob(choices)
            ratio = torch.exp(log_prob - behaviour_log_prob)
            if self.algorithm == "ppo":
                clipped = ratio.clamp(1 - self.ppo_clip, 1 + self.ppo_clip)
                objective = torch.minimum(ratio * advantages, clipped * advantages)
            else:  # importance-weighted REINFORCE: plain REINFORCE for on-policy samples
                objective = ratio.detach() * log_prob * advantages
            loss = -objective.mean() - self.entropy_weight * entropy.mean()
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
        self.baseline = mean if self.baseline is None else (
            self.baseline_decay * self.baseline + (1 - self.baseline_decay) * mean)
        self.mean_rewards.append(mean)
        self.batches += 1

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The policy's weights (what a resumed run must rebuild exactly)."""
        return {k: v.detach().clone() for k, v in self.policy.state_dict().items()}
