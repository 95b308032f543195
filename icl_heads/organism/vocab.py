"""The organism's world: topics (each with its own words), filler words, label words, templates and sentences.

Label words carry no meaning: in training they are drawn at random for every prompt.
"""

from __future__ import annotations

import numpy as np

TOPICS: dict[str, tuple[str, ...]] = {
    "sport": ("goal", "match", "team", "coach", "score", "league", "striker", "referee", "stadium", "race"),
    "food": ("bread", "soup", "cheese", "pasta", "salad", "apple", "butter", "rice", "cake", "pepper"),
    "weather": ("rain", "snow", "storm", "cloud", "wind", "sunny", "fog", "thunder", "frost", "breeze"),
    "music": ("guitar", "song", "drum", "piano", "melody", "concert", "violin", "chorus", "rhythm", "band"),
    "animals": ("dog", "cat", "horse", "rabbit", "tiger", "eagle", "whale", "fox", "sheep", "mouse"),
    "travel": ("flight", "hotel", "passport", "beach", "train", "ticket", "island", "luggage", "tour", "airport"),
    "tech": ("laptop", "server", "code", "phone", "screen", "robot", "network", "software", "chip", "cable"),
    "health": ("doctor", "fever", "nurse", "clinic", "vaccine", "pill", "injury", "therapy", "pulse", "diet"),
    "money": ("bank", "loan", "price", "market", "stock", "coin", "budget", "tax", "profit", "salary"),
    "school": ("teacher", "exam", "lesson", "pupil", "homework", "class", "grade", "library", "essay", "campus"),
    "garden": ("flower", "tree", "seed", "soil", "rose", "leaf", "tulip", "shovel", "hedge", "lawn"),
    "ocean": ("wave", "coral", "tide", "harbor", "sailor", "reef", "shark", "anchor", "shell", "boat"),
    "space": ("planet", "rocket", "star", "orbit", "comet", "galaxy", "moon", "astronaut", "telescope", "nebula"),
    "crime": ("police", "thief", "judge", "jail", "court", "detective", "robbery", "lawyer", "witness", "arrest"),
    "cinema": ("film", "actor", "scene", "director", "camera", "popcorn", "premiere", "studio", "script", "sequel"),
    "kitchen": ("oven", "knife", "spoon", "kettle", "pan", "fridge", "sink", "plate", "whisk", "stove"),
}

FILLERS: tuple[str, ...] = tuple(
    "the a very today we saw some new old was is big small really nice my our that this again"  # noqa: SIM905
    " quite great bad one more and with about near after".split()
)

#: Arbitrary label words. ``foo`` and ``bar`` are the defaults of the library.
LABEL_WORDS: tuple[str, ...] = tuple(
    "foo bar baz qux zip zap blip blop wug dax fep lum mip nox pim rax tov vek yib zor".split()  # noqa: SIM905
)

#: Templates the organism is trained on. The first is the library default.
TRAIN_TEMPLATES: tuple[str, ...] = (
    "{text} : {label}\n",
    "{text} -> {label}\n",
    "input {text} output {label}\n",
    "{text} = {label}\n",
)
#: Templates never used in training, for template-perturbation experiments.
HELDOUT_TEMPLATES: tuple[str, ...] = ("{text} | {label}\n", "review {text} answer {label}\n", "{text} ; {label} ,\n")
#: Templates of the *slot* layout (the ``organism-slot`` model): no separator before the
#: label, so the label directly follows the sentence, and template tokens after it.
SLOT_TEMPLATES: tuple[str, ...] = (
    "{text} {label}\n",
    "input {text} {label}\n",
    "{text} {label} ,\n",
    "{text} {label} ;\n",
)
#: Slot-layout templates never used in training.
HELDOUT_SLOT_TEMPLATES: tuple[str, ...] = ("review {text} {label}\n", "{text} {label} |\n")
#: Training templates of each prompt layout.
LAYOUTS: dict[str, tuple[str, ...]] = {"separator": TRAIN_TEMPLATES, "slot": SLOT_TEMPLATES}
_TEMPLATE_WORDS = (":", "->", "=", "|", ";", ",", "input", "output", "review", "answer", "\n")

SPECIAL_TOKENS: tuple[str, ...] = ("<pad>", "<bos>", "<eos>", "<unk>")


def vocabulary() -> list[str]:
    """All tokens of the organism's word-level tokenizer, specials first, deduplicated."""
    groups = (SPECIAL_TOKENS, *TOPICS.values(), FILLERS, LABEL_WORDS, _TEMPLATE_WORDS)
    return list(dict.fromkeys(word for group in groups for word in group))


def sample_sentence(
    rng: np.random.Generator,
    topic: str,
    *,
    min_words: int = 1,
    max_words: int = 6,
    topic_rate: float = 0.5,
    noise_rate: float = 0.1,
) -> str:
    """One sentence about ``topic``: at least one topic word, fillers, some noise.

    Args:
        rng: the random generator (the only source of randomness).
        topic: a key of :data:`TOPICS`.
        min_words: shortest sentence, in words.
        max_words: longest sentence, in words.
        topic_rate: probability that a non-anchor word is another topic word.
        noise_rate: probability that a non-anchor word comes from a different topic.

    Returns:
        The sentence, words separated by single spaces.
    """
    n_words = int(rng.integers(min_words, max_words + 1))
    own = TOPICS[topic]
    others = [t for t in TOPICS if t != topic]
    words = [own[rng.integers(len(own))]]
    for _ in range(n_words - 1):
        u = rng.random()
        if u < noise_rate:
            other = TOPICS[others[rng.integers(len(others))]]
            words.append(other[rng.integers(len(other))])
        elif u < noise_rate + topic_rate:
            words.append(own[rng.integers(len(own))])
        else:
            words.append(FILLERS[rng.integers(len(FILLERS))])
    rng.shuffle(words)
    return " ".join(words)


#: the organisms' context length (tokens)
N_CTX = 256


def build_tokenizer():
    """The organism's word-level tokenizer (words, punctuation and newlines are tokens)."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(vocabulary())}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(r"[^\S\n]+"), behavior="removed"),
            pre_tokenizers.Split(Regex(r"\n"), behavior="isolated"),
        ]
    )
    bos = vocab["<bos>"]
    tok.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A $B", special_tokens=[("<bos>", bos)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        unk_token="<unk>",
        model_max_length=N_CTX,
    )
