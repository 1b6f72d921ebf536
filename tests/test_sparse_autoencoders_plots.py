"""Chapter 4's helpers (`mechlab.sparse_autoencoders.plots`): the ground-truth scoring on cases whose
answer is known, the label sets against a brute-force reading of the corpus labels,
`evaluate` against direct calls of the reference functions, and the latent browser
in a real kernel (as in test_widgets.py)."""

from __future__ import annotations

import types

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch

from mechlab import corpus, zoo
from mechlab.sparse_autoencoders import activations, ground_truth, plots as sae_plots
from mechlab.sparse_autoencoders.reference import (
    SAE, SAEConfig, ce_loss_recovered, detection_scores, reconstruction_metrics, relative_reconstruction_bias,
    top_activations,
)

from test_widgets import SHOWN_HTML, run, text


@pytest.fixture(scope="module")
def windows() -> activations.Windows:
    return activations.corpus_windows(n_tokens=12_000, seed=3)


def identity_sae(d: int, threshold: float = 0.5) -> SAE:
    """A ReLU SAE whose latent i is ReLU(x_i - threshold): it fires exactly where x_i > threshold."""
    sae = SAE(SAEConfig(d_in=d, d_sae=d, architecture="relu", hook_name="hook"))
    with torch.no_grad():
        sae.W_enc.copy_(torch.eye(d))
        sae.W_dec.copy_(torch.eye(d))
        sae.b_enc.fill_(-threshold)
        sae.b_dec.zero_()
    sae.scale = 1.0
    return sae


def planted_store(windows: activations.Windows, d: int = 24, seed: int = 0) -> tuple[activations.ActivationStore, dict]:
    """Noise in [0, 0.4) everywhere, plus 1 in dimension t at the positions of the topic
    label set whose document has topic t (0-4), in dimension 5 + u where its subtopic is u
    (5-19), and in dimension 20 at the positions of the sentiment set whose document is
    negative."""
    g = torch.Generator().manual_seed(seed)
    n, pos = windows.tokens.shape
    acts = 0.4 * torch.rand(n, pos - 1, d, generator=g)
    sets = ground_truth.label_sets(windows)
    topic, sub, sentiment = sets["topic"], sets["subtopic"], sets["sentiment"]
    on = topic.classes >= 0
    acts[topic.rows[on], topic.positions[on], topic.classes[on]] += 1
    on = sub.classes >= 0
    acts[sub.rows[on], sub.positions[on], 5 + sub.classes[on]] += 1
    negative = sentiment.classes == 1
    acts[sentiment.rows[negative], sentiment.positions[negative], 20] += 1
    return activations.ActivationStore(acts, "hook", scale=1.0), sets


def test_label_sets_match_a_brute_force_reading_of_the_labels(windows):
    sets = ground_truth.label_sets(windows)
    L, C, R = windows.labels, corpus._C, corpus._R
    vocab = corpus.vocabulary()
    n, pos = windows.tokens.shape
    expected = {g: np.zeros((n, pos - 1), dtype=bool) for g in ("topic", "subtopic", "sentiment", "known person")}
    for r in range(n):
        words = windows.words(r)
        for t in range(1, pos):
            # everything earlier in this window and this document
            earlier = []
            for j in range(t - 1, 0, -1):
                if words[j] == corpus.EOT:
                    break
                earlier.append(j)
            kind = L["kind"][r, t]
            if words[t] in ("the", "a") and (kind in (1, 2) or (
                    kind == 0 and any(L["word_class"][r, j] in (C["topic"], C["subtopic"]) for j in earlier))):
                expected["topic"][r, t - 1] = True
            if words[t] in ("the", "a") and (kind in (1, 2) or (
                    kind == 0 and any(L["word_class"][r, j] == C["subtopic"] for j in earlier))):
                expected["subtopic"][r, t - 1] = True
            if (t + 1 < pos and L["word_class"][r, t + 1] == C["sentiment"]
                    and any(L["word_class"][r, j] == C["sentiment"] for j in earlier)):
                expected["sentiment"][r, t - 1] = True
            if (L["word_class"][r, t] == C["last_name"] and t >= 2 and L["word_class"][r, t - 1] == C["first_name"]
                    and L["name_role"][r, t] in (R["known_person"], R["unknown_person"])):
                expected["known person"][r, t - 1] = True
    for group, mask in expected.items():
        assert mask.sum() > 50, group
        np.testing.assert_array_equal(sets[group].mask, mask, err_msg=group)
    assert 0 < expected["subtopic"].sum() < expected["topic"].sum()
    assert not (expected["subtopic"] & ~expected["topic"]).any()  # feature_splitting relies on it
    # classes: the document's topic (-1 for bio / ioi negatives), sentiment, known or not
    topic = sets["topic"]
    np.testing.assert_array_equal(topic.classes, L["topic"][:, 1:][topic.mask])
    np.testing.assert_array_equal(sets["subtopic"].classes, L["subtopic"][:, 1:][sets["subtopic"].mask])
    assert set(np.unique(topic.classes)) == {-1, 0, 1, 2, 3, 4}
    assert all(vocab[i] in ("the", "a") for i in windows.tokens[:, 1:].numpy()[topic.mask])
    s = sets["sentiment"]
    np.testing.assert_array_equal(s.classes == 0, L["sentiment"][:, 1:][s.mask] > 0)
    k = sets["known person"]
    np.testing.assert_array_equal(k.classes == 0, L["name_role"][:, 1:][k.mask] == R["known_person"])


def test_window_halves_are_seeded_balanced_and_whole_windows():
    a, b = ground_truth.window_halves(101, seed=0), ground_truth.window_halves(101, seed=0)
    assert torch.equal(a, b) and a.dtype == torch.bool and int(a.sum()) == 50
    assert not torch.equal(a, ground_truth.window_halves(101, seed=1))


def test_a_latent_equal_to_a_label_is_picked_and_scores_one(windows):
    store, sets = planted_store(windows)
    sae = identity_sae(store.d_model)
    table = sae_plots.ground_truth_table(sae, store, windows, detection_scores).set_index("label")
    assert list(table.columns) == ["group", "n_positive", "latent", "precision", "recall", "f1", "probe_f1",
                                   "raw_dim_f1", "always_on_f1"]
    assert len(table) == 5 + 15 + 2 + 1
    sport = table.loc["sport"]
    assert (sport["latent"], sport["precision"], sport["recall"], sport["f1"]) == (0, 1.0, 1.0, 1.0)
    assert sport["raw_dim_f1"] == 1.0 and sport["probe_f1"] > 0.95
    negative = table.loc["negative"]
    assert (negative["latent"], negative["f1"], negative["raw_dim_f1"]) == (20, 1.0, 1.0)
    tennis = table.loc["tennis"]
    assert (tennis["latent"], tennis["f1"]) == (5 + corpus.SUBTOPIC_NAMES.index("tennis"), 1.0)
    # a label nothing encodes: no perfect latent, and the probe is not perfect either
    known = table.loc["known person"]
    assert known["f1"] < 0.9 and known["probe_f1"] < 0.9 and known["raw_dim_f1"] < 0.9

    # n_positive and always-on F1 on the held-out half, counted independently
    half_b = ~ground_truth.window_halves(len(windows), seed=0).numpy()
    topic = sets["topic"]
    in_b = half_b[topic.rows]
    p = (topic.classes[in_b] == corpus.TOPIC_NAMES.index("sport")).mean()
    assert sport["n_positive"] == (topic.classes[in_b] == corpus.TOPIC_NAMES.index("sport")).sum()
    assert sport["always_on_f1"] == pytest.approx(2 * p / (1 + p), abs=1e-3)
    # ... which is what detection_scores gives a detector that always fires
    truth = torch.as_tensor(topic.classes[in_b] == 0)
    assert sport["always_on_f1"] == pytest.approx(float(detection_scores(torch.ones(len(truth), 1, dtype=torch.bool),
                                                                         truth)[2][0]), abs=1e-3)

    summary = sae_plots.ground_truth_summary(table.reset_index())
    assert list(summary.index) == ["topic", "subtopic", "sentiment", "known person"]
    assert summary.loc["topic", "labels"] == 5
    assert summary.loc["topic", "latent_f1"] == pytest.approx(table[table.group == "topic"]["f1"].mean(), abs=1e-3)


def test_best_raw_dimension_finds_sign_and_threshold():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(500, 8, generator=g)
    truth = x[:, 6] < -0.3
    dim, sign, threshold = ground_truth.best_raw_dimension(x, truth)
    assert (dim, sign) == (6, -1.0)
    assert torch.equal(sign * x[:, dim] > threshold, truth)


def test_evaluate_matches_direct_calls_of_the_reference_functions():
    model = zoo.load("corpus_2l")
    w = activations.corpus_windows(n_tokens=2_000, seed=2)
    store = activations.ActivationStore.collect(model, "blocks.1.hook_resid_pre", w.tokens, desc="test")
    store.scale = 0.9 * store.scale  # an SAE's own scale differs from the store's estimate
    cfg = SAEConfig(d_in=store.d_model, d_sae=64, architecture="topk", k=4)
    committed, live = SAE(cfg).eval(), SAE(cfg).eval()
    committed.scale = 1.2
    table = sae_plots.evaluate({"committed": committed, "live": live}, model, store, w.tokens,
                               metrics=reconstruction_metrics, ce=ce_loss_recovered)
    assert list(table.index) == ["committed", "live"]
    assert list(table.columns) == ["architecture", "d_sae", "setting", "l0", "mse", "explained_variance", "ce_clean",
                                   "ce_sae", "ce_increase", "ce_loss_recovered", "dead_fraction", "dense_fraction"]
    for name, sae, scale in [("committed", committed, 1.2), ("live", live, store.scale)]:
        row = table.loc[name]
        x = store.window(slice(None)).reshape(-1, store.d_model) * scale
        with torch.no_grad():
            z = sae.encode(x)
            l0, mse, ev = reconstruction_metrics(x, sae.decode(z), z)
        ce_clean, ce_sae, _, recovered = ce_loss_recovered(model, w.tokens[:256], cfg.hook_name,
                                                           lambda a: sae(a * scale) / scale)
        density = (z > 0).float().mean(0)
        assert (row["architecture"], row["d_sae"], row["setting"]) == ("topk", 64, "k=4")
        assert row["l0"] == pytest.approx(l0, abs=0.01)
        assert row["mse"] == pytest.approx(mse, abs=2e-3)
        assert row["explained_variance"] == pytest.approx(ev, abs=1e-4)
        assert row["ce_clean"] == pytest.approx(ce_clean, abs=1e-4)
        assert row["ce_sae"] == pytest.approx(ce_sae, abs=1e-4)
        assert row["ce_increase"] == pytest.approx(ce_sae - ce_clean, abs=2e-4)
        assert row["ce_loss_recovered"] == pytest.approx(recovered, abs=1e-4)
        assert row["dead_fraction"] == pytest.approx(float((density == 0).float().mean()), abs=1e-4)
        assert row["dense_fraction"] == pytest.approx(float((density > 0.1).float().mean()), abs=1e-4)
    # the two scales really differ, so a mix-up would show
    assert table.loc["committed", "mse"] != table.loc["live", "mse"]
    assert len(sae_plots.frontier(table).axes) == 2
    assert [ax.get_title() for ax in sae_plots.width_curve(table).axes] == [
        "explained variance", "CE increase (nats)", "dead latents (fraction)"]
    assert len(sae_plots.density_histogram({"committed": committed, "live": live}, store).axes) == 2
    shrink = sae_plots.shrinkage({"committed": committed, "live": live}, store, relative_reconstruction_bias)
    for name, sae, scale in [("committed", committed, 1.2), ("live", live, store.scale)]:
        x = store.window(slice(None)).reshape(-1, store.d_model) * scale
        with torch.no_grad():
            assert shrink.loc[name, "gamma"] == pytest.approx(relative_reconstruction_bias(x, sae(x)), abs=1e-4)
    plt.close("all")

    wrong = SAE(SAEConfig(d_in=store.d_model, d_sae=64, architecture="topk", hook_name="blocks.1.hook_resid_post"))
    with pytest.raises(ValueError, match="hook_resid_post"):
        sae_plots.evaluate({"wrong": wrong}, model, store, w.tokens, metrics=reconstruction_metrics,
                           ce=ce_loss_recovered)


def test_latent_data_keeps_every_activation(windows):
    store, _ = planted_store(windows)
    sae = identity_sae(store.d_model, threshold=0.3)
    fake_model = types.SimpleNamespace(W_U=torch.randn(store.d_model, 272, generator=torch.Generator().manual_seed(0)))
    data = sae_plots.LatentData.compute(sae, fake_model, store, windows)
    z = torch.relu(store.acts - 0.3)
    for i in (0, 3, 20):
        torch.testing.assert_close(data.latent_acts(i), z[..., i], atol=1e-2, rtol=1e-2)  # float16 storage
    torch.testing.assert_close(data.density, (z > 0).float().mean((0, 1)))
    assert torch.equal(data.lens_top[3], fake_model.W_U[3].topk(10).indices)
    assert data.best_latents["topic: sport"][0] == 0 and data.best_latents["sentiment: negative"][0] == 20
    html = sae_plots.latent_html(data, 0, top_activations)
    assert "the best latent for: topic: sport (F1 " in html
    values, rows, positions = top_activations(z[..., 0], 1)
    top_word = windows.words(int(rows[0]))[int(positions[0]) + 1]
    assert top_word in ("the", "a") and f"outline: 1px solid #b35900;\">{top_word}</span>" in html
    assert f"{float(values[0]):.2f}" in html


def test_latent_browser_redraws_in_a_kernel():
    nb = run(
        "import types, torch\n"
        "from mechlab.sparse_autoencoders import activations, plots as sae_plots\n"
        "from mechlab.sparse_autoencoders.reference import SAE, SAEConfig, top_activations\n"
        "windows = activations.corpus_windows(n_tokens=3_000, seed=3)\n"
        "g = torch.Generator().manual_seed(0)\n"
        "store = activations.ActivationStore(torch.randn(len(windows), 63, 16, generator=g), 'hook')\n"
        "sae = SAE(SAEConfig(d_in=16, d_sae=32, architecture='relu', hook_name='hook'))\n"
        "model = types.SimpleNamespace(W_U=torch.randn(16, 272, generator=g))\n"
        "data = sae_plots.LatentData.compute(sae, model, store, windows)\n"
        "browser = sae_plots.latent_browser(data, top_activations)\n"
        "browser",
        "index, menu = browser.children[0].children\n"
        "out = browser.children[1]\n"
        + SHOWN_HTML +
        "print('at start:', f'<b>latent {index.value}</b>' in shown())\n"
        "index.value = 7",
        "print('after the move:', '<b>latent 7</b>' in shown(), len(out.outputs))\n"
        "label, (latent, f1) = list(data.best_latents.items())[-1]\n"
        "menu.value = label",
        "print('after the menu:', index.value == latent, f'<b>latent {latent}</b>' in shown(), len(out.outputs))",
    )
    assert "at start: True" in text(nb.cells[1])
    assert "after the move: True 1" in text(nb.cells[2])
    assert "after the menu: True True 1" in text(nb.cells[3])


def test_feature_splitting_on_planted_topics_and_subtopics(windows):
    store, sets = planted_store(windows)
    small, large = identity_sae(store.d_model), identity_sae(store.d_model)
    table = sae_plots.feature_splitting(small, large, store, windows, detection_scores)
    plt.close("all")
    assert list(table["subtopic"]) == list(corpus.SUBTOPIC_NAMES)
    assert list(table["topic_latent"]) == [corpus.SUBTOPIC_TOPIC[u] for u in range(15)]
    assert list(table["subtopic_latent"]) == [5 + u for u in range(15)]
    assert (table["topic_f1"] == 1).all() and (table["subtopic_f1"] == 1).all()
    assert (table["p_subtopic_latent"] == 1).all() and (table["p_any_subtopic_latent"] == 1).all()
    assert (table["p_any_in_topic"] == 1).all()
    assert (table["decoder_cosine"] == 0).all()  # the identity's rows are orthogonal
    sub = sets["subtopic"]
    assert table.set_index("subtopic").loc["jazz", "n"] == (sub.classes == corpus.SUBTOPIC_NAMES.index("jazz")).sum()


def test_refit_undoes_a_known_shrinkage():
    sae = identity_sae(6, threshold=0.3)  # z_i = x_i - 0.3 where x_i > 0.3: every latent shrunk by 0.3
    x = torch.rand(50, 6, generator=torch.Generator().manual_seed(0)) * 2
    act, fit, latent = sae_plots.refit_coefficients(sae, x, ridge=1e-6)
    rows = (x > 0.3).nonzero()
    assert torch.equal(latent, rows[:, 1])
    torch.testing.assert_close(act, x[rows[:, 0], rows[:, 1]] - 0.3)
    torch.testing.assert_close(fit - act, torch.full_like(act, 0.3), atol=1e-4, rtol=0)
