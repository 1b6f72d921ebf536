"""Chapter 4's checks: each hidden test fails a plausible wrong answer and says why, and
accepts correct answers written differently (tests/test_exercise_checks.py covers the rest)."""

from __future__ import annotations

import collections

import pytest
import torch

from conftest import as_learner, check_tests
from mechlab.checks import CheckFailed, course_model
from mechlab.sparse_autoencoders import checks
from mechlab.sparse_autoencoders import reference as ref

EXERCISES = ref.__all__


# ---------------------------------------------------------------- mutants: plausible wrong answers


def collect_keeps_graph(model, tokens, hook_name):
    stored = {}
    model.run_with_hooks(tokens, fwd_hooks=[(hook_name, lambda a, hook: stored.setdefault("a", a))])
    return stored["a"].float().cpu()


def collect_last_layer(model, tokens, hook_name):
    return ref.collect_activations(model, tokens, f"blocks.{model.cfg.n_layers - 1}.hook_resid_post")


def collect_whole_cache(model, tokens, hook_name):
    with torch.no_grad():
        return model.run_with_cache(tokens)[1]


def scale_without_d_model(acts):
    return (1 / acts.pow(2).sum(-1).mean()).sqrt().item()


def scale_from_mean_norm(acts):
    return acts.shape[-1] ** 0.5 / acts.norm(dim=-1).mean().item()


def scale_as_tensor(acts):
    return (acts.shape[-1] / acts.pow(2).sum(-1).mean()).sqrt()


def relu_loss_unweighted(x, latents, reconstruction, W_dec, l1_coeff):
    return ((reconstruction - x).pow(2).sum(-1) + l1_coeff * latents.sum(-1)).mean()


def relu_loss_mean_entries(x, latents, reconstruction, W_dec, l1_coeff):
    return (reconstruction - x).pow(2).mean() + l1_coeff * (latents * W_dec.norm(dim=-1)).sum(-1).mean()


def relu_loss_detached(x, latents, reconstruction, W_dec, l1_coeff):
    return ref.relu_sae_loss(x, latents, reconstruction, W_dec, l1_coeff).detach()


def topk_without_relu(pre, k):
    top = pre.topk(min(k, pre.shape[-1]), dim=-1)
    return torch.zeros_like(pre).scatter(-1, top.indices, top.values)


def topk_over_batch(pre, k):
    return torch.relu(pre) * (pre >= pre.topk(min(k, pre.shape[0]), dim=0).values[-1:])


def topk_no_grad(pre, k):
    with torch.no_grad():
        return ref.topk_activation(pre, k)


def auxk_all_latents(residual, pre, W_dec, dead_mask, k_aux):
    return (residual - ref.topk_activation(pre, k_aux) @ W_dec).pow(2).sum(-1).mean()


def auxk_float_zero(residual, pre, W_dec, dead_mask, k_aux):
    return ref.auxk_loss(residual, pre, W_dec, dead_mask, k_aux) if dead_mask.any() else 0.0


def auxk_mean_entries(residual, pre, W_dec, dead_mask, k_aux):
    return ref.auxk_loss(residual, pre, W_dec, dead_mask, k_aux) / residual.shape[-1]


def _jump_function(threshold_factor: bool = True, pre_grad: str = "step", reduce: str = "sum", strict: bool = True):
    class JumpReLU(torch.autograd.Function):
        @staticmethod
        def forward(ctx, pre, threshold, bandwidth):
            ctx.save_for_backward(pre, threshold)
            ctx.bandwidth = bandwidth
            return pre * ((pre > threshold) if strict else (pre >= threshold))

        @staticmethod
        def backward(ctx, g):
            pre, threshold = ctx.saved_tensors
            window = ((pre - threshold).abs() < ctx.bandwidth / 2).float()
            g_threshold = g * -((threshold if threshold_factor else 1.0) / ctx.bandwidth) * window
            g_pre = g * (pre > threshold) if pre_grad == "step" else g * (pre > 0)
            return g_pre, getattr(g_threshold, reduce)(0), None

    def jumprelu(pre, threshold, bandwidth):
        return JumpReLU.apply(pre, threshold, bandwidth)
    return jumprelu


jumprelu_no_threshold_factor = _jump_function(threshold_factor=False)
jumprelu_relu_gradient = _jump_function(pre_grad="relu")
jumprelu_mean_over_batch = _jump_function(reduce="mean")
jumprelu_not_strict = _jump_function(strict=False)
jumprelu_no_window_gradient = lambda pre, threshold, bandwidth: pre * (pre > threshold)  # noqa: E731


def _step_function(threshold_factor: bool = False):
    class Step(torch.autograd.Function):
        @staticmethod
        def forward(ctx, pre, threshold, bandwidth):
            ctx.save_for_backward(pre, threshold)
            ctx.bandwidth = bandwidth
            return (pre > threshold).float()

        @staticmethod
        def backward(ctx, g):
            pre, threshold = ctx.saved_tensors
            window = ((pre - threshold).abs() < ctx.bandwidth / 2).float()
            return None, (g * -((threshold if threshold_factor else 1.0) / ctx.bandwidth) * window).sum(0), None
    return Step


def l0_with_threshold_factor(pre, threshold, bandwidth):
    return _step_function(threshold_factor=True).apply(pre, threshold, bandwidth).sum(-1).mean()


def l0_summed_over_batch(pre, threshold, bandwidth):
    return _step_function().apply(pre, threshold, bandwidth).sum()


def l0_sigmoid_surrogate(pre, threshold, bandwidth):
    return torch.sigmoid((pre - threshold) / bandwidth).sum(-1).mean()


def _train_loop(new_optimiser_each_step=False, warmup=True, dead_in_steps=False, normalise=True, pass_dead=True,
                float64=False):
    def train_sae(sae, batches, *, steps, lr, warmup_steps, dead_after):
        optimizer = torch.optim.Adam(sae.parameters(), lr=lr)
        since = torch.zeros(sae.cfg.d_sae)
        history = {"loss": [], "mse": [], "l0": [], "dead_fraction": []}
        for step in range(steps):
            if new_optimiser_each_step:
                optimizer = torch.optim.Adam(sae.parameters(), lr=lr)
            for group in optimizer.param_groups:
                group["lr"] = lr * min(1.0, (step + 1) / warmup_steps) if warmup else lr
            x = next(batches)
            out = sae.loss(x, since >= dead_after if pass_dead else None)
            optimizer.zero_grad()
            out.loss.backward()
            optimizer.step()
            if normalise:
                sae.normalise_decoder()
            fired = (out.latents > 0).any(0)
            since = torch.where(fired, 0, since + (1 if dead_in_steps else len(x)))
            history["loss"].append(out.loss.item())
            history["mse"].append(out.mse.item())
            history["l0"].append((out.latents > 0).sum(-1).float().mean().item())
            history["dead_fraction"].append((since >= dead_after).float().mean().item())
        dtype = torch.float64 if float64 else torch.float32
        return {k: torch.tensor(v, dtype=dtype) for k, v in history.items()}
    return train_sae


train_new_optimiser_each_step = _train_loop(new_optimiser_each_step=True)
train_without_warmup = _train_loop(warmup=False)
train_dead_in_steps = _train_loop(dead_in_steps=True)
train_without_normalising = _train_loop(normalise=False)
train_without_dead_mask = _train_loop(pass_dead=False)
train_float64_history = _train_loop(float64=True)


def metrics_raw_variance(x, reconstruction, latents):
    l0, mse, _ = ref.reconstruction_metrics(x, reconstruction, latents)
    return l0, mse, (1 - (x - reconstruction).pow(2).sum(-1).mean() / x.pow(2).sum(-1).mean()).item()


def metrics_mean_entries(x, reconstruction, latents):
    l0, _, ev = ref.reconstruction_metrics(x, reconstruction, latents)
    return l0, (x - reconstruction).pow(2).mean().item(), ev


def metrics_as_tensors(x, reconstruction, latents):
    return tuple(torch.tensor(v) for v in ref.reconstruction_metrics(x, reconstruction, latents))


def ce_splices_bos(model, tokens, hook_name, reconstruct):
    return checks._ce_with_bos(model, tokens, hook_name, reconstruct)


def ce_recovered_inverted(model, tokens, hook_name, reconstruct):
    clean, sae, zero, recovered = ref.ce_loss_recovered(model, tokens, hook_name, reconstruct)
    return clean, sae, zero, 1 - recovered


def bias_inverted(x, reconstruction):
    return 1 / ref.relative_reconstruction_bias(x, reconstruction)


def top_rows_and_positions_swapped(acts, k):
    values, rows, positions = ref.top_activations(acts, k)
    return values, positions, rows


def top_in_increasing_order(acts, k):
    values, rows, positions = ref.top_activations(acts, k)
    return values.flip(0), rows.flip(0), positions.flip(0)


def detection_swapped(fires, labels):
    precision, recall, f1 = ref.detection_scores(fires, labels)
    return recall, precision, f1


def detection_with_nan(fires, labels):
    tp = (fires & labels[:, None]).sum(0).float()
    precision = tp / fires.sum(0).float()
    recall = tp / labels.sum().float()
    return precision, recall, 2 * precision * recall / (precision + recall)


def topk_without_k_check(pre, k):
    top = pre.topk(k, dim=-1)  # no min(k, d_sae): fails when k > d_sae
    return torch.zeros_like(pre).scatter(-1, top.indices, torch.relu(top.values))


def auxk_topk_before_masking(residual, pre, W_dec, dead_mask, k_aux):
    k = min(k_aux, int(dead_mask.sum()))
    if k == 0:
        return pre.new_zeros(())
    z = ref.topk_activation(pre, k) * dead_mask  # top k of all latents, then the live ones zeroed
    return (residual - z @ W_dec).pow(2).sum(-1).mean()


def bias_mean_of_ratios(x, reconstruction):
    return ((reconstruction * reconstruction).sum(-1) / (reconstruction * x).sum(-1)).mean().item()


class StepFunction(torch.autograd.Function):  # the name the check looks for beside jumprelu_l0
    @staticmethod
    def forward(ctx, pre, threshold, bandwidth):
        ctx.save_for_backward(pre, threshold)
        ctx.bandwidth = bandwidth
        return pre > threshold  # a bool tensor: autograd never calls backward

    @staticmethod
    def backward(ctx, grad_output):
        pre, threshold = ctx.saved_tensors
        in_window = (pre - threshold).abs() < ctx.bandwidth / 2
        return None, -(grad_output * in_window).sum(0) / ctx.bandwidth, None


def l0_bool_step(pre, threshold, bandwidth):
    return StepFunction.apply(pre, threshold, bandwidth).float().sum(-1).mean()


def _fact_fires(sae, store):
    x = store.window(slice(None))[:, :-1].reshape(-1, store.d_model) * sae.scale
    with torch.no_grad():
        return torch.cat([sae.encode(chunk) > 0 for chunk in x.split(8192)])


def _facts_by_word_class(sae, store, windows, columns: slice):
    from mechlab import corpus
    fires = _fact_fires(sae, store)
    word_class = torch.as_tensor(windows.labels["word_class"][:, columns]).reshape(-1)
    return {kind: int(ref.detection_scores(fires, word_class == corpus.WORD_CLASSES.index(kind))[2].argmax())
            for kind in ("city", "job", "pet")}


def facts_on_the_value_itself(sae, store, windows):
    return _facts_by_word_class(sae, store, windows, slice(1, -1))  # forgot that the value comes *next*


def facts_ids_from_one_sae(sae, store, windows):
    return {"city": 690, "job": 553, "pet": 473}  # right for topk_k8_w1024, read off the browser


def facts_most_frequent_latents(sae, store, windows):
    return dict(zip(("city", "job", "pet"), _fact_fires(sae, store).sum(0).topk(3).indices.tolist()))


def facts_by_logit_lens(sae, store, windows):
    from mechlab import corpus, zoo
    W_U = course_model("corpus_2l").W_U.detach()
    lens = sae.W_dec.detach() @ W_U
    answer = {}
    for kind in ("city", "job", "pet"):
        ids = zoo.token_ids([w for w, c in corpus.CLASS_OF.items() if corpus.WORD_CLASSES[c] == kind])
        answer[kind] = int(lens[:, torch.as_tensor(ids)].mean(1).argmax())
    return answer



def _splits(rows, n_splits, seed):
    """Random halves of the windows, as a boolean per position."""
    generator = torch.Generator().manual_seed(seed)
    n_windows = int(rows.max()) + 1
    for _ in range(n_splits):
        half = torch.zeros(n_windows, dtype=torch.bool)
        half[torch.randperm(n_windows, generator=generator)[: n_windows // 2]] = True
        yield half[rows]


def f1_chosen_and_scored_on_all(z, truth, rows, *, n_splits, seed, detection_scores):
    f1 = detection_scores(z > 0, truth)[2]
    return float(f1.max()), 0.02, int(f1.argmax())


def f1_scored_where_chosen(z, truth, rows, *, n_splits, seed, detection_scores):
    f1s, latents = [], []
    for a in _splits(rows, n_splits, seed):
        f1 = detection_scores(z[a] > 0, truth[a])[2]
        f1s.append(float(f1.max()))
        latents.append(int(f1.argmax()))
    return float(torch.tensor(f1s).mean()), float(torch.tensor(f1s).std()), max(set(latents), key=latents.count)


def f1_fires_at_zero(z, truth, rows, **kwargs):
    return ref.held_out_f1(z + (z == 0) * 1e-3, truth, rows, **kwargs)  # every latent "fires" everywhere


def f1_standard_error(z, truth, rows, **kwargs):
    mean, sd, latent = ref.held_out_f1(z, truth, rows, **kwargs)
    return mean, sd / kwargs["n_splits"] ** 0.5, latent  # the error of the mean, not the spread of one split


def f1_numpy(z, truth, rows, *, n_splits, seed, detection_scores):
    """Correct, written differently: NumPy's generator for the splits, F1 on B by hand."""
    import numpy as np
    rng = np.random.default_rng(seed)
    n_windows = int(rows.max()) + 1
    f1s, latents = [], []
    for _ in range(n_splits):
        a = torch.from_numpy(np.isin(rows.numpy(), rng.permutation(n_windows)[: n_windows // 2]))
        latent = int(detection_scores(z[a] > 0, truth[a])[2].argmax())
        fires, labels = z[~a, latent] > 0, truth[~a]
        tp = int((fires & labels).sum())
        f1s.append(2 * tp / max(int(fires.sum()) + int(labels.sum()), 1))
        latents.append(latent)
    return float(np.mean(f1s)), float(np.std(f1s, ddof=1)), collections.Counter(latents).most_common(1)[0][0]


MUTANTS = [
    ("collect_activations", collect_keeps_graph, "requires grad"),
    ("collect_activations", collect_last_layer, "hook you are given"),
    ("collect_activations", collect_whole_cache, "expected a torch.Tensor"),
    ("normalisation_scale", scale_without_d_model, "dropped the d_model"),
    ("normalisation_scale", scale_from_mean_norm, "squared"),
    ("normalisation_scale", scale_as_tensor, "Python float"),
    ("relu_sae_loss", relu_loss_unweighted, "decoder row"),
    ("relu_sae_loss", relu_loss_mean_entries, "sum the squared error"),
    ("relu_sae_loss", relu_loss_detached, "differentiably"),
    ("topk_activation", topk_without_relu, "ReLU"),
    ("topk_activation", topk_over_batch, "row"),
    ("topk_activation", topk_no_grad, "differentiably"),
    ("auxk_loss", auxk_all_latents, "only the dead latents"),
    ("auxk_loss", auxk_float_zero, "0-dimensional tensor"),
    ("auxk_loss", auxk_mean_entries, "sum the squared error"),
    ("jumprelu", jumprelu_no_threshold_factor, "multiply by the threshold"),
    ("jumprelu", jumprelu_relu_gradient, "zero below the threshold"),
    ("jumprelu", jumprelu_mean_over_batch, "sum the threshold's gradient"),
    ("jumprelu", jumprelu_not_strict, "differ"),
    ("jumprelu", jumprelu_no_window_gradient, "gradient reaching argument 2"),
    ("jumprelu_l0", l0_with_threshold_factor, "without the θ factor"),
    ("jumprelu_l0", l0_summed_over_batch, "mean"),
    ("jumprelu_l0", l0_sigmoid_surrogate, "differ"),
    ("train_sae", train_new_optimiser_each_step, "make the optimiser once"),
    ("train_sae", train_without_warmup, "warmup_steps"),
    ("train_sae", train_dead_in_steps, "dead_fraction"),
    ("train_sae", train_without_normalising, "normalise_decoder"),
    ("train_sae", train_without_dead_mask, "dead mask"),
    ("train_sae", train_float64_history, "dtype torch.float64"),
    ("reconstruction_metrics", metrics_raw_variance, "batch mean"),
    ("reconstruction_metrics", metrics_mean_entries, "squared \\*norm\\*"),
    ("reconstruction_metrics", metrics_as_tensors, "not a float"),
    ("ce_loss_recovered", ce_splices_bos, "position 0"),
    ("ce_loss_recovered", ce_recovered_inverted, "CE_zero - CE_SAE"),
    ("relative_reconstruction_bias", bias_inverted, "inverse"),
    ("top_activations", top_rows_and_positions_swapped, "flat index|that order"),
    ("top_activations", top_in_increasing_order, "differ"),
    ("detection_scores", detection_swapped, "swapped"),
    ("detection_scores", detection_with_nan, "NaN"),
    ("held_out_f1", f1_chosen_and_scored_on_all, "scoring it on all positions gives"),
    ("held_out_f1", f1_scored_where_chosen, "scoring it on all positions gives"),
    ("held_out_f1", f1_fires_at_zero, "always fires"),
    ("held_out_f1", f1_standard_error, "the error bar is the standard deviation"),
    ("topk_activation", topk_without_k_check, "k larger than d_sae"),
    ("auxk_loss", auxk_topk_before_masking, "among the dead latents"),
    ("relative_reconstruction_bias", bias_mean_of_ratios, "ratio of two means"),
    ("jumprelu_l0", l0_bool_step, "your StepFunction.forward returns a bool tensor"),
    ("investigate_facts", facts_on_the_value_itself, "on a city itself: label the position \\*before\\*"),
    ("investigate_facts", facts_ids_from_one_sae, "topk_k8_w2048, job: latent 553 has F1 0.00"),
    ("investigate_facts", facts_most_frequent_latents, "topk_k8_w1024, city: latent \\d+ has F1 0.0"),
    ("investigate_facts", facts_by_logit_lens, "topk_k8_w1024, pet: latent 241 has F1 0.5"),
]


# ---------------------------------------------------------------- correct answers written differently


def collect_with_a_hook(model, tokens, hook_name):
    stored = {}

    def keep(activation, hook):
        stored["a"] = activation.detach().clone()

    with torch.inference_mode():
        model.run_with_hooks(tokens, fwd_hooks=[(hook_name, keep)])
    return stored["a"].float().cpu().clone()


def scale_from_mean_square_entry(acts):
    return float(1 / acts.pow(2).mean().sqrt())


def scale_with_numpy(acts):
    import numpy as np
    return np.sqrt(acts.shape[-1] / acts.pow(2).sum(-1).mean().item())  # a numpy float64


def relu_loss_with_abs(x, latents, reconstruction, W_dec, l1_coeff):
    penalty = (latents.abs() * W_dec.norm(dim=-1)).sum(-1)
    return ((reconstruction - x).pow(2).sum(-1) + l1_coeff * penalty).mean()


def topk_by_threshold(pre, k):
    if k >= pre.shape[-1]:
        return torch.relu(pre)
    kth = pre.topk(k, dim=-1).values[:, -1:]
    return torch.relu(pre) * (pre >= kth)


def auxk_masked_fill(residual, pre, W_dec, dead_mask, k_aux):
    n_dead = int(dead_mask.sum())
    if n_dead == 0:
        return torch.zeros((), dtype=pre.dtype)
    masked = pre.masked_fill(~dead_mask, float("-inf"))
    top = masked.topk(min(k_aux, n_dead), dim=-1)
    z = torch.zeros_like(pre).scatter(-1, top.indices, top.values.clamp_min(0))
    return ((residual - z @ W_dec) ** 2).sum(-1).mean()


def jumprelu_with_heaviside(pre, threshold, bandwidth):
    class J(torch.autograd.Function):
        @staticmethod
        def forward(ctx, pre, threshold, bandwidth):
            ctx.save_for_backward(pre, threshold)
            ctx.eps = bandwidth
            return pre * torch.heaviside(pre - threshold, torch.zeros(()))

        @staticmethod
        def backward(ctx, g):
            pre, threshold = ctx.saved_tensors
            u = (pre - threshold) / ctx.eps
            kernel = ((u > -0.5) & (u < 0.5)).to(g.dtype)
            return g * torch.heaviside(pre - threshold, torch.zeros(())), -(threshold / ctx.eps) * (g * kernel).sum(0), None
    return J.apply(pre, threshold, bandwidth)


train_setting_lr_by_hand = _train_loop()


def ce_with_hooks_context(model, tokens, hook_name, reconstruct):
    def loss(logits):
        return torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]),
                                                 tokens[:, 1:].reshape(-1)).item()

    def replace(fn):
        def hook(activation, hook):
            out = activation.clone()
            out[:, 1:] = fn(activation[:, 1:])
            return out
        return hook

    with torch.no_grad():
        clean = loss(model(tokens))
        with model.hooks(fwd_hooks=[(hook_name, replace(reconstruct))]):
            spliced = loss(model(tokens))
        with model.hooks(fwd_hooks=[(hook_name, replace(torch.zeros_like))]):
            zero = loss(model(tokens))
    return clean, spliced, zero, (zero - spliced) / (zero - clean)


def detection_with_nan_to_num(fires, labels):
    tp = (fires & labels[:, None]).sum(0).float()
    precision = (tp / fires.sum(0)).nan_to_num(0.0)
    recall = (tp / labels.sum()).nan_to_num(0.0)
    return precision, recall, (2 * precision * recall / (precision + recall)).nan_to_num(0.0)


def facts_with_numpy_f1(sae, store, windows):
    import numpy as np
    x = store.window(slice(None)).reshape(-1, store.d_model) * sae.scale
    with torch.no_grad():
        fires = np.concatenate([(sae.encode(chunk) > 0).numpy() for chunk in x.split(4096)])
    word_class = windows.labels["word_class"]
    following = np.full(word_class[:, 1:].shape, -1)
    following[:, :-1] = word_class[:, 2:]  # the last position's next token is not in the window: never a value
    following = following.reshape(-1)
    names = ("special", "punctuation", "function", "topic", "subtopic", "sentiment", "first_name", "last_name",
             "place", "object", "city", "job", "pet", "hedge")
    answer = {}
    for kind in ("pet", "job", "city"):
        truth = following == names.index(kind)
        tp = fires[truth].sum(0)
        answer[kind] = np.int64((2 * tp / (fires.sum(0) + truth.sum())).argmax())
    return answer


VARIANTS = [
    ("collect_activations", collect_with_a_hook),
    ("normalisation_scale", scale_from_mean_square_entry),
    ("normalisation_scale", scale_with_numpy),
    ("relu_sae_loss", relu_loss_with_abs),
    ("topk_activation", topk_by_threshold),
    ("auxk_loss", auxk_masked_fill),
    ("jumprelu", jumprelu_with_heaviside),
    ("train_sae", train_setting_lr_by_hand),
    ("ce_loss_recovered", ce_with_hooks_context),
    ("detection_scores", detection_with_nan_to_num),
    ("held_out_f1", f1_numpy),
    ("investigate_facts", facts_with_numpy_f1),
]

test_grade_fails_a_wrong_answer_and_says_why, test_every_exercise_has_a_mutant, test_grade_accepts_a_correct_variant = \
    check_tests(checks, EXERCISES, MUTANTS, VARIANTS)


# ---------------------------------------------------------------- the SAE class and the store


def test_jumprelu_threshold_learns_through_the_straight_through_estimator():
    """The STE is what makes the L0 penalty move thresholds: one step of the penalty alone
    raises every threshold that had pre-activations inside its window."""
    sae = ref.SAE(ref.SAEConfig(d_in=8, d_sae=16, architecture="jumprelu", init_threshold=0.5, bandwidth=0.5))
    x = torch.randn(256, 8, generator=torch.Generator().manual_seed(0))
    pre = sae.pre_acts(x)
    penalty = ref.jumprelu_l0(pre, sae.threshold, sae.cfg.bandwidth)
    penalty.backward()
    in_window = ((pre - sae.threshold).abs() < 0.25).any(0)
    assert in_window.any()
    assert (sae.log_threshold.grad[in_window] < 0).all()  # descent raises the threshold: fewer latents fire
    assert (sae.log_threshold.grad[~in_window] == 0).all()


def test_store_on_disk_matches_memory_and_batches_are_shuffled_and_normalised(tmp_path):
    from mechlab.sparse_autoencoders import activations
    model = course_model("corpus_2l")
    tokens = checks._windows(20, 9)
    memory = activations.ActivationStore.collect(model, "blocks.1.hook_resid_pre", tokens, batch_size=8)
    disk = activations.ActivationStore.collect(model, "blocks.1.hook_resid_pre", tokens, batch_size=8,
                                               path=tmp_path / "acts.npy")
    assert disk.on_disk and not memory.on_disk and len(disk) == 20 * 63
    assert torch.equal(disk.window(slice(0, 20)), memory.window(slice(0, 20)))
    assert disk.scale == pytest.approx(memory.scale)
    batches = disk.batches(100, seed=0, buffer_windows=6)
    first = [next(batches) for _ in range(30)]  # more than one pass over 1260 activations
    assert all(b.shape == (100, 128) for b in first)
    everything = torch.cat(first[:12]) / disk.scale  # 1200 of the 1260 activations, each at most once
    available = collections.Counter(row.numpy().tobytes() for row in memory.flat() / memory.scale)
    drawn = collections.Counter(row.numpy().tobytes() for row in everything)
    assert all(available[row] >= n for row, n in drawn.items())  # (some activations repeat: same token after BOS)
    assert not torch.equal(first[0], memory.flat()[:100])  # shuffled
    assert (everything.pow(2).sum(-1).mean() / 128).item() == pytest.approx(1.0, rel=0.05)  # normalised
    again = disk.batches(100, seed=0, buffer_windows=6)
    assert all(torch.equal(next(again), b) for b in first[:5])  # same seed, same batches


# ---------------------------------------------------------------- the investigation


@pytest.mark.parametrize("answer, message", [
    ([690, 553, 473], "should return a dict"),
    ({"city": 690, "job": 553}, "exactly the keys"),
    ({"city": 690.0, "job": 553, "pet": 473}, "a Python int"),
    ({"city": True, "job": 553, "pet": 473}, "a Python int"),
    ({"city": 690, "job": 553, "pet": 1024}, "not a latent of this SAE"),
], ids=["list", "missing key", "float", "bool", "out of range"])
def test_investigation_visible_check_refuses_a_malformed_answer(answer, message):
    with pytest.raises(CheckFailed, match=message):
        checks.check_investigate_facts(lambda sae, store, windows: answer)


def test_investigation_visible_check_says_nothing_about_correctness(capsys):
    checks.check_investigate_facts(lambda sae, store, windows: {"city": 0, "job": 1, "pet": 2})  # wrong, well formed
    assert "hidden test" in capsys.readouterr().out


def test_investigation_refuses_the_reference_and_a_wrapper_around_it():
    from mechlab.checks import self_grading
    with pytest.raises(CheckFailed, match="reference implementation"):
        checks.grade_investigate_facts(ref.investigate_facts)
    with self_grading(), pytest.raises(CheckFailed, match="uses the course's reference"):
        checks.grade_investigate_facts(as_learner(lambda sae, store, windows: ref.investigate_facts(sae, store, windows)))
