"""The synthetic world: a seeded, English-like corpus whose ground truth is known.

Later chapters train small word-level transformers on it and score SAE features and
steering against its labels. Text is lower case with every word and punctuation mark
a separate token, joined by single spaces ("mary smith lives in paris ."), and
documents are separated by "<eot>".

What is in it (all vocabularies are fixed lists below, so the truth is checkable):

- topical documents (short stories of a few sentences): one topic, one of its
  subtopics and one sentiment each, written from templates that every topic shares;
- known people: `n_known` two-token names, each with three facts (city, job, pet)
  stated the same way every time; their first and last names also form *unknown*
  pairs that never get facts, and a `hedge_fraction` of those get hedges instead
  ("mary jones lives in some town .");
- indirect-object (IOI) sentences: "when mary and john went to the store , john gave
  a drink to mary ." with the answer position labelled; `ioi_prompts` gives
  evaluation prompts, optionally from templates the training text never uses;
- `repeated_random_tokens` for induction heads.

Every document carries per-position labels (see `Document`). Which people exist and
what is true of them depends only on `CorpusConfig.world_seed`; which documents are
written depends on `CorpusConfig.seed`.
"""

from __future__ import annotations

import functools
import random
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

# ---------------------------------------------------------------- vocabularies

SPECIAL_TOKENS = ("<pad>", "<eot>", "<unk>")  # always the first ids of `vocabulary()`
EOT = "<eot>"
PUNCTUATION = (".", ",")

# topic -> (general words, {subtopic: subtopic words}); all lists pairwise disjoint
TOPICS: dict[str, tuple[tuple[str, ...], dict[str, tuple[str, ...]]]] = {
    "sport": (
        ("game", "team", "match", "player", "coach", "season", "fans", "trophy"),
        {
            "football": ("goal", "ball", "striker", "penalty"),
            "tennis": ("racket", "serve", "volley", "net"),
            "swimming": ("pool", "lap", "stroke", "diver"),
        },
    ),
    "food": (
        ("meal", "dinner", "recipe", "kitchen", "taste", "chef", "flavour", "plate"),
        {
            "baking": ("bread", "cake", "oven", "flour"),
            "fruit": ("apple", "mango", "peach", "berry"),
            "spice": ("pepper", "curry", "chili", "garlic"),
        },
    ),
    "music": (
        ("song", "band", "concert", "melody", "album", "rhythm", "stage", "tune"),
        {
            "rock": ("guitar", "drums", "amplifier", "riff"),
            "classical": ("violin", "symphony", "orchestra", "piano"),
            "jazz": ("saxophone", "trumpet", "swing", "blues"),
        },
    ),
    "weather": (
        ("sky", "cloud", "forecast", "wind", "temperature", "climate", "air", "horizon"),
        {
            "rain": ("umbrella", "storm", "puddle", "drizzle"),
            "snow": ("snowflake", "blizzard", "frost", "sled"),
            "sun": ("sunshine", "heatwave", "sunburn", "beach"),
        },
    ),
    "science": (
        ("experiment", "theory", "lab", "data", "research", "discovery", "hypothesis", "model"),
        {
            "physics": ("atom", "particle", "energy", "gravity"),
            "biology": ("cell", "gene", "protein", "species"),
            "astronomy": ("planet", "star", "telescope", "galaxy"),
        },
    ),
}
TOPIC_NAMES = tuple(TOPICS)
SUBTOPIC_NAMES = tuple(s for _, subs in TOPICS.values() for s in subs)  # global subtopic ids
SUBTOPIC_TOPIC = tuple(t for t, (_, subs) in enumerate(TOPICS.values()) for _ in subs)  # subtopic id -> topic id

POSITIVE = ("great", "wonderful", "amazing", "lovely", "fantastic", "excellent", "pleasant", "brilliant")
NEGATIVE = ("terrible", "awful", "horrible", "boring", "dreadful", "poor", "bad", "disappointing")

FIRST_NAMES = (
    "mary", "john", "alice", "bob", "emma", "james", "sarah", "david", "lucy", "tom",
    "anna", "peter", "kate", "mark", "julia", "paul", "laura", "mike", "nina", "sam",
)  # fmt: skip
LAST_NAMES = (
    "smith", "jones", "brown", "taylor", "wilson", "davies", "evans", "thomas",
    "johnson", "roberts", "walker", "wright", "green", "hall", "wood",
)  # fmt: skip
PLACES = ("store", "park", "school", "office", "station", "market", "library", "garden", "restaurant", "hospital")
OBJECTS = ("drink", "book", "ring", "key", "letter", "gift", "bag", "coin", "flower", "hat")
CITIES = ("paris", "london", "rome", "berlin", "tokyo", "madrid", "cairo", "lima", "oslo", "dublin", "vienna", "prague")
JOBS = ("doctor", "teacher", "lawyer", "nurse", "engineer", "pilot", "banker", "dentist", "farmer", "plumber")
PETS = ("cat", "dog", "parrot", "rabbit", "hamster", "turtle", "goldfish", "lizard")
HEDGE_WORDS = ("some", "town", "somewhere", "perhaps", "might", "kind")  # used only in hedge sentences

WORD_CLASSES = (
    "special", "punctuation", "function", "topic", "subtopic", "sentiment", "first_name",
    "last_name", "place", "object", "city", "job", "pet", "hedge",
)  # fmt: skip
"""`Document.word_class` values index this tuple. `topic` is a topic's general word,
`subtopic` a subtopic-specific one; `city`/`job`/`pet` occur only in fact sentences,
`place`/`object` only in IOI sentences, `hedge` only in hedge sentences."""

NAME_ROLES = ("none", "known_person", "unknown_person", "single_name", "ioi_subject", "ioi_indirect_object")
"""`Document.name_role` values index this tuple: a known person's or an unknown pair's
two tokens, a first name on its own in a topical document, and an IOI sentence's
repeated subject (S) or indirect object (IO; all its mentions, answer included)."""

KINDS = ("topic", "bio", "ioi")  # document kinds: topical story, facts or hedges about one person, IOI

# ---------------------------------------------------------------- templates
# Slots: {T} topic word, {S} subtopic word, {P} sentiment word, {N1} {N2} names, {p} the
# person of a fact or hedge, {v} a fact's value, {X} {Y} the IOI names in the order first
# mentioned, {SUBJ} the repeated IOI subject, {IO} the indirect object, {PL} place, {OBJ} object.

TOPIC_TEMPLATES = (
    "the {T} was {P} .",
    "{N1} said the {S} was {P} .",
    "{N1} thinks the {T} is {P} .",
    "today the {S} and the {T} were {P} .",
    "{N1} talked about the {S} with {N2} .",
    "everyone agreed that the {S} was {P} .",
    "it was a {P} {T} .",
    "{N1} wrote about the {T} and the {S} .",
    "the {T} felt {P} to {N1} .",
    "we saw the {S} , and it was {P} .",
    "{N1} and {N2} watched the {T} .",
    "there is always a {S} in the {T} .",
    "in the end the {S} was {P} .",
    "{N1} asked {N2} about the {S} .",
)
FACT_TEMPLATES = {
    "city": ("{p} lives in {v} .", "{p} has a home in {v} .", "the city of {p} is {v} ."),
    "job": ("{p} works as a {v} .", "{p} is a {v} .", "the job of {p} is {v} ."),
    "pet": ("{p} has a pet {v} .", "the pet of {p} is a {v} ."),
}
HEDGE_TEMPLATES = (
    "{p} lives in some town .",
    "{p} perhaps works somewhere .",
    "{p} might have a pet of some kind .",
)
IOI_TEMPLATES = (
    "when {X} and {Y} went to the {PL} , {SUBJ} gave a {OBJ} to {IO} .",
    "when {X} and {Y} got a {OBJ} at the {PL} , {SUBJ} decided to give it to {IO} .",
    "after {X} and {Y} went to the {PL} , {SUBJ} gave a {OBJ} to {IO} .",
    "then , {X} and {Y} had a long day at the {PL} . {SUBJ} gave a {OBJ} to {IO} .",
    "while {X} and {Y} were working at the {PL} , {SUBJ} handed a {OBJ} to {IO} .",
    "{X} and {Y} went to the {PL} . {SUBJ} gave a {OBJ} to {IO} .",
    # held out: never in training text, only from ioi_prompts(held_out=True)
    "the {PL} was quiet when {X} and {Y} arrived , so {SUBJ} passed a {OBJ} to {IO} .",
    "once {X} and {Y} found a {OBJ} near the {PL} , {SUBJ} brought it to {IO} .",
)
IOI_HELD_OUT = (6, 7)  # indices into IOI_TEMPLATES
IOI_TRAIN = tuple(i for i in range(len(IOI_TEMPLATES)) if i not in IOI_HELD_OUT)


def _word_classes() -> dict[str, int]:
    """Every token -> its class id; raises if a word would belong to two classes."""
    cls = WORD_CLASSES.index
    out: dict[str, int] = {}

    def put(words, name):
        for w in words:
            if out.get(w, cls(name)) != cls(name):
                raise ValueError(f"{w!r} is both {WORD_CLASSES[out[w]]} and {name}")
            out[w] = cls(name)

    put(SPECIAL_TOKENS, "special")
    put(PUNCTUATION, "punctuation")
    for general, subs in TOPICS.values():
        put(general, "topic")
        for words in subs.values():
            put(words, "subtopic")
    for name, words in [("sentiment", POSITIVE + NEGATIVE), ("first_name", FIRST_NAMES),
                        ("last_name", LAST_NAMES), ("place", PLACES), ("object", OBJECTS),
                        ("city", CITIES), ("job", JOBS), ("pet", PETS), ("hedge", HEDGE_WORDS)]:  # fmt: skip
        put(words, name)
    content = set(out)
    fact_templates = [t for ts in FACT_TEMPLATES.values() for t in ts]
    for template in TOPIC_TEMPLATES + IOI_TEMPLATES + tuple(fact_templates) + HEDGE_TEMPLATES:
        for w in template.split():
            if w.startswith("{"):
                continue
            in_hedge = template in HEDGE_TEMPLATES and w in HEDGE_WORDS
            if w in content and not in_hedge and WORD_CLASSES[out[w]] != "punctuation":
                raise ValueError(f"template word {w!r} is a content word: {template!r}")
            out.setdefault(w, cls("function"))
    return out


CLASS_OF = _word_classes()  # token -> WORD_CLASSES id, for every token the generator can write
_C = {name: i for i, name in enumerate(WORD_CLASSES)}
_R = {name: i for i, name in enumerate(NAME_ROLES)}


def vocabulary() -> list[str]:
    """Every token the generator can write: special tokens first, then the rest grouped
    by word class (in `WORD_CLASSES` order) and sorted, so ids are stable."""
    rest = sorted((w for w in CLASS_OF if w not in SPECIAL_TOKENS), key=lambda w: (CLASS_OF[w], w))
    return list(SPECIAL_TOKENS) + rest


def _compile(template: str) -> tuple[tuple[tuple[str, int] | str, ...], frozenset[str]]:
    """Split a template once into (word, class) pairs and slot names, plus the slots it uses."""
    items = tuple(w[1:-1] if w.startswith("{") else (w, CLASS_OF[w]) for w in template.split())
    return items, frozenset(i for i in items if isinstance(i, str))


_TOPIC_T = [_compile(t) for t in TOPIC_TEMPLATES]
_FACT_T = {k: [_compile(t) for t in ts] for k, ts in FACT_TEMPLATES.items()}
_HEDGE_T = [_compile(t) for t in HEDGE_TEMPLATES]
_IOI_T = [_compile(t) for t in IOI_TEMPLATES]
for _items, _ in _IOI_T:  # prompts cut before the answer, so every template must end "to {IO} ."
    assert _items[-3:] == (("to", CLASS_OF["to"]), "IO", (".", CLASS_OF["."])), _items

# ---------------------------------------------------------------- the world


@dataclass(frozen=True)
class Person:
    """A known person: a two-token name and three facts, stated identically everywhere."""

    first: str
    last: str
    city: str
    job: str
    pet: str

    @property
    def name(self) -> str:
        return f"{self.first} {self.last}"

    @property
    def facts(self) -> dict[str, str]:
        """Fact kind (a key of FACT_TEMPLATES) -> value."""
        return {"city": self.city, "job": self.job, "pet": self.pet}


@dataclass(frozen=True)
class World:
    """Who exists. `unknown` pairs reuse known people's first and last names but are never
    given facts; `hedged` (a subset of `unknown`) get hedge sentences instead."""

    known: tuple[Person, ...]
    unknown: tuple[tuple[str, str], ...]
    hedged: tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class CorpusConfig:
    """What the generator writes. Same config, same corpus."""

    seed: int = 0  # draws the documents; different seeds give different corpora
    world_seed: int = 0  # draws the people and their facts, kept apart from `seed` so every corpus describes one world
    n_known: int = 30  # known people, each with city, job and pet
    n_unknown: int = 60  # unknown (first, last) pairs built from the known people's names
    hedge_fraction: float = 0.4  # share of unknown pairs that get hedge sentences
    kind_weights: tuple[float, float, float] = (0.6, 0.2, 0.2)  # topic, bio, ioi documents
    sentences: tuple[int, int] = (3, 6)  # min and max sentences of a topical document
    name_mix: tuple[float, float, float] = (0.4, 0.3, 0.3)  # a name slot gets a known person, an unknown pair, a lone first name
    p_aside: float = 0.3  # chance a topical doc naming a known person (hedged pair) adds a fact (hedge) about them
    p_bio_hedged: float = 0.25  # share of bio documents about a hedged pair rather than a known person
    held_out_ioi: tuple[int, ...] = IOI_HELD_OUT  # IOI templates never written into training text


@functools.cache
def build_world(cfg: CorpusConfig = CorpusConfig()) -> World:
    """The known people, unknown pairs and hedged subset for `cfg.world_seed` (built once
    per config: a World is immutable)."""
    rng = random.Random(f"world-{cfg.world_seed}")
    pairs = rng.sample([(f, l) for f in FIRST_NAMES for l in LAST_NAMES], cfg.n_known)
    known = tuple(Person(f, l, rng.choice(CITIES), rng.choice(JOBS), rng.choice(PETS)) for f, l in pairs)
    firsts, lasts = {p.first for p in known}, {p.last for p in known}
    taken = set(pairs)
    candidates = [(f, l) for f in FIRST_NAMES for l in LAST_NAMES if f in firsts and l in lasts and (f, l) not in taken]
    unknown = tuple(rng.sample(candidates, cfg.n_unknown))
    hedged = unknown[: round(cfg.hedge_fraction * cfg.n_unknown)]
    return World(known, unknown, hedged)


# ---------------------------------------------------------------- documents


@dataclass(frozen=True, eq=False)
class Document:
    """One document (no "<eot>") with its labels.

    Stored per position: `word_class` (ids into WORD_CLASSES) and `name_role` (ids into
    NAME_ROLES). Derived per position (properties, int arrays of the same length):
    `topic`, `subtopic`, `sentiment` (the document's labels broadcast: -1 / -1 / 0 where
    it has none), `is_name`, and `topic_words_before` / `sentiment_words_before`, how many
    topic-or-subtopic / sentiment words came strictly earlier in the document.
    """

    tokens: list[str]
    word_class: np.ndarray  # int8 [pos]
    name_role: np.ndarray  # int8 [pos]
    kind: str  # one of KINDS
    doc_topic: int = -1  # index into TOPIC_NAMES, -1 for bio and ioi documents
    doc_subtopic: int = -1  # index into SUBTOPIC_NAMES, -1 for bio and ioi documents
    doc_sentiment: int = 0  # +1 positive, -1 negative, 0 none (bio and ioi)
    people: tuple[str, ...] = ()  # two-token names mentioned ("mary smith"), known or unknown
    ioi_answers: tuple[int, ...] = ()  # positions of IO answer tokens (the name after the final "to")
    ioi_template: int = -1  # index into IOI_TEMPLATES, -1 if not an IOI document

    def __len__(self) -> int:
        return len(self.tokens)

    @property
    def text(self) -> str:
        return " ".join(self.tokens)

    @property
    def topic(self) -> np.ndarray:
        return np.full(len(self), self.doc_topic, dtype=np.int8)

    @property
    def subtopic(self) -> np.ndarray:
        return np.full(len(self), self.doc_subtopic, dtype=np.int8)

    @property
    def sentiment(self) -> np.ndarray:
        return np.full(len(self), self.doc_sentiment, dtype=np.int8)

    @property
    def is_name(self) -> np.ndarray:
        return (self.word_class == _C["first_name"]) | (self.word_class == _C["last_name"])

    @property
    def topic_words_before(self) -> np.ndarray:
        hit = ((self.word_class == _C["topic"]) | (self.word_class == _C["subtopic"])).astype(np.int32)
        return np.cumsum(hit) - hit

    @property
    def sentiment_words_before(self) -> np.ndarray:
        hit = (self.word_class == _C["sentiment"]).astype(np.int32)
        return np.cumsum(hit) - hit

    def labels(self) -> dict[str, np.ndarray]:
        """Every per-position label, by name."""
        return {name: getattr(self, name) for name in LABEL_NAMES}


LABEL_NAMES = ("topic", "subtopic", "sentiment", "word_class", "name_role", "is_name",
               "topic_words_before", "sentiment_words_before")  # fmt: skip


class _Writer:
    """Writes documents one at a time from one RNG; see `iter_documents`."""

    def __init__(self, cfg: CorpusConfig):
        self.cfg, self.rng, self.world = cfg, random.Random(f"corpus-{cfg.seed}"), build_world(cfg)
        self.facts = {p.name: p.facts for p in self.world.known}
        self.hedged = {f"{f} {l}" for f, l in self.world.hedged}
        self.train_ioi = [i for i in range(len(IOI_TEMPLATES)) if i not in cfg.held_out_ioi]
        self.topic_words = [(g, [s for s in subs.values()]) for g, subs in TOPICS.values()]

    def _emit(self, doc: tuple[list, list, list], template, fill: dict) -> int:
        """Append a compiled template with its slots filled (slot -> list of (word, class,
        role)); returns the position where it started."""
        tokens, classes, roles = doc
        start = len(tokens)
        for item in template[0]:
            if item.__class__ is tuple:
                tokens.append(item[0]), classes.append(item[1]), roles.append(0)
            else:
                for w, c, r in fill[item]:
                    tokens.append(w), classes.append(c), roles.append(r)
        return start

    def _name(self) -> tuple[list, str | None]:
        """A name for a topical slot: a known person, an unknown pair or a lone first name."""
        rng, (pk, pu, _) = self.rng, self.cfg.name_mix
        u = rng.random()
        if u < pk:
            p = rng.choice(self.world.known)
            first, last, role = p.first, p.last, _R["known_person"]
        elif u < pk + pu:
            first, last = rng.choice(self.world.unknown)
            role = _R["unknown_person"]
        else:
            return [(rng.choice(FIRST_NAMES), _C["first_name"], _R["single_name"])], None
        return [(first, _C["first_name"], role), (last, _C["last_name"], role)], f"{first} {last}"

    def _about(self, doc, name: str, role: int, kind: str | None) -> None:
        """A fact (known person, `kind` given) or hedge sentence about `name`."""
        first, last = name.split()
        p = [(first, _C["first_name"], role), (last, _C["last_name"], role)]
        if kind is None:
            self._emit(doc, self.rng.choice(_HEDGE_T), {"p": p})
        else:
            value = self.facts[name][kind]
            self._emit(doc, self.rng.choice(_FACT_T[kind]), {"p": p, "v": [(value, _C[kind], 0)]})

    def topic_doc(self) -> Document:
        rng, cfg = self.rng, self.cfg
        t = rng.randrange(len(TOPICS))
        general, subs = self.topic_words[t]
        s_local = rng.randrange(len(subs))
        specific, sentiment = subs[s_local], rng.choice((1, -1))
        polar = POSITIVE if sentiment > 0 else NEGATIVE
        doc: tuple[list, list, list] = ([], [], [])
        people: list[str] = []
        for _ in range(rng.randint(*cfg.sentences)):
            template = rng.choice(_TOPIC_T)
            fill, slots = {}, template[1]
            if "T" in slots:
                fill["T"] = [(rng.choice(general), _C["topic"], 0)]
            if "S" in slots:
                fill["S"] = [(rng.choice(specific), _C["subtopic"], 0)]
            if "P" in slots:
                fill["P"] = [(rng.choice(polar), _C["sentiment"], 0)]
            named = []
            if "N1" in slots:
                fill["N1"], n1 = self._name()
                named.append(n1)
            if "N2" in slots:
                fill["N2"], n2 = self._name()
                while fill["N2"][0][0] == fill["N1"][0][0]:  # two different first names
                    fill["N2"], n2 = self._name()
                named.append(n2)
            self._emit(doc, template, fill)
            for name in named:
                if name is None:
                    continue
                people.append(name)
                if rng.random() < cfg.p_aside:
                    if name in self.facts:
                        self._about(doc, name, _R["known_person"], rng.choice(tuple(FACT_TEMPLATES)))
                    elif name in self.hedged:
                        self._about(doc, name, _R["unknown_person"], None)
        subtopic = sum(len(self.topic_words[i][1]) for i in range(t)) + s_local
        return self._finish(doc, "topic", t, subtopic, sentiment, tuple(dict.fromkeys(people)))

    def bio_doc(self) -> Document:
        """Facts about one known person, or hedges about one hedged pair, in random order."""
        rng = self.rng
        doc: tuple[list, list, list] = ([], [], [])
        if self.world.hedged and rng.random() < self.cfg.p_bio_hedged:
            name = " ".join(rng.choice(self.world.hedged))
            for template in rng.sample(_HEDGE_T, rng.randint(1, len(_HEDGE_T))):
                first, last = name.split()
                role = _R["unknown_person"]
                self._emit(doc, template, {"p": [(first, _C["first_name"], role), (last, _C["last_name"], role)]})
        else:
            name = rng.choice(self.world.known).name
            for kind in rng.sample(tuple(FACT_TEMPLATES), rng.randint(1, len(FACT_TEMPLATES))):
                self._about(doc, name, _R["known_person"], kind)
        return self._finish(doc, "bio", people=(name,))

    def ioi_sentence(self, templates: list[int]) -> tuple[list, list, list, int, int]:
        """One IOI sentence from one of `templates`: tokens, classes, roles, answer position, template."""
        rng = self.rng
        index = rng.choice(templates)
        io, subj = rng.sample(FIRST_NAMES, 2)
        io_tok, s_tok = [(io, _C["first_name"], _R["ioi_indirect_object"])], [(subj, _C["first_name"], _R["ioi_subject"])]
        x, y = (io_tok, s_tok) if rng.random() < 0.5 else (s_tok, io_tok)  # ABBA or BABA
        fill = {"X": x, "Y": y, "SUBJ": s_tok, "IO": io_tok,
                "PL": [(rng.choice(PLACES), _C["place"], 0)], "OBJ": [(rng.choice(OBJECTS), _C["object"], 0)]}  # fmt: skip
        doc: tuple[list, list, list] = ([], [], [])
        self._emit(doc, _IOI_T[index], fill)
        return (*doc, len(doc[0]) - 2, index)

    def ioi_doc(self) -> Document:
        tokens, classes, roles, answer, index = self.ioi_sentence(self.train_ioi)
        return self._finish((tokens, classes, roles), "ioi", ioi_answers=(answer,), ioi_template=index)

    def _finish(self, doc, kind, topic=-1, subtopic=-1, sentiment=0, people=(), **kw) -> Document:
        tokens, classes, roles = doc
        return Document(tokens, np.array(classes, dtype=np.int8), np.array(roles, dtype=np.int8),
                        kind, topic, subtopic, sentiment, people, **kw)  # fmt: skip

    def __iter__(self) -> Iterator[Document]:
        makers = (self.topic_doc, self.bio_doc, self.ioi_doc)
        weights = self.cfg.kind_weights
        while True:
            yield self.rng.choices(makers, weights)[0]()


def iter_documents(cfg: CorpusConfig = CorpusConfig()) -> Iterator[Document]:
    """An endless stream of labelled documents, the same for the same config."""
    return iter(_Writer(cfg))


def generate(cfg: CorpusConfig = CorpusConfig(), n_tokens: int = 100_000) -> list[Document]:
    """Documents until they hold at least `n_tokens` tokens, counting one "<eot>" after each."""
    docs, total = [], 0
    for doc in iter_documents(cfg):
        if total >= n_tokens:
            break
        docs.append(doc)
        total += len(doc) + 1
    return docs


def to_text(docs: list[Document]) -> str:
    """The training text: documents joined by " <eot> ", with one after the last."""
    return "".join(f"{d.text} {EOT} " for d in docs).rstrip()


def concatenate(docs: list[Document]) -> tuple[list[str], dict[str, np.ndarray]]:
    """The token stream of `to_text` and its per-position labels; each "<eot>" gets
    class "special", role "none", no topic (-1), no sentiment (0) and zero counts."""
    eot = {"topic": -1, "subtopic": -1, "sentiment": 0, "word_class": _C["special"], "name_role": 0,
           "is_name": False, "topic_words_before": 0, "sentiment_words_before": 0}  # fmt: skip
    tokens: list[str] = []
    parts: dict[str, list[np.ndarray]] = {k: [] for k in LABEL_NAMES}
    for d in docs:
        tokens += d.tokens
        tokens.append(EOT)
        for name, arr in d.labels().items():
            parts[name] += [arr, np.array([eot[name]], dtype=arr.dtype)]
    return tokens, {k: np.concatenate(v) if v else np.zeros(0, np.int8) for k, v in parts.items()}


# ---------------------------------------------------------------- evaluation sets


@dataclass(frozen=True)
class IOIPrompt:
    """An IOI sentence cut just after its final "to": the model should say `correct` (the
    indirect object, mentioned once) rather than `distractor` (the subject, mentioned twice)."""

    tokens: tuple[str, ...]
    correct: str
    distractor: str
    template: int  # index into IOI_TEMPLATES
    abba: bool  # True when the indirect object is mentioned first ("mary and john ... john ... to mary")

    @property
    def text(self) -> str:
        return " ".join(self.tokens)


def ioi_prompts(n: int, seed: int = 0, held_out: bool = False, template: int | None = None) -> list[IOIPrompt]:
    """`n` IOI prompts for evaluation, from the training templates or, with `held_out`,
    only from the templates (`IOI_HELD_OUT`) that training text never uses; `template`
    (an index into IOI_TEMPLATES) picks one, so every prompt has the same length and layout."""
    writer = _Writer(CorpusConfig(seed=seed))
    writer.rng = random.Random(f"ioi-{seed}-{held_out}" + (f"-{template}" if template is not None else ""))
    if template is not None and not 0 <= template < len(IOI_TEMPLATES):
        raise ValueError(f"template must be an index into IOI_TEMPLATES (0..{len(IOI_TEMPLATES) - 1}), got {template}")
    templates = [template] if template is not None else list(IOI_HELD_OUT) if held_out else writer.train_ioi
    out = []
    for _ in range(n):
        tokens, _, roles, answer, index = writer.ioi_sentence(templates)
        subj = tokens[roles.index(_R["ioi_subject"])]
        first_io = roles.index(_R["ioi_indirect_object"])
        abba = first_io < roles.index(_R["ioi_subject"])
        out.append(IOIPrompt(tuple(tokens[:answer]), tokens[answer], subj, index, abba))
    return out


def repeated_random_tokens(batch: int, length: int, vocab_size: int, generator: np.random.Generator,
                           low: int = 0) -> np.ndarray:  # fmt: skip
    """int64 [batch, 2 * length]: `length` uniform ids in [low, vocab_size), then the same
    ids again, so the second half is predictable only by induction. Pass `low=len(SPECIAL_TOKENS)`
    to avoid special tokens, and prepend a BOS yourself if the model wants one."""
    if length < 1 or batch < 1 or not 0 <= low < vocab_size:
        raise ValueError(f"need batch, length >= 1 and 0 <= low < vocab_size, got {batch}, {length}, {low}, {vocab_size}")
    first = generator.integers(low, vocab_size, size=(batch, length), dtype=np.int64)
    return np.concatenate([first, first], axis=1)
