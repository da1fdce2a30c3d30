"""REINFORCE and PPO, sharing the NASNet controller (`controller.py`).

Zoph et al. 2017 (NASNET.md section 2) train the controller with PPO: Adam, learning rate
0.00035, entropy weight 0.00001, reward baseline = exponential moving average of past
rewards with decay 0.95, updates on minibatches of 20 architectures. Those are the
defaults here. Not given by the paper, so documented choices:

- PPO clip 0.2 and 4 epochs (the usual values); an epoch is one Adam step on the whole
  minibatch. The ratio is over the joint probability of all decisions of an architecture
  (one architecture = one action), against the log-prob stored when it was sampled.
- Baseline: the EMA of the rewards told *before* this one, so the advantage of a reward is
  `reward - baseline`; the first reward initialises the baseline (advantage 0). The
  advantage is fixed when the reward is told, in the order rewards arrive.
- Entropy: the exact entropy of each decision's softmax along the sampled architecture,
  summed over decisions, averaged over the minibatch; added as a bonus to maximise.
- No advantage normalisation, no gradient clipping (the paper mentions neither).

Early stopping (`Fidelity`, docs/early-stopping.md): a child stopped at a rung is told its
value there. Values at an early rung are lower than final rewards, so comparing them with
the final baseline would punish every stopped child for being stopped; instead each
decision epoch keeps its own EMA baseline (same decay), fed by the value of *every*
trained child that reached it (stopped there or not), and a stopped child's advantage is
its value minus the baseline of its rung. Children trained in full are told exactly as
without early stopping. `stopped_reward` "normalised" also rescales that advantage by the
ratio of the EMA standard deviations of final rewards and of values at the rung; "drop"
teaches nothing from stopped children.

REINFORCE (Zoph & Le 2017) uses the same controller, baseline and entropy bonus with the
plain policy-gradient loss, one Adam step per minibatch. With parallel children an
architecture may be sampled before an update and told after it; REINFORCE then uses it
as if on-policy (as the NAS papers do), PPO corrects for it through its ratio.

`UpdateStats` after each update: loss (mean over epochs), the entropy, approx_kl and
policy of the controller *after* the update on that minibatch (approx_kl is the k3
estimator of KL(sampling policy || updated policy)), the PPO clip fraction (share of
ratios outside [1 - clip, 1 + clip], mean over epochs; 0 for REINFORCE), and the mean
reward and baseline.
"""

from __future__ import annotations

import copy
import math

import torch

from nas_engine.strategies.base import Fidelity, Setting, Strategy, UpdateStats
from nas_engine.strategies.controller import Controller

PG_SETTINGS = {
    "lr": Setting(0.00035, float, low=0.0, low_open=True),
    "entropy_weight": Setting(0.00001, float, low=0.0),
    "baseline_decay": Setting(0.95, float, low=0.0, high=1.0, high_open=True),
    "batch_size": Setting(20, int, low=1),
    "hidden_size": Setting(100, int, low=1, high=4096),
    "init_range": Setting(0.1, float, low=0.0, low_open=True),
    "temperature": Setting(None, float, low=0.0, low_open=True, optional=True),
    "tanh_constant": Setting(None, float, low=0.0, low_open=True, optional=True),
}


class PolicyGradient(Strategy):
    """Controller, Adam, EMA baseline and minibatch buffer; subclasses define `_optimise`."""

    SETTINGS = PG_SETTINGS

    def __init__(self, space, settings=None, seed=0):
        super().__init__(space, settings, seed)
        s = self.settings
        self._generator = torch.Generator().manual_seed(self.seed)
        self.controller = Controller(
            self.sizes,
            hidden_size=s["hidden_size"],
            init_range=s["init_range"],
            temperature=s["temperature"],
            tanh_constant=s["tanh_constant"],
            generator=self._generator,
        )
        self.optimizer = torch.optim.Adam(self.controller.parameters(), lr=s["lr"])
        self._baseline: float | None = None
        self._final_var = 0.0  # EMA variance of final rewards told with a fidelity ("normalised")
        self._rungs: dict[int, tuple[float, float]] = {}  # decision epoch -> EMA mean and variance
        self._buffer: list[dict] = []  # told, not yet used: decisions, log_prob, reward, advantage
        self._updates = 0

    # -- ask / tell ---------------------------------------------------------------------------
    def _propose(self, n: int) -> list[tuple[list[int], dict]]:
        if n == 0:
            return []
        decisions, log_prob = self.controller.sample(n, self._generator)
        return [(row, {"log_prob": lp}) for row, lp in zip(decisions.tolist(), log_prob.tolist())]

    def _observe(self, proposal_id: int, entry: dict, reward: float) -> UpdateStats | None:
        advantage = 0.0 if self._baseline is None else reward - self._baseline
        decay = self.settings["baseline_decay"]
        self._baseline = reward if self._baseline is None else decay * self._baseline + (1 - decay) * reward
        return self._push(entry, reward, advantage)

    def _observe_fidelity(self, proposal_id: int, entry: dict, reward: float, fidelity: Fidelity):
        mode = fidelity.stopped_reward
        if not fidelity.stopped:
            if self._baseline is not None:
                self._final_var = _ema(self._baseline, self._final_var, reward, self.settings["baseline_decay"])[1]
            self._record_rungs(fidelity)
            return self._observe(proposal_id, entry, reward)
        if mode == "drop":
            return None
        mean, var = self._rungs.get(fidelity.epochs, (None, 0.0))
        advantage = 0.0 if mean is None else reward - mean
        if mode == "normalised" and var > 0 and self._final_var > 0:
            advantage *= math.sqrt(self._final_var / var)
        self._record_rungs(fidelity)
        return self._push(entry, reward, advantage)

    def _record_rungs(self, fidelity: Fidelity) -> None:
        decay = self.settings["baseline_decay"]
        for epoch, value in fidelity.rungs:
            mean, var = self._rungs.get(epoch, (None, 0.0))
            self._rungs[epoch] = (value, 0.0) if mean is None else _ema(mean, var, value, decay)

    def _push(self, entry: dict, reward: float, advantage: float) -> UpdateStats | None:
        self._buffer.append(
            {
                "decisions": list(entry["decisions"]),
                "log_prob": entry["log_prob"],
                "reward": reward,
                "advantage": advantage,
            }
        )
        size = self.settings["batch_size"]
        if len(self._buffer) < size:
            return None
        batch, self._buffer = self._buffer[:size], self._buffer[size:]
        return self._update(batch)

    # -- the update -----------------------------------------------------------------------------
    def _update(self, batch: list[dict]) -> UpdateStats:
        decisions = torch.tensor([b["decisions"] for b in batch], dtype=torch.long)
        old_log_prob = torch.tensor([b["log_prob"] for b in batch], dtype=torch.float32)
        advantage = torch.tensor([b["advantage"] for b in batch], dtype=torch.float32)
        loss, clip_fraction = self._optimise(decisions, old_log_prob, advantage)
        self._updates += 1
        with torch.no_grad():
            log_prob, entropy, probs = self.controller.evaluate(decisions)
            log_ratio = log_prob - old_log_prob
            approx_kl = (log_ratio.exp() - 1 - log_ratio).mean().item()
        return UpdateStats(
            step=self._updates,
            loss=loss,
            entropy=entropy.mean().item(),
            mean_reward=sum(b["reward"] for b in batch) / len(batch),
            baseline=self._baseline,
            approx_kl=approx_kl,
            clip_fraction=clip_fraction,
            policy=self.controller.marginals(probs),
        )

    def _step(self, loss: torch.Tensor) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()

    def _optimise(self, decisions, old_log_prob, advantage) -> tuple[float, float]:
        """Update the controller on one minibatch; return (mean loss, clip fraction)."""
        raise NotImplementedError

    # -- state ------------------------------------------------------------------------------------
    def _state(self) -> dict:
        return {
            "controller": {k: v.detach().clone() for k, v in self.controller.state_dict().items()},
            "optimizer": copy.deepcopy(self.optimizer.state_dict()),
            "generator": self._generator.get_state(),
            "baseline": self._baseline,
            "final_var": self._final_var,
            "rungs": {epoch: list(stats) for epoch, stats in self._rungs.items()},
            "buffer": copy.deepcopy(self._buffer),
            "updates": self._updates,
        }

    def _load_state(self, state: dict) -> None:
        self.controller.load_state_dict(state["controller"])
        self.optimizer.load_state_dict(copy.deepcopy(state["optimizer"]))
        self._generator.set_state(state["generator"])
        self._baseline = None if state["baseline"] is None else float(state["baseline"])
        # Checkpoints written before early stopping have neither: nothing was told at a rung.
        self._final_var = float(state.get("final_var", 0.0))
        self._rungs = {int(e): (float(m), float(v)) for e, (m, v) in state.get("rungs", {}).items()}
        self._buffer = copy.deepcopy(state["buffer"])
        self._updates = int(state["updates"])
        if not all(isinstance(entry.get("log_prob"), float) for entry in self._pending.values()):
            raise ValueError("a pending proposal lacks its sampling-time log_prob")


def _ema(mean: float, var: float, value: float, decay: float) -> tuple[float, float]:
    """An exponentially weighted mean and variance, updated with `value` (Finch 2009)."""
    delta = value - mean
    return mean + (1 - decay) * delta, decay * (var + (1 - decay) * delta * delta)


class Reinforce(PolicyGradient):
    """Plain policy gradient with the EMA baseline (Zoph & Le 2017)."""

    name = "reinforce"

    def _optimise(self, decisions, old_log_prob, advantage) -> tuple[float, float]:
        log_prob, entropy, _ = self.controller.evaluate(decisions)
        loss = -(advantage * log_prob).mean() - self.settings["entropy_weight"] * entropy.mean()
        self._step(loss)
        return loss.item(), 0.0


class PPO(PolicyGradient):
    """Clipped-surrogate PPO (Schulman et al. 2017), as the NASNet paper trains its controller."""

    name = "ppo"
    SETTINGS = {
        **PG_SETTINGS,
        "clip": Setting(0.2, float, low=0.0, high=1.0, low_open=True, high_open=True),
        "epochs": Setting(4, int, low=1, high=100),
    }

    def _optimise(self, decisions, old_log_prob, advantage) -> tuple[float, float]:
        clip = self.settings["clip"]
        losses, clipped = [], []
        for _ in range(self.settings["epochs"]):
            log_prob, entropy, _ = self.controller.evaluate(decisions)
            ratio = torch.exp(log_prob - old_log_prob)
            surrogate = torch.min(ratio * advantage, ratio.clamp(1 - clip, 1 + clip) * advantage)
            loss = -surrogate.mean() - self.settings["entropy_weight"] * entropy.mean()
            self._step(loss)
            losses.append(loss.item())
            clipped.append(((ratio - 1).abs() > clip).float().mean().item())
        return sum(losses) / len(losses), sum(clipped) / len(clipped)
