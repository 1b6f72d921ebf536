"""mechlab.corpus: the synthetic world's labels are true, checked against the text itself."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from mechlab import corpus as C

W = {name: i for i, name in enumerate(C.WORD_CLASSES)}
R = {name: i for i, name in enumerate(C.NAME_ROLES)}


@pytest.fixture(scope="module")
def docs() -> list[C.Document]:
    return C.generate(C.CorpusConfig(seed=1), n_tokens=300_000)


@pytest.fixture(scope="module")
def world() -> C.World:
    return C.build_world(C.CorpusConfig(seed=1))


def sentences(doc: C.Document) -> list[range]:
    """Position ranges of the document's sentences, each ending at a "."."""
    out, start = [], 0
    for i, tok in enumerate(doc.tokens):
        if tok == ".":
            out.append(range(start, i + 1))
            start = i + 1
    assert start == len(doc), doc.text
    return out


def full_names(doc: C.Document, span: range, role: int) -> set[str]:
    """Two-token names with `role` in `span`."""
    pos = [i for i in span if doc.name_role[i] == role]
    return {f"{doc.tokens[i]} {doc.tokens[i + 1]}" for i in pos if doc.word_class[i] == W["first_name"]}


def matches(tokens: list[str], i: int, template: str) -> bool:
    """Whether `template` (slots match any one token) occurs at position i."""
    words = template.split()
    if i + len(words) > len(tokens):
        return False
    return all(w.startswith("{") or w == t for w, t in zip(words, tokens[i : i + len(words)]))


# ---------------------------------------------------------------- vocabulary


def test_vocabularies_are_disjoint():
    groups = {f"topic:{t}": set(g) | {w for ws in subs.values() for w in ws} for t, (g, subs) in C.TOPICS.items()}
    groups["ioi"] = set(C.PLACES) | set(C.OBJECTS)
    for (a, x), (b, y) in itertools.combinations(groups.items(), 2):
        assert not x & y, (a, b, x & y)
    subs = [set(ws) for _, s in C.TOPICS.values() for ws in s.values()]
    assert sum(map(len, subs)) == len(set().union(*subs))
    assert 4 <= len(C.TOPICS) and all(2 <= len(s) <= 3 for _, s in C.TOPICS.values())


def test_vocabulary_lists_everything_once_special_first(docs):
    vocab = C.vocabulary()
    assert vocab[: len(C.SPECIAL_TOKENS)] == list(C.SPECIAL_TOKENS) and C.EOT in C.SPECIAL_TOKENS
    assert len(vocab) == len(set(vocab)) == len(C.CLASS_OF)
    assert vocab == C.vocabulary()  # stable ids
    seen = {t for d in docs for t in d.tokens}
    assert seen <= set(vocab)
    assert set(C.to_text(docs).split()) <= set(vocab)


def test_text_is_lower_case_words_separated_by_spaces(tmp_path, docs):
    path = tmp_path / "corpus.txt"
    path.write_text(C.to_text(docs[:200]))
    tokens = path.read_text().split(" ")
    assert tokens == [t for d in docs[:200] for t in d.tokens + [C.EOT]]
    assert all(t == t.lower() and t for t in tokens)


def test_function_words_are_shared_across_topics(docs):
    used = {t: set() for t in range(len(C.TOPICS))}
    for d in docs:
        if d.kind == "topic":
            used[d.doc_topic] |= {tok for tok, c in zip(d.tokens, d.word_class) if c == W["function"]}
    assert len(set(map(frozenset, used.values()))) == 1
    assert {"the", "was"} <= used[0]


# ---------------------------------------------------------------- generation


def test_same_seed_same_corpus_different_seed_different():
    a, b = C.generate(C.CorpusConfig(seed=3), 20_000), C.generate(C.CorpusConfig(seed=3), 20_000)
    assert C.to_text(a) == C.to_text(b)
    assert all((x.word_class == y.word_class).all() and (x.name_role == y.name_role).all() for x, y in zip(a, b))
    assert C.to_text(a) != C.to_text(C.generate(C.CorpusConfig(seed=4), 20_000))
    # the world depends on world_seed only
    assert C.build_world(C.CorpusConfig(seed=3)) == C.build_world(C.CorpusConfig(seed=4))
    assert C.build_world(C.CorpusConfig(world_seed=1)) != C.build_world()


def test_a_million_tokens_have_the_expected_mix():
    docs = C.generate(C.CorpusConfig(seed=2), 1_000_000)
    assert 1_000_000 <= sum(len(d) + 1 for d in docs) < 1_000_200
    kinds = np.array([C.KINDS.index(d.kind) for d in docs])
    share = np.bincount(kinds, minlength=3) / len(docs)
    assert np.allclose(share, [0.6, 0.2, 0.2], atol=0.02)


def test_label_arrays_match_document_length(docs):
    for d in docs[:2000]:
        labels = d.labels()
        assert set(labels) == set(C.LABEL_NAMES)
        for name, arr in labels.items():
            assert isinstance(arr, np.ndarray) and arr.shape == (len(d),), name
        assert (d.is_name == np.isin(d.word_class, [W["first_name"], W["last_name"]])).all()
        assert ((d.name_role != 0) == d.is_name).all()
        expected = [C.CLASS_OF[t] for t in d.tokens]
        assert d.word_class.tolist() == expected


def test_concatenate_puts_eot_between_documents(docs):
    tokens, labels = C.concatenate(docs[:50])
    assert tokens == C.to_text(docs[:50]).split()
    assert all(len(v) == len(tokens) for v in labels.values())
    eot = np.array([t == C.EOT for t in tokens])
    assert eot.sum() == 50 and (labels["word_class"][eot] == W["special"]).all()
    assert (labels["topic"][eot] == -1).all()


def test_topic_words_carry_their_topic_and_counts_are_running(docs):
    topic_of = {w: t for t, (g, subs) in enumerate(C.TOPICS.values()) for w in g}
    sub_of = {w: s for s, ws in enumerate(ws for _, subs in C.TOPICS.values() for ws in subs.values()) for w in ws}
    n_topic = 0
    for d in docs:
        topic_count = sentiment_count = 0
        for i, tok in enumerate(d.tokens):
            assert d.topic_words_before[i] == topic_count and d.sentiment_words_before[i] == sentiment_count
            if tok in topic_of or tok in sub_of:
                topic_count += 1
                assert d.kind == "topic"
                if tok in topic_of:
                    assert d.word_class[i] == W["topic"] and d.topic[i] == topic_of[tok]
                else:
                    assert d.word_class[i] == W["subtopic"] and d.subtopic[i] == sub_of[tok]
                    assert C.SUBTOPIC_TOPIC[sub_of[tok]] == d.topic[i]
            if tok in C.POSITIVE or tok in C.NEGATIVE:
                sentiment_count += 1
                assert d.word_class[i] == W["sentiment"]
                assert d.sentiment[i] == (1 if tok in C.POSITIVE else -1)
        n_topic += d.kind == "topic"
        if d.kind != "topic":
            assert d.doc_topic == d.doc_subtopic == -1 and d.doc_sentiment == 0
    assert n_topic > 1000


def test_names_appear_in_topical_documents(docs):
    topical = [d for d in docs if d.kind == "topic"]
    with_names = [d for d in topical if d.is_name.any()]
    assert len(with_names) > 0.5 * len(topical)
    roles = {int(r) for d in topical for r in d.name_role[d.is_name]}
    assert roles == {R["known_person"], R["unknown_person"], R["single_name"]}


# ---------------------------------------------------------------- people


def test_world_lists(world):
    known = {(p.first, p.last) for p in world.known}
    assert len(known) == 30 and all(len(p.name.split()) == 2 for p in world.known)
    assert not known & set(world.unknown)
    assert set(world.hedged) <= set(world.unknown)
    assert len(world.hedged) == round(0.4 * len(world.unknown))
    firsts, lasts = {f for f, _ in known}, {l for _, l in known}
    assert all(f in firsts and l in lasts for f, l in world.unknown)


def test_facts_are_consistent_and_only_about_known_people(docs, world):
    truth = {p.name: p.facts for p in world.known}
    hedged = {f"{f} {l}" for f, l in world.hedged}
    fact_class = {W["city"]: "city", W["job"]: "job", W["pet"]: "pet"}
    stated: dict[tuple[str, str], set[str]] = {}
    n_hedges = 0
    for d in docs:
        for span in sentences(d):
            classes = {int(d.word_class[i]) for i in span}
            facts = [(fact_class[int(d.word_class[i])], d.tokens[i]) for i in span if d.word_class[i] in fact_class]
            if facts:
                (kind, value), = facts
                (name,) = full_names(d, span, R["known_person"])
                assert not full_names(d, span, R["unknown_person"])
                assert truth[name][kind] == value
                stated.setdefault((name, kind), set()).add(value)
            if W["hedge"] in classes:
                n_hedges += 1
                assert not facts and not full_names(d, span, R["known_person"])
                (name,) = full_names(d, span, R["unknown_person"])
                assert name in hedged
    assert all(len(v) == 1 for v in stated.values())
    assert len({name for name, _ in stated}) == 30  # every known person's facts get stated
    assert n_hedges > 100


def test_unknown_pairs_appear_but_never_with_facts(docs, world):
    unknown = {f"{f} {l}" for f, l in world.unknown}
    mentioned = {n for d in docs for n in d.people if n in unknown}
    assert len(mentioned) > 0.9 * len(unknown)


# ---------------------------------------------------------------- IOI


def test_ioi_answer_is_the_indirect_object(docs):
    ioi = [d for d in docs if d.kind == "ioi"]
    assert len(ioi) > 500
    for d in ioi:
        (a,) = d.ioi_answers
        assert d.tokens[a - 1] == "to" and d.name_role[a] == R["ioi_indirect_object"]
        names = [d.tokens[i] for i in range(a) if d.is_name[i]]
        answer = d.tokens[a]
        (other,) = set(names) - {answer}
        assert names.count(answer) == 1 and names.count(other) == 2
        assert d.ioi_template in C.IOI_TRAIN


@pytest.mark.parametrize("held_out", [False, True])
def test_ioi_prompts(held_out):
    prompts = C.ioi_prompts(200, seed=0, held_out=held_out)
    assert {p.template for p in prompts} == set(C.IOI_HELD_OUT if held_out else C.IOI_TRAIN)
    assert {p.abba for p in prompts} == {True, False}
    for p in prompts:
        assert p.tokens[-1] == "to" and p.correct != p.distractor
        assert p.tokens.count(p.correct) == 1 and p.tokens.count(p.distractor) == 2
        assert matches(list(p.tokens) + [p.correct, "."], 0, C.IOI_TEMPLATES[p.template])
    assert C.ioi_prompts(5, seed=0, held_out=held_out) == prompts[:5]


def test_held_out_ioi_templates_never_in_training_text(docs):
    tokens = C.to_text(docs).split()
    starts = {C.IOI_TEMPLATES[i].split()[0] for i in C.IOI_HELD_OUT}
    for i, tok in enumerate(tokens):
        if tok in starts or tok in C.FIRST_NAMES:
            assert not any(matches(tokens, i, C.IOI_TEMPLATES[t]) for t in C.IOI_HELD_OUT)
    # and the matcher does find the training templates
    assert any(matches(tokens, i, C.IOI_TEMPLATES[C.IOI_TRAIN[0]]) for i in range(len(tokens)))


# ---------------------------------------------------------------- induction


@pytest.mark.parametrize("length", [1, 7, 32])
def test_repeated_random_tokens(length):
    gen = np.random.default_rng(0)
    x = C.repeated_random_tokens(4, length, 50, gen, low=3)
    assert x.dtype == np.int64 and x.shape == (4, 2 * length)
    assert (x[:, :length] == x[:, length:]).all()
    assert x.min() >= 3 and x.max() < 50
    y = C.repeated_random_tokens(4, length, 50, np.random.default_rng(0), low=3)
    assert (x == y).all()
    with pytest.raises(ValueError):
        C.repeated_random_tokens(4, 0, 50, gen)


def test_ioi_prompts_of_one_template_share_their_layout():
    prompts = C.ioi_prompts(40, seed=3, template=2)
    assert {p.template for p in prompts} == {2} and len({len(p.tokens) for p in prompts}) == 1
    assert {p.abba for p in prompts} == {True, False}
    with pytest.raises(ValueError, match="template"):
        C.ioi_prompts(1, template=len(C.IOI_TEMPLATES))
    # choosing no template keeps the prompts the zoo's committed metrics were measured on
    assert C.ioi_prompts(5, seed=1)[0].text == "mary and peter went to the garden . mary gave a ring to"
    assert C.ioi_prompts(5, seed=1, held_out=True)[0].text == (
        "the restaurant was quiet when alice and mark arrived , so alice passed a ring to")
