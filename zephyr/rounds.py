"""Iterative rounds of AIF + dDPO (`rounds: N` in a pipeline file, or `zephyr run ... --rounds N`).

Round 1 is the pipeline as written. Round k (2..N) repeats its aif and dpo stages on the newest policy:

- `aif_r<k>`: the aif stage's recipe and overrides, with every value naming the model dDPO starts from (the
  dSFT model: the generator that samples the policy) replaced by round k-1's dDPO model, so the policy answers
  next to the fixed generators; output in `<dpo output's parent>/round<k>/aif`.
- `dpo_r<k>`: the dpo stage's, training round k-1's policy on round k's pairs, output in `.../round<k>/dpo`.
  Its reference is round k-1's policy (`reference: previous`, the default: the usual iterative DPO) or the
  model round 1 started from (`reference: sft`).
- eval: each round's model joins the models the eval compares (`<name>_r<k>`, next to round 1's), so the
  table, the intervals and the plot cover every round.

Nothing about round 1 changes: adding rounds to a finished run runs only the new stages and the eval.
"""

from __future__ import annotations

import dataclasses
import json
import posixpath
from dataclasses import dataclass
from typing import Any

from zephyr.recipe import RecipeError


@dataclass(frozen=True)
class Rounds:
    count: int = 1
    reference: str = "previous"

    @classmethod
    def parse(cls, value: Any, where: str) -> Rounds:
        """`rounds: 2` or `rounds: {count: 2, reference: previous|sft}`."""
        if value is None:
            return cls()
        raw = {"count": value} if isinstance(value, int) and not isinstance(value, bool) else value
        if not isinstance(raw, dict) or set(raw) - {"count", "reference"}:
            raise RecipeError(f"{where}: rounds: expected a number or {{count: N, reference: previous|sft}}, got "
                              f"{value!r}")
        count, reference = raw.get("count", 1), raw.get("reference", "previous")
        if not isinstance(count, int) or isinstance(count, bool) or count < 1:
            raise RecipeError(f"{where}: rounds.count: expected a whole number >= 1, got {count!r}")
        if reference not in ("previous", "sft"):
            raise RecipeError(f"{where}: rounds.reference: expected previous or sft, got {reference!r}")
        return cls(count, reference)


def round_dir(output: str, k: int) -> str:
    """`outputs/tiny/dpo` -> `outputs/tiny/round2/dpo` (also for `${root}/dpo`)."""
    return posixpath.join(posixpath.dirname(output), f"round{k}", posixpath.basename(output))


def _wiring(stage: dict[str, Any], view: str, key: str, name: str, where: str) -> str:
    value = stage[view].get(key)
    if not isinstance(value, str):
        raise RecipeError(f"{where}: rounds: the {name} stage's overrides must set {key} (rounds repeat the stage "
                          "with it pointed at each round's folders)")
    return value


def _round_stage(stage: dict[str, Any], view: str, swap: dict[str, str], set_: dict[str, Any],
                 drop: tuple[str, ...] = ()) -> dict[str, Any]:
    values = {k: swap.get(v, v) if isinstance(v, str) else v for k, v in stage[view].items() if k not in drop}
    return {**values, **set_}


def add_rounds(stages: dict[str, dict[str, Any]], rounds: Rounds, where: str) -> list[str]:
    """Add the stages of rounds 2..N to `stages` (resolved pipeline stages) and return their names, in order."""
    if rounds.count == 1:
        return []
    if "aif" not in stages or "dpo" not in stages:
        raise RecipeError(f"{where}: rounds: {rounds.count} needs an aif and a dpo stage to repeat")
    aif, dpo = stages["aif"], stages["dpo"]
    names = []
    # each key twice: the overrides as run (root written out) and as hashed (root left as ${root})
    for view in ("overrides", "identity"):
        start = _wiring(dpo, view, "model_name_or_path", "dpo", where)
        first, pairs = _wiring(dpo, view, "output_dir", "dpo", where), _wiring(aif, view, "output_dir", "aif", where)
        policy = first  # the newest policy: round k-1's
        for k in range(2, rounds.count + 1):
            new_pairs, new_policy = round_dir(pairs, k), round_dir(first, k)
            reference = {"ref_model_name_or_path": start} if rounds.reference == "sft" else {}
            aif_k = _round_stage(aif, view, {start: policy}, {"output_dir": new_pairs})
            dpo_k = _round_stage(dpo, view, {pairs: new_pairs}, {"model_name_or_path": policy,
                                                                  "output_dir": new_policy, **reference},
                                 drop=("ref_model_name_or_path",))
            for name, kind, values in ((f"aif_r{k}", "aif", aif_k), (f"dpo_r{k}", "dpo", dpo_k)):
                base = aif if kind == "aif" else dpo
                stages.setdefault(name, {"recipe": base["recipe"], "launch": base["launch"], "kind": kind})
                stages[name][view] = values
                if view == "overrides":
                    names.append(name)
            policy = new_policy
    return names


def eval_models_override(models: list[Any], policy_dir: str, rounds: Rounds) -> str:
    """The eval's `models` list with each later round's policy added after round 1's (found by its folder), as
    an override value."""
    index = next((i for i, m in enumerate(models) if m.model == policy_dir), None)
    if index is None:
        raise RecipeError(f"rounds: the eval stage has no model at the dpo stage's output {policy_dir}: add it "
                          "to the eval's models so each round can be compared with it")
    first = models[index]
    later = [dataclasses.replace(first, name=f"{first.name}_r{k}", model=round_dir(policy_dir, k))
             for k in range(2, rounds.count + 1)]
    fields = [f.name for f in dataclasses.fields(first) if f.init]
    return json.dumps([{f: getattr(m, f) for f in fields} for m in [*models, *later]])
