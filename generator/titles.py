"""A title for every piece, drawn by its seed from a word model learnt from the corpus's own titles.

Each style belongs to a family of titles (Irish dance tunes, Scottish airs, German folk songs, chorales,
Renaissance texts; the quartets get English nicknames). A family is a word bigram model over its real titles:
a walk from the start, one word at a time, to a word that ended a real title. A draw is redrawn (with the
same generator, so still determined by the seed) until it has 2-6 words, is no corpus title verbatim, has no
blocked word and does not end on a word that leaves it hanging ("The Lass of the").

Learning (`learn`) takes titles as data; `corpus_titles` reads them from music21's corpus (the only I/O
here besides `load`/`save`). `TitleModel.draw` is pure: the same seed and style give the same title in any
process (random.Random seeded with a string hashes it with SHA-512, not the salted `hash()`).
"""

from __future__ import annotations

import base64
import bisect
import hashlib
import itertools
import json
import random
import re
import unicodedata
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

FORMAT = 1
# Bytes of a known title's hash: a draw that collides with one of some 10,000 by chance (1 in 1,600) is only
# drawn again, so a short hash costs nothing and keeps the file small.
DIGEST = 3
FILE_NAME = "titles.json"  # beside a model's card; the shipped model's is the fallback for any other
SHIPPED = Path(__file__).parent / "default_model" / FILE_NAME
MIN_WORDS, MAX_WORDS = 2, 6
ATTEMPTS = 200  # draws tried before the fallback; a family's walk ends within bounds far more often
# In a family of more titles than this, words seen once are left out (twice too, past five times as many): it
# keeps the model small and its titles in common words. A smaller family needs every word to say anything new.
PRUNE_ABOVE = 1000
END = -1  # the "word" after a title's last one

# Which family of titles each corpus style draws from; a style not named here (a user's MIDI folder) gets
# DEFAULT_FAMILY.
STYLE_FAMILIES = {
    "irish": "irish",
    "scottish": "scottish",
    "folk": "german",
    "bach": "chorale",
    "classical": "nickname",
    "palestrina": "mass",
    "monteverdi": "renaissance",
    "josquin": "renaissance",
    "medieval": "renaissance",
}
DEFAULT_FAMILY = "irish"
# How a family's words are cased: English tune books in title case, German by the casing its mixed-case titles
# use (nouns capitalised), the rest as written (Italian and Latin capitalise only the first word).
CASING = {"irish": "title", "scottish": "title", "german": "german", "chorale": "german"}

# The corpus's ABC books, by family. Essen's German books only: han* are Chinese, irl Irish, and lot/lux
# lost their umlauts ("Knigin") and carry page references.
ABC_FOLDERS = {
    "irish": ("oneills1850", "ryansMammoth"),
    "scottish": ("airdsAirs",),
}
ESSEN_GERMAN = (
    "altdeu10",
    "altdeu20",
    "ballad10",
    "ballad20",
    "ballad30",
    "ballad40",
    "ballad50",
    "ballad60",
    "ballad70",
    "ballad80",
    "boehme10",
    "boehme20",
    "dva0",
    "erk10",
    "erk20",
    "erk30",
    "fink0",
    "kinder0",
    "variant0",
    "zuccal0",
)
# Score folders whose titles only music21's metadata holds (MusicXML, Humdrum, RomanText).
METADATA_FOLDERS = {"renaissance": ("palestrina", "josquin", "monteverdi", "trecento", "ciconia", "luca")}


def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


# Words a title must never hold, whole (after lower-casing and dropping a possessive 's) or as a stem at the
# word's start. Slurs and profanity, plus what the corpus itself holds that a concert should not announce:
# old tune books' ethnic slurs, ballads of murder, and the anti-Jewish and anti-Roma songs among Essen's.
BLOCKED_WORDS = frozenset(
    {
        "arse",
        "ass",
        "bastard",
        "bitch",
        "chink",
        "chinaman",
        "coon",
        "cunt",
        "dago",
        "damn",
        "darkey",
        "darkie",
        "darkies",
        "darky",
        "dick",
        "fag",
        "gipsy",
        "gook",
        "gypsy",
        "gypsies",
        "jew",
        "jews",
        "jud",
        "judas",
        "kike",
        "mohr",
        "mohren",
        "negro",
        "neger",
        "piss",
        "retard",
        "savage",
        "savages",
        "slave",
        "slut",
        "spic",
        "squaw",
        "wog",
        "wop",
    }
)
BLOCKED_STEMS = (
    "nigg",
    "fuck",
    "shit",
    "cunt",
    "fagg",
    "whor",
    "murder",
    "mord",
    "zigeun",
    "jude",
    "judn",
    "sklav",
)
# Words a title does not end on: it would stop mid-phrase.
DANGLING = _words(
    "the a an of and in on at to for with by from o' wi' or but "
    "der die das des dem den ein eine einen und von vom im am an auf mit zu zum zur in aus "
    "il la le lo i gli e di del della de da a per con et in ad"
)
_ADDRESSES = _words("mr. mrs. mr mrs dr. dr st. st miss honble sir lord lady captain capt. major col.")
_SMALL = _words("the a an of and in on at to for with by from o' wi' or")
_PAGE_REF = re.compile(r"\s*(\([^)]*\)|,?\s*S\.\s*\d+\w*)")
_SUFFIX = re.compile(r"\s+--\s+")  # Ryan's "Miss Plaudy's -- Reel"
_NUMBERED = re.compile(r"^\s*\d+[a-z]?\.\s*")  # "15a.  Kyrie: Humano Generi"
_FILE_NAME = re.compile(r"\.(mxl|xml|krn|abc|rntxt|mid)$|_|\\|\w\.\w", re.IGNORECASE)
_STOP = re.compile(r"(?<!\bSt)(?<!\bMr)(?<!\bMrs)(?<!\bDr)\.")  # "Quick Step." but "St. Patrick's Day"
# The Renaissance scores' metadata names sections of the Mass and parts as often as pieces: those are no title.
_LITURGY = _words(
    "kyrie gloria credo sanctus agnus benedictus hosanna et qui quicum cum domine pleni crucifixus christe "
    "benedicamus benedicimus glorificamus genitum confiteor quoniam offertorium amen first prima canto can "
    "cant alt alter coda dona homines resurrectionem secundum tu i jesu deum"
)
# Tune types: in a quartet's nickname they would say "reel" of a string quartet.
_TUNE_TYPES = _words(
    "reel reels jig jigs hornpipe strathspey strathspy march clog polka slipjig slide quickstep step rant "
    "air set dance walk waltz minuet"
)
_ODD = re.compile(r"[^\w\s'’,.&-]|_")  # "Kat:y's Reel", stray brackets and asterisks
_ALNUM = re.compile(r"[^\W_]+")
# Nouns in the German titles' casing start with a capital; an all-capitals title's unseen words are guessed
# by their endings.
_GERMAN_NOUN = re.compile(r"(ung|heit|keit|lein|chen|schaft|lied|tum|nis|in|er)$")


class TitleError(ValueError):
    """A title model file that cannot be read; the message names it."""


# Cleaning real titles.


def clean_title(raw: str) -> str | None:
    """A corpus title as a listener would say it, or None for one that is no title (a file name, a number).

    "Lamentation of Owen Roe O'Neill, The" -> "The Lamentation of Owen Roe O'Neill";
    "FISHER'S -- HORNPIPE" -> "FISHER'S HORNPIPE" (casing is the model's job); page references dropped.
    """
    text = unicodedata.normalize("NFC", raw).strip().strip('"').strip()
    if not text or _FILE_NAME.search(text):
        return None
    text = _PAGE_REF.sub("", _NUMBERED.sub("", text))
    if any(c.isdigit() for c in text):
        return None
    text = _SUFFIX.sub(" ", text).replace('"', "").replace("!", "").replace("?", "")
    text = _STOP.sub("", text)
    text = _ODD.sub("", text)
    text = re.sub(r"\s+", " ", text).strip(" .,;:-")
    for article in ("The", "THE", "the", "A"):
        if text.endswith(", " + article):
            text = f"{article} {text[: -len(article) - 2]}"
    return text if len(text.split()) >= 1 and any(c.isalpha() for c in text) else None


def sung_title(raw: str) -> str | None:
    """A Renaissance score's title, if it names a piece: a troped Kyrie by its trope, a madrigal by its first
    words ("Kyrie: O Sacra Virgo Beata" -> "O Sacra Virgo Beata"); None for a section of the Mass or a part."""
    head, colon, rest = raw.partition(":")
    text = clean_title((rest if colon and head.strip().casefold() in _LITURGY else head).split(" - ")[0])
    if not text or text.split()[0].casefold().strip(",") in _LITURGY:
        return None
    return text


def normalised(title: str) -> str:
    """What two titles share when they are the same title: letters and digits, lower case, single spaces."""
    text = title.casefold()
    if not text.isascii():
        text = "".join(c for c in unicodedata.normalize("NFKD", text) if not unicodedata.combining(c))
    return " ".join(_ALNUM.findall(text))


def _bare(word: str) -> str:
    """A word as the blocklist sees it: lower case, letters only, without a possessive."""
    word = word.casefold().replace("’", "'")
    for tail in ("'s", "s'", "'"):
        if word.endswith(tail):
            word = word[: -len(tail)]
            break
    return "".join(c for c in word if c.isalpha())


def blocked(title: str) -> bool:
    """Whether any word of `title` is on the blocklist."""
    for word in title.split():
        bare = _bare(word)
        if bare in BLOCKED_WORDS or bare.startswith(BLOCKED_STEMS):
            return True
    return False


def _digest(title: str) -> bytes:
    return hashlib.blake2b(normalised(title).encode(), digest_size=DIGEST).digest()


# Learning.


def learn(titles: dict[str, list[str]]) -> dict[str, Any]:
    """A title model (plain JSON data) from each family's real titles, as `corpus_titles` gives them.

    Every title counts as known (a draw never repeats one), blocked ones included; only unblocked titles teach
    words, so a blocked word is never in the model at all.
    """
    known = sorted({_digest(t) for family in titles.values() for t in family})
    families = {}
    learnt_from = {family: len(raw) for family, raw in sorted(titles.items())}
    for family, raw in sorted(titles.items()):
        taught = [t.split() for t in raw if not blocked(t)]
        families[family] = _bigrams(taught, CASING.get(family, "written"))
    if "nickname" not in families and "irish" in titles:
        # The quartets' nicknames ("The Lark", "The Emperor") in the words of the English tune titles.
        english = [t for f in ("irish", "scottish") for t in titles.get(f, [])]
        short = [
            t.split()
            for t in english
            if not blocked(t)
            and t.startswith("The ")
            and len(t.split()) <= 4
            and not any(_bare(w) in _TUNE_TYPES for w in t.split())
        ]
        families["nickname"] = _bigrams(short, "title")
        learnt_from["nickname"] = len(short)
    return {
        "format": FORMAT,
        "learnt_from": learnt_from,
        "styles": STYLE_FAMILIES,
        "default_family": DEFAULT_FAMILY,
        "families": families,
        # A Renaissance mass is named after the song it is built on: "Missa L'homme armé".
        "prefixed": {"mass": ["renaissance", "Missa"]} if "renaissance" in families else {},
        "known": base64.b64encode(b"".join(known)).decode(),
    }


def _bigrams(titles: list[list[str]], casing_rule: str) -> dict[str, Any]:
    """One family's words (as they are cased inside a title) and their successors, as flat count lists."""
    keys = [[w.casefold() for w in t] for t in titles]
    counts = Counter(w for t in keys for w in t)
    casing = _casing(titles, casing_rule)
    least = 1 + (len(titles) > PRUNE_ABOVE) + (len(titles) > 5 * PRUNE_ABOVE)
    words = sorted(w for w, n in counts.items() if n >= least)
    index = {w: i for i, w in enumerate(words)}
    start: Counter[int] = Counter()
    follow: list[Counter[int]] = [Counter() for _ in words]
    for t in keys:
        ids = [index.get(w) for w in t] + [END]
        if ids[0] is None or ids[0] == END:
            continue
        start[ids[0]] += 1
        for a, b in itertools.pairwise(ids):
            if a is None or b is None:
                break  # a word left out cuts the title there: what came before may still teach its pairs
            follow[a][b] += 1
    return {
        "words": [casing.get(w, w) for w in words],
        "start": _flat(start),
        "next": [_flat(_sure_ends(c, least)) for c in follow],
    }


def _sure_ends(follow: Counter[int], least: int) -> Counter[int]:
    """A word's successors, without the end of a title when only one title ended there in a large family:
    "A Lovely" ended no real title, and "The Lads of Lovely" only one."""
    if least > 1 and follow[END] == 1:
        return Counter({word: n for word, n in follow.items() if word != END})
    return follow


def _flat(counter: Counter[int]) -> list[int]:
    return [x for item, n in sorted(counter.items()) for x in (item, n)]


def _casing(titles: list[list[str]], rule: str) -> dict[str, str]:
    """Each word as it is most often written inside a mixed-case title (not first, where all are capitals);
    under the "title" rule with a capital unless it is a small word ("The Girl of My Heart")."""
    seen: dict[str, Counter[str]] = {}
    for t in titles:
        if not any(c.islower() for w in t for c in w):
            continue  # an all-capitals title says nothing of casing
        for w in t[1:]:
            seen.setdefault(w.casefold(), Counter())[w] += 1
    out = {k: c.most_common(1)[0][0] for k, c in seen.items()}
    for t in titles:
        for w in t:
            k = w.casefold()
            if k not in out:
                out[k] = _guess_case(k, rule == "german")
    if rule == "title":
        out = {k: w if k in _SMALL else w[:1].upper() + w[1:] for k, w in out.items()}
    return out


def _guess_case(word: str, german: bool) -> str:
    if word in _SMALL:
        return word
    if german and not _GERMAN_NOUN.search(word):
        return word
    return word[:1].upper() + word[1:]


# Drawing.


@dataclass(frozen=True)
class _Family:
    words: tuple[str, ...]
    start: tuple[tuple[int, ...], tuple[int, ...]]  # (successor ids, cumulative counts)
    next: tuple[tuple[tuple[int, ...], tuple[int, ...]], ...]
    refused: frozenset[int]  # words on today's blocklist (a model learnt under an older one may hold some)


def _table(flat: list[int]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    items, total, cumulative = [], 0, []
    for item, n in zip(flat[::2], flat[1::2], strict=True):
        total += n
        items.append(item)
        cumulative.append(total)
    return tuple(items), tuple(cumulative)


class TitleModel:
    """Draws titles; build it with `TitleModel(data)` from `learn`'s output or with `load`."""

    def __init__(self, data: dict[str, Any]) -> None:
        self.styles: dict[str, str] = dict(data["styles"])
        self.default_family: str = data["default_family"]
        self.learnt_from: dict[str, int] = dict(data["learnt_from"])
        self.families = {
            name: _Family(
                tuple(f["words"]),
                _table(f["start"]),
                tuple(_table(n) for n in f["next"]),
                frozenset(i for i, w in enumerate(f["words"]) if blocked(w)),
            )
            for name, f in data["families"].items()
        }
        # family -> (the family whose words it uses, the word put before them)
        self.prefixed: dict[str, tuple[str, str]] = {
            name: (base, prefix)
            for name, (base, prefix) in data.get("prefixed", {}).items()
            if base in self.families
        }
        raw = base64.b64decode(data["known"])
        self.known = frozenset(raw[i : i + DIGEST] for i in range(0, len(raw), DIGEST))
        if self.default_family not in self.families:
            raise TitleError(f"the title model has no family {self.default_family!r}")

    def family_of(self, style: str) -> str:
        family = self.styles.get(style, self.default_family)
        return family if family in self.families or family in self.prefixed else self.default_family

    def draw(self, seed: int, style: str) -> str:
        """The title of the piece with this seed and style: 2-6 words, never a corpus title, no blocked word."""
        name = self.family_of(style)
        base, prefix = self.prefixed.get(name, (name, ""))
        family = self.families[base]
        rng = random.Random(f"title:{style}:{seed}")
        for _ in range(ATTEMPTS):
            words = _walk(family, rng, MAX_WORDS - 1 if prefix else MAX_WORDS, 1 if prefix else MIN_WORDS)
            if words is None:
                continue
            words[0] = words[0][:1].upper() + words[0][1:]  # "Missa Per illud", not "Missa per illud"
            title = " ".join([prefix, *words] if prefix else words)
            if _digest(title) not in self.known:
                return title
        return f"Piece {seed % 10_000:04d}"  # a family too small to say anything new; never met in practice


def _walk(family: _Family, rng: random.Random, most: int, least: int) -> list[str] | None:
    """One walk of the bigram chain, or None when it ends too short, too long, or on a dangling word."""
    items, cumulative = family.start
    if not items:
        return None
    out: list[int] = []
    while True:
        word = items[bisect.bisect_right(cumulative, rng.random() * cumulative[-1])]
        if word == END:
            break
        out.append(word)
        if len(out) > most:
            return None
        items, cumulative = family.next[word]
        if not items:
            return None  # a word whose successors were all left out
    if len(out) < least:
        return None
    words = [family.words[i] for i in out]
    if words[-1].casefold() in DANGLING or len(set(out)) < len(out):  # "the Lass of the Lass"
        return None
    if words[-1].endswith(".") or any(
        w.casefold() in _ADDRESSES and not n[:1].isupper() for w, n in itertools.pairwise(words)
    ):
        return None  # "Mr. a Favourite Air": a name must follow
    if family.refused and not family.refused.isdisjoint(out):
        return None
    return words


# Files and the corpus.


def save(data: dict[str, Any], path: Path) -> None:
    path.write_text(json.dumps(data, ensure_ascii=False, separators=(",", ":")), encoding="utf-8")


def load(path: Path) -> TitleModel:
    """A title model file; `TitleError` naming it when it is missing or broken."""
    try:
        return TitleModel(json.loads(path.read_text(encoding="utf-8")))
    except FileNotFoundError:
        raise TitleError(f"no title model at {str(path)!r}; run `concertbot data titles`") from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise TitleError(f"{str(path)!r} is not a title model ({exc}); run `concertbot data titles`") from None


def corpus_titles(corpus_dir: Path | None = None, metadata: bool = True) -> dict[str, list[str]]:
    """Every family's cleaned real titles from music21's corpus: ABC books' T: lines, Bach's chorale list and
    (with `metadata`, some 40 s to read) the titles music21's metadata gives the Renaissance scores."""
    import music21

    root = corpus_dir or Path(music21.__file__).parent / "corpus"
    out: dict[str, list[str]] = {}
    for family, folders in ABC_FOLDERS.items():
        out[family] = [t for folder in folders for t in _abc_titles(sorted((root / folder).glob("*.abc")))]
    out["german"] = _abc_titles([root / "essenFolksong" / f"{name}.abc" for name in ESSEN_GERMAN])
    from music21.corpus import chorales

    hymns = [clean_title(v["title"]) for v in chorales.ChoraleList().byBudapest.values()]
    out["chorale"] = [t for t in hymns if t]
    if metadata:
        from music21 import corpus

        bundle: Any = corpus.corpora.CoreCorpus().metadataBundle  # iterable, though its type says not
        bundle.read()
        wanted = {folder: family for family, folders in METADATA_FOLDERS.items() for folder in folders}
        for entry in bundle:
            home = wanted.get(str(entry.sourcePath).split("/")[0])
            if home and entry.metadata is not None and (title := sung_title(entry.metadata.bestTitle or "")):
                out.setdefault(home, []).append(title)
    return out


def _abc_titles(paths: list[Path]) -> list[str]:
    titles = []
    for path in paths:
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("T:") and (title := clean_title(line[2:])):
                titles.append(title)
    return titles


def titles_for(model_dir: Path) -> TitleModel:
    """The title model beside a model's card, or the shipped model's when it has none of its own."""
    own = Path(model_dir) / FILE_NAME
    return load(own if own.is_file() else SHIPPED)
