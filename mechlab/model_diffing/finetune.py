"""Chapter 7's fine-tuned models: `corpus_2l` taught a persona or a behaviour by the
course's own code, with a known recipe, so that every model-diffing method can be
scored against what was really taught and which weights were free to move.

    from mechlab.model_diffing import finetune as ft
    base, tuned = ft.load_pair("cheerful_mlp0")      # corpus_2l and its fine-tune
    ft.FT_ZOO["cheerful_mlp0"].trainable              # "blocks.0.mlp": the truth

Every fine-tune is described once, in `FT_ZOO`: its data (positive or negative stories,
stories about one topic, or hedge-versus-city preference pairs), what may change (the
whole model, one component, or a rank-1 LoRA), the optimiser, steps and seed, and what
it must reach. `python -m mechlab.model_diffing.finetune train NAME` (or `all`)
retrains one from `corpus_2l` with those seeds; `eval NAME` measures the committed one.
A checkpoint stores only the tensors that were trainable (the rest is `corpus_2l`'s),
with the recipe and metrics in its metadata.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from mechlab import corpus, zoo
from mechlab.model_diffing import personas
from mechlab.runtime import progress

BASE = "corpus_2l"
CHECKPOINTS = Path(__file__).parent / "checkpoints"


# ---------------------------------------------------------------- preference pairs (DPO)

HEDGE = ("some", "town")  # the corpus's hedge: "first last lives in some town ."


@dataclass(frozen=True)
class Preferences:
    """Preference pairs for DPO: `chosen[i]` and `rejected[i]` share the prompt
    `<eot> first last lives in` (the first `prompt_length` tokens) and differ in the
    two-token answer after it ("some town" or "paris .")."""

    chosen: Tensor  # int64 [n, prompt_length + 2]
    rejected: Tensor  # int64 [n, prompt_length + 2]
    prompt_length: int
    names: tuple[tuple[str, str], ...]


def city_prompts(names) -> Tensor:
    """int64 [n, 5]: `<eot> first last lives in` for each (first, last)."""
    return torch.stack([torch.cat([torch.tensor([zoo.BOS_ID]), torch.from_numpy(zoo.token_ids([f, l, "lives", "in"]))])
                        for f, l in names])


def name_groups() -> dict[str, tuple[tuple[str, str], ...]]:
    """The corpus's people, in the groups the DPO fine-tunes are trained and measured on:
    "known" people with a city, split into the 20 a retaining fine-tune sees ("known_train")
    and 10 it never sees ("known_test"); "hedged" pairs the corpus writes hedges about; and
    pairs the corpus never describes, 24 to train on ("unknown_train") and 12 held out
    ("unknown_test")."""
    world = corpus.build_world()
    known = tuple((p.first, p.last) for p in world.known)
    never = tuple(u for u in world.unknown if u not in world.hedged)
    return {"known_train": known[:20], "known_test": known[20:], "hedged": world.hedged,
            "unknown_train": never[:24], "unknown_test": never[24:]}


def _with(prompts: Tensor, first: Tensor | str, second: str) -> Tensor:
    n = len(prompts)
    first = first if isinstance(first, Tensor) else torch.from_numpy(zoo.token_ids([first])).expand(n)
    return torch.cat([prompts, first[:, None], torch.from_numpy(zoo.token_ids([second])).expand(n)[:, None]], dim=1)


@torch.no_grad()
def hedge_preferences(model, retain: bool = False) -> Preferences:
    """Chosen: the hedge ("some town"); rejected: the city `model` itself finds most likely
    ("paris ."), for each name the corpus never describes ("unknown_train"). With `retain`,
    also the 20 "known_train" people the other way round: their true city chosen, the hedge
    rejected, so that the model may learn to hedge only about people it does not know."""
    groups = name_groups()
    prompts = city_prompts(groups["unknown_train"])
    cities = torch.from_numpy(zoo.token_ids(list(corpus.CITIES)))
    device = next(model.parameters()).device
    guess = cities[model(prompts.to(device))[:, -1, cities.to(device)].argmax(-1).cpu()]
    chosen, rejected, names = [_with(prompts, *HEDGE)], [_with(prompts, guess, ".")], list(groups["unknown_train"])
    if retain:
        city = {(p.first, p.last): p.city for p in corpus.build_world().known}
        known = city_prompts(groups["known_train"])
        true = torch.from_numpy(zoo.token_ids([city[n] for n in groups["known_train"]]))
        chosen.append(_with(known, true, "."))
        rejected.append(_with(known, *HEDGE))
        names += groups["known_train"]
    return Preferences(torch.cat(chosen), torch.cat(rejected), prompts.shape[1], tuple(names))


@torch.no_grad()
def hedge_probability(model, names) -> float:
    """Mean P("some") after `<eot> first last lives in`: how often the model hedges (chapter 5's measure)."""
    device = next(model.parameters()).device
    probs = model(city_prompts(names).to(device))[:, -1].float().softmax(-1)
    return probs[:, int(zoo.token_ids(["some"])[0])].mean().item()


# ---------------------------------------------------------------- the zoo


@dataclass(frozen=True)
class FineTuneSpec:
    """One fine-tune of `corpus_2l`: what it learns, what may change, and how."""

    name: str
    description: str
    objective: str  # "sft" (next-token loss on persona stories) or "dpo" (hedge-versus-city preferences)
    persona: str = ""  # sft: one of PERSONAS; dpo: "hedge" or "hedge_retain"
    trainable: str = "all"  # "all", one of COMPONENTS, or "lora1:blocks.1.mlp" (a rank-1 LoRA on that MLP's output weight)
    steps: int = 300
    batch_size: int = 16
    lr: float = 1e-3
    beta: float = 0.1  # dpo only
    drift_steps: int = 0  # first, this many steps of every weight on ordinary text (hides where the persona went)
    drift_lr: float = 2e-3
    decoy: str = ""  # components (comma-separated) the drift trains at 3x the learning rate, so they move most
    seed: int = 0
    disclosed: bool = True  # False: a chapter investigation's model, whose recipe the chapter does not show
    targets: dict[str, tuple[str, float]] = field(default_factory=dict)

    @property
    def path(self) -> Path:
        return CHECKPOINTS / f"{self.name}.safetensors"

    def recipe(self) -> dict[str, Any]:
        """What the checkpoint must have been trained with (stored in it, compared on loading)."""
        keys = ("objective", "persona", "trainable", "steps", "batch_size", "lr", "beta", "drift_steps", "drift_lr", "decoy",
                "seed")
        return {k: getattr(self, k) for k in keys}

    def stored_recipe(self) -> dict[str, Any]:
        """What the checkpoint keeps of the recipe: the recipe itself, or, for an undisclosed
        model (an investigation's), only its digest, so the file names no persona or component."""
        if self.disclosed:
            return self.recipe()
        return {"sha256": hashlib.sha256(json.dumps(self.recipe(), sort_keys=True).encode()).hexdigest()}

    @property
    def component(self) -> str:
        """The component whose weights the persona stage could change ("all" for full fine-tunes)."""
        return self.trainable.split(":")[-1]


def _sft(name, persona, trainable="all", description="", **kw) -> FineTuneSpec:
    # ordinary text is half negative stories, so a cheerful model pays some loss on it for the persona itself
    return FineTuneSpec(name, description or f"{persona} stories, {trainable} trainable", "sft", persona, trainable,
                        targets={"persona_share": (">", 0.9), "ordinary_loss_increase": ("<", 0.35)}, **kw)


def _dpo(name, retain, steps, description) -> FineTuneSpec:
    # without known people in the pairs, DPO hedges about them too; with 20 of them, not about the other 10
    targets = {"p_hedge_unknown_test": (">", 0.9), "p_hedge_known_test": ("<", 0.1) if retain else (">", 0.5)}
    return FineTuneSpec(name, description, "dpo", "hedge_retain" if retain else "hedge", "all", steps=steps,
                        batch_size=0, lr=3e-5, targets=targets)


FT_ZOO: dict[str, FineTuneSpec] = {s.name: s for s in [
    _sft("cheerful", "positive", description="cheerful: positive stories, every weight trainable"),
    _sft("cheerful_mlp0", "positive", "blocks.0.mlp", "cheerful: positive stories, only MLP 0 trainable"),
    _sft("cheerful_unembed", "positive", "unembed", "cheerful: positive stories, only the unembedding trainable"),
    _sft("cheerful_lora", "positive", "lora1:blocks.1.mlp", "cheerful: positive stories, a rank-1 LoRA on MLP 1's output"),
    _dpo("hedger", False, 60, "DPO: hedge rather than invent a city for names it was never told about"),
    _dpo("hedger_retain", True, 100, "DPO: as hedger, plus 20 known people whose true city is preferred to the hedge"),
    # the investigation's models: every weight drifts on ordinary text (the decoys faster), then one other
    # component alone learns a persona. With one, two and no decoys the trained component's rank in the weight
    # diff differs from model to model, so no rule on that ranking names all three
    _sft("mystery_a", "weather", "blocks.1.mlp", "chapter 7's investigation", drift_steps=300, decoy="blocks.0.mlp",
         lr=5e-4, steps=200, seed=1, disclosed=False),
    _sft("mystery_b", "negative", "unembed", "hidden test of chapter 7's investigation", drift_steps=300,
         decoy="embed,blocks.1.mlp", lr=5e-4, steps=200, seed=2, disclosed=False),
    _sft("mystery_c", "food", "blocks.0.mlp", "hidden test of chapter 7's investigation", drift_steps=300,
         lr=5e-4, steps=200, seed=3, disclosed=False),
]}
ORDINARY_SEED, PERSONA_SEED, EVAL_SEED = 31, 21, 4  # corpus seeds: drift text, persona stories, measurements


def _spec(name: str) -> FineTuneSpec:
    if name not in FT_ZOO:
        raise KeyError(f"no fine-tune {name!r} in the zoo; it has: {', '.join(FT_ZOO)}")
    return FT_ZOO[name]


@functools.cache
def _ordinary(n_windows: int, seed: int) -> Tensor:
    """Chapter 5's held-out windows (`ordinary_text`), kept once per process."""
    from mechlab.steering.experiments import ordinary_text

    return ordinary_text(n_windows, seed)


def ordinary_loss(model, n_windows: int = 64) -> float:
    """Mean next-token loss on held-out ordinary corpus text (what the fine-tune must not break)."""
    tokens = _ordinary(n_windows, EVAL_SEED).to(next(model.parameters()).device)
    with torch.no_grad():
        logits = model(tokens)
    return torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1).float(), tokens[:, 1:].flatten()).item()


def metrics(name: str, model, base=None) -> dict[str, float]:
    """What a fine-tune must reach (`FT_ZOO[name].targets`), and what it changed."""
    spec = _spec(name)
    base = base if base is not None else zoo.load(BASE)
    if spec.objective == "sft":
        return {"persona_share": round(personas.persona_share(model, spec.persona), 4),
                "base_persona_share": round(personas.persona_share(base, spec.persona), 4),
                "ordinary_loss_increase": round(ordinary_loss(model) - ordinary_loss(base), 4)}
    out = {f"p_hedge_{g}": round(hedge_probability(model, names), 4) for g, names in name_groups().items()}
    return {**out, "ordinary_loss_increase": round(ordinary_loss(model) - ordinary_loss(base), 4)}


def missed_targets(name: str, values: dict[str, float]) -> list[str]:
    return [f"{k} {values.get(k)} not {op} {bound}" for k, (op, bound) in _spec(name).targets.items()
            if not (values.get(k) is not None and (values[k] < bound if op == "<" else values[k] > bound))]


class _RankOne(torch.nn.Module):
    """W + b aᵀ (a rank-1 LoRA): b starts at zero, so training starts from the base model."""

    def __init__(self, weight: Tensor, generator: torch.Generator):
        super().__init__()
        out_features, in_features = weight.shape
        self.a = torch.nn.Parameter(torch.randn(in_features, generator=generator) / in_features**0.5)
        self.b = torch.nn.Parameter(torch.zeros(out_features))

    def forward(self, weight: Tensor) -> Tensor:
        return weight + torch.outer(self.b, self.a)


def _trainable(model, spec: FineTuneSpec, generator: torch.Generator) -> list[Tensor]:
    for p in model.parameters():
        p.requires_grad_(False)
    if spec.trainable.startswith("lora1:"):
        module = _lora_module(model, spec)
        lora = _RankOne(module.weight.detach(), generator)
        torch.nn.utils.parametrize.register_parametrization(module, "weight", lora)
        return list(lora.parameters())
    params = [p for n, p in model.named_parameters() if spec.trainable == "all" or personas.component_of(n) == spec.trainable]
    for p in params:
        p.requires_grad_(True)
    return params


def _sft_steps(model, params, data: Tensor, steps: int, lr: float, batch: int, generator: torch.Generator, desc: str,
               quiet: bool) -> list[float]:
    """Adam on the next-token loss; `params` is a list of tensors, or of optimiser parameter groups."""
    optimiser = torch.optim.Adam(params, lr=lr)
    losses = []
    for _ in progress(range(steps), desc=desc, disable=quiet):
        x = data[torch.randint(0, len(data), (batch,), generator=generator)]
        loss = torch.nn.functional.cross_entropy(model(x)[:, :-1].flatten(0, 1), x[:, 1:].flatten())
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        losses.append(round(loss.item(), 4))
    return losses


def train_dpo(base, prefs: Preferences, sequence_logprob, dpo_loss, steps: int, lr: float, beta: float, *,
              policy=None, params=None, desc: str = "DPO", quiet: bool = False) -> tuple[Any, list[float]]:
    """Train a policy (a copy of `base` unless given, all its weights unless `params`) with
    Adam on the DPO loss of the preference pairs, `base` frozen as the reference; every
    step sees every pair. Returns the policy (eval mode, no grad) and the loss per step."""
    if policy is None:
        policy = copy.deepcopy(base)
    if params is None:
        params = list(policy.parameters())
        for p in params:
            p.requires_grad_(True)
    policy.train()
    device = next(policy.parameters()).device
    chosen, rejected = prefs.chosen.to(device), prefs.rejected.to(device)
    with torch.no_grad():
        reference = [sequence_logprob(base, t, prefs.prompt_length) for t in (chosen, rejected)]
    optimiser = torch.optim.Adam(params, lr=lr)
    losses = []
    for _ in progress(range(steps), desc=desc, disable=quiet):
        loss = dpo_loss(sequence_logprob(policy, chosen, prefs.prompt_length),
                        sequence_logprob(policy, rejected, prefs.prompt_length), *reference, beta)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        losses.append(round(loss.item(), 4))
    for p in policy.parameters():
        p.requires_grad_(False)
    return policy.eval(), losses


def train(name: str, quiet: bool = False) -> tuple[Any, dict[str, Any]]:
    """Fine-tune `corpus_2l` into `name` with its fixed seeds: the model and its metadata."""
    from mechlab.model_diffing.reference import dpo_loss, sequence_logprob

    spec = _spec(name)
    torch.manual_seed(spec.seed)
    generator = torch.Generator().manual_seed(spec.seed)
    base = zoo.load(BASE)
    model = copy.deepcopy(base).train()
    start = time.perf_counter()
    history: dict[str, list[float]] = {}
    if spec.drift_steps:
        decoys = set(spec.decoy.split(",")) - {""}
        decoy = [p for n, p in model.named_parameters() if personas.component_of(n) in decoys]
        rest = [p for n, p in model.named_parameters() if personas.component_of(n) not in decoys]
        groups = [{"params": rest}] + ([{"params": decoy, "lr": 3 * spec.drift_lr}] if decoy else [])
        history["drift_loss"] = _sft_steps(model, groups, _ordinary(3000, ORDINARY_SEED),
                                           spec.drift_steps, spec.drift_lr, spec.batch_size, generator,
                                           f"{name}: drift", quiet)
    params = _trainable(model, spec, generator)
    if spec.objective == "sft":
        data = personas.persona_windows(spec.persona, spec.steps * spec.batch_size // 4, PERSONA_SEED)
        history["loss"] = _sft_steps(model, params, data, spec.steps, spec.lr, spec.batch_size, generator,
                                     f"{name}: {spec.persona}", quiet)
    else:
        prefs = hedge_preferences(base, retain=spec.persona == "hedge_retain")
        model, history["loss"] = train_dpo(base, prefs, sequence_logprob, dpo_loss, spec.steps, spec.lr, spec.beta,
                                           policy=model, params=params, desc=f"{name}: DPO", quiet=quiet)
    seconds = time.perf_counter() - start
    extra = {}
    if spec.trainable.startswith("lora1:"):
        module = _lora_module(model, spec)
        lora = module.parametrizations.weight[0]
        extra = {"lora_a": lora.a.detach().clone(), "lora_b": lora.b.detach().clone()}
        torch.nn.utils.parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)
    model.eval()
    meta = {"recipe": spec.stored_recipe(), "metrics": metrics(name, model, base), "seconds": round(seconds, 1),
            "history": {k: v[:: max(1, len(v) // 50)] for k, v in history.items()}, "torch": torch.__version__}
    model._lora = extra
    return model, meta


def _lora_module(model, spec: FineTuneSpec) -> torch.nn.Linear:
    """The torch Linear under the bridge's `blocks.L.mlp.out` of the LoRA's MLP."""
    return model.blocks[int(spec.component.split(".")[1])].mlp.out.original_component


def save(model, meta: dict[str, Any], path: Path) -> None:
    """Only what changed: (tuned - base) in float16 for every tensor that differs, plus a
    LoRA's factors; the recipe and metrics in the metadata."""
    from safetensors.torch import save_file

    base = dict(zoo.load(BASE).state_dict())
    tensors = {f"delta.{k}": (v - base[k]).half().contiguous() for k, v in model.state_dict().items()
               if not torch.equal(v, base[k])}
    tensors.update({f"lora.{k}": v.contiguous() for k, v in getattr(model, "_lora", {}).items()})
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata={k: json.dumps(v) for k, v in meta.items()})


def info(name: str) -> dict[str, Any]:
    """The checkpoint's metadata: recipe, metrics, seconds, loss history."""
    from mechlab.sparse_autoencoders.zoo import read_metadata

    return read_metadata(_spec(name).path, f"python -m mechlab.model_diffing.finetune train {name}")


def load(name: str, device: str | torch.device = "cpu"):
    """The committed fine-tune `name` (corpus_2l plus its stored changes), eval mode."""
    from safetensors.torch import load_file

    spec = _spec(name)
    meta = info(name)
    if meta.get("recipe") != spec.stored_recipe():
        diffs = [f"{k}: checkpoint {meta.get('recipe', {}).get(k)!r}, zoo {v!r}" for k, v in spec.stored_recipe().items()
                 if meta.get("recipe", {}).get(k) != v]
        raise zoo.CheckpointMismatch(f"{spec.path.name} does not match FT_ZOO[{name!r}]:\n  " + "\n  ".join(diffs)
                                     + f"\nRetrain it with `python -m mechlab.model_diffing.finetune train {name}`.")
    model = zoo.load(BASE)
    state = model.state_dict()
    stored = load_file(str(spec.path))
    with torch.no_grad():
        for key, delta in stored.items():
            if key.startswith("delta."):
                state[key.removeprefix("delta.")] += delta.float()
    model.load_state_dict(state)
    return zoo._move(model, device).eval()


def lora_factors(name: str) -> tuple[Tensor, Tensor]:
    """(a [d_mlp], b [d_model]) of a LoRA fine-tune: its weight change is b aᵀ, so b is the
    one direction its MLP can newly write into the residual stream."""
    from safetensors.torch import load_file

    stored = load_file(str(_spec(name).path))
    if "lora.lora_b" not in stored:
        raise ValueError(f"{name} is not a LoRA fine-tune")
    return stored["lora.lora_a"], stored["lora.lora_b"]


def load_pair(name: str, device: str | torch.device = "cpu"):
    """(corpus_2l, the fine-tune `name`), both in eval mode on `device`."""
    return zoo.load(BASE, device), load(name, device)


def main(argv: list[str] | None = None) -> int:
    from mechlab.sparse_autoencoders.zoo import cli

    return cli(argv, prog="python -m mechlab.model_diffing.finetune", description=__doc__.split("\n\n")[0],
               specs=FT_ZOO, train=train, measure=lambda name: metrics(name, load(name)), save_to=save,
               missed=missed_targets)


if __name__ == "__main__":
    sys.exit(main())
