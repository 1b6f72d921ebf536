"""Chapter 5's helpers (mechlab.steering): the contrast pairs differ in the property and
nothing else, the word labels are the generator's own lists, the name split is clean,
and the steering panel redraws in a real kernel."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from mechlab import corpus, zoo
from mechlab.steering import experiments as st
from test_widgets import SHOWN_HTML, run, text

VOCAB = corpus.vocabulary()


def words(row: torch.Tensor) -> list[str]:
    return [VOCAB[i] for i in row.tolist()]


@pytest.mark.parametrize("target", corpus.TOPIC_NAMES)
def test_topic_pairs_differ_only_in_topic_words(target):
    a, b = st.contrast_pairs("topic", target, n=40, seed=3)
    labels = st.word_labels("topic")
    t = corpus.TOPIC_NAMES.index(target)
    assert a.shape == b.shape and a.shape[0] == 40 and (a[:, 0] == zoo.BOS_ID).all()
    differ = a != b
    assert differ.any(dim=1).all()  # every pair differs somewhere
    assert (labels[a[differ]] == t).all()  # ... only in target-topic words on one side
    other = labels[b[differ]]
    assert (other >= 0).all() and (other != t).all()  # ... and another topic's on the other
    for row in range(len(b)):  # one other topic per pair, and the same everywhere else
        assert len(set(labels[b[row][differ[row]]].tolist())) == 1
    same = ~differ
    assert (labels[a[same]] == -1).all(), "a topic word shared by both sides would not be a contrast"
    assert torch.equal(a, st.contrast_pairs("topic", target, n=40, seed=3)[0])  # seeded


def test_sentiment_pairs_differ_only_in_sentiment_words():
    for target, sign in (("positive", 1), ("negative", 0)):
        a, b = st.contrast_pairs("sentiment", target, n=30, seed=1)
        labels = st.word_labels("sentiment")
        differ = a != b
        assert differ.any(dim=1).all()
        assert (labels[a[differ]] == sign).all() and (labels[b[differ]] == 1 - sign).all()
        assert torch.equal(st.word_labels("topic")[a], st.word_labels("topic")[b])  # same topic words


def test_topic_text_is_about_its_topic_only():
    tokens = st.topic_text("music", n=12, length=20)
    labels = st.word_labels("topic")[tokens[:, 1:]]
    assert tokens.shape == (12, 21) and (tokens[:, 0] == zoo.BOS_ID).all()
    assert ((labels == -1) | (labels == corpus.TOPIC_NAMES.index("music"))).all()
    assert ((labels >= 0).sum(dim=1) > 0).all()


def test_word_labels_are_the_generators_lists():
    topic = st.word_labels("topic")
    for t, (general, subs) in enumerate(corpus.TOPICS.values()):
        ids = zoo.token_ids(list(general) + [w for ws in subs.values() for w in ws])
        assert (topic[torch.from_numpy(ids)] == t).all()
    assert (topic >= 0).sum() == sum(8 + 12 for _ in corpus.TOPICS)
    sentiment = st.word_labels("sentiment")
    assert (sentiment[torch.from_numpy(zoo.token_ids(list(corpus.POSITIVE)))] == 1).all()
    assert (sentiment[torch.from_numpy(zoo.token_ids(list(corpus.NEGATIVE)))] == 0).all()
    assert (sentiment >= 0).sum() == len(corpus.POSITIVE) + len(corpus.NEGATIVE)
    with pytest.raises(ValueError, match="property must be one of"):
        st.word_labels("colour")


def test_entity_split_is_disjoint_and_covers_the_world():
    names = st.entity_split(n_known=8, n_unknown=16, seed=0)
    world = corpus.build_world()
    assert len(names.known_train) == 8 and len(names.unknown_train) == 16
    known = names.known_train + names.known_test
    unknown = names.unknown_train + names.unknown_test
    assert sorted(known) == sorted((p.first, p.last) for p in world.known)
    assert sorted(unknown) == sorted(world.unknown) and not set(known) & set(unknown)
    prompts = st.name_prompts(names.known_test[:2], "lives in")
    assert words(prompts[0])[:3] == ["<eot>", *names.known_test[0]] and words(prompts[0])[3:] == ["lives", "in"]


def test_borrowed_city_means_a_namesakes_city():
    person = corpus.build_world().known[0]
    assert st.borrowed_city((person.first, "nobody"), person.city)  # shares the first name
    assert st.borrowed_city(("nobody", person.last), person.city)  # shares the last name
    assert not st.borrowed_city(("nobody", "else"), person.city)  # shares nothing
    others = [p for p in corpus.build_world().known
              if p != person and (p.first == person.first or p.last == person.last)]
    assert st.borrowed_city((person.first, person.last), person.city) == any(p.city == person.city for p in others)


def test_residual_sites_follow_the_model():
    assert st.residual_sites(zoo.load("corpus_2l")) == [
        "blocks.0.hook_resid_pre", "blocks.0.hook_resid_mid", "blocks.1.hook_resid_pre", "blocks.1.hook_resid_mid",
        "blocks.1.hook_resid_post"]
    attn_only = zoo.random_model(seed=0, n_layers=3)  # no MLPs: no resid_mid
    assert st.residual_sites(attn_only) == ["blocks.0.hook_resid_pre", "blocks.1.hook_resid_pre",
                                            "blocks.2.hook_resid_pre", "blocks.2.hook_resid_post"]


def test_best_setting_respects_the_damage_budget():
    table = pd.DataFrame({"site": ["a", "a", "b", "b"], "coefficient": [0.5, 1.0, 0.5, 0.25],
                          "success": [0.9, 1.0, 0.6, 0.6], "extra_loss": [0.3, 2.0, 0.05, 0.01]})
    assert st.best_setting(table, 0.1).coefficient == 0.25  # equal success: the smaller push
    assert st.best_setting(table, 0.5).success == 0.9
    with pytest.raises(ValueError, match="no setting"):
        st.best_setting(table, 0.001)


def test_generation_loss_is_the_models_loss_on_the_new_tokens():
    model = zoo.load("corpus_2l")
    tokens = st.name_prompts([("mary", "smith")], "lives in paris .")
    with torch.no_grad():
        logits = model(tokens)
    expected = torch.nn.functional.cross_entropy(logits[0, 2:-1], tokens[0, 3:]).item()
    assert st.generation_loss(model, tokens, 3) == pytest.approx(expected, rel=1e-5)


def test_steering_panel_redraws_in_a_kernel():
    nb = run(
        "from mechlab.steering import experiments as st\n"
        "model = None\n"
        "steers = {'up': lambda c: [('up', c)], 'down': lambda c: [('down', -c)]}\n"
        "measure = lambda hooks: {'push': hooks[0][1]}\n"
        "sample = lambda hooks: [f'{hooks[0][0]} text at {hooks[0][1]:+.2f}']\n"
        "panel = st.steering_panel(model, steers, measure, sample, start=0.5)\n"
        "panel",
        "menu, slider = panel.children[0].children\n"
        "out = panel.children[1]\n"
        + SHOWN_HTML +
        "print('at start:', 'up text at +0.50' in shown(), '<b>push</b>: 0.500' in shown())\n"
        "slider.value = 1.25",
        "print('after the slider:', 'up text at +1.25' in shown(), '<b>push</b>: 1.250' in shown(), len(out.outputs))\n"
        "menu.value = 'down'",
        "print('after the menu:', 'down text at -1.25' in shown(), len(out.outputs))",
    )
    assert "at start: True True" in text(nb.cells[1])
    assert "after the slider: True True 1" in text(nb.cells[2])
    assert "after the menu: True 1" in text(nb.cells[3])
